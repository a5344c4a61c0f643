//! The systemd runtime against a real systemd: PID 1 of a private namespace booted by `tests/systemd-sandbox.sh`
//! (see tests/common/sandbox.rs), with the test's own unit directory, a private nginx outside it and the fixture
//! app in units. Through nginx, under load: deploys, a rollback and a canary lose nothing; a `kill -9` of the app
//! is restarted by systemd; a power cut brings the live release back with no cutover command; `cutover logs`
//! reads the journal.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::outage::Outage;
use common::sandbox::Sandbox;
use common::*;

/// An Env whose config runs instances as units in a fresh sandbox.
fn systemd_env(opts: Opts) -> (Env, Sandbox) {
    let env = Env::with(opts);
    let sb = Sandbox::start(&env.path().join("units"));
    point_at(&env, &sb);
    (env, sb)
}

/// Rewrite the config's `[runtime]` for this sandbox (its pid changes with every boot).
fn point_at(env: &Env, sb: &Sandbox) {
    let cfg = env.default_config();
    let spawn = "[runtime]\nkind = \"spawn\"\nlog_dir = \"logs\"\n";
    assert!(cfg.contains(spawn), "the test config changed shape:\n{cfg}");
    env.write_config(&cfg.replace(spawn, &sb.runtime_toml()));
}

fn units(env: &Env) -> std::path::PathBuf {
    env.path().join("units")
}

/// The app's instance units enabled for boot (their WantedBy symlinks), by port.
fn enabled(env: &Env) -> Vec<u16> {
    let dir = units(env).join("multi-user.target.wants");
    let mut v: Vec<u16> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("cutover-shop@")?.strip_suffix(".service")?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Ports of the instance drop-ins on disk.
fn dropins(env: &Env) -> Vec<u16> {
    let mut v: Vec<u16> = std::fs::read_dir(units(env))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("cutover-shop@")?.strip_suffix(".service.d")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

fn live_ports(env: &Env) -> Vec<u16> {
    let mut v: Vec<u16> = env.state()["live"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap() as u16)
        .collect();
    v.sort();
    v
}

fn unit(port: u16) -> String {
    format!("cutover-shop@{port}.service")
}

#[test]
fn deploys_a_rollback_and_a_canary_on_systemd_lose_nothing() {
    let (env, sb) = systemd_env(Opts {
        access_log: true,
        extra: "\n[canary]\nsteps = [10, 50, 100]\ninterval = \"1s\"\nmin_requests = 20\n\
                access_log = \"nginx/logs/shop.cutover.log\"\n"
            .into(),
        ..Opts::default()
    });
    let d = env.json(&["deploy", "--release", "v1"]);
    let port = d["live"]["instances"][0]["port"].as_u64().unwrap() as u16;
    assert_eq!(d["live"]["instances"][0]["unit"], unit(port));
    assert_eq!(sb.show(&unit(port), "ActiveState"), "active");
    assert_eq!(enabled(&env), vec![port], "the live unit is enabled for boot");
    let dropin = std::fs::read_to_string(units(&env).join(format!("{}.d/cutover.conf", unit(port)))).unwrap();
    assert!(dropin.contains("Environment=\"CUTOVER_RELEASE=v1\""), "{dropin}");
    assert!(dropin.contains("ExecStart=/bin/sh -c \"exec python3 "), "{dropin}");

    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(enabled(&env), live_ports(&env), "only the live release is enabled");
    assert_eq!(dropins(&env), live_ports(&env), "the retired unit's drop-in is removed");
    env.ok(&["rollback"]);
    assert_eq!(env.state()["live"]["release"], "v1");
    env.ok(&["deploy", "--release", "v3", "--strategy", "canary"]);
    std::thread::sleep(Duration::from_millis(300));
    let releases = assert_no_loss(&stop, handles, &tally, "systemd runtime: deploy, rollback, canary 10/50/100 %", 300);
    for r in ["v1", "v2", "v3"] {
        assert!(releases.contains_key(r), "no answer from {r}: {releases:?}");
    }
    assert_eq!(env.serving(), "v3");
    assert_eq!(enabled(&env), live_ports(&env));
    assert_eq!(dropins(&env), live_ports(&env));
    let s = env.json(&["status", "--check"]);
    let i = &s["live"]["instances"][0];
    assert_eq!(i["runtime"]["state"], "active (running)", "{s}");
    assert_eq!(i["runtime"]["at_boot"], true, "{s}");
    assert_eq!(s["runtime"], "systemd");
}

/// One kill -9 of the live app's main process under load: systemd restarts it. Returns what the client saw.
fn kill_main_under_load(env: &Env, sb: &Sandbox, port: u16) -> common::outage::Seen {
    let before = sb.show(&unit(port), "MainPID");
    let load = Outage::start(env.nginx_port, 4);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    let (code, _) = sb.exec(&["kill", "-9", &before]);
    assert_eq!(code, 0, "kill -9 {before} inside the sandbox");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = sb.show(&unit(port), "MainPID");
            now != before && now != "0" && sb.show(&unit(port), "ActiveState") == "active"
        }),
        "systemd did not restart {}",
        unit(port)
    );
    let restarted = killed.elapsed();
    assert!(wait_until(Duration::from_secs(10), || http_get(port, "/health", Duration::from_secs(1)).is_ok()));
    println!(
        "kill -9 of {} (main pid {before}): new main process {} ms later, the app answering {} ms later",
        unit(port),
        restarted.as_millis(),
        killed.elapsed().as_millis()
    );
    assert!(wait_until(Duration::from_secs(10), || http_get(port, "/health", Duration::from_secs(1)).is_ok()));
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    assert_eq!(sb.show(&unit(port), "NRestarts"), "1", "restarted once, by systemd");
    seen
}

#[test]
fn systemd_restarts_a_killed_app() {
    let (env, sb) = systemd_env(Opts::default());
    env.ok(&["deploy", "--release", "v1"]);
    let port = live_ports(&env)[0];
    let seen = kill_main_under_load(&env, &sb, port);
    println!(
        "kill -9, one live instance: {} requests, {} non-2xx over {} ms until systemd's restart answered",
        seen.requests, seen.failed, seen.window_ms
    );
    assert_eq!(env.serving(), "v1");
    let s = env.json(&["status", "--check"]);
    assert_eq!(s["live"]["instances"][0]["runtime"]["restarts"], 1, "{s}");
    let (_, text, _) = env.run(&["status"]);
    assert!(text.contains("active (running), main pid "), "{text}");
    assert!(text.contains("1 restart(s), enabled at boot"), "{text}");
}

#[test]
fn with_two_live_instances_a_killed_one_costs_nothing() {
    let (env, sb) = systemd_env(Opts { instances: 2, pool_size: 4, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let port = live_ports(&env)[0];
    let seen = kill_main_under_load(&env, &sb, port);
    println!(
        "kill -9, two live instances: {} requests, {} non-2xx ({} ms)",
        seen.requests, seen.failed, seen.window_ms
    );
    assert_eq!(seen.failed, 0, "nginx retries the other live instance");
    assert!(seen.requests > 100, "too little load to mean anything: {}", seen.requests);
}

#[test]
fn after_a_power_cut_the_live_release_comes_back_by_itself() {
    let (env, mut sb) = systemd_env(Opts::default());
    env.ok(&["deploy", "--release", "v1"]);
    let v1 = live_ports(&env)[0];
    env.ok(&["deploy", "--release", "v2"]);
    let v2 = live_ports(&env)[0];
    assert_ne!(v1, v2);
    sb.power_cut();
    assert!(
        wait_until(Duration::from_secs(5), || http_get(v2, "/health", Duration::from_secs(1)).is_err()),
        "the power cut did not take the app down"
    );
    let t = Instant::now();
    sb.boot_again();
    let booted = t.elapsed();
    point_at(&env, &sb);
    // No cutover command: systemd starts what is enabled; nginx (outside, untouched) serves it.
    assert!(
        wait_until(Duration::from_secs(20), || matches!(env.get("/"), Ok((200, _)))),
        "the live release did not come back after the reboot"
    );
    println!(
        "power cut: systemd booted in {} ms; nginx answered 200 from v2 {} ms after the boot began",
        booted.as_millis(),
        t.elapsed().as_millis()
    );
    assert_eq!(env.serving(), "v2");
    assert_ne!(sb.show(&unit(v1), "ActiveState"), "active", "the retired release stays gone");
    assert!(http_get(v1, "/health", Duration::from_secs(1)).is_err(), "nothing answers on v1's port");
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 0, "state is true after the reboot\n{out}\n{err}");
    let (code, out, _) = env.run(&["up"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
}

/// A request the fixture logs with this path.
fn request(env: &Env, path: &str) {
    let (status, body) = env.get(path).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn logs_come_from_the_journal() {
    let (env, _sb) = systemd_env(Opts { keep_previous: true, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    request(&env, "/marker-v2-abc");
    let port = live_ports(&env)[0];
    let mut out = String::new();
    assert!(wait_until(Duration::from_secs(5), || {
        out = env.ok(&["logs", "-n", "20"]);
        out.contains("/marker-v2-abc")
    }));
    assert!(out.lines().count() <= 20, "{out}");
    assert!(out.contains(&format!("[v2:{port}] release v2 listening on 127.0.0.1:{port}")), "{out}");
    assert!(!out.contains("[v1:"), "without --release, what serves now: {out}");
    let v1 = env.ok(&["logs", "--release", "v1", "-n", "500"]);
    assert!(v1.contains("release v1 listening"), "{v1}");
    assert!(v1.lines().all(|l| l.starts_with("[v1:")), "{v1}");

    let mut child = env.cutover().args(["logs", "-f", "-n", "0"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    request(&env, "/followed-xyz");
    let until = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < until && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = line.contains("/followed-xyz");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "logs -f did not show a request made after it started");
}

#[test]
fn the_app_runs_as_its_user_with_a_clean_environment() {
    let (env, sb) = systemd_env(Opts::default());
    let secret = env.path().join("app.env");
    std::fs::write(&secret, "DB_PASSWORD='s3cret value'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        "stop_timeout = \"5s\"\n",
        &format!(
            "stop_timeout = \"5s\"\nuser = \"nobody\"\ninherit_env = [\"KEEP_ME\"]\nenv = {{ GREETING = \"hi 100%\" }}\n\
             env_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    env.write_config(&cfg);
    let (code, out, err) = env.run(&["deploy", "--release", "v1", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("each new instance (systemd runtime) runs:"), "{out}");
    assert!(out.contains("Restart=on-failure") && out.contains("User=nobody"), "{out}");
    let out = env
        .cutover()
        .args(["deploy", "--release", "v1"])
        .env("CI_SECRET", "leaked")
        .env("KEEP_ME", "kept")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = live_ports(&env)[0];
    let pid = sb.show(&unit(port), "MainPID");
    let (_, status) = sb.exec(&["cat", &format!("/proc/{pid}/status")]);
    let line = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert_eq!(line("Uid:").split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{status}");
    assert_eq!(line("Gid:").split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{status}");
    let (_, environ) = sb.exec(&["cat", &format!("/proc/{pid}/environ")]);
    let vars: Vec<&str> = environ.split('\0').collect();
    assert!(!vars.iter().any(|v| v.starts_with("CI_SECRET")), "a CI variable reached the app: {vars:?}");
    for want in
        ["KEEP_ME=kept", "GREETING=hi 100%", "DB_PASSWORD=s3cret value", "CUTOVER_RELEASE=v1", "CUTOVER_APP=shop"]
    {
        assert!(vars.contains(&want), "{want} missing: {vars:?}");
    }
    assert!(vars.contains(&format!("PORT={port}").as_str()), "{vars:?}");
    assert_eq!(env.serving(), "v1");
}

#[test]
fn stop_disables_the_units_and_up_brings_them_back() {
    let (env, sb) = systemd_env(Opts::default());
    env.ok(&["deploy", "--release", "v1"]);
    let port = live_ports(&env)[0];
    env.ok(&["stop"]);
    assert_ne!(sb.show(&unit(port), "ActiveState"), "active");
    assert!(enabled(&env).is_empty(), "an offline app does not come back at boot");
    assert!(dropins(&env).is_empty());
    let (status, _) = env.get("/").unwrap();
    assert_eq!(status, 502);
    let out = env.ok(&["up"]);
    assert!(out.contains("started:"), "{out}");
    let port = live_ports(&env)[0];
    assert_eq!(sb.show(&unit(port), "ActiveState"), "active");
    assert_eq!(enabled(&env), vec![port]);
    assert_eq!(env.serving(), "v1");
    let before = sb.show(&unit(port), "MainPID");
    env.ok(&["restart"]);
    let now = live_ports(&env)[0];
    assert_ne!(now, port, "restart runs fresh units beside the old ones, then flips");
    assert_eq!(enabled(&env), vec![now]);
    assert_eq!(dropins(&env), vec![now]);
    assert_ne!(sb.show(&unit(now), "MainPID"), before);
    assert_eq!(env.serving(), "v1");
}

#[test]
fn a_killed_deploy_leaves_no_unit_behind_after_recover() {
    let (env, sb) = systemd_env(Opts::default());
    env.ok(&["deploy", "--release", "v1"]);
    let v1 = live_ports(&env)[0];
    env.flags("v2", "--start-delay 30");
    let mut child = env.cutover().args(["deploy", "--release", "v2"]).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(15), || env.state()["in_progress"]["started"][0]["unit"].is_string()));
    let leftover = env.state()["in_progress"]["started"][0]["port"].as_u64().unwrap() as u16;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(sb.show(&unit(leftover), "ActiveState"), "active", "the unit outlives cutover");
    let (code, out, err) = env.run(&["recover"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("recovered"), "{out}");
    assert_ne!(sb.show(&unit(leftover), "ActiveState"), "active", "recover stopped the killed run's unit");
    assert_eq!(dropins(&env), vec![v1], "and removed its drop-in");
    assert_eq!(enabled(&env), vec![v1]);
    assert_eq!(env.serving(), "v1");
}

// A release that dies a second after the switch is what the verify window is for: under spawn its death is seen
// at the next look. Under systemd the unit restarts it (RestartSec=100ms) and reads `active` again before the
// next look unless a probe happens to land in the gap, so the window passes a release that just crashed and the
// deploy reports success. The restart count the unit keeps (NRestarts) says what happened. With a 1 s probe
// interval a look lands in the 100 ms restart gap about one time in ten, so this fails about nine times in ten.
#[test]
#[ignore = "the verify window does not see a systemd restart: verify (and the launch health wait) look at the \
            unit's active state, not at its restart count or main pid; needs the runtime to report restarts since \
            a baseline and the engine to compare them"]
fn a_release_systemd_restarts_during_the_verify_window_is_switched_back() {
    let (env, sb) = systemd_env(Opts { verify: "6s", ..Opts::default() });
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&cfg.replacen("interval = \"50ms\"", "interval = \"1s\"", 1));
    env.ok(&["deploy", "--release", "v1"]);
    let child = env.cutover().args(["deploy", "--release", "v2"]).stderr(Stdio::piped()).spawn().unwrap();
    // The switch is recorded (traffic on v2): the verify window runs from here for 6 s.
    assert!(wait_until(Duration::from_secs(30), || env.state()["live"]["release"] == "v2"));
    std::thread::sleep(Duration::from_millis(1500));
    let port = live_ports(&env)[0];
    let main = sb.show(&unit(port), "MainPID");
    let (code, _) = sb.exec(&["kill", "-9", &main]);
    assert_eq!(code, 0, "kill -9 {main} inside the sandbox");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let restarts = sb.show(&unit(port), "NRestarts");
    assert_eq!(restarts, "1", "systemd restarted the killed instance once");
    assert_eq!(
        out.status.code(),
        Some(3),
        "v2 died (and systemd restarted it, NRestarts={restarts}) inside its verify window, yet the deploy \
         succeeded:\n{err}"
    );
    assert_eq!(env.serving(), "v1");
}

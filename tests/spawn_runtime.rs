//! The spawn runtime keeping an app alive: `cutover up` after every app process died (a reboot), `stop` and
//! `restart`, the app's clean environment and account, its log files (rotated by size, pruned on deploy) and
//! `cutover logs`. Real binary, real nginx, real fixture processes.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::outage::Outage;
use common::*;

fn live_pids(env: &Env) -> Vec<i32> {
    env.state()["live"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// Kill -9 every process of every instance cutover started (what a reboot leaves of them: nothing).
fn reboot_apps(env: &Env) {
    for pid in env.app_pids() {
        let _ = std::process::Command::new("kill").args(["-9", "--", &format!("-{pid}")]).status();
    }
    for pid in env.app_pids() {
        assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)), "pid {pid} survived kill -9");
    }
}

fn history_len(env: &Env) -> usize {
    std::fs::read_to_string(env.path().join("state/shop/history.jsonl")).unwrap_or_default().lines().count()
}

#[test]
fn up_brings_the_live_release_back_after_every_app_process_died() {
    let env = Env::with(Opts { instances: 2, pool_size: 4, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let ports: Vec<u64> =
        env.state()["live"]["instances"].as_array().unwrap().iter().map(|i| i["port"].as_u64().unwrap()).collect();
    let (code, out, _) = env.run(&["up"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    reboot_apps(&env);
    let (code, _, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7, "dead live instances are a problem for status --check");

    let load = Outage::start(env.nginx_port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (code, out, err) = env.run(&["up"]);
    let took = t.elapsed();
    let before = load.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    // Every request after `up` returned must succeed.
    let after = Outage::start(env.nginx_port, 4);
    std::thread::sleep(Duration::from_millis(1000));
    let after = after.finish();
    println!(
        "spawn up: `cutover up` took {} ms; from 300 ms before it until it returned {} of {} requests failed (the \
         apps were dead; nginx answered 502 for {} ms); after it returned {} of {} failed",
        took.as_millis(),
        before.failed,
        before.requests,
        before.window_ms,
        after.failed,
        after.requests
    );
    assert_eq!(after.failed, 0, "requests failed after `up` returned");
    assert!(after.requests > 50);
    assert!(out.contains("started:") && out.contains("upstream rewritten and reloaded"), "{out}");
    assert_eq!(env.serving(), "v1");
    let now: Vec<u64> =
        env.state()["live"]["instances"].as_array().unwrap().iter().map(|i| i["port"].as_u64().unwrap()).collect();
    assert_eq!(now, ports, "the same ports");
    for pid in live_pids(&env) {
        assert!(pid_alive(pid), "state records pid {pid}, which runs");
    }
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 0, "state is true again\n{out}\n{err}");
    let events = history_len(&env);
    let (code, out, _) = env.run(&["up"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(history_len(&env), events, "a second `up` records nothing");
}

#[test]
fn up_moves_an_instance_whose_port_was_taken_and_reloads_nginx() {
    let env = Env::with(Opts { pool_size: 3, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let old = env.state()["live"]["instances"][0]["port"].as_u64().unwrap() as u16;
    reboot_apps(&env);
    let squatter = std::net::TcpListener::bind(("127.0.0.1", old)).unwrap();
    let (code, out, err) = env.run(&["up"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains(&format!("port {old} is taken by")), "{err}");
    assert!(out.contains("upstream rewritten and reloaded"), "{out}");
    let new = env.state()["live"]["instances"][0]["port"].as_u64().unwrap() as u16;
    assert_ne!(new, old);
    assert!(env.upstream().contains(&format!("127.0.0.1:{new}")));
    assert_eq!(env.serving(), "v1");
    drop(squatter);
}

#[test]
fn stop_takes_the_app_offline_and_up_or_restart_bring_it_back() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let pid = live_pids(&env)[0];
    let out = env.ok(&["stop"]);
    assert!(out.contains("shop is offline"), "{out}");
    assert!(!pid_alive(pid), "the instance is stopped");
    assert!(env.upstream().contains(" down;"), "{}", env.upstream());
    let (status, _) = env.get("/").unwrap();
    assert_eq!(status, 502, "nginx has nothing to send to");
    assert_eq!(env.state()["live"]["release"], "v1", "state keeps the live release");
    let (code, out, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7);
    assert!(out.contains("v1 OFFLINE"), "{out}");
    assert!(env.ok(&["stop"]).contains("already stopped"));
    env.ok(&["up"]);
    assert_eq!(env.serving(), "v1");
    assert!(!env.upstream().contains(" down;"));

    // restart: fresh instances of the live release, flipped under load without a loss.
    let before = live_pids(&env);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, err) = env.run(&["restart"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_no_loss(&stop, handles, &tally, "spawn runtime: cutover restart", 100);
    let after = live_pids(&env);
    assert_ne!(before, after, "fresh instances");
    assert!(!pid_alive(before[0]), "the replaced instance was stopped");
    assert_eq!(env.serving(), "v1");
}

#[test]
fn the_app_gets_a_clean_environment_and_its_env_file() {
    let env = Env::new();
    let secret = env.path().join("app.env");
    std::fs::write(&secret, "# secrets\nDB_PASSWORD=\"p w\"\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The system python, not a version manager's shim that would add variables of its own.
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace("exec python3 ", "exec /usr/bin/python3 ").replace(
        "stop_timeout = \"5s\"\n",
        &format!(
            "stop_timeout = \"5s\"\ninherit_env = [\"KEEP_ME\"]\nenv = {{ GREETING = \"hi\" }}\nenv_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    env.write_config(&cfg);
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mode 0644 lets other users read or change it"), "{err}");
    assert!(env.state()["live"].is_null(), "nothing started");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env
        .cutover()
        .args(["deploy", "--release", "v1"])
        .env("CI_SECRET", "leaked")
        .env("GITHUB_TOKEN", "leaked")
        .env("KEEP_ME", "kept")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = live_pids(&env)[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> =
        environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).filter(|v| !v.is_empty()).collect();
    assert!(!vars.iter().any(|v| v.starts_with("CI_SECRET") || v.starts_with("GITHUB_TOKEN")), "{vars:?}");
    for want in ["KEEP_ME=kept", "GREETING=hi", "DB_PASSWORD=p w", "CUTOVER_RELEASE=v1", "CUTOVER_APP=shop"] {
        assert!(vars.iter().any(|v| v == want), "{want} missing: {vars:?}");
    }
    // PWD is the shell's own (`/bin/sh -c` sets it).
    let mut names: Vec<&str> = vars.iter().map(|v| v.split('=').next().unwrap()).filter(|n| *n != "PWD").collect();
    names.sort();
    let mut want = vec![
        "CUTOVER_APP",
        "CUTOVER_INSTANCE",
        "CUTOVER_RELEASE",
        "DB_PASSWORD",
        "GREETING",
        "HOME",
        "KEEP_ME",
        "PATH",
        "PORT",
    ];
    if std::env::var_os("LANG").is_some() {
        want.push("LANG");
        want.sort();
    }
    assert_eq!(names, want, "exactly these, nothing else of the caller's environment");
}

#[test]
fn the_app_runs_as_app_user_in_its_release_directory() {
    let env = Env::new();
    let rel = env.path().join("releases/v1");
    std::fs::create_dir_all(&rel).unwrap();
    for d in [env.path(), &env.path().join("releases"), &rel] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        "stop_timeout = \"5s\"\n",
        &format!(
            "stop_timeout = \"5s\"\nuser = \"nobody\"\nworkdir = \"{}/releases/{{{{release}}}}\"\n",
            env.path().display()
        ),
    );
    env.write_config(&cfg);
    env.ok(&["deploy", "--release", "v1"]);
    let pid = live_pids(&env)[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> Vec<String> {
        status.lines().find(|l| l.starts_with(k)).unwrap().split_whitespace().skip(1).map(str::to_string).collect()
    };
    assert_eq!(field("Uid:"), ["65534"; 4], "{status}");
    assert_eq!(field("Gid:"), ["65534"; 4], "{status}");
    assert_eq!(field("Groups:"), ["65534"], "supplementary groups of nobody, not root's: {status}");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), rel);
    assert_eq!(env.serving(), "v1");
    let log = env.path().join("logs").join(format!("v1-{}.log", env.state()["live"]["instances"][0]["port"]));
    assert!(std::fs::read_to_string(&log).unwrap().contains("release v1 listening"));
}

#[test]
fn logs_rotate_by_size_and_go_with_their_release() {
    let env = Env::with(Opts { keep_previous: false, ..Opts::default() });
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("log_dir = \"logs\"\n", "log_dir = \"logs\"\nlog_max_size = \"4KiB\"\nlog_keep = 2\n");
    env.write_config(&cfg);
    env.ok(&["deploy", "--release", "v1"]);
    let port = env.state()["live"]["instances"][0]["port"].as_u64().unwrap();
    for _ in 0..200 {
        env.get("/a-request-long-enough-to-fill-the-log-file-quickly").unwrap();
    }
    let log = env.path().join(format!("logs/v1-{port}.log"));
    assert!(wait_until(Duration::from_secs(5), || env.path().join(format!("logs/v1-{port}.log.2")).exists()));
    for p in [
        log.clone(),
        env.path().join(format!("logs/v1-{port}.log.1")),
        env.path().join(format!("logs/v1-{port}.log.2")),
    ] {
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", p.display());
    }
    assert!(!env.path().join(format!("logs/v1-{port}.log.3")).exists(), "log_keep = 2");
    assert!(!env.path().join("state/shop/logs").exists(), "never the state dir");
    let out = env.ok(&["logs", "-n", "3"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with(&format!("[v1:{port}] v1 \"GET /a-request"))), "{out}");

    env.ok(&["deploy", "--release", "v2"]);
    env.ok(&["deploy", "--release", "v3"]);
    let names = names_in(&env.path().join("logs"));
    assert!(!names.iter().any(|n| n.starts_with("v1-")), "v1 is neither live nor previous: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("v2-")) && names.iter().any(|n| n.starts_with("v3-")), "{names:?}");
    let v2 = env.ok(&["logs", "--release", "v2", "-n", "100"]);
    assert!(v2.contains("release v2 listening"), "{v2}");

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
    std::thread::sleep(Duration::from_millis(500));
    env.get("/followed-xyz").unwrap();
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
fn check_says_which_runtime_and_why() {
    let env = Env::new();
    let out = env.json(&["check"]);
    let items = out["items"].as_array().unwrap();
    let runtime = items.iter().find(|i| i["name"] == "runtime").unwrap();
    assert_eq!(runtime["detail"], "spawn (runtime.kind = \"spawn\")");
    let disk: Vec<&serde_json::Value> = items.iter().filter(|i| i["name"] == "disk").collect();
    assert_eq!(disk.len(), 2, "the state and the log filesystem: {disk:?}");
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace("kind = \"spawn\"\n", "");
    env.write_config(&cfg);
    let out = env.json(&["check"]);
    let runtime = out["items"].as_array().unwrap().iter().find(|i| i["name"] == "runtime").unwrap().clone();
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap();
    let want = if pid1.trim() == "systemd" {
        "systemd (the default here: PID 1 is systemd)".to_string()
    } else {
        format!("spawn (the default here: PID 1 is {}, not systemd)", pid1.trim())
    };
    assert_eq!(runtime["detail"], want);
}

#[test]
fn init_boot_writes_and_enables_the_up_unit() {
    let env = Env::new();
    let units = env.path().join("units");
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("kind = \"spawn\"\n", &format!("kind = \"spawn\"\nunit_dir = {:?}\n", units.display().to_string()));
    env.write_config(&cfg);
    let out = env.ok(&["init", "--boot"]);
    assert!(out.contains("cutover-shop-up.service"), "{out}");
    let text = std::fs::read_to_string(units.join("cutover-shop-up.service")).unwrap();
    let exe = env!("CARGO_BIN_EXE_cutover");
    assert!(text.contains(&format!("ExecStart=\"{exe}\" -c \"{}\" up\n", env.config.display())), "{text}");
    for line in [
        "Type=oneshot\n",
        "RemainAfterExit=yes\n",
        "KillMode=process\n",
        "After=network-online.target nginx.service\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    let link = std::fs::read_link(units.join("multi-user.target.wants/cutover-shop-up.service")).unwrap();
    assert_eq!(link, units.join("cutover-shop-up.service"));
    env.ok(&["init", "--boot"]);
}

#[test]
fn a_full_log_filesystem_costs_output_not_requests() {
    let env = Env::new();
    let logs = env.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The deploy, and so the app and its log writer, run in a mount namespace where log_dir is a 64 KiB tmpfs.
    let script = format!(
        "mount -t tmpfs -o size=64k,mode=0700 tmpfs '{}' && exec '{}' -c '{}' deploy --release v1",
        logs.display(),
        env!("CARGO_BIN_EXE_cutover"),
        env.config.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is needed for this test; run .ci/test, which installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = live_pids(&env)[0];
    let port = env.state()["live"]["instances"][0]["port"].as_u64().unwrap();
    // The app's view of its log file, through its own mount namespace.
    let log = format!("/proc/{pid}/root{}/v1-{port}.log", logs.display());
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 4000, stop.clone());
    for h in handles {
        h.join().unwrap();
    }
    let t = tally.lock().unwrap();
    println!(
        "full log filesystem: {} requests, {} non-2xx, {} connection errors; log file {} bytes",
        t.requests,
        t.non_2xx.len(),
        t.errors.len(),
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0)
    );
    assert!(t.requests >= 4000);
    assert!(t.non_2xx.is_empty() && t.errors.is_empty(), "{:?} {:?}", &t.non_2xx[..t.non_2xx.len().min(5)], t.errors);
    drop(t);
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 64 * 1024, "the log stops at the filesystem's size: {size}");
    assert!(size > 32 * 1024, "the filesystem did fill up: {size}");
    assert!(pid_alive(pid), "the app neither died nor blocked");
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 0, "{out}\n{err}");
    drop(stop);
}

// `runtime.log_dir` pointed at a directory that already exists and that other things use (`/var/log` itself,
// or an app directory shared with a group): cutover may write its files there, but it must not change the
// directory's mode, which would lock out every other service (a daemon writing `/var/log/postgresql` as its own
// user can no longer reach it through a 0700 `/var/log`). One that others can write is refused instead.
#[test]
fn an_existing_log_dir_keeps_its_mode_and_one_others_can_write_is_refused() {
    let env = Env::new();
    let shared = env.path().join("varlog");
    std::fs::create_dir_all(shared.join("postgresql")).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&cfg.replacen("log_dir = \"logs\"", "log_dir = \"varlog\"", 1));
    env.ok(&["deploy", "--release", "v1"]);
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "the deploy changed the mode of the existing directory runtime.log_dir names");
    assert!(shared.join(format!("v1-{}.log", env.pool[0])).exists(), "the app's output is written there");

    // Writable by others (no sticky bit): another user could plant the log file names. Refused, nothing started.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, out, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "a log_dir others can write must be refused:\n{out}\n{err}");
    assert!(err.contains("chmod"), "the refusal says how to fix it:\n{err}");
    assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o777, "its mode was changed");
    assert_eq!(env.serving(), "v1");
    assert!(env.state()["in_progress"].is_null(), "an operation was left recorded: {}", env.state());
}

// After `cutover stop`, "`up`, `restart` or a deploy bring it back": a deploy of a new release with any strategy
// must leave nginx serving it. A rolling or all-at-once deploy kept the app recorded offline (the new release
// running, listed `down`, every request a 502) and exited 0; a canary reported 10 % of traffic while nginx
// answered 502 to all of it.
#[test]
fn a_deploy_after_stop_brings_the_app_back_whatever_the_strategy() {
    let env = Env::with(Opts {
        access_log: true,
        extra: "\n[canary]\ninterval = \"manual\"\naccess_log = \"nginx/logs/shop.cutover.log\"\n".into(),
        ..Opts::default()
    });
    env.ok(&["deploy", "--release", "v1"]);
    let mut wrong = Vec::new();
    for (n, strategy) in ["rolling", "all-at-once", "canary", "blue-green"].iter().enumerate() {
        env.ok(&["stop"]);
        let release = format!("v{}", n + 2);
        let (code, out, err) = env.run(&["deploy", "--release", &release, "--strategy", strategy]);
        assert_eq!(code, 0, "{strategy} deploy after stop:\n{out}\n{err}");
        let answers: Vec<u16> = (0..10).map(|_| env.get("/").map(|(s, _)| s).unwrap_or(0)).collect();
        if answers.iter().any(|s| *s != 200) || env.state()["offline"] == true {
            wrong.push(format!(
                "{strategy}: exit 0, state offline={}, nginx answered {answers:?}\n{}",
                env.state()["offline"],
                out.trim()
            ));
        }
        // Whatever happened, leave the app serving for the next strategy.
        let _ = env.run(&["abort"]);
        env.run(&["up"]);
    }
    assert!(wrong.is_empty(), "a deploy after `cutover stop` left the site down:\n{}", wrong.join("\n"));
}

// At boot nginx may fail or start after `cutover up`: the app still comes back, on its ports, and nginx serves it
// the moment it runs.
#[test]
fn up_brings_the_app_back_while_nginx_is_down_and_nginx_serves_it_when_it_starts() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    reboot_apps(&env);
    let master = env.master_pid().unwrap();
    kill(master, 3);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(master)));
    let (code, _, err) = env.run(&["up"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nginx is not running: the app is back on its ports"), "{err}");
    let pids = live_pids(&env);
    assert!(!pids.is_empty() && pids.iter().all(|&p| pid_alive(p)), "the app runs again: {pids:?}");
    assert_eq!(env.state()["in_progress"], serde_json::Value::Null);
    // nginx starts (as its unit would, after cutover's): it serves v1 with no cutover command.
    start_nginx(&env.path().join("nginx"));
    assert!(wait_until(Duration::from_secs(5), || env.get("/").is_ok_and(|(s, _)| s == 200)));
    assert_eq!(env.serving(), "v1");
    let (code, out, _) = env.run(&["up"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
}

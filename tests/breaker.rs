//! The host misbehaving in ways a user meets, each through the real binary against a real nginx and the fixture
//! app: a state directory that fills up mid-deploy, a state written by a newer cutover, hooks wrapped in common
//! commands. After each, what nginx routes to runs, nothing runs unrecorded, and the next command settles.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use serde_json::Value;

/// The ports the upstream file on disk sends traffic to first (servers that are neither `backup` nor `down`).
fn primaries(env: &Env) -> Vec<u16> {
    env.upstream()
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("server ") && !l.contains(" backup") && !l.contains(" down"))
        .filter_map(|l| l.split_whitespace().nth(1)?.trim_end_matches(';').rsplit(':').next()?.parse().ok())
        .collect()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// App processes of this env (a marker for one of its pool ports in their environment): (pid, marker).
fn app_processes(env: &Env) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let marker = environ
            .split(|b| *b == 0)
            .filter_map(|e| std::str::from_utf8(e).ok())
            .find_map(|e| e.strip_prefix("CUTOVER_INSTANCE=").map(str::to_string));
        let Some(marker) = marker else { continue };
        let ours = env.pool.iter().any(|p| marker.starts_with(&format!("shop@{p}#")));
        if ours && pid_alive(pid) {
            out.push((pid, marker));
        }
    }
    out
}

/// Every instance marker state.json records with a process (pid or unit).
fn recorded_markers(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(marker)), true) = (
                m.get("marker"),
                m.get("pid").is_some_and(|p| !p.is_null()) || m.get("unit").is_some_and(|u| !u.is_null()),
            ) {
                out.push(marker.clone());
            }
            for x in m.values() {
                recorded_markers(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| recorded_markers(x, out)),
        _ => {}
    }
}

/// What a user checks after a bad moment: `status --check` passes, every primary server nginx has runs, nginx
/// serves the release state calls live, and no app process runs that state does not record.
fn assert_settled(env: &Env) {
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 0, "status --check after the next command:\n{out}\n{err}");
    for p in primaries(env) {
        assert!(accepts(p), "nginx routes to port {p} first, and nothing listens there:\n{}", env.upstream());
    }
    let live = env.state()["live"]["release"].as_str().unwrap().to_string();
    for _ in 0..10 {
        assert_eq!(env.serving(), live);
    }
    let mut recorded = Vec::new();
    recorded_markers(&env.state(), &mut recorded);
    for (pid, marker) in app_processes(env) {
        assert!(recorded.contains(&marker), "app process {pid} ({marker}) runs and state does not record it");
    }
}

/// Run `script` with `sh` in a private mount namespace (what it mounts there goes away with it).
fn in_mount_namespace(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .output()
        .expect("unshare (util-linux) is needed for this test; run .ci/test, which installs it")
}

// The state directory fills up (another process's file, a runaway log) between the reload that sends traffic to
// the new release and the state write that records it. nginx routes to the new release from then on, so it must
// keep running; the operation stays recorded and the next command puts nginx and state back together.
#[test]
fn a_state_disk_that_fills_up_at_the_flip_never_stops_what_nginx_routes_to() {
    let env = Env::new();
    let state = env.path().join("state");
    let saved = env.path().join("saved-state");
    let arm = env.path().join("fill-at-next-reload");
    let pid_file = env.path().join("nginx/logs/nginx.pid");
    // The reload itself fills the state filesystem when armed: after `nginx -t`, before cutover records the flip.
    let reload = format!(
        "reload = [\"sh\", \"-c\", \"if [ -e '{arm}' ]; then rm -f '{arm}'; head -c 4194304 /dev/zero > '{fill}' \
         2>/dev/null; fi; kill -HUP $(cat '{pid}')\"]",
        arm = arm.display(),
        fill = state.join("fill").display(),
        pid = pid_file.display()
    );
    let text = env.default_config().replacen(
        "conf = \"conf/nginx.conf\"",
        &format!("conf = \"conf/nginx.conf\"\n{reload}"),
        1,
    );
    env.write_config(&text);
    let cutover = env!("CARGO_BIN_EXE_cutover");
    let cfg = env.config.display();
    // The state directory is a 256 KiB tmpfs for the two deploys; afterwards its files are copied back onto the
    // real directory so that the next commands (and the harness's cleanup) see them.
    let script = format!(
        "set -e\nmount -t tmpfs -o size=256k,mode=0700 tmpfs '{state}'\n\
         '{cutover}' -c '{cfg}' deploy --release v1 2>&1\n\
         touch '{arm}'\nset +e\n\
         '{cutover}' -c '{cfg}' deploy --release v2 2>&1; echo \"v2 deploy exited $?\"\n\
         rm -f '{state}/fill'\nmkdir -p '{saved}' && cp -a '{state}/.' '{saved}/' && umount '{state}' && \
         cp -a '{saved}/.' '{state}/'\n",
        state = state.display(),
        saved = saved.display(),
        arm = arm.display(),
    );
    let out = in_mount_namespace(&script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "the script itself failed:\n{text}");
    assert!(!arm.exists(), "the v2 deploy never reloaded nginx:\n{text}");
    assert!(!text.contains("v2 deploy exited 0"), "the v2 deploy cannot have recorded its flip:\n{text}");

    // Before any other command: nginx routes by the file on disk, so what it sends traffic to first must run.
    for p in primaries(&env) {
        assert!(
            accepts(p),
            "after the failed deploy nginx routes to port {p} first, but cutover stopped what ran there:\n{}\n{text}",
            env.upstream()
        );
    }
    // Traffic meanwhile, then the next command cleans up.
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 100_000, stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, out, err) = env.run(&["recover"]);
    assert_eq!(code, 0, "recover:\n{out}\n{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_no_loss(&stop, handles, &tally, "after a full state disk at the flip", 50);
    assert_settled(&env);
}

// A host where a newer cutover ran (then the package was downgraded, or two versions are installed): its
// state.json carries a higher version and fields this one does not know. Reading it as if it were its own and
// writing it back would silently drop what the newer version recorded; it must be refused and left as it is.
#[test]
fn a_state_written_by_a_newer_cutover_is_refused_and_left_untouched() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let path = env.path().join("state/shop/state.json");
    let mut state = env.state();
    let version = state["version"].as_u64().unwrap();
    state["version"] = (version + 1).into();
    state["drained_by"] = serde_json::json!({"what": "a field only the newer version knows"});
    let text = serde_json::to_string_pretty(&state).unwrap();
    std::fs::write(&path, &text).unwrap();
    let before = app_processes(&env);

    let (code, out, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "a deploy over a newer state must be refused (exit 8):\n{out}\n{err}");
    assert!(err.contains(&format!("version {}", version + 1)), "the refusal names the state's version:\n{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "state.json was rewritten");
    assert_eq!(app_processes(&env), before, "something was started or stopped");
    assert_eq!(env.serving(), "v1");
    let (code, _, err) = env.run(&["recover"]);
    assert_eq!(code, 8, "recover must not rewrite a newer state either:\n{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "state.json was rewritten by recover");
}

// `nginx.binary` names a binary that is not there (a typo, a path from another host). The deploy cannot validate
// or reload anything, so it must not start the release first, and `--dry-run`, the preflight CI runs, must say
// so with the code the real run exits with.
#[test]
fn a_missing_nginx_binary_is_refused_before_anything_starts_and_dry_run_says_so() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let missing = env.path().join("sbin/nginx");
    let text = env.default_config().replacen(
        "prefix = \"nginx\"",
        &format!("binary = \"{}\"\nprefix = \"nginx\"", missing.display()),
        1,
    );
    env.write_config(&text);
    let (dry, out, err) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    let before = app_processes(&env);
    let (code, _, err2) = env.run(&["deploy", "--release", "v2"]);
    assert_ne!(code, 0, "{err2}");
    assert_eq!(dry, code, "the dry run predicted exit {dry}, the deploy exited {code}:\n{out}\n{err}\n---\n{err2}");
    assert!(!err2.contains("start     v2"), "v2 was started though nginx could not be run:\n{err2}");
    assert_eq!(app_processes(&env), before, "the deploy started or stopped an app process");
    assert_eq!(env.serving(), "v1");
}

// A config value the systemd runtime cannot write into a unit (an `app.env` value with a newline) is a config
// mistake like any other: exit 2 from the dry run and from the deploy, not the "unexpected error" exit 1, and
// nothing runs. (systemctl is `false` here: the deploy must stop before it would call it.)
#[test]
fn a_value_a_systemd_unit_cannot_carry_is_a_config_error() {
    let env = Env::new();
    let units = env.path().join("units");
    let text = env
        .default_config()
        .replacen("stop_timeout = \"5s\"", "stop_timeout = \"5s\"\nenv = { GREETING = \"two\\nlines\" }", 1)
        .replacen(
            "[runtime]\nkind = \"spawn\"\n",
            &format!("[runtime]\nkind = \"systemd\"\nunit_dir = \"{}\"\nsystemctl = [\"false\"]\n", units.display()),
            1,
        );
    env.write_config(&text);
    let (dry, out, err) = env.run(&["deploy", "--release", "v1", "--dry-run"]);
    assert_eq!(dry, 2, "the dry run:\n{out}\n{err}");
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "the deploy:\n{err}");
    assert!(err.contains("GREETING"), "the error names the value:\n{err}");
    assert!(app_processes(&env).is_empty());
}

// `canary.interval = "0s"`: a hold of no time sees no request, and a hold that sees none aborts, so every
// canary with this config fails (exit 6) after starting the release. Like every other duration that can only
// fail at zero, it is refused where it is written.
#[test]
fn a_zero_canary_interval_is_refused_where_it_is_written() {
    let env = Env::new();
    env.write_config(&format!("{}\n[canary]\ninterval = \"0s\"\n", env.default_config()));
    let (code, out, err) = env.run(&["deploy", "--release", "v1", "--strategy", "canary", "--dry-run"]);
    assert_eq!(code, 2, "a zero canary.interval must be a config error:\n{out}\n{err}");
    assert!(err.contains("cutover.toml") && err.contains("interval"), "{err}");
}

// A CI runner or CodeDeploy agent behind a corporate proxy has `http_proxy` (or `ALL_PROXY`) in its
// environment, often without loopback in `no_proxy`. The health probes go to the app on this host's bind
// address; sent through the proxy they reach the proxy's host instead, and a healthy release fails its deploy
// (exit 3) while `status` calls the live one unhealthy.
#[test]
fn health_probes_never_go_through_a_proxy_from_the_environment() {
    let env = Env::new();
    let proxy = format!("http://127.0.0.1:{}", free_port()); // nothing listens there
    let run = |args: &[&str]| {
        let out = env
            .cutover()
            .args(args)
            .env("http_proxy", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("ALL_PROXY", &proxy)
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let text = env.default_config().replacen("deadline = \"15s\"", "deadline = \"3s\"", 1);
    env.write_config(&text);
    let (code, err) = run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "a healthy release failed its deploy with a proxy in the environment:\n{err}");
    assert_eq!(env.serving(), "v1");
    let (code, err) = run(&["status", "--check"]);
    assert_eq!(code, 0, "status --check with a proxy in the environment:\n{err}");
}

//! Blue/green deploys, rollbacks, status, render and history, end to end: the real binary, a real nginx under
//! a private prefix, real fixture app processes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn deploy_flip_and_rollback_restarts_the_stopped_release() {
    let env = Env::new();
    let (code, out, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with(&format!("live:     v1 on 127.0.0.1:{} (pid ", env.pool[0])), "{out}");
    for step in ["start", "health", "write", "validate", "reload", "drain"] {
        assert!(err.contains(&format!("cutover: {step:<9} ")), "no {step} line in:\n{err}");
    }
    assert_eq!(env.serving(), "v1");
    let v1_pid = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;

    let d2 = env.json(&["deploy", "--release", "v2"]);
    assert_eq!(d2["release"], "v2");
    assert_eq!(d2["from"], "v1");
    assert_eq!(d2["live"]["instances"][0]["port"], env.pool[1]);
    assert_eq!(d2["drained"], true);
    assert_eq!(env.serving(), "v2");
    assert!(!pid_alive(v1_pid), "v1 (pid {v1_pid}) still runs after the flip");
    assert_eq!(env.state()["previous"]["release"], "v1");
    assert_eq!(env.state()["previous"]["instances"][0]["pid"], serde_json::Value::Null);

    // v1 is not running any more: rollback restarts it, health-checks it, then flips.
    let rb = env.json(&["rollback"]);
    let steps: Vec<&str> = rb["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["start", "health", "write", "validate", "reload", "drain", "verify", "unlist", "stop"]);
    assert_eq!(env.serving(), "v1");

    let hist = env.json(&["history"]);
    let rows: Vec<(String, String, String)> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["release"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("deploy".into(), "v1".into(), "ok".into()),
            ("deploy".into(), "v2".into(), "ok".into()),
            ("rollback".into(), "v1".into(), "ok".into())
        ]
    );
    let text = env.ok(&["history"]);
    assert!(text.lines().next().unwrap().starts_with("at "), "{text}");
    assert!(text.contains("rollback    v1            v2            ok"), "{text}");
}

#[test]
fn rollback_to_a_kept_previous_release_is_a_flip_and_next_deploy_stops_it() {
    let env = Env::with(Opts { keep_previous: true, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    let st = env.state();
    let v1_pid = st["previous"]["instances"][0]["pid"].as_i64().expect("v1 kept running") as i32;
    assert!(pid_alive(v1_pid));
    assert_eq!(env.serving(), "v2");

    let rb = env.json(&["rollback"]);
    let steps: Vec<&str> = rb["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        steps,
        ["write", "validate", "reload", "drain", "verify"],
        "a kept release is switched to, not restarted"
    );
    assert_eq!(env.serving(), "v1");
    assert_eq!(rb["live"]["instances"][0]["pid"], v1_pid);
    // v2 is now the kept previous release; rolling back again flips back.
    let v2_pid = env.state()["previous"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    assert!(pid_alive(v2_pid));
    env.ok(&["rollback"]);
    assert_eq!(env.serving(), "v2");

    // The pool has two ports: v3 needs the idle previous release's port, so that one is stopped first.
    let d3 = env.json(&["deploy", "--release", "v3"]);
    assert_eq!(env.serving(), "v3");
    assert!(!pid_alive(v1_pid), "the older previous release is stopped by the next deploy");
    assert_eq!(d3["previous"]["release"], "v2");
}

#[test]
fn several_instances_start_and_flip_together() {
    let env = Env::with(Opts { instances: 2, pool_size: 4, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let up = env.upstream();
    for p in &env.pool[..2] {
        assert!(up.contains(&format!("    server 127.0.0.1:{p};  # v1\n")), "{up}");
    }
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (_, body) = env.get("/").unwrap();
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        ports.insert(v["port"].as_u64().unwrap() as u16);
    }
    assert_eq!(ports.into_iter().collect::<Vec<_>>(), env.pool[..2].to_vec());
    let d2 = env.json(&["deploy", "--release", "v2"]);
    assert_eq!(d2["live"]["instances"].as_array().unwrap().len(), 2);
    assert_eq!(d2["stopped"].as_array().unwrap().len(), 2);
    assert_eq!(env.serving(), "v2");
}

#[test]
fn unhealthy_release_exits_3_and_leaves_everything_as_it_was() {
    // A deadline far above what health.fail_after needs: the process is up and answers 503, so it fails after
    // 10 wrong answers, however slowly the machine starts it.
    let env = Env::with(Opts { deadline: "30s", ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    let state_before = env.state();
    env.flags("v2", "--fail-health");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error: new release v2 failed its health check; nginx and traffic untouched"), "{err}");
    // A process that is up and keeps answering 503 fails after health.fail_after probes, not at the deadline.
    assert!(
        err.contains(
            "answered 10 health probes in a row with the wrong answer (health.fail_after): GET http://127.0.0.1:"
        ),
        "{err}"
    );
    assert!(err.contains("status 503, expected 200"), "{err}");
    assert!(err.contains("    v2 \"GET /health HTTP/1.1\" 503"), "the app log lines are shown:\n{err}");
    assert_eq!(env.upstream(), before, "upstream file untouched");
    assert_eq!(env.serving(), "v1");
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok()),
        "v2 still listens"
    );
    let after = env.state();
    assert_eq!(after["live"], state_before["live"]);
    assert_eq!(after["in_progress"], serde_json::Value::Null);
    let last = env.json(&["history"]).as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "unhealthy");
    assert_eq!(last["exit_code"], 3);
}

#[test]
fn release_that_exits_at_start_fails_at_once() {
    let env = Env::with(Opts { deadline: "30s", ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--crash-after 0 --exit-code 7");
    let started = std::time::Instant::now();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("exited before it became healthy (exit status 7)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25), "did not wait for the 30 s deadline");
    assert_eq!(env.serving(), "v1");
}

#[test]
fn nginx_rejection_restores_the_upstream_byte_for_byte_and_exits_4() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    let tpl = env.path().join("broken.tera");
    std::fs::write(
        &tpl,
        "upstream {{ upstream }} {\n{% for s in servers %}    server {{ s.address }} bogus_flag;\n{% endfor %}}\n",
    )
    .unwrap();
    let cfg = env
        .default_config()
        .replace("prefix = \"nginx\"", &format!("prefix = \"nginx\"\ntemplate = \"{}\"", tpl.display()));
    env.write_config(&cfg);
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("error: nginx rejected the config"), "{err}");
    assert!(
        err.contains("[emerg]") && err.contains("invalid parameter \"bogus_flag\""),
        "nginx's own message is shown:\n{err}"
    );
    assert_eq!(env.upstream(), before, "previous upstream restored byte for byte");
    assert_eq!(
        names_in(&env.path().join("nginx/conf")),
        ["nginx.conf", "shop.upstream.conf"],
        "no candidate left on disk"
    );
    assert_eq!(env.serving(), "v1");
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok()),
        "v2 was stopped"
    );
    assert_eq!(env.state()["live"]["release"], "v1");
}

#[test]
fn reload_that_nginx_does_not_apply_is_detected_restored_and_exits_4() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    // A listen on a busy port: nginx -t passes and the reload signal is accepted, but the master keeps the old
    // config because it cannot bind.
    let busy = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let port = busy.local_addr().unwrap().port();
    let tpl = env.path().join("listen.tera");
    std::fs::write(
        &tpl,
        format!("{}\nserver {{ listen 127.0.0.1:{port}; return 204; }}\n", cutover_builtin_template()),
    )
    .unwrap();
    let cfg = env.default_config().replace(
        "prefix = \"nginx\"",
        &format!("prefix = \"nginx\"\ntemplate = \"{}\"\nconfirm_timeout = \"2s\"", tpl.display()),
    );
    env.write_config(&cfg);
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("nginx did not apply the reload: after 2s master"), "{err}");
    assert!(err.contains("Address already in use"), "nginx's error log is quoted:\n{err}");
    assert_eq!(env.upstream(), before);
    assert_eq!(env.serving(), "v1");
    assert_eq!(env.state()["live"]["release"], "v1");
    drop(busy);
}

fn cutover_builtin_template() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera")).unwrap()
}

#[test]
fn second_deploy_is_refused_with_exit_5_naming_the_holder_or_waits() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--start-delay 2");
    let mut first =
        env.cutover().args(["deploy", "--release", "v2"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let lock = env.path().join("state/shop/lock");
    assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(&lock)
        .map(|t| t.contains("\"pid\""))
        .unwrap_or(false)));
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&format!("another cutover run holds the lock for this app (held by pid {} (`", first.id())),
        "{err}"
    );
    assert!(err.contains("deploy --release v2`) since 20"), "{err}");
    let status = env.ok(&["status"]);
    assert!(status.contains(&format!("lock:      held by pid {}", first.id())), "{status}");
    // --lock-wait queues behind the running deploy instead.
    let (code, _, err) = env.run(&["deploy", "--release", "v3", "--lock-wait", "60s"]);
    assert_eq!(code, 0, "{err}");
    assert!(first.wait().unwrap().success());
    assert_eq!(env.serving(), "v3");
}

#[test]
fn lock_left_by_a_dead_process_is_taken_over_with_a_warning() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    std::fs::write(
        env.path().join("state/shop/lock"),
        r#"{"pid":999999,"command":"cutover deploy --release vX","since":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: took over the lock left by pid 999999 (`cutover deploy --release vX`) since 2026-01-01T00:00:00Z: that process is gone"), "{err}");
}

#[test]
fn values_that_would_reach_nginx_syntax_are_rejected_before_anything_runs() {
    let env = Env::new();
    let cases = [
        ("name = \"shop\"", "name = \"x; include /etc/shadow\"", "invalid app name \"x; include /etc/shadow\""),
        ("name = \"shop\"", "name = \"}\"", "invalid app name \"}\""),
        ("name = \"shop\"", "name = \"shop\\nserver 10.0.0.1:80;\"", "invalid app name"),
        ("[ports]\n", "[ports]\nbind = \"127.0.0.1:80; server 10.0.0.1\"\n", "invalid bind address"),
    ];
    for (from, to, msg) in cases {
        env.write_config(&env.default_config().replace(from, to));
        let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains("TOML parse error at line") && err.contains(msg), "{to}: {err}");
    }
    // A port written as text with a directive after it is not a port.
    let pool = format!("pool = [{}, {}]", env.pool[0], env.pool[1]);
    env.write_config(
        &env.default_config()
            .replace(&pool, &format!("pool = [\"{}; server 10.0.0.1:80\", {}]", env.pool[0], env.pool[1])),
    );
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TOML parse error at line 7, column 9"), "{err}");
    env.write_config(&env.default_config());
    for bad in ["v1; include /etc/shadow", "v1\nserver 10.0.0.1:80", "}", "$(id)"] {
        let (code, _, err) = env.run(&["deploy", "--release", bad]);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("invalid release"), "{err}");
    }
    assert!(!env.path().join("state/shop").exists(), "nothing ran: no state written");
    assert!(env.upstream().contains("nothing deployed"));
}

#[test]
fn unknown_or_malformed_config_names_file_line_and_column() {
    let env = Env::new();
    env.write_config(&env.default_config().replace("[health]\n", "[health]\nintervall = \"1s\"\n"));
    let (code, _, err) = env.run(&["status"]);
    assert_eq!(code, 2);
    let first = err.lines().next().unwrap();
    assert_eq!(first, format!("error: invalid config {}: TOML parse error at line 10, column 1", env.config.display()));
    assert!(err.contains("unknown field `intervall`"), "{err}");
    env.write_config(&env.default_config().replace("deadline = \"15s\"", "deadline = \"15 parsecs\""));
    let (code, _, err) = env.run(&["check"]);
    assert_eq!(code, 2);
    assert!(err.is_empty() || !err.contains("panicked"));
}

#[test]
fn state_is_private_and_symlinks_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let dir = env.path().join("state/shop");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&env.path().join("logs")), 0o700, "the app's output goes to runtime.log_dir, never the state dir");
    assert!(!dir.join("logs").exists());
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("history.jsonl")), 0o600);
    let elsewhere = env.path().join("elsewhere.json");
    std::fs::rename(dir.join("state.json"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("state.json")).unwrap();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_ne!(code, 0);
    assert!(err.contains("state.json: it is a symlink"), "{err}");
    // Restore so that the harness can stop v1.
    std::fs::remove_file(dir.join("state.json")).unwrap();
    std::fs::rename(&elsewhere, dir.join("state.json")).unwrap();
}

#[test]
fn render_diff_and_dry_run_change_nothing() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let rendered = env.ok(&["render"]);
    assert_eq!(rendered, env.upstream());
    assert_eq!(env.ok(&["render", "--diff"]), "", "no diff when disk matches state");

    let before = env.upstream();
    let state_before = env.state();
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("plan: deploy v2 (blue-green) for app shop\n"), "{out}");
    assert!(out.contains(&format!("  start 1 instance(s) of v2 on port {}\n", env.pool[1])), "{out}");
    assert!(
        out.contains(&format!(
            "-    server 127.0.0.1:{};  # v1\n+    server 127.0.0.1:{};  # v2\n",
            env.pool[0], env.pool[1]
        )),
        "{out}"
    );
    assert!(err.contains("dry run: nothing was started, written or reloaded"));
    assert_eq!(env.upstream(), before);
    assert_eq!(env.state(), state_before);
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "nothing started on the new port");

    // A hand edit shows up in render --diff and blocks deploys until --force.
    std::fs::write(env.upstream_path(), before.replace("zone shop 64k;", "zone shop 64k;\n    keepalive 8;")).unwrap();
    let diff = env.ok(&["render", "--diff"]);
    assert!(diff.contains("-    keepalive 8;\n"), "{diff}");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("was changed outside cutover; look at `cutover render --diff`, then run again with --force"),
        "{err}"
    );
    env.ok(&["deploy", "--release", "v2", "--force"]);
    assert_eq!(env.serving(), "v2");
}

#[test]
fn status_reports_live_state_and_check_exits_7_on_drift_or_dead_instance() {
    let env = Env::new();
    let (code, out, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 0, "nothing deployed is not drift: {out}");
    assert!(out.contains("live:      nothing deployed"));
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    let s = env.json(&["status"]);
    assert_eq!(s["app"], "shop");
    assert_eq!(s["live"]["release"], "v2");
    assert_eq!(s["live"]["weight"], 100);
    let inst = &s["live"]["instances"][0];
    assert_eq!(inst["port"], env.pool[1]);
    assert_eq!(inst["alive"], true);
    assert_eq!(inst["healthy"], true);
    assert!(inst["since"].as_str().unwrap().starts_with("20"));
    assert_eq!(s["previous"]["release"], "v1");
    assert_eq!(s["upstream_matches_state"], true);
    assert_eq!(s["lock"], serde_json::Value::Null);
    assert_eq!(s["last_event"]["release"], "v2");
    assert_eq!(s["last_event"]["outcome"], "ok");
    assert_eq!(env.run(&["status", "--check"]).0, 0);

    // Drift in the upstream file.
    let up = env.upstream();
    std::fs::write(env.upstream_path(), format!("{up}# edited\n")).unwrap();
    let (code, out, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7);
    assert!(out.contains("upstream:  DRIFT: the upstream file differs from what cutover last wrote"), "{out}");
    std::fs::write(env.upstream_path(), up).unwrap();
    assert_eq!(env.run(&["status", "--check"]).0, 0);

    // A live instance that died.
    let pid = s["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    kill(pid, 9);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)));
    let (code, out, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("NOT RUNNING"), "{out}");
    // The next deploy reports it and replaces it.
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("drift: live v2 on port {} (pid {pid}) is not running", env.pool[1])), "{err}");
    assert_eq!(env.serving(), "v3");
}

#[test]
fn rollback_to_a_release_from_history() {
    let env = Env::new();
    for r in ["v1", "v2", "v3"] {
        env.ok(&["deploy", "--release", r]);
    }
    let (code, _, err) = env.run(&["rollback", "--to", "v9"]);
    assert_eq!(code, 2);
    assert!(err.contains("release v9 was never live here"), "{err}");
    let (code, _, err) = env.run(&["rollback", "--to", "v3"]);
    assert_eq!(code, 8);
    assert!(err.contains("v3 is already live"), "{err}");
    env.ok(&["rollback", "--to", "v1"]);
    assert_eq!(env.serving(), "v1");
}

#[test]
fn a_killed_deploy_is_cleaned_up_by_the_next_run() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    env.flags("v2", "--start-delay 30");
    let mut child =
        env.cutover().args(["deploy", "--release", "v2"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    // Wait until the new instance is recorded with its pid (its start is recorded as intended first), then kill
    // cutover the hard way.
    assert!(wait_until(Duration::from_secs(10), || env.state()["in_progress"]["started"][0]["pid"].is_i64()));
    let leftover = env.state()["in_progress"]["started"][0]["pid"].as_i64().unwrap() as i32;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(pid_alive(leftover), "the app survives cutover's death (it runs in its own session)");
    let (code, out, _) = env.run(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("unfinished: deploy of v2"), "{out}");

    env.flags("v3", "");
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("did not finish; cleaning up after it"), "{err}");
    assert!(err.contains(&format!("stopped leftover v2 on port {}", env.pool[1])), "{err}");
    assert!(!pid_alive(leftover));
    assert_eq!(env.serving(), "v3");
    assert_ne!(env.upstream(), before);
}

#[test]
fn check_reports_each_item_with_a_fix() {
    let env = Env::new();
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}");
    for item in [
        "config",
        "trust",
        "nginx binary",
        "nginx -t",
        "nginx running",
        "upstream dir",
        "upstream included",
        "site",
        "nginx config",
        "canary setup",
        "state dir",
        "strategy",
        "ports",
        "ephemeral ports",
        "state shared",
        "time budget",
        "runtime",
        "app account",
        "disk",
    ] {
        assert!(out.contains(&format!("ok   {item:<18} ")), "{item}: {out}");
    }
    assert!(out.ends_with("ready to deploy\n"));
    // A busy pool port and an upstream file nginx does not include.
    let holder = std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).unwrap();
    let cfg = env
        .default_config()
        .replace("upstream_file = \"nginx/conf/shop.upstream.conf\"", "upstream_file = \"nginx/conf/other.conf\"");
    env.write_config(&cfg);
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("FAIL upstream included  "), "{out}");
    assert!(out.contains("fix: add `include "), "{out}");
    assert!(
        out.contains(&format!(
            "FAIL ports              1 of 2 pool port(s) free on 127.0.0.1; {} in use by pid {}",
            env.pool[1],
            std::process::id()
        )),
        "{out}"
    );
    let (code, out, _) = env.run(&["check", "--json"]);
    assert_eq!(code, 8);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["ready"], false);
    // Fifteen items (with the strategy's), two trust items (the config and the upstream file), and the runtime's
    // four: which runtime, the app's account, free space for state and for logs.
    assert_eq!(j["items"].as_array().unwrap().len(), 21);
    drop(holder);
}

#[test]
fn init_writes_a_config_that_loads_and_a_site_that_nginx_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("cutover.toml");
    let cutover = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
        c.env_remove("CUTOVER_CONFIG").arg("-c").arg(&cfg);
        c
    };
    let out = cutover()
        .args(["init", "--name", "web-app", "--server-name", "web-app.example.com", "--site"])
        .arg(d.join("site.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = cutover()
        .args(["init", "--name", "web-app", "--server-name", "web-app.example.com", "--site"])
        .arg(d.join("site.conf"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "init does not overwrite without --force");
    // The config it wrote loads; the upstream it renders and the site file pass a real nginx -t.
    let up = cutover().arg("render").output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    std::fs::write(d.join("web-app.upstream.conf"), &up.stdout).unwrap();
    let site = std::fs::read_to_string(d.join("site.conf"))
        .unwrap()
        .replace("/etc/nginx/cutover/", &format!("{}/", d.display()))
        .replace("/var/log/nginx/", &format!("{}/", d.display()))
        .replace("listen 80;", &format!("listen 127.0.0.1:{};", free_port()));
    assert!(site.contains("    location = /.cutover {"), "{site}");
    assert!(site.contains("access_log ") && site.contains(" cutover_web-app;"), "{site}");
    // The upstream file is kept out of conf.d/, which distributions' nginx.conf already includes by glob.
    let toml = std::fs::read_to_string(&cfg).unwrap();
    assert!(toml.contains("upstream_file = \"/etc/nginx/cutover/web-app.upstream.conf\""), "{toml}");
    std::fs::write(d.join("site.conf"), site).unwrap();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n    include {0}/site.conf;\n}}\n",
            d.display()
        ),
    )
    .unwrap();
    let t = Command::new(nginx_binary())
        .arg("-p")
        .arg(format!("{}/", d.display()))
        .args(["-t", "-c"])
        .arg(d.join("nginx.conf"))
        .output()
        .unwrap();
    assert!(t.status.success(), "nginx -t rejected init's files: {}", String::from_utf8_lossy(&t.stderr));
}

#[test]
fn a_deploy_killed_during_its_drain_leaves_state_true_and_the_next_run_finishes_the_stop() {
    let env = Env::with(Opts { pool_size: 3, keep_previous: true, ..Opts::default() });
    env.ok(&["deploy", "--release", "v0"]);
    env.ok(&["deploy", "--release", "v1"]);
    let v0 = env.state()["previous"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    assert!(pid_alive(v0), "v0 kept idle");
    // A long request keeps an old nginx worker (and so the drain) busy; kill cutover during that drain.
    let port = env.nginx_port;
    let long = std::thread::spawn(move || http_get(port, "/slow?ms=4000", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    let mut child =
        env.cutover().args(["deploy", "--release", "v2"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(20), || env.state()["live"]["release"] == "v2"), "v2 never went live");
    child.kill().unwrap();
    child.wait().unwrap();
    // State tells the truth at once: v2 live, v1 the previous release, v0 recorded as still to be stopped.
    let s = env.state();
    assert_eq!(s["previous"]["release"], "v1");
    assert_eq!(s["in_progress"]["to_stop"][0]["pid"], v0);
    assert!(pid_alive(v0));
    // The next run finishes the stop, then does its own job: a flip back to v1.
    let (code, _, err) = env.run(&["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped leftover v0 on port"), "{err}");
    assert!(!pid_alive(v0));
    assert_eq!(env.serving(), "v1");
    assert_eq!(long.join().unwrap().unwrap().0, 200, "the long request finished");
}

#[test]
fn the_app_survives_a_hangup_and_a_kill_of_the_deploying_jobs_process_group() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    // Like a CI job step or an SSH session: a shell in a process group of its own runs cutover and lives on;
    // the runner then hangs up and kills that whole group, as runners do to clean up after a job.
    let script = format!(
        "{} -c {} deploy --release v1 2>/dev/null; sleep 30",
        env!("CARGO_BIN_EXE_cutover"),
        env.config.display()
    );
    let mut job = Command::new("sh").arg("-c").arg(script).process_group(0).spawn().unwrap();
    let state_file = env.path().join("state/shop/state.json");
    let done = || {
        let Ok(text) = std::fs::read_to_string(&state_file) else { return false };
        let s: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        s["live"]["release"] == "v1" && s["in_progress"].is_null()
    };
    assert!(wait_until(Duration::from_secs(20), done), "v1 never went live");
    let pid = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let (pgid, sid): (i32, i32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!((pgid, sid), (pid, pid), "the app leads its own session and process group");
    let group = job.id() as i32;
    for sig in [1, 9] {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg("--").arg(format!("-{group}")).status();
    }
    let _ = job.wait();
    std::thread::sleep(Duration::from_millis(200));
    assert!(pid_alive(pid), "the app died with the job's process group");
    assert_eq!(env.serving(), "v1");
}

fn with_confirm_url(env: &Env) {
    let url = format!("http://127.0.0.1:{}/.cutover", env.nginx_port);
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[nginx]\n", &format!("[nginx]\nconfirm_url = \"{url}\"\n"));
    env.write_config(&cfg);
}

#[test]
fn a_reload_counts_once_nginx_answers_with_the_new_generation_marker() {
    let env = Env::with(Opts {
        server_extra: "        location = /.cutover { return 200 \"$cutover_shop_generation\\n\"; }".into(),
        ..Opts::default()
    });
    with_confirm_url(&env);
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("new workers up, http://127.0.0.1:{}/.cutover answers generation 1)", env.nginx_port)),
        "{err}"
    );
    assert_eq!(env.get("/.cutover").unwrap(), (200, "1\n".to_string()));
    // The flip (generation 2), then the old release leaves the backup list once verified (generation 3).
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(env.get("/.cutover").unwrap(), (200, "3\n".to_string()));
    assert_eq!(env.state()["generation"], 3);
}

#[test]
fn a_site_that_does_not_serve_the_new_generation_is_not_confirmed_restored_and_exits_4() {
    // The marker the site exposes never changes, as when the site includes some other copy of the upstream.
    let env = Env::with(Opts {
        server_extra: "        location = /.cutover { return 200 \"0\"; }".into(),
        ..Opts::default()
    });
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    with_confirm_url(&env);
    let text =
        std::fs::read_to_string(&env.config).unwrap().replace("[nginx]\n", "[nginx]\nconfirm_timeout = \"1s\"\n");
    env.write_config(&text);
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "nginx did not serve the new upstream: after 1s http://127.0.0.1:{}/.cutover should answer generation 2, but it answered \"0\"",
            env.nginx_port
        )),
        "{err}"
    );
    assert_eq!(env.upstream(), before, "previous upstream restored byte for byte");
    assert_eq!(env.serving(), "v1");
    assert_eq!(env.state()["live"]["release"], "v1");
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "v2 was stopped");
}

#[test]
fn redeploying_the_live_release_restarts_it_and_keeps_the_previous_release() {
    let env = Env::with(Opts { pool_size: 3, keep_previous: true, ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    let old_v2 = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let v1 = env.state()["previous"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("v2 is already live: redeploying it on fresh instances (a restart)"), "{err}");
    let s = env.state();
    assert_eq!(s["live"]["release"], "v2");
    assert_ne!(s["live"]["instances"][0]["pid"], old_v2, "a fresh instance");
    assert!(!pid_alive(old_v2), "the replaced instance was stopped, not kept as a 'previous' copy of v2");
    assert_eq!(s["previous"]["release"], "v1", "the rollback target is still v1");
    assert!(pid_alive(v1), "and it is still running idle");
    let (code, _, err) = env.run(&["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(still running: flip only)"), "{err}");
    assert_eq!(env.serving(), "v1");
    // A rolling deploy replaces in place: the kept previous release (v2) is stopped first, not kept.
    let v2 = env.state()["previous"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let (code, _, err) = env.run(&["deploy", "--release", "v3", "--strategy", "rolling"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("deploy.keep_previous does not apply to --strategy rolling"), "{err}");
    assert_eq!(env.serving(), "v3");
    assert!(!pid_alive(v2));
    assert_eq!(env.state()["previous"]["release"], "v1");
}

#[test]
fn recovery_reloads_and_waits_for_the_killed_runs_workers_before_stopping_its_leftovers() {
    // A redeploy of the live release killed during its drain: the file on disk already matches state, but
    // nginx's old workers still carry a request to the replaced instance. The next run must not stop that
    // instance before those workers are gone.
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let old = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap();
    let port = env.nginx_port;
    // A slow upload: nginx buffers the body and connects to the app only once it is complete, so an app stopped
    // meanwhile turns it into a 502.
    let long = std::thread::spawn(move || slow_upload(port, 30, Duration::from_millis(100)));
    std::thread::sleep(Duration::from_millis(300));
    let mut child =
        env.cutover().args(["deploy", "--release", "v1"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || env.state()["live"]["instances"][0]["pid"].as_i64() != Some(old)),
        "the redeploy never flipped"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.state()["in_progress"]["to_stop"][0]["pid"], old, "the replaced instance is recorded to stop");
    // Any command that takes the lock recovers first; `rollback` then finds no previous release (this one
    // starts nothing, so no new instance can take the stopped one's port and hide a lost request).
    let (code, _, err) = env.run(&["rollback"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("nginx reloaded and confirmed on what is live"), "{err}");
    assert!(err.contains("stopped leftover v1 on port"), "{err}");
    let (status, body) = long.join().unwrap().expect("the upload failed");
    assert_eq!((status, release_of(&body)), (200, "v1".to_string()), "{body}");
    assert!(!pid_alive(old as i32));
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(env.serving(), "v2");
}

#[test]
fn an_undo_whose_reload_fails_too_leaves_the_operation_for_the_next_run() {
    // The reload command works once, then fails while `fail-second` exists; the site's generation marker never
    // changes, so the first reload is not confirmed and the undo needs the second.
    let env = Env::with(Opts {
        server_extra: "        location = /.cutover { return 200 \"0\"; }".into(),
        ..Opts::default()
    });
    let d = env.path().display().to_string();
    let script = format!(
        "[ -e {d}/reloaded-once ] && [ -e {d}/fail-second ] && exit 1; touch {d}/reloaded-once; \
         kill -HUP $(cat {d}/nginx/logs/nginx.pid)"
    );
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[nginx]\n", &format!("[nginx]\nreload = [\"sh\", \"-c\", {script:?}]\nconfirm_timeout = \"1s\"\n"));
    env.write_config(&cfg);
    env.ok(&["deploy", "--release", "v1"]);
    std::fs::remove_file(env.path().join("reloaded-once")).unwrap();
    std::fs::write(env.path().join("fail-second"), "").unwrap();
    let url = format!("http://127.0.0.1:{}/.cutover", env.nginx_port);
    let with_url = cfg.replace("[nginx]\n", &format!("[nginx]\nconfirm_url = \"{url}\"\n"));
    env.write_config(&with_url);

    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the next cutover command will reload, confirm and clean up"), "{err}");
    let s = env.state();
    assert_eq!(s["live"]["release"], "v1");
    let v2 = s["in_progress"]["started"][0]["pid"].as_i64().expect("the operation stays recorded") as i32;
    assert!(pid_alive(v2), "v2 is not stopped while nginx may still route to it");
    let (_, out, _) = env.run(&["status"]);
    assert!(out.contains("unfinished: deploy of v2"), "{out}");

    // Once nginx can be reloaded again, the next command finishes the undo before doing its own work.
    std::fs::remove_file(env.path().join("fail-second")).unwrap();
    env.write_config(&cfg);
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nginx reloaded and confirmed on what is live"), "{err}");
    assert!(err.contains("stopped leftover v2 on port"), "{err}");
    assert!(!pid_alive(v2));
    assert_eq!(env.serving(), "v3");
}

#[test]
fn a_reader_that_stops_reading_is_not_an_error() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    for args in [&["render"][..], &["history"], &["status"], &["history", "--json"]] {
        let mut child = env
            .cutover()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // like `| head -0`: the pipe is closed before cutover writes
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "cutover {args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "cutover {args:?}: {err}");
    }
}

#[test]
fn a_release_whose_directory_is_missing_is_refused_before_anything_starts_and_dry_run_says_so() {
    let env = Env::new();
    let releases = env.path().join("releases");
    std::fs::create_dir_all(releases.join("v1")).unwrap();
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[ports]\n", &format!("release_dir = \"{}/{{{{release}}}}\"\n\n[ports]\n", releases.display()));
    env.write_config(&cfg);
    env.ok(&["deploy", "--release", "v1"]);
    let (code, out, _) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains(&format!(
            "  WOULD REFUSE (exit 8): release v2 is not on this host: {}/v2 does not exist",
            releases.display()
        )),
        "{out}"
    );
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("stage the release there first"), "{err}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "nothing started");
    std::fs::create_dir_all(releases.join("v2")).unwrap();
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(env.serving(), "v2");
}

// The usual layout without `app.release_dir`: the app runs in its release's directory (`app.workdir =
// ".../releases/{{release}}"`) and `app.start` names no path. A release that was never staged there cannot
// start; it is refused like a missing `release_dir` (exit 8, nothing started), and the dry run says so.
#[test]
fn a_release_whose_workdir_is_missing_is_refused_before_anything_starts_and_dry_run_says_so() {
    let env = Env::new();
    let releases = env.path().join("releases");
    std::fs::create_dir_all(releases.join("v1")).unwrap();
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[ports]\n", &format!("workdir = \"{}/{{{{release}}}}\"\n\n[ports]\n", releases.display()));
    env.write_config(&cfg);
    env.ok(&["deploy", "--release", "v1"]);
    let (dry, out, _) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "a release that is not staged is refused (exit 8):\n{err}");
    assert_eq!(dry, code, "the dry run predicted exit {dry}:\n{out}");
    assert!(err.contains(&format!("{}/v2 does not exist", releases.display())), "{err}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "nothing started");
    assert!(env.state()["in_progress"].is_null());
    std::fs::create_dir_all(releases.join("v2")).unwrap();
    env.ok(&["deploy", "--release", "v2"]);
    assert_eq!(env.serving(), "v2");
}

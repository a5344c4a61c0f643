//! Faults and bad input found by fault injection, each reproduced through the real binary against a real nginx:
//! never signal what isn't ours, never lose a request after the flip, never get stuck, and say so honestly.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A process that is not ours, for cutover to leave alone: `sleep` for a while.
fn bystander() -> std::process::Child {
    Command::new("sleep").arg("120").spawn().unwrap()
}

fn set_config(env: &Env, from: &str, to: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    env.write_config(&text.replacen(from, to, 1));
}

fn history(env: &Env) -> Vec<Value> {
    env.json(&["history", "-n", "100"]).as_array().unwrap().clone()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// 1. A stale nginx pid file that names a live process which is not nginx.
#[test]
fn a_pid_file_naming_a_process_that_is_not_nginx_is_refused_before_anything_is_signalled() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let master = env.master_pid().unwrap();
    kill(master, 3);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(master)));
    let mut other = bystander();
    let pid_file = env.path().join("nginx/logs/nginx.pid");
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();

    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "error: the nginx pid file {} names pid {}, which is not an nginx master but `sleep 120`",
            pid_file.display(),
            other.id()
        )),
        "{err}"
    );
    assert!(pid_alive(other.id() as i32), "the process behind the stale pid file was signalled");
    assert!(!listening(env.pool[1]), "nothing was started");
    let (code, out, _) = env.run(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("FAIL nginx running      the nginx pid file"), "{out}");
    let _ = other.kill();
    let _ = other.wait();
    let _ = std::fs::remove_file(&pid_file);
}

// 2. A state or log directory another user owns, and a symlink planted where cutover writes a log.
#[test]
fn directories_of_another_user_and_planted_symlinks_are_refused() {
    use std::os::unix::fs::chown;
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let state_dir = env.path().join("state/shop");
    chown(&state_dir, Some(65534), None).unwrap();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains(&format!("refusing to use {}: it is owned by uid 65534", state_dir.display())), "{err}");
    assert!(err.contains(&format!("Fix: `chown -R 0 {}`", state_dir.display())), "{err}");
    chown(&state_dir, Some(0), None).unwrap();

    // The log directory: owned by someone else, refused; a symlink planted at the next log file, not followed.
    let logs = env.path().join("logs");
    chown(&logs, Some(65534), None).unwrap();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains(&format!("refusing to use {}: it is owned by uid 65534", logs.display())), "{err}");
    chown(&logs, Some(0), None).unwrap();
    let target = env.path().join("root-only");
    std::fs::write(&target, "secret\n").unwrap();
    std::os::unix::fs::symlink(&target, logs.join(format!("v2-{}.log", env.pool[1]))).unwrap();
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("(a symlink there is refused)"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n", "nothing was appended through the link");
    assert_eq!(env.serving(), "v1");
    assert!(!listening(env.pool[1]));
}

// 3. A pid recorded without its start time: no proof it is ours, so never signalled.
#[test]
fn a_pid_without_its_start_time_is_reported_and_never_signalled() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let v1 = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let mut other = bystander();
    let path = env.path().join("state/shop/state.json");
    let mut s = env.state();
    let i = &mut s["live"]["instances"][0];
    i["pid"] = serde_json::json!(other.id());
    i["start_ticks"] = Value::Null;
    i["marker"] = Value::Null;
    std::fs::write(&path, serde_json::to_string_pretty(&s).unwrap()).unwrap();

    let (code, out, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("its start time was never recorded"), "{out}");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("pid {} (sleep) was recorded without its start time", other.id())), "{err}");
    assert!(err.contains("not signalled: stop it yourself if it is"), "{err}");
    assert!(pid_alive(other.id() as i32), "cutover signalled a process it could not prove was its own");
    assert_eq!(env.serving(), "v2");
    let _ = other.kill();
    let _ = other.wait();
    kill(v1, 9);
}

// 4. Apps that send themselves to the background.
#[test]
fn a_start_command_that_backgrounds_the_app_is_refused_and_a_daemon_is_found_and_stopped() {
    let env = Env::new();
    let good = std::fs::read_to_string(&env.config).unwrap();
    set_config(&env, "2>/dev/null)\"", "2>/dev/null) &\"");
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TOML parse error at line 3") && err.contains("app.start ends with `&`"), "{err}");
    assert!(err.contains("run it in the foreground (`exec app --port {{port}}`"), "{err}");
    env.write_config(&good);
    env.ok(&["deploy", "--release", "v1"]);

    // An app that forks twice and leaves its session: the shell exits 0 at once.
    env.flags("v2", "--daemonize");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("exited before it became healthy (exit status 0)"), "{err}");
    assert!(err.contains("left processes running outside its process group (pid "), "{err}");
    assert!(wait_until(Duration::from_secs(5), || !listening(env.pool[1])), "the daemon still serves");
    assert_eq!(env.serving(), "v1");

    // A shell that puts the app in the background and exits: its process group lives on and is stopped.
    set_config(&env, "start = \"exec python3", "start = \"python3");
    set_config(&env, "2>/dev/null)\"", "2>/dev/null) & sleep 0.1\"");
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("exited before it became healthy (exit status 0)"), "{err}");
    assert!(wait_until(Duration::from_secs(5), || !listening(env.pool[1])), "the backgrounded app still serves");
    assert_eq!(env.serving(), "v1");
}

// 5 and 15. A run killed during its drain with keep_previous = false: `cutover recover` stops the old release,
// and history records the interruption.
#[test]
fn recover_finishes_a_run_killed_during_its_drain_and_history_says_it_was_interrupted() {
    let env = Env::new();
    let (code, out, _) = env.run(&["recover"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to recover"), "{out}");
    env.ok(&["deploy", "--release", "v1"]);
    let v1 = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let port = env.nginx_port;
    let long = std::thread::spawn(move || http_get(port, "/slow?ms=4000", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    let mut child = env.cutover().args(["deploy", "--release", "v2"]).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(20), || env.state()["live"]["release"] == "v2"), "v2 never went live");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.state()["in_progress"]["to_stop"][0]["pid"], v1, "v1 is recorded to stop");
    assert!(pid_alive(v1));

    let (code, out, err) = env.run(&["recover"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("recovered: the unfinished operation was cleaned up"), "{out}");
    assert!(err.contains("stopped leftover v1 on port"), "{err}");
    assert!(!pid_alive(v1), "the old release of the killed run is stopped");
    assert_eq!(long.join().unwrap().unwrap().0, 200, "the request in flight finished");
    assert_eq!(env.serving(), "v2");
    let last = history(&env).last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["release"].as_str(), last["outcome"].as_str()),
        (Some("deploy"), Some("v2"), Some("interrupted"))
    );
    assert!(last["message"].as_str().unwrap().contains("cleaned up by `cutover recover`"), "{last}");
    let (code, out, _) = env.run(&["recover"]);
    assert_eq!((code, out.trim()), (0, "nothing to recover: no unfinished operation"));
    env.ok(&["status", "--check"]);
}

// 6. Progress to a closed stderr.
#[test]
fn a_closed_stderr_does_not_stop_a_deploy_half_way() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let mut child =
        env.cutover().args(["deploy", "--release", "v2"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stderr.take()); // like `2>&1 | head -1` once head has exited
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.serving(), "v2");
    assert_eq!(env.state()["in_progress"], Value::Null);
}

// 7. A release that passes its health check and dies a second later, under load.
#[test]
fn a_release_that_dies_after_the_switch_is_switched_back_without_losing_a_request() {
    let env = Env::with(Opts { verify: "4s", ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--crash-after 1.5");
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--json"]);
    let releases = assert_no_loss(&stop, handles, &tally, "4 clients, a release that dies 1.5 s after starting", 100);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error: release v2 failed after the switch: v2 on port"), "{err}");
    assert!(err.contains("traffic is back on v1 and v2 is stopped"), "{err}");
    assert!(releases.contains_key("v2"), "v2 served before it died: {releases:?}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["exit_code"].as_i64()), (Some(false), Some(3)));
    assert_eq!(doc["outcome"], "failed-after-switch");
    assert_eq!(env.serving(), "v1");
    assert_eq!(history(&env).last().unwrap()["outcome"], "failed-after-switch");
    env.ok(&["status", "--check"]);
}

// 8. One torn line in history.jsonl.
#[test]
fn a_torn_history_line_is_skipped_with_a_warning() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2"]);
    let path = env.path().join("state/shop/history.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"at\":\"2026-11-30T10:").unwrap();
    drop(f);
    for args in [&["status"][..], &["status", "--check"], &["history"]] {
        let (code, _, err) = env.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(err.contains("warning: skipped 1 unreadable line(s) of"), "{args:?}: {err}");
    }
    let (code, _, err) = env.run(&["rollback", "--to", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(env.serving(), "v1");
    assert_eq!(history(&env).len(), 3, "the events around the torn line are all there");
}

// A torn or hand-broken state.json is a host cutover must not act on (it cannot know what runs): every command
// that reads state refuses with exit 8 and says how to fix it; nothing is started, stopped or reloaded.
#[test]
fn an_unreadable_state_file_is_refused_with_exit_8_and_nothing_changes() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let path = env.path().join("state/shop/state.json");
    let good = std::fs::read_to_string(&path).unwrap();
    // Put the state back when the test ends, passed or not, so that the Env's cleanup finds v1 to stop.
    struct Restore(std::path::PathBuf, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, &self.1);
        }
    }
    let _restore = Restore(path.clone(), good);
    std::fs::write(&path, "{\"version\": 1, \"app\": \"shop\", \"live\": {\"rel").unwrap();
    let upstream = env.upstream();
    for args in [&["deploy", "--release", "v2"][..], &["rollback"], &["status"], &["status", "--check"], &["recover"]] {
        let (code, _, err) = env.run(args);
        assert_eq!(code, 8, "{args:?}: {err}");
        assert!(err.contains(&format!("could not parse {}", path.display())), "{args:?}: {err}");
        assert!(err.contains("fix or move it away"), "{args:?}: {err}");
    }
    assert_eq!(env.upstream(), upstream, "the upstream file changed");
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "v2 was started");
    assert_eq!(env.serving(), "v1");
    drop(_restore);
    env.ok(&["status", "--check"]);
}

// 9. Absurd or zero durations, and statuses outside HTTP's range.
#[test]
fn absurd_durations_are_refused_where_they_are_written() {
    let env = Env::new();
    let good = std::fs::read_to_string(&env.config).unwrap();
    for (from, to, msg) in [
        ("drain_timeout = \"10s\"", "drain_timeout = \"18446744073709551615s\"", "invalid duration"),
        ("deadline = \"15s\"", "deadline = \"0s\"", "must be above 0"),
        ("[health]\n", "[health]\nexpect_status = 700\n", "invalid HTTP status 700: use 100 to 599"),
        ("[nginx]\n", "[nginx]\nconfirm_timeout = \"0s\"\n", "must be above 0"),
    ] {
        env.write_config(&good.replacen(from, to, 1));
        let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains("TOML parse error at line") && err.contains(msg), "{to}: {err}");
    }
    env.write_config(&good);
    let (code, _, err) = env.run(&["deploy", "--release", "v1", "--lock-wait", "18446744073709551615s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value '18446744073709551615s' for '--lock-wait <DURATION>'"), "{err}");
    assert!(!env.path().join("state/shop").exists(), "nothing ran");
}

// 10. state.json deleted while a release is live.
#[test]
fn a_deleted_state_while_a_release_is_live_is_drift_and_deploy_refuses_without_force() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let v1 = env.state()["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    std::fs::remove_file(env.path().join("state/shop/state.json")).unwrap();
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(err.contains("says v1 is live: state.json was deleted or moved"), "{err}");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("state.json was deleted or moved; put it back, or run with --force"), "{err}");
    assert_eq!(env.serving(), "v1", "nothing changed");
    env.ok(&["deploy", "--release", "v2", "--force"]);
    assert_eq!(env.serving(), "v2");
    kill(v1, 9);
}

// 11. What `status --check` fails on.
#[test]
fn status_check_fails_on_an_unfinished_operation_an_unwatched_canary_and_a_dead_nginx() {
    let env = Env::with(Opts {
        access_log: true,
        extra: "[canary]\nsteps = [10, 100]\ninterval = \"30s\"\nmin_requests = 1\naccess_log = \"nginx/logs/shop.cutover.log\"\n"
            .into(),
        ..Opts::default()
    });
    env.ok(&["deploy", "--release", "v1"]);
    // An automatic canary whose deploy is killed during its hold: nobody analyses it any more.
    let mut child = env
        .cutover()
        .args(["deploy", "--release", "v2", "--strategy", "canary"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || env.state()["canary"]["weight"] == 10), "the canary never started");
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out, _) = env.run(&["status", "--check", "--json"]);
    assert_eq!(code, 7, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let problems: Vec<&str> = doc["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        problems.iter().any(|p| p.contains("(pid") && p.contains("did not finish; `cutover recover` cleans up")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("the automatic canary of v2 at 10% is not being analysed")),
        "{problems:?}"
    );
    // Recovery ends the operation; the canary stays recorded at its step and is still unwatched.
    env.ok(&["recover"]);
    let (code, _, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 7);
    assert!(err.contains("not being analysed"), "{err}");
    env.ok(&["abort"]);
    env.ok(&["status", "--check"]);
    // nginx gone.
    let master = env.master_pid().unwrap();
    kill(master, 3);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(master)));
    let (code, out, err) = env.run(&["status", "--check"]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("nginx:     NOT RUNNING: nginx is not running: "), "{out}");
    assert!(err.contains("status --check failed"), "{err}");
}

// 12. A hook that hangs.
#[test]
fn a_hook_that_hangs_is_killed_at_hooks_timeout_and_the_lock_is_free() {
    let env = Env::with(Opts {
        extra: "[hooks]\nbefore_start = \"sleep 31.5\"\ntimeout = \"1s\"\n".into(),
        ..Opts::default()
    });
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("hook before_start (\"sleep 31.5\") was still running after hooks.timeout 1s: killed"),
        "{err}"
    );
    let hung = std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("sleep\u{0}31.5"))
    });
    assert!(!hung, "the hook's process is still running");
    assert!(env.ok(&["status"]).contains("lock:      free"));
    assert!(!listening(env.pool[0]), "nothing started after a failed before_start");
}

// 13. Honest exit codes: nginx stopped mid-deploy (4); a missing or broken template and an upstream file in a
// directory that does not exist (2, before anything starts).
#[test]
fn nginx_gone_mid_deploy_is_exit_4_and_template_or_path_mistakes_are_exit_2() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--start-delay 1.5");
    let child = env
        .cutover()
        .args(["deploy", "--release", "v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || env.state()["in_progress"]["started"][0]["pid"].is_i64()));
    let master = env.master_pid().unwrap();
    kill(master, 3);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("error: nginx is not running: "), "{err}");
    assert!(wait_until(Duration::from_secs(5), || !listening(env.pool[1])), "v2 was not undone");

    let env = Env::new();
    let good = std::fs::read_to_string(&env.config).unwrap();
    for (extra, msg) in [
        ("template = \"missing.tera\"", "could not read nginx.template"),
        ("template = \"broken.tera\"", "invalid upstream template (nginx.template)"),
    ] {
        std::fs::write(env.path().join("broken.tera"), "upstream {{ app }} {% if %}").unwrap();
        env.write_config(&good.replacen("[nginx]\n", &format!("[nginx]\n{extra}\n"), 1));
        let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(err.contains(msg), "{extra}: {err}");
    }
    env.write_config(&good.replace("nginx/conf/shop.upstream.conf", "nowhere/shop.upstream.conf"));
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("is in a directory that does not exist: create {}/nowhere", env.path().display())),
        "{err}"
    );
    assert!(!listening(env.pool[0]), "nothing started");
}

// An empty path (`upstream_file = ""`, `template = ""`, …) would resolve to the config's own directory: it is a
// config error at its line, before anything runs.
#[test]
fn an_empty_path_in_the_config_is_a_config_error_at_its_line() {
    let env = Env::new();
    let good = std::fs::read_to_string(&env.config).unwrap();
    let upstream_line = good.lines().position(|l| l.starts_with("upstream_file")).unwrap() + 1;
    for (from, to, line) in [
        ("upstream_file = \"nginx/conf/shop.upstream.conf\"", "upstream_file = \"\"", upstream_line),
        ("[nginx]\n", "[nginx]\ntemplate = \"\"\n", good.lines().position(|l| l == "[nginx]").unwrap() + 2),
    ] {
        env.write_config(&good.replacen(from, to, 1));
        let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains(&format!("line {line}")), "{to}: {err}");
        assert!(err.contains("an empty path"), "{to}: {err}");
        assert!(!listening(env.pool[0]), "nothing started");
    }
}

// 14. --json on failure.
#[test]
fn json_output_is_one_document_on_failure_too() {
    let env = Env::with(Opts { deadline: "1s", ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--fail-health");
    let (code, out, _) = env.run(&["deploy", "--release", "v2", "--json"]);
    assert_eq!(code, 3);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"));
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["command"], "deploy");
    assert_eq!(doc["outcome"], "unhealthy");
    assert_eq!(doc["live"]["release"], "v1");
    assert!(doc["error"].as_str().unwrap().starts_with("new release v2 failed its health check"), "{doc}");
    assert!(doc["steps"].as_array().unwrap().iter().any(|s| s["name"] == "health"), "{doc}");
    let (code, out, _) = env.run(&["rollback", "--json"]);
    assert_eq!(code, 8);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["exit_code"].as_i64()), (Some(false), Some(8)));
}

// 16. The log excerpt of a failed start shows the first error, not only the last lines.
#[test]
fn a_failed_start_shows_the_first_error_looking_lines_of_its_output() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--noisy-crash");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("exited before it became healthy (exit status 1)"), "{err}");
    let first = err.find("first error-looking lines:").expect(&err);
    let tb = err.find("Traceback (most recent call last):").expect(&err);
    let cause = err.find("RuntimeError: database url is not set").expect(&err);
    let last = err.find("last lines:").expect(&err);
    assert!(first < tb && tb < cause && cause < last, "{err}");
    assert!(err.contains("shutting down: closing pool 39"), "{err}");
    assert!(!err.contains("closing pool 5\n"), "only the last lines of the noise: {err}");
}

// A pid file that names a running nginx master, but another nginx's (a second nginx on the host, a pid_file
// copied from another setup): cutover reloaded that one, saw its new workers, drained them, and stopped the old
// release while the nginx that routes this app never reloaded; every request was a 502 from then on, exit 0.
// The master's command line says which config it runs (`-p`, `-c`): one that is not this config's is refused.
#[test]
fn a_pid_file_naming_another_nginxs_master_is_refused_before_anything_is_signalled() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    // A second private nginx with a config of its own.
    let other = Env::new();
    let other_pid = other.master_pid().unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap().replacen(
        "conf = \"conf/nginx.conf\"",
        &format!("conf = \"conf/nginx.conf\"\npid_file = \"{}\"", other.path().join("nginx/logs/nginx.pid").display()),
        1,
    );
    env.write_config(&text);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 100_000, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let t = tally.lock().unwrap();
    println!("{} requests, {} non-2xx, {} errors; deploy exited {code}", t.requests, t.non_2xx.len(), t.errors.len());
    assert!(
        t.non_2xx.is_empty() && t.errors.is_empty(),
        "the deploy exited {code} and requests failed through the nginx that routes the app: {:?}\n{err}",
        &t.non_2xx[..t.non_2xx.len().min(3)]
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&other_pid.to_string()), "the refusal names the master it found:\n{err}");
    assert_eq!(env.serving(), "v1");
}

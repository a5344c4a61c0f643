//! The canary strategy against a real nginx: weighted steps measured through nginx, manual driving
//! (promote, canary set, abort, rollback), access-log analysis that aborts with exit 6, a canary that dies
//! during its hold, sticky splits and the tester header, and failures that restore the previous step.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A `[canary]` section; the access log path is the one the test nginx writes (relative to the config).
fn canary_section(interval: &str, more: &str) -> String {
    format!(
        "\n[canary]\nsteps = [10, 50, 100]\ninterval = \"{interval}\"\nmin_requests = 20\nmax_error_rate = 0.05\n\
         access_log = \"nginx/logs/shop.cutover.log\"\n{more}\n"
    )
}

fn canary_env(interval: &str, more: &str) -> Env {
    Env::with(Opts { access_log: true, extra: canary_section(interval, more), ..Opts::default() })
}

/// Send `n` requests through nginx from 4 threads; count answers by release. Panics on any failure.
fn shares(env: &Env, n: usize) -> BTreeMap<String, u64> {
    let port = env.nginx_port;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut m: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..n / 4 {
                    let (status, body) = http_get(port, "/", Duration::from_secs(10)).expect("request failed");
                    assert_eq!(status, 200, "{body}");
                    *m.entry(release_of(&body)).or_default() += 1;
                }
                m
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn pct(m: &BTreeMap<String, u64>, release: &str) -> f64 {
    let total: u64 = m.values().sum();
    100.0 * *m.get(release).unwrap_or(&0) as f64 / total as f64
}

fn last_event(env: &Env) -> serde_json::Value {
    let h = env.json(&["history"]);
    h.as_array().unwrap().last().unwrap().clone()
}

#[test]
fn manual_canary_weights_are_accurate_through_nginx_and_promote_steps_to_live() {
    let env = canary_env("manual", "");
    env.ok(&["deploy", "--release", "v1"]);
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("canary:   v2 on 127.0.0.1:"), "{out}");
    assert!(out.contains("with 10% of traffic"), "{out}");
    assert!(out.contains("next:     `cutover promote` (50%)"), "{out}");
    let up = env.upstream();
    assert!(up.contains("weight=9;  # v1\n"), "{up}");
    assert!(!up.contains("weight=0"), "{up}");

    let at10 = shares(&env, 2000);
    let p10 = pct(&at10, "v2");
    println!("canary share at 10%: {p10:.2}% of 2000 ({at10:?})");
    assert!((p10 - 10.0).abs() <= 2.0, "canary share {p10}% at 10%: {at10:?}");

    let s = env.json(&["status"]);
    assert_eq!(s["live"]["release"], "v1");
    assert_eq!(s["live"]["weight"], 90);
    assert_eq!(s["canary"]["release"], "v2");
    assert_eq!(s["canary"]["weight"], 10);
    assert_eq!(s["upstream_matches_state"], true);

    env.ok(&["canary", "set", "30"]);
    let at30 = shares(&env, 2000);
    let p30 = pct(&at30, "v2");
    println!("canary share at 30% (canary set): {p30:.2}% of 2000");
    assert!((p30 - 30.0).abs() <= 2.0, "{at30:?}");

    // From a hand-set weight, promote goes to the next configured step above it.
    let p = env.json(&["promote"]);
    assert_eq!(p["canary"]["weight"], 50);
    let at50 = shares(&env, 2000);
    let p50 = pct(&at50, "v2");
    println!("canary share at 50%: {p50:.2}% of 2000");
    assert!((p50 - 50.0).abs() <= 2.0, "{at50:?}");

    let v1_pid = s["live"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let done = env.json(&["promote"]);
    assert_eq!(done["live"]["release"], "v2");
    assert_eq!(done["drained"], true);
    assert!(!pid_alive(v1_pid), "the stable release was stopped after the drain");
    let at100 = shares(&env, 400);
    assert_eq!(at100.keys().collect::<Vec<_>>(), vec!["v2"], "{at100:?}");
    let s = env.json(&["status", "--check"]);
    assert_eq!(s["canary"], serde_json::Value::Null);
    assert_eq!(s["previous"]["release"], "v1");
    assert_eq!(last_event(&env)["kind"], "promote");
    assert_eq!(last_event(&env)["outcome"], "ok");
}

#[test]
fn automatic_canary_steps_to_100_under_traffic_and_stops_the_stable_release() {
    let env = canary_env("1s", "");
    env.ok(&["deploy", "--release", "v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 2, 20_000, stop.clone());
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary", "--json"]);
    let releases = assert_no_loss(&stop, handles, &tally, "2 clients, automatic canary 10/50/100", 100);
    assert_eq!(code, 0, "{out}{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["live"]["release"], "v2");
    assert_eq!(d["strategy"], "canary");
    for line in ["canary v2 gets 10% of traffic", "canary v2 gets 50% of traffic", "canary v2 promoted"] {
        assert!(err.contains(line), "missing {line:?} in progress:\n{err}");
    }
    assert_eq!(err.matches("cutover: hold ").count(), 2, "{err}");
    assert!(releases.contains_key("v1") && releases.contains_key("v2"), "{releases:?}");
    assert_eq!(env.serving(), "v2");
    assert_eq!(last_event(&env)["outcome"], "ok");
    assert_eq!(env.state()["previous"]["instances"][0]["pid"], serde_json::Value::Null, "v1 stopped");
}

#[test]
fn analysis_aborts_a_canary_that_fails_requests_with_exit_6() {
    let env = canary_env("5s", "");
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--fail-rate 0.5");
    let before = env.upstream();
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 3, 20_000, stop.clone());
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(code, 6, "{out}{err}");
    assert!(err.contains("error: canary v2 aborted: canary 5xx rate"), "{err}");
    assert!(err.contains("exceeds canary.max_error_rate 5.0%"), "{err}");
    assert!(err.contains("all traffic is back on v1 and the canary is stopped"), "{err}");
    let t = tally.lock().unwrap();
    println!(
        "analysis: clients saw {} requests, {} non-2xx (the canary's injected 500s); {}",
        t.requests,
        t.non_2xx.len(),
        err.lines().find(|l| l.contains("hold")).unwrap_or("")
    );
    let state = env.state();
    assert_eq!(state["canary"], serde_json::Value::Null);
    assert_eq!(state["in_progress"], serde_json::Value::Null);
    // The upstream is the stable release alone again (one generation further).
    let up = env.upstream();
    assert_eq!(
        up.lines().filter(|l| l.contains("server ")).collect::<Vec<_>>(),
        before.lines().filter(|l| l.contains("server ")).collect::<Vec<_>>()
    );
    let ev = last_event(&env);
    assert_eq!(ev["outcome"], "canary-aborted");
    assert_eq!(ev["exit_code"], 6);
    assert!(ev["message"].as_str().unwrap().contains("5xx rate"), "{ev}");
    assert_eq!(shares(&env, 200).keys().collect::<Vec<_>>(), vec!["v1"]);
    // Nothing of v2 is left running.
    let v2_log = std::fs::read_to_string(
        env.path()
            .join("logs")
            .join(names_in(&env.path().join("logs")).into_iter().find(|n| n.starts_with("v2-")).unwrap()),
    )
    .unwrap();
    assert!(v2_log.contains("release v2: signal 15"), "v2 was stopped with SIGTERM:\n{v2_log}");
}

#[test]
fn a_canary_that_dies_during_its_hold_is_detected_and_aborted() {
    let env = canary_env("30s", "");
    env.ok(&["deploy", "--release", "v1"]);
    let child = env
        .cutover()
        .args(["deploy", "--release", "v2", "--strategy", "canary"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || env.state()["canary"]["deployment"]["instances"][0]["pid"].is_i64()),
        "the canary never went live"
    );
    let pid = env.state()["canary"]["deployment"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let _ = std::process::Command::new("kill").args(["-9", "--", &format!("-{pid}")]).status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains(&format!("(pid {pid}) exited during the hold")), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
    assert_eq!(env.serving(), "v1");
}

#[test]
fn abort_and_rollback_during_a_canary_put_all_traffic_back_on_stable() {
    let env = canary_env("manual", "");
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2", "--strategy", "canary"]);
    let pid = env.state()["canary"]["deployment"]["instances"][0]["pid"].as_i64().unwrap() as i32;
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 8, "a deploy during a canary is refused: {err}");
    assert!(err.contains("a canary of v2 is running at 10%"), "{err}");
    let out = env.ok(&["abort"]);
    assert!(out.contains("aborted:  canary v2 (stopped)"), "{out}");
    assert!(!pid_alive(pid));
    assert_eq!(shares(&env, 100).keys().collect::<Vec<_>>(), vec!["v1"]);
    let (code, _, err) = env.run(&["promote"]);
    assert_eq!(code, 8);
    assert!(err.contains("no canary is running for this app"), "{err}");

    // `rollback` during a canary is an abort.
    env.ok(&["deploy", "--release", "v3", "--strategy", "canary"]);
    let (code, out, err) = env.run(&["rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("a canary is running: rolling back means aborting it"), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
    assert_eq!(env.serving(), "v1");
    assert_eq!(last_event(&env)["kind"], "rollback");
}

#[test]
fn a_rejected_step_restores_the_previous_steps_upstream_and_exits_4() {
    let env = canary_env("manual", "");
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2", "--strategy", "canary"]);
    let at10 = env.upstream();
    // A template that nginx rejects only at 50 %.
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera"))
        .unwrap()
        + "{% if canary and canary.weight == 50 %}bogus_directive on;{% endif %}\n";
    std::fs::write(env.path().join("bad.tera"), template).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap().replace("[nginx]\n", "[nginx]\ntemplate = \"bad.tera\"\n");
    env.write_config(&text);
    let (code, _, err) = env.run(&["promote"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unknown directive \"bogus_directive\""), "{err}");
    assert!(err.contains("the canary stays at 10%"), "{err}");
    assert_eq!(env.upstream(), at10, "the 10% upstream is back byte for byte");
    assert_eq!(env.state()["canary"]["weight"], 10);
    env.ok(&["status", "--check"]);
}

#[test]
fn unhealthy_canary_exits_3_and_leaves_the_stable_release_alone() {
    let env = canary_env("1s", "");
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    env.flags("v2", "--fail-health");
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(env.upstream(), before);
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
    assert_eq!(env.serving(), "v1");
}

fn sticky_env(sticky: &str) -> Env {
    Env::with(Opts {
        access_log: true,
        proxy_pass: "http://$cutover_shop_upstream".into(),
        extra: canary_section("manual", &format!("sticky = \"{sticky}\"\nheader = \"X-Canary\"")),
        ..Opts::default()
    })
}

fn get_with(env: &Env, headers: &str) -> String {
    let raw = format!("GET / HTTP/1.0\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    let (status, body) = http_request(env.nginx_port, &raw, Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200, "{body}");
    release_of(&body)
}

#[test]
fn sticky_cookie_split_keeps_each_user_on_one_release_and_the_header_forces_the_canary() {
    let env = sticky_env("cookie:uid");
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2", "--strategy", "canary"]);
    let users = 300;
    let mut on_canary = Vec::new();
    for u in 0..users {
        let cookie = format!("Cookie: uid=user{u}\r\n");
        let first = get_with(&env, &cookie);
        for _ in 0..3 {
            assert_eq!(get_with(&env, &cookie), first, "user{u} switched releases");
        }
        if first == "v2" {
            on_canary.push(u);
        }
    }
    let share = 100.0 * on_canary.len() as f64 / users as f64;
    println!("sticky cookie at 10%: {} of {users} users on the canary ({share:.1}%)", on_canary.len());
    assert!((4.0..=18.0).contains(&share), "{share}% of users on the canary at 10%");
    // Users on the canary stay there when its share grows, across the reload.
    env.ok(&["canary", "set", "50"]);
    for u in &on_canary {
        assert_eq!(get_with(&env, &format!("Cookie: uid=user{u}\r\n")), "v2", "user{u} left the canary at 50%");
    }
    // Testers reach the canary with the header, whatever their cookie.
    for u in 0..20 {
        assert_eq!(get_with(&env, &format!("Cookie: uid=user{u}\r\nX-Canary: 1\r\n")), "v2");
    }
    // Requests without the cookie are split per request rather than all pinned to one side.
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..200 {
        *m.entry(get_with(&env, "")).or_default() += 1;
    }
    assert_eq!(m.len(), 2, "cookieless requests reach both sides at 50%: {m:?}");
    env.ok(&["promote"]);
    assert_eq!(get_with(&env, "Cookie: uid=user1\r\n"), "v2");
}

#[test]
fn sticky_ip_keeps_one_client_on_one_release() {
    let env = sticky_env("ip");
    env.ok(&["deploy", "--release", "v1"]);
    env.ok(&["deploy", "--release", "v2", "--strategy", "canary"]);
    env.ok(&["canary", "set", "50"]);
    let first = get_with(&env, "");
    for _ in 0..50 {
        assert_eq!(get_with(&env, ""), first, "one client address, one release");
    }
    assert_eq!(get_with(&env, "X-Canary: yes\r\n"), "v2");
}

#[test]
fn sticky_split_needs_the_site_to_use_the_routing_variable() {
    let env =
        Env::with(Opts { access_log: true, extra: canary_section("manual", "sticky = \"ip\""), ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no proxy_pass in nginx's config uses $cutover_shop_upstream; write `proxy_pass http://$cutover_shop_upstream;`"),
        "{err}"
    );
    assert_eq!(env.upstream(), before);
    assert_eq!(env.serving(), "v1");
}

#[test]
fn automatic_canary_without_the_access_log_is_refused_before_anything_starts() {
    let env = Env::with(Opts { extra: canary_section("1s", ""), ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no access_log in nginx's config writes that format"), "{err}");
    assert!(err.contains("add `access_log "), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
}

#[test]
fn check_fails_a_canary_default_without_the_access_log_and_passes_with_it() {
    for (access_log, code) in [(false, 8), (true, 0)] {
        let env =
            Env::with(Opts { access_log, strategy: "canary", extra: canary_section("1s", ""), ..Opts::default() });
        let (c, out, _) = env.run(&["check"]);
        assert_eq!(c, code, "{out}");
        if access_log {
            assert!(out.contains("ok   canary setup       nginx writes "), "{out}");
        } else {
            assert!(out.contains("FAIL canary setup       canary analysis reads "), "{out}");
        }
    }
}

#[test]
fn a_canary_whose_log_path_is_not_the_one_nginx_writes_is_refused() {
    let env = canary_env("1s", "");
    env.ok(&["deploy", "--release", "v1"]);
    std::fs::write(env.path().join("stale.log"), "").unwrap();
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace("nginx/logs/shop.cutover.log", "stale.log");
    env.write_config(&cfg);
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("but nginx writes that format to {} instead", env.access_log().display())), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
}

#[test]
fn a_hold_that_sees_no_request_at_all_aborts_instead_of_promoting_blind() {
    let env = canary_env("1s", "");
    env.ok(&["deploy", "--release", "v1"]);
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("no request to either release appeared in"), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
    assert_eq!(env.serving(), "v1");
    assert_eq!(last_event(&env)["outcome"], "canary-aborted");
}

#[test]
fn dry_run_of_a_canary_shows_the_steps_and_the_first_steps_diff_and_changes_nothing() {
    let env = canary_env("1s", "");
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    let state_before = env.state();
    let out = env.ok(&["deploy", "--release", "v2", "--strategy", "canary", "--dry-run"]);
    assert!(out.starts_with("plan: deploy v2 (canary) for app shop\n"), "{out}");
    assert!(out.contains("  canary steps 10% -> 50% -> 100% (weighted per request), each written, nginx -t, reloaded and confirmed, held 1s with analysis (max_error_rate 0.05, min_requests 20)\n"), "{out}");
    assert!(out.contains("upstream diff at the first step:\n"), "{out}");
    assert!(out.contains(&format!("+    server 127.0.0.1:{} weight=9;  # v1\n", env.pool[0])), "{out}");
    assert!(out.contains(&format!("+    server 127.0.0.1:{};  # v2\n", env.pool[1])), "{out}");
    assert_eq!(env.upstream(), before);
    assert_eq!(env.state(), state_before);
    assert!(std::net::TcpListener::bind(("127.0.0.1", env.pool[1])).is_ok(), "nothing was started");
}

#[test]
fn analysis_aborts_a_canary_much_slower_than_the_stable_release() {
    let env = canary_env("5s", "max_latency_factor = 3.0");
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--slow-ms 150");
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, _tally) = load(env.nginx_port, 3, 20_000, stop.clone());
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(code, 6, "{out}{err}");
    assert!(err.contains("error: canary v2 aborted: canary p95 upstream time"), "{err}");
    assert!(err.contains("x the stable release's"), "{err}");
    assert_eq!(env.state()["canary"], serde_json::Value::Null);
    assert_eq!(env.serving(), "v1");
}

// Low traffic (a quiet hour, a small site): each hold sends the canary fewer requests than
// canary.min_requests, and every one of them is a 500. That is not "too few to judge": whatever the requests
// still missing to min_requests would have answered, the 5xx rate is already above canary.max_error_rate. The
// canary must be aborted (exit 6), not promoted to live with a warning.
#[test]
fn a_canary_whose_few_requests_already_exceed_the_error_rate_is_aborted_not_promoted() {
    let env = canary_env("2s", "");
    env.ok(&["deploy", "--release", "v1"]);
    env.flags("v2", "--fail-rate 1.0");
    let stop = Arc::new(AtomicBool::new(false));
    let port = env.nginx_port;
    let flag = stop.clone();
    // About 10 requests a second: a 2 s hold at 10 % sends the canary about 2, at 50 % about 10 (min_requests 20).
    let client = std::thread::spawn(move || {
        let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
        let started = std::time::Instant::now();
        while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            if let Ok((status, _)) = http_get(port, "/", Duration::from_secs(5)) {
                *seen.entry(status).or_default() += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    });
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().unwrap();
    println!("the client saw {seen:?}");
    assert!(seen.get(&500).copied().unwrap_or(0) > 0, "the canary answered no request at all: {seen:?}\n{err}");
    assert_eq!(code, 6, "a canary that answered every request it got with a 500 was not aborted:\n{out}{err}");
    assert_eq!(env.state()["live"]["release"], "v1");
    assert_eq!(shares(&env, 100).keys().collect::<Vec<_>>(), vec!["v1"]);
}

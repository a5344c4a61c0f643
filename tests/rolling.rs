//! Rolling and all-at-once deploys of N = 4 instances against a real nginx, under load: surge batches of 1 and 2
//! and no surge, with the new release's share measured through nginx between batches; a release that fails at
//! its third batch (rolled back, or paused and then resolved); a run killed between batches and recovered; all at
//! once with the maintenance answer measured by the client, and a failed one that restarts the old release.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// N = 4 with `strategy` as the default, `[rolling]` set to `rolling`, analysis reading the test nginx's log.
fn fleet(strategy: &'static str, pool: usize, rolling: &str) -> Env {
    let env = Env::with(Opts {
        instances: 4,
        pool_size: pool,
        strategy,
        access_log: true,
        extra: format!(
            "\n[rolling]\n{rolling}\n\n[canary]\nmin_requests = 20\nmax_error_rate = 0.05\n\
             access_log = \"nginx/logs/shop.cutover.log\"\n"
        ),
        ..Opts::default()
    });
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("nothing is live yet, so there is nothing to replace in place: deploying blue-green"),
        "{err}"
    );
    env
}

/// `n` sequential requests through nginx (`Connection: close`), counted by release; any failure panics.
fn shares(env: &Env, n: usize) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = env.get("/").expect("request failed");
        assert_eq!(status, 200, "{body}");
        *m.entry(release_of(&body)).or_default() += 1;
    }
    m
}

fn pct(m: &BTreeMap<String, u64>, release: &str) -> f64 {
    100.0 * *m.get(release).unwrap_or(&0) as f64 / m.values().sum::<u64>() as f64
}

/// The releases of the live instances and whether each runs.
fn live_fleet(env: &Env) -> Vec<(String, bool)> {
    let s = env.state();
    s["live"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["release"].as_str().unwrap().to_string(), i["pid"].as_i64().is_some_and(|p| pid_alive(p as i32))))
        .collect()
}

/// Nothing stray: every pool port that something listens on belongs to a live instance, and no fixture process
/// of this test runs that is not a live instance.
fn assert_nothing_stray(env: &Env) {
    let s = env.state();
    assert!(s["in_progress"].is_null(), "an operation is still recorded: {}", s["in_progress"]);
    assert!(s["rolling"].is_null(), "a rolling deploy is still recorded: {}", s["rolling"]);
    let live: Vec<(u16, i32)> = s["live"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["port"].as_u64().unwrap() as u16, i["pid"].as_i64().unwrap() as i32))
        .collect();
    for &p in &env.pool {
        let busy = std::net::TcpListener::bind(("127.0.0.1", p)).is_err();
        assert_eq!(busy, live.iter().any(|(lp, _)| *lp == p), "pool port {p}: listening {busy}; live {live:?}");
    }
    let flags = env.path().join("flags").display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ours = env.pool.iter().any(|p| cmd.contains(&format!("--port {p} "))) && cmd.contains(FIXTURE);
        if ours && pid_alive(pid) && !cmd.contains(&flags) {
            assert!(live.iter().any(|(_, lp)| *lp == pid), "stray fixture process {pid}: {cmd}; live {live:?}");
        }
    }
}

/// Start `cutover deploy` in the background, its stderr kept in a file.
fn spawn(env: &Env, args: &[&str]) -> (Child, std::path::PathBuf) {
    let log = env.path().join(format!("deploy-{}.err", args.join("-").replace('/', "_")));
    let f = std::fs::File::create(&log).unwrap();
    let child = env.cutover().args(args).stdout(Stdio::piped()).stderr(f).spawn().unwrap();
    (child, log)
}

/// The rolling deploy is between batches: `batch` batches in, the replaced instances retired.
fn between_batches(env: &Env, batch: u64) -> bool {
    let s = env.state();
    s["rolling"]["batch"].as_u64() == Some(batch)
        && s["backup"].as_array().is_none_or(|b| b.is_empty())
        && s["in_progress"]["to_stop"].as_array().is_some_and(|t| t.is_empty())
}

struct Loads {
    stop: Arc<AtomicBool>,
    close: (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Tally>>),
    keepalive: (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Tally>>),
}

/// Three `Connection: close` clients and two keep-alive clients through nginx.
fn loads(env: &Env) -> Loads {
    let stop = Arc::new(AtomicBool::new(false));
    let close = load(env.nginx_port, 3, 200_000, stop.clone());
    let keepalive = load_keepalive(env.nginx_port, 2, 200_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    Loads { stop, close, keepalive }
}

impl Loads {
    /// Stop both and assert no loss: 0 non-2xx in both modes, 0 failed connections with `Connection: close`.
    fn finish(self, label: &str) -> BTreeMap<String, u64> {
        let Loads { stop, close, keepalive } = self;
        let by_release = assert_no_loss(&stop, close.0, &close.1, &format!("{label}, Connection: close"), 200);
        assert_no_loss_keepalive(&stop, keepalive.0, &keepalive.1, &format!("{label}, keep-alive"), 200);
        by_release
    }
}

/// A surge deploy of v2 over v1 in batches of `batch` under load, holding 3 s between batches: after each batch
/// the new release's share through nginx, what `status` says, and at the end no loss.
fn surge(batch: usize) {
    let env = fleet("rolling", 4 + batch, &format!("batch = {batch}\nsurge = true\npause = \"3s\""));
    let p = env.pool.clone();
    // The plan names each batch's ports and what happens to them.
    let (code, out, _) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    let first = if batch == 1 {
        format!(
            "  batch 1 of 4: start v2 on port {}, health-check (2 pass(es), deadline 15s); put in beside the others \
             with v1 on {} as backup, verify 200ms; take v1 on {} out, drain, stop\n  hold 3s with access-log \
             analysis",
            p[4], p[0], p[0]
        )
    } else {
        format!(
            "  batch 1 of 2: start v2 on port {}, {}, health-check (2 pass(es), deadline 15s); put in beside the \
             others with v1 on {}, v1 on {} as backup",
            p[4], p[5], p[0], p[1]
        )
    };
    assert!(out.contains(&first), "{out}");
    let last = if batch == 1 {
        format!("batch 4 of 4: start v2 on port {}", p[2])
    } else {
        format!("batch 2 of 2: start v2 on port {}, {}", p[0], p[1])
    };
    assert!(out.contains(&last), "{out}");
    assert!(out.contains("on failure: undo the failed batch, then roll the replaced batches back"), "{out}");

    let load = loads(&env);
    let (child, log) = spawn(&env, &["deploy", "--release", "v2"]);
    let batches = 4 / batch;
    let mut measured = Vec::new();
    for k in 1..batches {
        assert!(
            wait_until(Duration::from_secs(30), || between_batches(&env, k as u64)),
            "batch {k} did not finish: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let m = shares(&env, 200);
        let expected = 100.0 * (k * batch) as f64 / 4.0;
        let got = pct(&m, "v2");
        measured.push(format!("{got:.1}"));
        assert!(
            (got - expected).abs() <= 8.0,
            "after batch {k}: v2 got {got:.1}% of 200 requests, expected {expected}%"
        );
        // status: the mixed fleet, instance by instance, with shares by instance count.
        let st = env.json(&["status"]);
        assert_eq!(st["rolling"]["deployment"]["release"], "v2");
        assert_eq!(st["rolling"]["deployment"]["weight"].as_f64(), Some(expected), "{st}");
        assert_eq!(st["live"]["weight"].as_f64(), Some(100.0 - expected), "{st}");
        assert_eq!(st["rolling"]["deployment"]["instances"].as_array().unwrap().len(), k * batch);
        assert_eq!(st["live"]["instances"].as_array().unwrap().len(), 4 - k * batch);
        assert!(st["rolling"]["deployment"]["instances"].as_array().unwrap().iter().all(|i| i["healthy"] == true));
        let (_, text, _) = env.run(&["status"]);
        assert!(text.contains(&format!("rolling {k}/{batches}: v2 ({expected:.0}% of traffic)")), "{text}");
        assert!(text.contains(&format!("live:      v1 ({:.0}% of traffic)", 100.0 - expected)), "{text}");
    }
    let out = child.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{err}");
    let m = shares(&env, 100);
    measured.push(format!("{:.1}", pct(&m, "v2")));
    assert_eq!(pct(&m, "v2"), 100.0);
    let by_release = load.finish(&format!("surge, batch {batch}"));
    assert!(by_release.get("v2").is_some_and(|&n| n > 0) && by_release.get("v1").is_some_and(|&n| n > 0));
    println!("surge, batch {batch}: v2 share through nginx after each batch (%): {}", measured.join(" / "));
    // Each hold analysed the new instances against the old ones.
    assert!(err.contains(&format!("hold      batch 1 of {batches} held: canary ")), "{err}");
    assert_eq!(live_fleet(&env), vec![("v2".to_string(), true); 4]);
    assert_eq!(env.state()["previous"]["release"], "v1");
    let h = env.json(&["history"]);
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!((last["outcome"].as_str(), last["strategy"].as_str()), (Some("ok"), Some("rolling")));
    assert_nothing_stray(&env);
}

#[test]
fn surge_one_at_a_time_loses_nothing_and_moves_a_quarter_of_traffic_per_batch() {
    surge(1);
}

#[test]
fn surge_two_at_a_time_loses_nothing_and_moves_half_of_traffic_per_batch() {
    surge(2);
}

#[test]
fn without_surge_each_instance_is_taken_out_replaced_in_place_and_nothing_is_lost() {
    let env = fleet("rolling", 4, "batch = 1\nsurge = false");
    let ports_before: Vec<u64> =
        env.state()["live"]["instances"].as_array().unwrap().iter().map(|i| i["port"].as_u64().unwrap()).collect();
    let (code, out, _) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "  batch 1 of 4: take v1 on {p} out (down), drain, stop; start v2 on port {p}, health-check",
            p = env.pool[0]
        )),
        "{out}"
    );
    let load = loads(&env);
    let (code, out, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    load.finish("no surge, batch 1");
    assert!(out.contains("live:     v2 on "), "{out}");
    let ports_after: Vec<u64> =
        env.state()["live"]["instances"].as_array().unwrap().iter().map(|i| i["port"].as_u64().unwrap()).collect();
    assert_eq!(ports_after, ports_before, "replaced in place: the same four ports");
    assert_eq!(live_fleet(&env), vec![("v2".to_string(), true); 4]);
    assert_nothing_stray(&env);
}

#[test]
fn a_release_that_fails_its_health_check_at_the_third_batch_is_rolled_back_without_loss() {
    let env = fleet("rolling", 5, "batch = 1\nsurge = true");
    // Surge batches start on pool ports 4, 0, 1, 2: the third one is port 1.
    env.flags("v2", &format!("--fail-health-on-port {}", env.pool[1]));
    let load = loads(&env);
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--json"]);
    let by_release = load.finish("fails at batch 3, rolled back");
    assert_eq!(code, 3, "{err}");
    assert!(by_release.get("v2").is_some_and(|&n| n > 0), "two batches of v2 served before the failure");
    assert!(
        err.contains(
            "v2 failed at batch 3 of 4: its new instance(s) did not become healthy and were stopped before they got \
             traffic; rolling every replaced instance back to v1"
        ),
        "{err}"
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["exit_code"], 3);
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .starts_with("v2 failed at batch 3 of 4 and was rolled back: all 4 instance(s) run v1 again"),
        "{doc}"
    );
    assert_eq!(live_fleet(&env), vec![("v1".to_string(), true); 4]);
    assert_eq!(pct(&shares(&env, 40), "v1"), 100.0);
    let h = env.json(&["history"]);
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!((last["outcome"].as_str(), last["exit_code"].as_i64()), (Some("failed-after-switch"), Some(3)));
    assert_nothing_stray(&env);
}

#[test]
fn on_failure_pause_leaves_a_mixed_fleet_that_status_shows_and_rollback_or_deploy_resolve() {
    let env = fleet("rolling", 5, "batch = 1\nsurge = true\non_failure = \"pause\"");
    env.flags("v2", &format!("--fail-health-on-port {}", env.pool[1]));
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--json"]);
    assert_eq!(code, 3, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["outcome"].as_str()), (Some(false), Some("paused")), "{doc}");
    assert_eq!(doc["rolling"]["deployment"]["instances"].as_array().unwrap().len(), 2, "{doc}");
    assert!(
        err.contains(
            "error: rolling deploy of v2 paused: batch 3 of 4 failed, 2 of 4 instance(s) run v2 beside v1 (`cutover \
             deploy --release v2` finishes it, `cutover rollback` returns every instance to v1): its new instance(s) \
             did not become healthy"
        ),
        "{err}"
    );
    // status: two of each, with their shares, and the pause; --check fails.
    let st = env.json(&["status"]);
    assert_eq!(st["rolling"]["deployment"]["weight"], 50);
    assert_eq!(st["live"]["weight"], 50);
    assert!(st["rolling"]["paused"].as_str().unwrap().contains("v2 failed at batch 3 of 4"), "{st}");
    let (code, text, _) = env.run(&["status", "--check"]);
    assert_eq!(code, 7);
    assert!(text.contains("rolling 2/4: v2 (50% of traffic)"), "{text}");
    assert!(text.contains("live:      v1 (50% of traffic)"), "{text}");
    assert!(text.contains("paused:    v2 failed at batch 3 of 4"), "{text}");
    let m = shares(&env, 200);
    assert!((pct(&m, "v2") - 50.0).abs() <= 8.0, "{m:?}");
    assert_eq!(env.json(&["history"]).as_array().unwrap().last().unwrap()["outcome"], "paused");
    // A third release is refused until it is resolved.
    let (code, _, err) = env.run(&["deploy", "--release", "v3"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("a rolling deploy of v2 stopped after batch 2 of 4"), "{err}");
    // rollback: every instance back to v1.
    let (code, out, err) = env.run(&["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("live:     v1 on "), "{out}");
    assert_eq!(live_fleet(&env), vec![("v1".to_string(), true); 4]);
    assert_nothing_stray(&env);
    // Paused again (the rollback started v1 on other ports: the plan says where batch 3 starts now); this time
    // the release is fixed and the same deploy finishes it.
    let plan = env.json(&["deploy", "--release", "v2", "--dry-run"]);
    env.flags("v2", &format!("--fail-health-on-port {}", plan["plan"]["batches"][2]["start"][0]));
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 3, "{err}");
    env.flags("v2", "");
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("a rolling deploy of v2 stopped after batch 2 of 4"), "{err}");
    assert!(err.contains("resuming it"), "{err}");
    assert_eq!(live_fleet(&env), vec![("v2".to_string(), true); 4]);
    assert_eq!(env.state()["previous"]["release"], "v1");
    assert_nothing_stray(&env);
}

#[test]
fn a_run_killed_between_batches_is_rolled_back_by_recover_with_nothing_stray() {
    let env = fleet("rolling", 5, "batch = 1\nsurge = true\npause = \"10s\"");
    let load = loads(&env);
    let (mut child, log) = spawn(&env, &["deploy", "--release", "v2"]);
    assert!(
        wait_until(Duration::from_secs(30), || between_batches(&env, 2)),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    child.kill().unwrap(); // SIGKILL, during the hold after batch 2
    child.wait().unwrap();
    let v2: Vec<i32> = env.state()["rolling"]["deployment"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(v2.len(), 2);
    let (_, text, _) = env.run(&["status"]);
    assert!(text.contains("unfinished: deploy of v2"), "{text}");
    let (code, out, err) = env.run(&["recover"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("did not finish; cleaning up after it"), "{err}");
    assert!(err.contains("recovering means returning every instance to v1"), "{err}");
    assert!(out.contains("live:     v1 on "), "{out}");
    load.finish("killed between batches, then recover");
    assert_eq!(live_fleet(&env), vec![("v1".to_string(), true); 4]);
    assert!(v2.iter().all(|p| !pid_alive(*p)), "the v2 instances were stopped");
    assert_nothing_stray(&env);
    let h = env.json(&["history"]);
    let outcomes: Vec<&str> = h.as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes[outcomes.len() - 2..], ["interrupted", "ok"], "{h}");
    // Nothing is left to recover.
    let (_, out, _) = env.run(&["recover"]);
    assert!(out.contains("nothing to recover"), "{out}");
}

/// One `Connection: close` answer with the time it came, for the downtime window.
struct Seen {
    at: Instant,
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// A client that records every answer's time, status and `Retry-After` until `stop`.
fn watcher(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<Seen>, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut seen, mut errors) = (Vec::new(), Vec::new());
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
            let r = (|| -> std::io::Result<Seen> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                let text = String::from_utf8_lossy(&buf).into_owned();
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let retry_after = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("retry-after")))
                    .map(|(_, v)| v.trim().to_string());
                Ok(Seen { at: Instant::now(), status, retry_after, body: body.to_string() })
            })();
            match r {
                Ok(s) => seen.push(s),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (seen, errors)
    })
}

#[test]
fn all_at_once_answers_the_maintenance_page_while_nothing_runs_and_records_the_downtime() {
    let env = fleet("all-at-once", 5, "");
    let (code, out, _) = env.run(&["check"]);
    assert!(out.contains("deploy.strategy = \"all-at-once\" is NOT zero-downtime"), "{code} {out}");
    let (code, out, _) = env.run(&["deploy", "--release", "v2", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "batch 1 of 1: take v1 on {}, v1 on {}, v1 on {}, v1 on {} out, drain, stop: nothing serves, nginx answers \
             503 (Retry-After 5 s) from 127.0.0.1:{}",
            env.pool[0], env.pool[1], env.pool[2], env.pool[3], env.pool[4]
        )),
        "{out}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3).map(|_| watcher(env.nginx_port, stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = env.run(&["deploy", "--release", "v2", "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--strategy all-at-once is not zero-downtime"), "{err}");
    let (mut seen, mut errors) = (Vec::new(), Vec::new());
    for c in clients {
        let (s, e) = c.join().unwrap();
        seen.extend(s);
        errors.extend(e);
    }
    seen.sort_by_key(|s| s.at);
    let bad: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(!bad.is_empty(), "the clients saw no maintenance answer at all ({} answers)", seen.len());
    for s in &bad {
        assert_eq!(s.status, 503, "never a 502: {} {}", s.status, s.body);
        assert_eq!(s.retry_after.as_deref(), Some("5"));
        assert!(s.body.contains("shop is being deployed and is back in a moment"), "{}", s.body);
    }
    assert!(errors.is_empty(), "failed connections: {errors:?}");
    let window = bad.last().unwrap().at - bad[0].at;
    let doc: Value = serde_json::from_str(&out).unwrap();
    let downtime = doc["downtime_ms"].as_u64().expect("deploy --json reports downtime_ms");
    println!(
        "all at once: {} answers, {} were 503 maintenance (0 x 502, {} failed connections); window seen by the \
         clients {} ms (first to last 503), cutover's downtime_ms {downtime}",
        seen.len(),
        bad.len(),
        errors.len(),
        window.as_millis()
    );
    // What cutover measured covers what the clients saw (from the write that took the last instance out to the
    // confirmed reload that put the new ones in); a client's last 503 can come a little later, from an old worker
    // still finishing.
    assert!(window.as_millis() as u64 <= downtime + 200, "window {window:?} vs downtime {downtime} ms");
    assert_eq!(live_fleet(&env), vec![("v2".to_string(), true); 4]);
    assert!(!env.upstream().contains("listen "), "the maintenance listener is gone:\n{}", env.upstream());
    let (_, text, _) = env.run(&["status"]);
    assert!(text.contains(&format!(", downtime {downtime} ms)")), "{text}");
    let h = env.json(&["history"]);
    assert_eq!(h.as_array().unwrap().last().unwrap()["downtime_ms"].as_u64(), Some(downtime));
    let (_, text, _) = env.run(&["history"]);
    assert!(text.contains(&format!("downtime {downtime} ms: nothing served (all-at-once is not zero-downtime)")));
    assert_nothing_stray(&env);
}

#[test]
fn a_failed_all_at_once_restarts_the_old_release() {
    let env = fleet("all-at-once", 5, "");
    env.flags("v2", "--fail-health");
    let stop = Arc::new(AtomicBool::new(false));
    let client = watcher(env.nginx_port, stop.clone());
    let (code, _, err) = env.run(&["deploy", "--release", "v2"]);
    stop.store(true, Ordering::Relaxed);
    let (seen, errors) = client.join().unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(
            "v2 failed at batch 1 of 1 and was rolled back: all 4 instance(s) run v1 again; nothing served for"
        ),
        "{err}"
    );
    assert!(seen.iter().all(|s| s.status == 200 || s.status == 503), "never a 502");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(live_fleet(&env), vec![("v1".to_string(), true); 4]);
    assert_eq!(pct(&shares(&env, 20), "v1"), 100.0);
    let h = env.json(&["history"]);
    let last = h.as_array().unwrap().last().unwrap();
    assert_eq!(last["exit_code"], 3);
    assert!(last["downtime_ms"].as_u64().is_some_and(|d| d > 0), "{last}");
    assert_nothing_stray(&env);
}

#[test]
fn configs_that_cannot_roll_say_why() {
    let env = Env::with(Opts {
        instances: 2,
        pool_size: 2,
        strategy: "rolling",
        extra: "\n[rolling]\nsurge = false\n".into(),
        ..Opts::default()
    });
    // Without surge the pool needs no spare port; with it, one per batch.
    let (code, out, _) = env.run(&["check"]);
    assert!(out.contains("deploy.strategy = \"rolling\" needs 2 (without rolling.surge each replacement starts on the port of the instance it replaces)"), "{code} {out}");
    env.write_config(&env.default_config().replace("surge = false", "surge = true"));
    let (code, _, err) = env.run(&["status"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("ports.pool has 2 port(s) but deploy.strategy = \"rolling\" with 2 instance(s) needs 3: each batch's 1 replacement(s) start beside the live instances (rolling.surge)"),
        "{err}"
    );
    env.write_config(&env.default_config().replace("surge = false", "surge = false\nbatch = 2"));
    let (code, _, err) = env.run(&["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("rolling.batch 2 with rolling.surge = false takes all 2 instance(s) out at once: that is --strategy all-at-once"), "{err}");
    // All at once needs one port beside the app's, for the maintenance answer.
    env.write_config(&env.default_config());
    env.ok(&["deploy", "--release", "v1"]);
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "all-at-once"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--strategy all-at-once with 2 instance(s) needs 3 pool port(s), ports.pool has 2"), "{err}");
}

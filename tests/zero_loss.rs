//! Zero lost requests: clients send through nginx without pause while cutover deploys and rolls back, and every
//! answer must be a 2xx from a live release with no failed connection. These assert correctness, not time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Default, Debug)]
struct Tally {
    requests: u64,
    non_2xx: Vec<String>,
    errors: Vec<String>,
    releases: std::collections::BTreeMap<String, u64>,
}

/// Run `clients` threads sending `Connection: close` GETs through nginx until `stop` is set, or until the
/// bounds (`max_requests` in all, 180 s) are reached.
fn load(
    port: u16,
    clients: usize,
    max_requests: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Tally>>) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let handles = (0..clients)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
                    let result = http_get(port, "/", Duration::from_secs(10));
                    let mut t = tally.lock().unwrap();
                    if t.requests >= max_requests {
                        break;
                    }
                    t.requests += 1;
                    match result {
                        Ok((200, body)) => *t.releases.entry(release_of(&body)).or_default() += 1,
                        Ok((status, body)) => t.non_2xx.push(format!("{status}: {}", body.trim())),
                        Err(e) => t.errors.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    (handles, tally)
}

#[test]
fn no_request_is_lost_across_five_deploys_and_a_rollback() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    for r in ["v2", "v3", "v4", "v5", "v6"] {
        env.ok(&["deploy", "--release", r]);
    }
    env.ok(&["rollback"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(env.serving(), "v5");
    let t = tally.lock().unwrap();
    println!(
        "zero-loss (Connection: close, 4 clients, 5 deploys + 1 rollback): {} requests, {} non-2xx, {} connection errors; by release {:?}",
        t.requests,
        t.non_2xx.len(),
        t.errors.len(),
        t.releases
    );
    assert!(t.requests > 500, "the clients sent too little to mean anything: {}", t.requests);
    assert!(t.non_2xx.is_empty(), "non-2xx answers: {:?}", &t.non_2xx[..t.non_2xx.len().min(10)]);
    assert!(t.errors.is_empty(), "failed connections: {:?}", &t.errors[..t.errors.len().min(10)]);
    for r in ["v1", "v2", "v3", "v4", "v5", "v6"] {
        assert!(t.releases.contains_key(r), "no answer from {r} at all: {:?}", t.releases);
    }
}

#[test]
fn a_long_request_in_flight_at_the_flip_completes_on_the_old_release() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let port = env.nginx_port;
    let long = std::thread::spawn(move || http_get(port, "/slow?ms=3000", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(300));
    let d = env.json(&["deploy", "--release", "v2"]);
    let (status, body) = long.join().unwrap().expect("the long request failed");
    assert_eq!(status, 200, "{body}");
    assert_eq!(release_of(&body), "v1", "answered by the old release");
    assert_eq!(d["drained"], true, "the deploy waited for the old nginx worker that carried it");
    assert_eq!(env.serving(), "v2");
}

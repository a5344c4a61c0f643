//! Zero lost requests: clients send through nginx without pause while cutover deploys and rolls back, and every
//! answer must be a 2xx from a live release with no failed connection. These assert correctness, not time.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

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
    assert_eq!(env.serving(), "v5");
    let releases = assert_no_loss(&stop, handles, &tally, "Connection: close, 4 clients, 5 deploys + 1 rollback", 500);
    for r in ["v1", "v2", "v3", "v4", "v5", "v6"] {
        assert!(releases.contains_key(r), "no answer from {r} at all: {:?}", releases);
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

#[test]
fn no_request_is_lost_through_a_full_canary_and_an_abort() {
    let env = Env::with(Opts {
        access_log: true,
        extra: "\n[canary]\nsteps = [10, 50, 100]\ninterval = \"1s\"\nmin_requests = 20\n\
                access_log = \"nginx/logs/shop.cutover.log\"\n"
            .into(),
        ..Opts::default()
    });
    env.ok(&["deploy", "--release", "v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    // A full canary to 100 %, then a canary aborted at its first step.
    env.ok(&["deploy", "--release", "v2", "--strategy", "canary"]);
    let text = std::fs::read_to_string(&env.config).unwrap().replace("interval = \"1s\"", "interval = \"manual\"");
    env.write_config(&text);
    env.ok(&["deploy", "--release", "v3", "--strategy", "canary"]);
    std::thread::sleep(Duration::from_millis(500));
    env.ok(&["abort"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.serving(), "v2");
    let releases =
        assert_no_loss(&stop, handles, &tally, "Connection: close, 4 clients, canary to 100% + canary aborted", 500);
    for r in ["v1", "v2", "v3"] {
        assert!(releases.contains_key(r), "no answer from {r} at all: {:?}", releases);
    }
}

#[test]
fn no_request_is_lost_when_deploys_fail_and_are_undone_under_load() {
    // The site's generation marker never changes, so every deploy's reload goes unconfirmed after nginx has
    // already routed to the new release: the undo must wait for those workers before stopping it.
    let env = Env::with(Opts {
        server_extra: "        location = /.cutover { return 200 \"0\"; }".into(),
        ..Opts::default()
    });
    env.ok(&["deploy", "--release", "v1"]);
    let url = format!("http://127.0.0.1:{}/.cutover", env.nginx_port);
    let cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[nginx]\n", &format!("[nginx]\nconfirm_url = \"{url}\"\nconfirm_timeout = \"500ms\"\n"));
    env.write_config(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    for r in ["v2", "v3", "v4"] {
        let (code, _, err) = env.run(&["deploy", "--release", r]);
        assert_eq!(code, 4, "{err}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let releases = assert_no_loss(&stop, handles, &tally, "3 deploys undone after an unconfirmed reload", 200);
    assert!(releases.contains_key("v2"), "nginx did route to the new release before the undo: {:?}", releases);
    assert_eq!(env.serving(), "v1");
}

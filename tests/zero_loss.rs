//! Zero lost requests: clients send through nginx without pause while cutover deploys and rolls back, and every
//! answer must be a 2xx from a live release with no failed connection. These assert correctness, not time.

mod common;

use std::process::Command;
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

/// Two apps behind one nginx, deployed at the same moment, again and again: each upstream change holds the
/// host-wide nginx lock from its write to its confirmed reload, so one app's `nginx -t` never sees the other's
/// candidate and one's confirmation is never the other's reload.
#[test]
fn two_apps_on_one_nginx_deployed_at_the_same_moment_lose_nothing() {
    let cart_port = free_port();
    let cart_pool = [free_port(), free_port()];
    // The cart's upstream file lives outside the shop's test dir, which does not exist before its nginx starts.
    let cart_dir = tempfile::tempdir().unwrap();
    let cart_upstream = cart_dir.path().join("cart.upstream.conf");
    std::fs::write(&cart_upstream, format!("upstream cart {{ server 127.0.0.1:{} down; }}\n", cart_pool[0])).unwrap();
    let env = Env::with(Opts {
        http_extra: format!(
            "    include {};\n    server {{ listen 127.0.0.1:{cart_port}; location / {{ proxy_pass http://cart; }} }}\n",
            cart_upstream.display()
        ),
        ..Opts::default()
    });
    let cart_cfg = env.path().join("cart.toml");
    let shop_pool = format!("pool = [{}, {}]", env.pool[0], env.pool[1]);
    // Both apps share deploy.state_dir, where the host-wide nginx.lock lives.
    std::fs::write(
        &cart_cfg,
        env.default_config()
            .replace("name = \"shop\"", "name = \"cart\"")
            .replace(
                "upstream_file = \"nginx/conf/shop.upstream.conf\"",
                &format!("upstream_file = \"{}\"", cart_upstream.display()),
            )
            .replace(&shop_pool, &format!("pool = [{}, {}]", cart_pool[0], cart_pool[1])),
    )
    .unwrap();
    let cart = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
        c.env_remove("CUTOVER_CONFIG").arg("-c").arg(&cart_cfg).args(args);
        c
    };
    env.ok(&["deploy", "--release", "s0"]);
    assert!(cart(&["deploy", "--release", "c0"]).status().unwrap().success());

    let stop = Arc::new(AtomicBool::new(false));
    let (shop_handles, shop_tally) = load(env.nginx_port, 2, 100_000, stop.clone());
    let (cart_handles, cart_tally) = load(cart_port, 2, 100_000, stop.clone());
    for n in 1..=20 {
        let piped = |c: &mut std::process::Command| {
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        };
        let shop = piped(env.cutover().args(["deploy", "--release", &format!("s{n}"), "--lock-wait", "60s"]));
        let c = piped(&mut cart(&["deploy", "--release", &format!("c{n}"), "--lock-wait", "60s"]));
        let (shop, c) = (shop.wait_with_output().unwrap(), c.wait_with_output().unwrap());
        assert!(shop.status.success(), "shop s{n}: {}", String::from_utf8_lossy(&shop.stderr));
        assert!(c.status.success(), "cart c{n}: {}", String::from_utf8_lossy(&c.stderr));
    }
    let shop = assert_no_loss(&stop, shop_handles, &shop_tally, "shop, 20 deploys at the same moment as cart's", 200);
    let carts = assert_no_loss(&stop, cart_handles, &cart_tally, "cart, 20 deploys at the same moment as shop's", 200);
    assert!(shop.contains_key("s20") && carts.contains_key("c20"), "{shop:?} {carts:?}");
    assert_eq!(env.serving(), "s20");
}

/// The race the host-wide nginx lock closes: while one app's candidate upstream is on disk and being tested
/// (here a candidate nginx rejects, and an `nginx -t` slowed down to widen the window), another app's `nginx -t`
/// or reload would read it too and fail, or make nginx serve it. With the lock every one of the other app's
/// deploys goes through.
#[test]
fn one_apps_rejected_candidate_never_fails_another_apps_deploy() {
    let cart_pool = [free_port(), free_port()];
    let cart_dir = tempfile::tempdir().unwrap();
    let cart_upstream = cart_dir.path().join("cart.upstream.conf");
    std::fs::write(&cart_upstream, format!("upstream cart {{ server 127.0.0.1:{} down; }}\n", cart_pool[0])).unwrap();
    let env = Env::with(Opts { http_extra: format!("    include {};\n", cart_upstream.display()), ..Opts::default() });
    let slow = env.path().join("slow-nginx");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -t ] && sleep 0.5; done\nexec {} \"$@\"\n",
            nginx_binary().display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&slow).status().unwrap();
    let bad = env.path().join("bad.tera");
    std::fs::write(
        &bad,
        format!(
            "{}\nbogus_directive on;\n",
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera")).unwrap()
        ),
    )
    .unwrap();
    let shop_pool = format!("pool = [{}, {}]", env.pool[0], env.pool[1]);
    let cart_cfg = env.path().join("cart.toml");
    std::fs::write(
        &cart_cfg,
        env.default_config()
            .replace("name = \"shop\"", "name = \"cart\"")
            .replace(
                "upstream_file = \"nginx/conf/shop.upstream.conf\"",
                &format!(
                    "upstream_file = \"{}\"\nbinary = \"{}\"\ntemplate = \"{}\"",
                    cart_upstream.display(),
                    slow.display(),
                    bad.display()
                ),
            )
            .replace(&shop_pool, &format!("pool = [{}, {}]", cart_pool[0], cart_pool[1])),
    )
    .unwrap();
    env.ok(&["deploy", "--release", "s0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let carts = {
        let (stop, cfg) = (stop.clone(), cart_cfg.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            for n in 1..=30 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
                    .env_remove("CUTOVER_CONFIG")
                    .arg("-c")
                    .arg(&cfg)
                    .args(["deploy", "--release", &format!("c{n}"), "--lock-wait", "60s"])
                    .output()
                    .unwrap();
                codes.push(out.status.code());
            }
            codes
        })
    };
    for n in 1..=6 {
        let (code, _, err) = env.run(&["deploy", "--release", &format!("s{n}"), "--lock-wait", "60s"]);
        assert_eq!(code, 0, "shop s{n} failed while cart's rejected candidate was being tested:\n{err}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = carts.join().unwrap();
    assert!(codes.len() >= 2 && codes.iter().all(|c| *c == Some(4)), "cart's deploys are each rejected: {codes:?}");
    assert_eq!(env.serving(), "s6");
    assert_eq!(
        std::fs::read_to_string(&cart_upstream).unwrap(),
        format!("upstream cart {{ server 127.0.0.1:{} down; }}\n", cart_pool[0])
    );
}

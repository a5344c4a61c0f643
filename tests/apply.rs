//! `cutover apply` after a config or template change: re-rendered, written, nginx -t, reloaded and confirmed like
//! a flip, recorded in history, no drift after; and drift messages that agree with `render --diff`. The case
//! that sent a new user to `--force`: switching the site to a sticky canary.

mod common;

use std::time::Duration;

use common::*;

fn canary_section(more: &str) -> String {
    format!(
        "\n[canary]\nsteps = [10, 50, 100]\ninterval = \"manual\"\nmin_requests = 20\nmax_error_rate = 0.05\n\
         access_log = \"nginx/logs/shop.cutover.log\"\n{more}\n"
    )
}

/// The operator's own `systemctl reload nginx` after editing the site: SIGHUP, wait for new workers.
fn reload(env: &Env) {
    let master = env.master_pid().unwrap();
    // A master that has just started may not have its first workers yet.
    assert!(wait_until(Duration::from_secs(10), || !workers(master).is_empty()));
    let old = workers(master);
    kill(master, 1);
    assert!(wait_until(Duration::from_secs(10), || {
        let now = workers(master);
        !now.is_empty() && now.iter().all(|w| !old.contains(w))
    }));
}

fn history(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["history"]).as_array().unwrap().clone()
}

#[test]
fn switching_to_a_sticky_canary_is_applied_without_force_and_leaves_no_drift() {
    let env = Env::with(Opts { access_log: true, extra: canary_section(""), ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    let (code, out, _) = env.run(&["apply"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("{} already is what cutover renders (generation 1): nothing to apply\n", env.upstream_path().display())
    );

    // The config asks for a sticky split: the upstream cutover renders now differs from the file on disk.
    env.write_config(&env.default_config().replace(&canary_section(""), &canary_section("sticky = \"cookie:uid\"")));
    let (code, diff, _) = env.run(&["render", "--diff"]);
    assert_eq!(code, 0);
    assert!(diff.contains("+map $host $cutover_shop_upstream {"), "{diff}");
    let v = env.json(&["apply"]);
    assert_eq!(v["changed"], true);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["diff"].as_str().unwrap(), diff, "apply reports the diff render --diff showed");
    let steps: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["write", "validate", "reload"]);
    assert!(env.upstream().contains("| generation 2 | live v1"), "{}", env.upstream());
    assert_eq!(env.serving(), "v1", "what is live did not change");
    // No drift after: render --diff is empty and status is clean.
    assert_eq!(env.ok(&["render", "--diff"]), "");
    env.ok(&["status", "--check"]);
    let last = history(&env).last().cloned().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["release"].as_str(), last["outcome"].as_str()),
        (Some("apply"), Some("v1"), Some("ok"))
    );

    // The site now proxies to the routing variable the applied file defines; a canary deploy needs no --force.
    let site = env.nginx_conf_text().replace("proxy_pass http://shop;", "proxy_pass http://$cutover_shop_upstream;");
    std::fs::write(env.nginx_conf(), site).unwrap();
    reload(&env);
    let (code, _, err) = env.run(&["deploy", "--release", "v2", "--strategy", "canary"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("drift"), "{err}");
    let raw =
        |uid: &str| format!("GET / HTTP/1.0\r\nHost: localhost\r\nCookie: uid={uid}\r\nConnection: close\r\n\r\n");
    for u in 0..20 {
        let uid = format!("user{u}");
        let first = release_of(&http_request(env.nginx_port, &raw(&uid), Duration::from_secs(5)).unwrap().1);
        for _ in 0..3 {
            let again = release_of(&http_request(env.nginx_port, &raw(&uid), Duration::from_secs(5)).unwrap().1);
            assert_eq!(again, first, "{uid} switched releases under the sticky split");
        }
    }
    env.ok(&["promote"]);
    env.ok(&["promote"]);
    assert_eq!(env.serving(), "v2");
    env.ok(&["status", "--check"]);
}

#[test]
fn a_hand_rendered_file_is_no_drift_and_apply_records_it() {
    let env = Env::with(Opts { access_log: true, extra: canary_section(""), ..Opts::default() });
    env.ok(&["deploy", "--release", "v1"]);
    env.write_config(&env.default_config().replace(&canary_section(""), &canary_section("header = \"X-Canary\"")));
    // What the new user did: re-render by hand, and reload.
    let rendered = env.ok(&["render"]);
    std::fs::write(env.upstream_path(), &rendered).unwrap();
    reload(&env);
    // Drift and render --diff agree: the file is what cutover renders, so neither reports anything.
    assert_eq!(env.ok(&["render", "--diff"]), "");
    let s = env.json(&["status"]);
    assert_eq!(s["drift"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["upstream_matches_state"], true);
    // apply makes state hold the file (a new generation, reloaded and confirmed).
    let v = env.json(&["apply"]);
    assert_eq!((v["changed"].as_bool(), v["generation"].as_u64()), (Some(true), Some(2)));
    let state = env.state();
    assert_eq!(state["upstream"].as_str().unwrap(), env.upstream());
    assert!(env.upstream().contains("map $host $cutover_shop_upstream {"), "{}", env.upstream());
    let (code, out, _) = env.run(&["apply"]);
    assert_eq!((code, out.ends_with("nothing to apply\n")), (0, true), "{out}");

    // A hand edit that is not what cutover renders is drift, render --diff shows it, apply refuses it without
    // --force and replaces it with --force.
    let edited = env.upstream().replace("zone shop 64k;", "zone shop 64k;\n    keepalive 8;");
    std::fs::write(env.upstream_path(), &edited).unwrap();
    let diff = env.ok(&["render", "--diff"]);
    assert!(diff.contains("-    keepalive 8;"), "{diff}");
    let s = env.json(&["status"]);
    assert_eq!(s["drift"][0]["kind"], "upstream-edited", "{s}");
    let (code, _, err) = env.run(&["apply"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("was changed outside cutover; look at `cutover render --diff`"), "{err}");
    assert_eq!(env.upstream(), edited, "refused: nothing written");
    env.ok(&["apply", "--force"]);
    assert_eq!(env.ok(&["render", "--diff"]), "");
    env.ok(&["status", "--check"]);
}

#[test]
fn a_template_nginx_rejects_is_restored_byte_for_byte_with_exit_4() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let before = env.upstream();
    let state_before = env.state();
    let tpl = env.path().join("bad.tera");
    let builtin =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera")).unwrap();
    std::fs::write(
        &tpl,
        builtin.replace("zone {{ upstream }} 64k;", "zone {{ upstream }} 64k;\n    no_such_directive on;"),
    )
    .unwrap();
    env.write_config(&env.default_config().replace("[nginx]\n", "[nginx]\ntemplate = \"bad.tera\"\n"));
    let (code, _, err) = env.run(&["apply"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("nginx rejected the config"), "{err}");
    assert!(err.contains("unknown directive \"no_such_directive\""), "{err}");
    assert_eq!(env.upstream(), before, "the previous file is back, byte for byte");
    let state = env.state();
    assert_eq!(
        (state["generation"].clone(), state["in_progress"].clone()),
        (state_before["generation"].clone(), serde_json::Value::Null)
    );
    let last = history(&env).last().cloned().unwrap();
    assert_eq!((last["kind"].as_str(), last["outcome"].as_str()), (Some("apply"), Some("nginx-rejected")));
    assert_eq!(env.serving(), "v1");
}

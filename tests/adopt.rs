//! `cutover init --adopt` on the blue/green setup cutover replaces, built for real on a private nginx: the
//! layout of the widely copied version in jojoldu/freelec-springboot2-webservice (the companion repository of
//! the book "스프링 부트와 AWS로 혼자 구현하는 웹 서비스"; files `nginx/service-url.inc`, `scripts/profile.sh`,
//! `scripts/start.sh`, `scripts/health.sh`, `scripts/switch.sh`): nginx's server block includes
//! `service-url.inc`, which holds `set $service_url http://127.0.0.1:PORT;`, and proxies with
//! `proxy_pass $service_url;`; two copies of the app alternate between two ports; a deploy starts the new copy
//! on the idle port with `nohup ... &`, polls its health with sleeps, rewrites `service-url.inc` with `tee` and
//! reloads nginx, leaving the old copy running on what is now the idle port. The scripts below are written
//! for this test (only the layout is the published one): ports, paths and the app (fixtures/app.py) are this
//! test's, and the sleeps are short.
//!
//! Then `init --adopt` takes it over under load, and cutover deploys and rolls back under load: no request may
//! fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The switch.sh setup: a private nginx, its scripts, and the apps they started.
struct Layout {
    dir: tempfile::TempDir,
    nginx_port: u16,
    ports: [u16; 2],
}

const NGINX_CONF: &str = "worker_processes 2;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    include conf.d/*.conf;
EXTRA
    server {
        listen 127.0.0.1:NGINX_PORT;
        include conf.d/service-url.inc;

        location / {
            proxy_pass $service_url;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Host $http_host;
        }
    }
}
";

/// profile.sh: which port is idle (the one service-url.inc does not name).
const PROFILE_SH: &str = r#"#!/usr/bin/env bash
find_idle_port() {
    current=$(grep -o '[0-9]*;' "$BASE/nginx/conf/conf.d/service-url.inc" | tr -d ';')
    if [ "$current" = "$PORT_A" ]; then echo "$PORT_B"; else echo "$PORT_A"; fi
}
"#;

/// start.sh: the new release on the idle port, in the background, as `nohup java -jar ... &` does.
const START_SH: &str = r#"#!/usr/bin/env bash
source "$(dirname "$0")/profile.sh"
IDLE_PORT=$(find_idle_port)
cd "$BASE"
nohup python3 "$FIXTURE" --port "$IDLE_PORT" --release "$1" > "$BASE/app-$IDLE_PORT.log" 2>&1 < /dev/null &
echo $! > "$BASE/app-$IDLE_PORT.pid"
"#;

/// health.sh: sleep, then poll the idle port's health.
const HEALTH_SH: &str = r#"#!/usr/bin/env bash
source "$(dirname "$0")/profile.sh"
IDLE_PORT=$(find_idle_port)
sleep "${SLEEP:-0.3}"
for RETRY_COUNT in 1 2 3 4 5 6 7 8 9 10; do
    if curl -s "http://127.0.0.1:$IDLE_PORT/health" | grep -q UP; then exit 0; fi
    sleep "${SLEEP:-0.3}"
done
echo "health check failed on $IDLE_PORT" >&2
exit 1
"#;

/// switch.sh: point service-url.inc at the idle port and reload nginx.
const SWITCH_SH: &str = r#"#!/usr/bin/env bash
source "$(dirname "$0")/profile.sh"
IDLE_PORT=$(find_idle_port)
echo "set \$service_url http://127.0.0.1:${IDLE_PORT};" | tee "$BASE/nginx/conf/conf.d/service-url.inc"
"$NGINX" -p "$BASE/nginx/" -c conf/nginx.conf -s reload
"#;

impl Layout {
    fn new(extra_http: &str) -> Layout {
        let dir = tempfile::Builder::new().prefix("cutover-adopt-").tempdir().unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["nginx/logs", "nginx/conf/conf.d", "scripts", "state"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let layout = Layout { dir, nginx_port: free_port(), ports: [free_port(), free_port()] };
        let conf = NGINX_CONF.replace("NGINX_PORT", &layout.nginx_port.to_string()).replace("EXTRA", extra_http);
        std::fs::write(d.join("nginx/conf/nginx.conf"), conf).unwrap();
        std::fs::write(
            d.join("nginx/conf/conf.d/service-url.inc"),
            format!("set $service_url http://127.0.0.1:{};\n", layout.ports[1]),
        )
        .unwrap();
        for (name, text) in
            [("profile.sh", PROFILE_SH), ("start.sh", START_SH), ("health.sh", HEALTH_SH), ("switch.sh", SWITCH_SH)]
        {
            std::fs::write(d.join("scripts").join(name), text).unwrap();
        }
        assert!(start_nginx(&d.join("nginx")));
        layout
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn master(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("nginx/logs/nginx.pid")).ok()?.trim().parse().ok()
    }

    /// One deploy the switch.sh way: start.sh, health.sh, switch.sh.
    fn script_deploy(&self, release: &str) {
        let mut old_workers = Vec::new();
        for script in ["start.sh", "health.sh", "switch.sh"] {
            if script == "switch.sh" {
                // The workers that will route to the old port until they exit (nginx forks its first ones only
                // after writing its pid file, so they are looked up here, not when nginx was started).
                let master = self.master().expect("the test nginx runs");
                assert!(wait_until(Duration::from_secs(5), || !workers(master).is_empty()), "nginx has no workers");
                old_workers = workers(master);
            }
            let out = Command::new("bash")
                .arg(self.path().join("scripts").join(script))
                .arg(release)
                .env("BASE", self.path())
                .env("PORT_A", self.ports[0].to_string())
                .env("PORT_B", self.ports[1].to_string())
                .env("FIXTURE", FIXTURE)
                .env("NGINX", nginx_binary())
                .output()
                .unwrap();
            assert!(out.status.success(), "{script} {release}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // `nginx -s reload` returns before the reload is done, and the old workers keep accepting connections
        // (and proxying to the port switch.sh left) until they exit: wait for that, as cutover's drain does, so
        // that the test starts from a host that serves only the new release.
        let gone = || old_workers.iter().all(|&p| !pid_alive(p));
        assert!(wait_until(Duration::from_secs(10), gone), "nginx's old workers still run after switch.sh");
        let served = || {
            http_get(self.nginx_port, "/", Duration::from_secs(1))
                .is_ok_and(|(status, body)| status == 200 && release_of(&body) == release)
        };
        assert!(wait_until(Duration::from_secs(10), served), "nginx does not serve {release} after switch.sh");
    }

    fn app_pid(&self, port: u16) -> i32 {
        std::fs::read_to_string(self.path().join(format!("app-{port}.pid"))).unwrap().trim().parse().unwrap()
    }

    fn config(&self) -> PathBuf {
        self.path().join("cutover.toml")
    }

    fn cutover(&self, args: &[&str]) -> (i32, String, String) {
        outcome(
            Command::new(env!("CARGO_BIN_EXE_cutover"))
                .env_remove("CUTOVER_CONFIG")
                .arg("-c")
                .arg(self.config())
                .args(args),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cutover(args);
        assert_eq!(code, 0, "cutover {args:?} exited {code}\n{out}\n{err}");
        out
    }

    fn adopt_args(&self) -> Vec<String> {
        vec![
            "init".into(),
            "--adopt".into(),
            "--name".into(),
            "shop".into(),
            "--release".into(),
            "v1".into(),
            "--nginx-prefix".into(),
            self.path().join("nginx").display().to_string(),
            "--nginx-conf".into(),
            "conf/nginx.conf".into(),
            "--state-dir".into(),
            self.path().join("state").display().to_string(),
        ]
    }

    fn serving(&self) -> String {
        let (status, body) = http_get(self.nginx_port, "/", Duration::from_secs(5)).unwrap();
        assert_eq!(status, 200, "{body}");
        release_of(&body)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path().join("state/shop/state.json")).unwrap()).unwrap()
    }

    fn file(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap()
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // The apps the scripts started (not process-group leaders: kill each), the ones cutover started, nginx.
        for port in self.ports {
            if let Ok(p) = std::fs::read_to_string(self.path().join(format!("app-{port}.pid"))) {
                if let Ok(pid) = p.trim().parse::<i32>() {
                    if pid_alive(pid) {
                        kill(pid, 9);
                    }
                }
            }
        }
        // cutover starts each instance as the leader of its own process group (whose leader may be a shell):
        // kill the group; an adopted process is no group leader, so kill it by pid too.
        for pid in pids_in_state(&self.path().join("state/shop/state.json")) {
            signal_group(pid, 9);
            if pid_alive(pid) {
                kill(pid, 9);
            }
        }
        if let Some(pid) = self.master() {
            kill(pid, 3);
            wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
    }
}

#[test]
fn a_switch_sh_setup_is_adopted_then_deployed_and_rolled_back_under_load_without_a_failed_request() {
    let l = Layout::new("");
    // Two deploys the old way: v0 on the first port, then v1 on the second; v0 stays up on the idle port.
    l.script_deploy("v0");
    l.script_deploy("v1");
    // `nginx -s reload` only sends the signal: the new workers take a moment (the scripts sleep here).
    assert!(wait_until(Duration::from_secs(10), || l.serving() == "v1"));
    let (v0, v1) = (l.app_pid(l.ports[0]), l.app_pid(l.ports[1]));
    assert!(pid_alive(v0) && pid_alive(v1));
    let inc_before = l.file("nginx/conf/conf.d/service-url.inc");
    assert_eq!(inc_before, format!("set $service_url http://127.0.0.1:{};\n", l.ports[1]));

    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(l.nginx_port, 4, 200_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // Adopt, under load.
    let args = l.adopt_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = l.ok(&args);
    assert!(out.starts_with("adopted v1 for app shop: nginx proxies to cutover's upstream now\n"), "{out}");
    assert!(out.contains(&format!("live:     v1 on port {} (pid {v1})\n", l.ports[1])), "{out}");
    assert!(
        out.contains(&format!(
            "previous: adopted-{0} on port {0} (pid {v0}) (idle; the first deploy stops it",
            l.ports[0]
        )),
        "{out}"
    );
    // What adopt rewrote: the set line names cutover's upstream; one include line went in before the server block.
    assert_eq!(
        l.file("nginx/conf/conf.d/service-url.inc"),
        format!("set $service_url http://shop;  # cutover init --adopt: was http://127.0.0.1:{}\n", l.ports[1])
    );
    let upstream_file = l.path().join("nginx/conf/cutover/shop.upstream.conf");
    let conf = l.file("nginx/conf/nginx.conf");
    assert!(
        conf.contains(&format!(
            "    include {};  # cutover init --adopt: upstream shop, which cutover writes\n    server {{\n",
            upstream_file.display()
        )),
        "{conf}"
    );
    let upstream = std::fs::read_to_string(&upstream_file).unwrap();
    assert!(upstream.contains("# app shop | generation 1 | live v1\n"), "{upstream}");
    assert!(upstream.contains(&format!("    server 127.0.0.1:{};  # v1\n", l.ports[1])), "{upstream}");
    // The originals are kept in the state directory.
    let kept = l.path().join("state/shop/before-adopt");
    let inc_kept =
        kept.join(l.path().join("nginx/conf/conf.d/service-url.inc").display().to_string().replace('/', "%"));
    assert_eq!(std::fs::read_to_string(inc_kept).unwrap(), inc_before);
    // The record: v1 live with its pid and start time, v0 as the idle previous release, an adopt event.
    let s = l.state();
    assert_eq!(s["live"]["release"], "v1");
    assert_eq!(s["live"]["instances"][0]["pid"], v1);
    assert!(s["live"]["instances"][0]["start_ticks"].as_u64().is_some());
    assert_eq!(s["previous"]["release"], format!("adopted-{}", l.ports[0]));
    assert_eq!(s["previous"]["instances"][0]["pid"], v0);
    let cfg = l.file("cutover.toml");
    assert!(cfg.contains(&format!("pool = [{}, {}]", l.ports[1], l.ports[0])), "{cfg}");
    assert!(cfg.contains(&format!(" {FIXTURE} --port {{{{port}}}} --release {{{{release}}}}\"\n")), "{cfg}");
    assert!(cfg.contains("keep_previous = true"), "{cfg}");
    // Adopting again finds cutover's own upstream and refuses, changing nothing.
    let mut again: Vec<&str> = args.clone();
    again.push("--force");
    let (code, _, err) = l.cutover(&again);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("is cutover's own (app shop): this app was set up or adopted already"), "{err}");
    assert_eq!(l.file("cutover.toml"), cfg);
    std::fs::write(l.config(), format!("{cfg}\n[runtime]\nlog_dir = \"logs\"\n")).unwrap();
    l.ok(&["status", "--check"]);
    let (_, check, _) = l.cutover(&["check"]);
    assert!(check.contains("ok   site "), "{check}");
    let history: serde_json::Value = serde_json::from_str(&l.ok(&["history", "--json"])).unwrap();
    assert_eq!(history[0]["kind"], "adopt");
    assert_eq!(history[0]["outcome"], "ok");

    // The first deploy: the idle copy v0 gives up its port (stopped: it was started by a script, in no process
    // group of its own), v2 starts there, traffic flips; v1 stays up idle for a rollback.
    l.ok(&["deploy", "--release", "v2"]);
    assert_eq!(l.serving(), "v2");
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(v0)), "the idle adopted copy was not stopped");
    assert!(pid_alive(v1), "the adopted live release is kept for a rollback");
    // A rollback to the adopted release is a flip.
    let (code, _, err) = l.cutover(&["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(still running: flip only)"), "{err}");
    assert_eq!(l.serving(), "v1");
    // Two more deploys: the second one stops the adopted v1 itself to use its port.
    l.ok(&["deploy", "--release", "v3"]);
    l.ok(&["deploy", "--release", "v4"]);
    assert_eq!(l.serving(), "v4");
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(v1)), "the adopted release was not stopped");
    let by_release = assert_no_loss(&stop, handles, &tally, "adopt, deploy, rollback, 2 deploys", 500);
    for r in ["v1", "v2", "v4"] {
        assert!(by_release.get(r).is_some_and(|n| *n > 0), "no request reached {r}: {by_release:?}");
    }
    l.ok(&["status", "--check"]);
}

#[test]
fn an_adoption_nginx_rejects_puts_every_file_back_and_records_nothing() {
    // A leftover `log_format cutover_shop` makes the upstream file cutover writes a duplicate: nginx -t fails.
    let l = Layout::new("    log_format cutover_shop '$remote_addr';");
    l.script_deploy("v0");
    let conf = l.file("nginx/conf/nginx.conf");
    let inc = l.file("nginx/conf/conf.d/service-url.inc");
    let args = l.adopt_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = l.cutover(&args);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("nginx rejected the config"), "{err}");
    assert!(err.contains("duplicate \"log_format\" name \"cutover_shop\""), "{err}");
    assert!(err.contains("restored every file byte for byte"), "{err}");
    assert_eq!(l.file("nginx/conf/nginx.conf"), conf);
    assert_eq!(l.file("nginx/conf/conf.d/service-url.inc"), inc);
    assert!(!l.path().join("nginx/conf/cutover/shop.upstream.conf").exists());
    assert!(!l.config().exists(), "no cutover.toml is left behind");
    assert!(!l.path().join("state/shop/state.json").exists() || l.state()["live"].is_null());
    assert_eq!(l.serving(), "v0", "traffic untouched");
}

#[test]
fn a_dry_run_shows_the_edits_and_the_config_and_writes_nothing() {
    let l = Layout::new("");
    l.script_deploy("v0");
    let conf = l.file("nginx/conf/nginx.conf");
    let mut args = l.adopt_args();
    args.push("--dry-run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = l.cutover(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("-set $service_url http://127.0.0.1:{};", l.ports[0])), "{out}");
    assert!(out.contains("+set $service_url http://shop;  # cutover init --adopt: was"), "{out}");
    assert!(out.contains("+    include "), "{out}");
    assert!(out.contains("[ports]\npool = ["), "{out}");
    assert!(err.contains("dry run: nothing was written or reloaded"), "{err}");
    assert_eq!(l.file("nginx/conf/nginx.conf"), conf);
    assert!(!l.config().exists());
    assert!(!l.path().join("state/shop").exists());
}

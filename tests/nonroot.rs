//! A non-root deploy user, end to end: root runs nginx; the user `nobody` runs cutover, which runs `nginx -t`,
//! `nginx -T` and the reload as root through `sudo -n` (nginx.run_as_root), allowed by exactly the sudoers rule
//! `cutover check` prints. The rule is installed for this test only (a file in /etc/sudoers.d naming this test's
//! paths) and removed after. Also: `status` warns, and `check` fails, when the user's default state directory
//! is not the one another user's default holds state in.

mod common;

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const NOBODY: u32 = 65534;

fn require_root_and(tools: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a sudoers rule and runs cutover as nobody: run it as root (CI does)"
    );
    for t in tools {
        assert!(
            ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().any(|d| Path::new(d).join(t).exists()),
            "{t} is not installed: run .ci/test, which installs it"
        );
    }
}

/// Removes what the test put outside its temp dir, even when it fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

struct Host {
    dir: tempfile::TempDir,
    nginx_port: u16,
    pool: [u16; 2],
}

impl Host {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, nginx_extra: &str, deploy_extra: &str, name: &str) -> String {
        let d = self.path().display();
        format!(
            "[app]\nname = \"{name}\"\nstart = \"exec /usr/bin/python3 {d}/app.py --port {{{{port}}}} --release {{{{release}}}}\"\n\
             stop_timeout = \"5s\"\n\n[ports]\npool = [{}, {}]\n\n[health]\ninterval = \"50ms\"\ndeadline = \"15s\"\n\n\
             [nginx]\nupstream_file = \"nginx/cutover/shop.upstream.conf\"\nprefix = \"nginx\"\nconf = \"conf/nginx.conf\"\n{nginx_extra}\n\
             [deploy]\ndrain_timeout = \"10s\"\nverify = \"200ms\"\n{deploy_extra}\n\n[runtime]\nlog_dir = \"logs\"\n",
            self.pool[0], self.pool[1]
        )
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.path().join("cutover.toml"), text).unwrap();
    }

    /// cutover as nobody, with a clean environment.
    fn as_nobody(&self, args: &[&str]) -> (i32, String, String) {
        outcome(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(self.path().join("bin/cutover"))
                .arg("-c")
                .arg(self.path().join("cutover.toml"))
                .args(args)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", self.path().join("home"))
                .current_dir(self.path()),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.as_nobody(args);
        assert_eq!(code, 0, "cutover {args:?} as nobody exited {code}\n{out}\n{err}");
        out
    }

    fn serving(&self) -> String {
        let (status, body) = http_get(self.nginx_port, "/", Duration::from_secs(5)).unwrap();
        assert_eq!(status, 200, "{body}");
        release_of(&body)
    }

    fn master(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("nginx/logs/nginx.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for pid in pids_in_state(&self.path().join("state/shop/state.json")) {
            signal_group(pid, 9);
        }
        if let Some(pid) = self.master() {
            kill(pid, 3);
            wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
    }
}

fn setup() -> Host {
    let dir = tempfile::Builder::new().prefix("cutover-nonroot-").tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["nginx/conf", "nginx/logs", "nginx/cutover", "state", "logs", "bin", "home"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // What the deploy user owns: the upstream file's directory, its state, its logs, its home.
    for sub in ["nginx/cutover", "state", "logs", "home"] {
        chown(d.join(sub), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // A binary and an app nobody can run (the build and source trees may be private).
    std::fs::copy(env!("CARGO_BIN_EXE_cutover"), d.join("bin/cutover")).unwrap();
    std::fs::set_permissions(d.join("bin/cutover"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(FIXTURE, d.join("app.py")).unwrap();
    std::fs::set_permissions(d.join("app.py"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let host = Host { dir, nginx_port: free_port(), pool: [free_port(), free_port()] };
    let upstream = d.join("nginx/cutover/shop.upstream.conf");
    std::fs::write(
        d.join("nginx/conf/nginx.conf"),
        format!(
            "worker_processes 2;\npid logs/nginx.pid;\nerror_log logs/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    include {};\n    server {{\n        listen 127.0.0.1:{};\n        \
             location / {{ proxy_pass http://shop; }}\n    }}\n}}\n",
            upstream.display(),
            host.nginx_port
        ),
    )
    .unwrap();
    host.write_config(&host.config("", "state_dir = \"state\"", "shop"));
    let (code, out, err) = host.as_nobody(&["render"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&upstream, out).unwrap();
    chown(&upstream, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(start_nginx(&d.join("nginx")));
    host
}

#[test]
fn a_deploy_user_deploys_and_rolls_back_through_sudo_with_the_rule_check_prints() {
    require_root_and(&["sudo", "setpriv", "visudo"]);
    let host = setup();
    // Without root, nginx -t cannot even open nginx's pid file: check says what to set and which rule to add.
    let (code, out, _) = host.as_nobody(&["check"]);
    assert_eq!(code, 8, "{out}");
    let fix = out
        .lines()
        .skip_while(|l| !l.starts_with("FAIL nginx -t "))
        .find(|l| l.trim_start().starts_with("fix: "))
        .unwrap_or_default()
        .to_string();
    assert!(fix.contains("fix: as a non-root user, nginx -t needs root"), "{out}");
    assert!(fix.contains("set nginx.run_as_root = [\"sudo\", \"-n\"]"), "{fix}");
    let rule = fix.split("(visudo -f /etc/sudoers.d/cutover): ").nth(1).unwrap().trim().to_string();
    let nginx = nginx_binary();
    let (p, c) = (format!("{}/", host.path().join("nginx").display()), host.path().join("nginx/conf/nginx.conf"));
    let argv = |a: &str| format!("{} -p {p} -c {} {a}", nginx.display(), c.display());
    assert_eq!(
        rule,
        format!("nobody ALL=(root) NOPASSWD: {}, {}, {}", argv("-t -q"), argv("-T -q"), argv("-s reload"))
    );

    // The rule, for this test only; and the config that uses it.
    let sudoers = PathBuf::from(format!("/etc/sudoers.d/cutover-test-{}", std::process::id()));
    let _cleanup = Cleanup(vec![sudoers.clone()]);
    std::fs::write(&sudoers, format!("{rule}\n")).unwrap();
    std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)).unwrap();
    let v = Command::new("visudo").arg("-cf").arg(&sudoers).output().unwrap();
    assert!(v.status.success(), "visudo rejects the rule: {}", String::from_utf8_lossy(&v.stdout));
    host.write_config(&host.config("run_as_root = [\"sudo\", \"-n\"]\n", "state_dir = \"state\"", "shop"));
    let (code, out, _) = host.as_nobody(&["check"]);
    assert_eq!(code, 0, "{out}");

    host.ok(&["deploy", "--release", "v1"]);
    assert_eq!(host.serving(), "v1");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.path().join("state/shop/state.json")).unwrap()).unwrap();
    let pid = state["live"]["instances"][0]["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534\t")), "the app runs as nobody: {status}");
    let meta = std::fs::metadata(host.path().join("state/shop/state.json")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY, "state belongs to the deploy user");

    // A deploy and a rollback under load, all as nobody, every reload through sudo.
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(host.nginx_port, 4, 100_000, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let (code, _, err) = host.as_nobody(&["deploy", "--release", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reloaded (new workers up)"), "{err}");
    assert_eq!(host.serving(), "v2");
    host.ok(&["rollback"]);
    assert_eq!(host.serving(), "v1");
    assert_no_loss(&stop, handles, &tally, "non-root deploy and rollback through sudo", 100);
    host.ok(&["status", "--check"]);
}

#[test]
fn a_state_directory_another_users_default_holds_is_reported() {
    require_root_and(&["setpriv"]);
    let host = setup();
    // An app whose state root keeps in /var/lib/cutover; nobody's default is ~/.local/state/cutover.
    let app = format!("nonroot{}", std::process::id());
    let root_state = PathBuf::from("/var/lib/cutover").join(&app);
    let mut cleanup = vec![root_state.clone()];
    if !Path::new("/var/lib/cutover").exists() {
        cleanup.push(PathBuf::from("/var/lib/cutover"));
    }
    let _cleanup = Cleanup(cleanup);
    std::fs::create_dir_all(&root_state).unwrap();
    host.write_config(&host.config("", "", &app));
    let (code, _, err) = host.as_nobody(&["status"]);
    assert_eq!(code, 0, "{err}");
    let mine = host.path().join("home/.local/state/cutover").join(&app);
    assert!(
        err.contains(&format!(
            "cutover: warning: this user's state for {app} is {}, but {} also holds state for it (another user's \
             default): set deploy.state_dir so that every user that runs cutover shares one state",
            mine.display(),
            root_state.display()
        )),
        "{err}"
    );
    let (code, out, _) = host.as_nobody(&["check"]);
    assert_eq!(code, 8, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL state shared       deploy.state_dir is unset, and besides this user's {}",
            mine.display()
        )),
        "{out}"
    );
    // With deploy.state_dir set, there is one state whoever runs cutover: no warning.
    host.write_config(&host.config("", "state_dir = \"state\"", &app));
    let (code, _, err) = host.as_nobody(&["status"]);
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "{err}");
}

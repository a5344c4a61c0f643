//! Trust boundaries through the real binary: as root, cutover refuses (exit 2, before anything runs) files that
//! other users can change, and takes them once their modes are safe; as an unprivileged user it warns; the
//! generation endpoint `init` writes answers loopback only.
//!
//! These tests change file owners, run cutover as `nobody` and create a network namespace: they run as root
//! (CI does) and fail with a clear message otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests change file owners, run cutover as another user and create a network namespace: run them as \
         root (CI does)"
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

/// A command the tests need, found on PATH or in the sbin dirs, or a failure that says what to install.
fn tool(cmd: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{cmd} is not installed: apt-get install {package} (or run .ci/test, which does)"))
}

/// An Env whose app and `before_start` hook leave marker files, so a test can tell that nothing ran.
fn marked() -> Env {
    require_root();
    let env = Env::new();
    let cfg = env
        .default_config()
        .replace("start = \"exec ", &format!("start = \"touch {}; exec ", env.path().join("started").display()));
    env.write_config(&format!("{cfg}\n[hooks]\n{}\n", hook_line(&env)));
    env
}

fn hook_line(env: &Env) -> String {
    format!("before_start = \"touch {}\"", env.path().join("hook-ran").display())
}

/// Exit 2, and nothing ran: no app started, no hook, no state written, the upstream file as it was.
fn refused(env: &Env, upstream_before: &str) -> String {
    let (code, out, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!env.path().join("started").exists(), "the app was started");
    assert!(!env.path().join("hook-ran").exists(), "a hook ran");
    assert!(!env.path().join("state/shop").exists(), "state was written");
    assert_eq!(env.upstream(), upstream_before, "the upstream file changed");
    for p in &env.pool {
        assert!(std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok(), "something listens on pool port {p}");
    }
    err
}

/// The same deploy passes once the files are safe, and really runs (so `refused` could have seen it).
fn accepted(env: &Env) {
    let (code, out, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(env.path().join("started").exists() && env.path().join("hook-ran").exists());
    assert_eq!(env.serving(), "v1");
}

fn refusal(lines: &[String]) -> String {
    format!(
        "error: refusing to run as root: users other than root can change these files, and cutover takes commands or \
         nginx config from them:\n{}\nfix them as shown, or pass --insecure-config to run anyway\n",
        lines.iter().map(|l| format!("  {l}\n")).collect::<String>().trim_end()
    )
}

#[test]
fn a_world_writable_config_is_refused_until_its_mode_is_safe() {
    let env = marked();
    let before = env.upstream();
    let cfg = env.config.display().to_string();
    chmod(&env.config, 0o666);
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!(
            "config {cfg} is writable by group and others (owner root, mode 0666); fix: chmod go-w {cfg}"
        )])
    );
    chmod(&env.config, 0o644);
    accepted(&env);
}

#[test]
fn a_config_owned_by_another_user_is_refused_until_root_owns_it() {
    let env = marked();
    let before = env.upstream();
    let cfg = env.config.display().to_string();
    chown(&env.config, NOBODY);
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!("config {cfg} is owned by nobody (mode 0644); fix: chown root {cfg}")])
    );
    chown(&env.config, 0);
    accepted(&env);
}

#[test]
fn a_config_in_a_world_writable_directory_without_the_sticky_bit_is_refused() {
    let env = marked();
    let before = env.upstream();
    let (cfg, dir) = (env.config.display().to_string(), env.path().display().to_string());
    chmod(env.path(), 0o777);
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!(
            "config {cfg}: directory {dir} is writable by group and others without the sticky bit (owner root, \
             mode 0777); fix: chmod go-w {dir}"
        )])
    );
    // With the sticky bit (as /tmp has), root's own config there is fine: nobody else can replace it.
    chmod(env.path(), 0o1777);
    accepted(&env);
}

#[test]
fn a_group_writable_env_file_is_refused_until_its_mode_is_safe() {
    let env = marked();
    let before = env.upstream();
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace("[app]\n", "[app]\nenv_file = \"app.env\"\n");
    env.write_config(&cfg);
    let file = env.path().join("app.env");
    std::fs::write(&file, "DATABASE_PASSWORD=hunter2\n").unwrap();
    chmod(&file, 0o660);
    let f = file.display().to_string();
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!("app.env_file {f} is writable by its group (owner root, mode 0660); fix: chmod go-w {f}")])
    );
    chmod(&file, 0o600);
    accepted(&env);
}

#[test]
fn a_group_writable_template_is_refused_until_its_mode_is_safe() {
    let env = marked();
    let before = env.upstream();
    let tpl = env.path().join("upstream.tera");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera"), &tpl).unwrap();
    chmod(&tpl, 0o664);
    let cfg =
        std::fs::read_to_string(&env.config).unwrap().replace("[nginx]\n", "[nginx]\ntemplate = \"upstream.tera\"\n");
    env.write_config(&cfg);
    let t = tpl.display().to_string();
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!("nginx.template {t} is writable by its group (owner root, mode 0664); fix: chmod go-w {t}")])
    );
    chmod(&tpl, 0o644);
    accepted(&env);
}

#[test]
fn hook_scripts_are_judged_like_the_config_and_every_unsafe_file_is_listed() {
    let env = marked();
    let (sh, direct) = (env.path().join("before.sh"), env.path().join("after.sh"));
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        &hook_line(&env),
        &format!(
            "before_start = \"sh {} && touch {}\"\nafter_switch = \"{} --notify\"",
            sh.display(),
            env.path().join("hook-ran").display(),
            direct.display()
        ),
    );
    env.write_config(&cfg);
    std::fs::write(&sh, "exit 0\n").unwrap();
    std::fs::write(&direct, "#!/bin/sh\ntouch \"$(dirname \"$0\")/after-ran\"\n").unwrap();
    chmod(&sh, 0o646);
    chmod(&direct, 0o755);
    chown(&direct, NOBODY);
    let before = env.upstream();
    let (s, d) = (sh.display().to_string(), direct.display().to_string());
    assert_eq!(
        refused(&env, &before),
        refusal(&[
            format!("hooks.before_start {s} is writable by others (owner root, mode 0646); fix: chmod go-w {s}"),
            format!("hooks.after_switch {d} is owned by nobody (mode 0755); fix: chown root {d}"),
        ])
    );
    chmod(&sh, 0o644);
    chown(&direct, 0);
    accepted(&env);
    assert!(env.path().join("after-ran").exists(), "the after_switch script ran");
}

#[test]
fn a_symlinked_config_is_judged_where_it_leads() {
    let env = marked();
    let before = env.upstream();
    // The link sits in the safe test dir; the file it leads to sits in a world-writable one.
    let open = env.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let real = open.join("cutover.toml");
    std::fs::rename(&env.config, &real).unwrap();
    std::os::unix::fs::symlink("open/cutover.toml", &env.config).unwrap();
    let (cfg, o) = (env.config.display().to_string(), open.display().to_string());
    assert_eq!(
        refused(&env, &before),
        refusal(&[format!(
            "config {cfg} (-> {}): directory {o} is writable by group and others without the sticky bit (owner \
             root, mode 0777); fix: chmod go-w {o}",
            real.display()
        )])
    );
    chmod(&open, 0o755);
    accepted(&env);
}

#[test]
fn insecure_config_runs_anyway_with_a_warning() {
    let env = marked();
    let cfg = env.config.display().to_string();
    chmod(&env.config, 0o666);
    let (code, _, err) = env.run(&["--insecure-config", "deploy", "--release", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with(&format!(
            "cutover: warning: --insecure-config: using it anyway: config {cfg} is writable by group and others \
             (owner root, mode 0666); fix: chmod go-w {cfg}\n"
        )),
        "{err}"
    );
    assert_eq!(env.serving(), "v1");
}

#[test]
fn check_lists_each_file_with_ok_or_fail_and_runs_nothing_as_root_when_one_fails() {
    let env = marked();
    let tpl = env.path().join("upstream.tera");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/upstream.conf.tera"), &tpl).unwrap();
    chmod(&tpl, 0o644);
    let cfg =
        std::fs::read_to_string(&env.config).unwrap().replace("[nginx]\n", "[nginx]\ntemplate = \"upstream.tera\"\n");
    env.write_config(&cfg);
    let up = env.upstream_path();
    let (c, t, u) = (env.config.display(), tpl.display(), up.display());
    // All safe: the trust items are ok, and the checks that run nginx follow.
    let (code, out, err) = env.run(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    let trust: Vec<&str> = out.lines().filter(|l| l.contains(" trust ")).collect();
    assert_eq!(
        trust,
        [
            format!("ok   trust              config {c} (owner root, mode 0644)"),
            format!("ok   trust              nginx.template {t} (owner root, mode 0644)"),
            format!("ok   trust              upstream file {u} (owner root, mode 0644)"),
        ]
    );
    assert!(out.contains("ok   nginx -t "), "{out}");
    // One group-writable file: FAIL with its fix, exit 2, and nginx is not run from that config.
    chmod(&tpl, 0o664);
    let (code, out, err) = env.run(&["check"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "ok   config             {c} is valid\n\
             ok   trust              config {c} (owner root, mode 0644)\n\
             FAIL trust              nginx.template {t} is writable by its group (owner root, mode 0664)\n     \
             {:18} fix: chmod go-w {t}\n\
             ok   trust              upstream file {u} (owner root, mode 0644)\n\
             not ready: fix the items marked FAIL\n",
            ""
        )
    );
    // --json says the same, item by item.
    let (_, out, _) = env.run(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fails: Vec<&serde_json::Value> = v["items"].as_array().unwrap().iter().filter(|i| i["ok"] == false).collect();
    assert_eq!(fails.len(), 1, "{v}");
    assert_eq!(fails[0]["name"], "trust");
    assert_eq!(fails[0]["fix"], format!("chmod go-w {t}"));
    // With --insecure-config the rest runs, and the FAIL still makes the host not ready (exit 8).
    let (code, out, _) = env.run(&["--insecure-config", "check"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("ok   nginx -t ") && out.contains("FAIL trust "), "{out}");
}

/// A uid with no name on this machine, so that messages show the number.
fn unnamed_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    (4242..5000).find(|u| !passwd.lines().any(|l| l.split(':').nth(2) == Some(&u.to_string()))).unwrap()
}

#[test]
fn as_an_unprivileged_user_the_same_checks_warn_and_the_command_runs() {
    require_root();
    let setpriv = tool("setpriv", "util-linux");
    let d = tempfile::Builder::new().prefix("cutover-nobody-").tempdir().unwrap();
    let dir = d.path();
    // nobody's own dir in /tmp, with a copy of the binary nobody can run (the build dir may be private).
    let bin = dir.join("cutover");
    std::fs::copy(env!("CARGO_BIN_EXE_cutover"), &bin).unwrap();
    chmod(&bin, 0o755);
    let (cfg, envf) = (dir.join("cutover.toml"), dir.join("app.env"));
    std::fs::write(
        &cfg,
        "[app]\nname = \"shop\"\nstart = \"app --port {{port}}\"\nenv_file = \"app.env\"\n[ports]\npool = [8081, 8082]\n\
         [nginx]\nupstream_file = \"shop.upstream.conf\"\n[deploy]\nstate_dir = \"state\"\n",
    )
    .unwrap();
    std::fs::write(&envf, "SECRET=x\n").unwrap();
    for p in [dir, cfg.as_path(), envf.as_path()] {
        chown(p, NOBODY);
    }
    chmod(dir, 0o755);
    chmod(&envf, 0o600);
    chmod(&cfg, 0o666);
    let other = unnamed_uid();
    chown(&envf, other);
    let as_nobody = || {
        outcome(
            Command::new(&setpriv)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&bin)
                .arg("-c")
                .arg(&cfg)
                .arg("render")
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .current_dir(dir),
        )
    };
    let (c, e) = (cfg.display().to_string(), envf.display().to_string());
    let (code, out, err) = as_nobody();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upstream shop {"), "the command ran: {out}");
    assert_eq!(
        err,
        format!(
            "cutover: warning: config {c} is writable by group and others (owner nobody, mode 0666); fix: chmod go-w \
             {c} (as root, cutover refuses this)\n\
             cutover: warning: app.env_file {e} is owned by {other} (mode 0600); fix: chown nobody {e} (as root, \
             cutover refuses this)\n"
        )
    );
    // As root the very same files are refused, and nobody's directory too: root trusts only root.
    let root = Command::new(&bin).arg("-c").arg(&cfg).arg("render").output().unwrap();
    assert_eq!(root.status.code(), Some(2));
    let dir = dir.display();
    assert_eq!(
        String::from_utf8_lossy(&root.stderr),
        refusal(&[
            format!(
                "config {c} is owned by nobody and writable by group and others (mode 0666); directory {dir} is owned \
                 by nobody (mode 0755); fix: chown root {c} && chmod go-w {c} && chown root {dir}"
            ),
            format!(
                "app.env_file {e} is owned by {other} (mode 0600); directory {dir} is owned by nobody (mode 0755); \
                 fix: chown root {e} && chown root {dir}"
            ),
        ])
    );
    // Safe for nobody: its own files, not writable by others. No warning.
    chmod(&cfg, 0o644);
    chown(&envf, NOBODY);
    let (code, _, err) = as_nobody();
    assert_eq!((code, err.as_str()), (0, ""));
}

/// A network namespace joined to this one by a veth pair on a private /30; removed on drop, also when the test
/// fails half-way.
struct Netns {
    ip: PathBuf,
    name: String,
    host_if: String,
    /// The address on this side (`host`) and in the namespace (`peer`).
    host: String,
    peer: String,
}

impl Netns {
    fn new() -> Netns {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ip = tool("ip", "iproute2");
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(n < 10, "one namespace per test, a few per run");
        let id = std::process::id();
        // 198.18.0.0/15 is reserved for network tests (RFC 2544): pick a /30 no interface here uses.
        let used = String::from_utf8(Command::new(&ip).args(["-o", "-4", "addr"]).output().unwrap().stdout).unwrap();
        let block = (0..16384u32)
            .map(|i| (id * 8 + n + i) % 16384)
            .find(|b| !used.contains(&format!("198.{}.{}.", 18 + b / 8192, (b % 8192) / 64)))
            .expect("no free 198.18.0.0/15 block");
        let base = |n: u32| format!("198.{}.{}.{}", 18 + block / 8192, (block % 8192) / 64, (block % 64) * 4 + n);
        let ns = Netns {
            name: format!("cutover-test-{id}-{n}"),
            host_if: format!("cvt{}{n}a", id % 100_000),
            host: base(1),
            peer: base(2),
            ip,
        };
        let peer_if = format!("cvt{}{n}b", id % 100_000);
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer_if]);
        ns.ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ns.ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &ns.host_if]);
        ns.ip(&["link", "set", &ns.host_if, "up"]);
        ns.ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.peer), "dev", &peer_if]);
        ns.ip(&["-n", &ns.name, "link", "set", &peer_if, "up"]);
        ns.ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new(&self.ip).args(args).output().unwrap();
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// GET `url` from inside the namespace: status and body.
    fn get(&self, url: &str) -> (u16, String) {
        let client = "import sys, http.client, urllib.parse\n\
                      u = urllib.parse.urlsplit(sys.argv[1])\n\
                      c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)\n\
                      c.request('GET', u.path)\n\
                      r = c.getresponse()\n\
                      print(r.status, r.read().decode().strip())\n";
        let out =
            Command::new(&self.ip).args(["netns", "exec", &self.name, "python3", "-c", client, url]).output().unwrap();
        assert!(out.status.success(), "client in the namespace failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let (status, body) = text.trim_end().split_once(' ').unwrap_or((text.trim_end(), ""));
        (status.parse().unwrap(), body.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair; the link is deleted first in case the move never happened.
        let _ = Command::new(&self.ip).args(["link", "del", &self.host_if]).output();
        let _ = Command::new(&self.ip).args(["netns", "del", &self.name]).output();
    }
}

#[test]
fn the_generation_endpoint_init_writes_answers_loopback_only() {
    require_root();
    // The site file `cutover init` writes, cut down to its generation endpoint.
    let d = tempfile::Builder::new().prefix("cutover-init-").tempdir().unwrap();
    let site = d.path().join("site.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("-c")
        .arg(d.path().join("cutover.toml"))
        .args(["init", "--name", "shop", "--server-name", "shop.example.com", "--site"])
        .arg(&site)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(d.path().join("cutover.toml")).unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::metadata(&site).unwrap().permissions().mode() & 0o7777, 0o644);
    let text = std::fs::read_to_string(&site).unwrap();
    let start =
        text.find("    location = /.cutover {").expect("init writes the generation endpoint, not commented out");
    let end = text.find("    location / {").unwrap();
    let endpoint = &text[start..end];
    assert!(endpoint.contains("allow 127.0.0.1;\n        allow ::1;\n        deny all;"), "{endpoint}");

    let ns = Netns::new();
    let outside = free_port();
    let env = Env::with(Opts {
        server_extra: format!("        listen {}:{outside};\n{endpoint}", ns.host),
        ..Opts::default()
    });
    // cutover confirms its reloads through that endpoint, over loopback.
    let url = format!("http://127.0.0.1:{}/.cutover", env.nginx_port);
    env.write_config(&env.default_config().replace("[nginx]\n", &format!("[nginx]\nconfirm_url = \"{url}\"\n")));
    let (code, _, err) = env.run(&["deploy", "--release", "v1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{url} answers generation 1")), "{err}");
    assert_eq!(env.get("/.cutover").unwrap(), (200, "1\n".to_string()), "loopback gets the generation");
    // From the namespace, the same nginx: the app answers, the endpoint does not.
    let (status, body) = ns.get(&format!("http://{}:{outside}/", ns.host));
    assert_eq!(status, 200, "{body}");
    assert_eq!(release_of(&body), "v1");
    let (status, body) = ns.get(&format!("http://{}:{outside}/.cutover", ns.host));
    assert_eq!(status, 403, "a non-loopback client got {status}: {body}");
    assert!(body.contains("403 Forbidden"), "nginx's own 403 page, not the generation: {body}");
}

// Hook lines as people write them: strict-mode shells (`bash -eu -o pipefail`), brace groups, and the usual
// wrappers (`timeout`, `nice`, `setsid`). The script each runs is as much a command cutover takes as a bare
// `/srv/hooks/x.sh`, so a copy others can change is refused the same way.
#[test]
fn hook_scripts_behind_shell_options_braces_and_wrappers_are_judged_too() {
    let env = marked();
    let script = env.path().join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    chmod(&script, 0o777);
    let s = script.display().to_string();
    let forms = [
        format!("bash -eu -o pipefail {s}"),
        format!("sh -o errexit {s}"),
        format!("{{ {s}; }}"),
        format!("timeout 60 {s}"),
        format!("timeout -s KILL 5m {s}"),
        format!("nice -n 10 {s}"),
        format!("setsid {s}"),
    ];
    let before = env.upstream();
    let base = std::fs::read_to_string(&env.config).unwrap();
    let mut missed = Vec::new();
    for form in &forms {
        let cfg = base.replace(&hook_line(&env), &format!("{}\nafter_switch = {:?}", hook_line(&env), form));
        env.write_config(&cfg);
        let (code, out, err) = env.run(&["deploy", "--release", "v1", "--dry-run"]);
        if code != 2 || !err.contains(&format!("hooks.after_switch {s} is writable by group and others")) {
            let said = err.lines().find(|l| l.contains("error")).unwrap_or("").to_string();
            missed.push(format!("{form:?}: exit {code} {said}{}", if out.is_empty() { "" } else { "(a plan)" }));
        }
    }
    assert!(missed.is_empty(), "hook scripts others can change were not refused:\n{}", missed.join("\n"));
    // And with the script safe, every form deploys.
    chmod(&script, 0o755);
    env.write_config(&base.replace(&hook_line(&env), &format!("{}\nafter_switch = {:?}", hook_line(&env), forms[0])));
    assert_eq!(env.upstream(), before);
    accepted(&env);
}

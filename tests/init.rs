//! `cutover init` writes a site that cannot lose to a `default_server`: it names the site (`--server-name`, else
//! the host's fully qualified name, else it refuses and says how), says what to do about Debian's default site,
//! writes one state directory for every user, and the sudoers rule a non-root deploy user needs. A fake
//! `hostname` on PATH stands in for hosts with and without a usable name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn init(dir: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
    c.env_remove("CUTOVER_CONFIG").current_dir(dir).arg("-c").arg(dir.join("cutover.toml")).arg("init");
    c.args(["--name", "shop", "--site"]).arg(dir.join("site.conf")).args(args);
    if let Some(p) = path {
        c.env("PATH", format!("{}:{}", p.display(), std::env::var("PATH").unwrap_or_default()));
    }
    c.output().unwrap()
}

/// A directory with a `hostname` that answers `--fqdn` with `name`.
fn fake_hostname(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("bin-{}", name.replace('.', "-")));
    std::fs::create_dir_all(&bin).unwrap();
    let h = bin.join("hostname");
    std::fs::write(&h, format!("#!/bin/sh\n[ \"$1\" = --fqdn ] && echo {name} && exit 0\necho {name}\n")).unwrap();
    std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn the_site_is_named_by_the_flag_and_the_config_shares_state_and_shows_the_sudoers_rule() {
    let d = tempfile::tempdir().unwrap();
    let out = init(d.path(), &["--server-name", "Shop.Example.com", "--server-name", "www.shop.example.com"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let site = std::fs::read_to_string(d.path().join("site.conf")).unwrap();
    assert!(site.contains("    listen 80;\n"), "{site}");
    assert!(site.contains("    server_name shop.example.com www.shop.example.com;\n"), "{site}");
    assert!(!site.contains("server_name _"), "{site}");
    let toml = std::fs::read_to_string(d.path().join("cutover.toml")).unwrap();
    assert!(toml.contains("\nstate_dir = \"/var/lib/cutover\"\n"), "one state for every user: {toml}");
    let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
    assert!(
        toml.contains(&format!("#   deploy ALL=(root) NOPASSWD: {nginx} -t -q, {nginx} -T -q, {nginx} -s reload\n")),
        "{toml}"
    );
    assert!(toml.contains("# run_as_root = [\"sudo\", \"-n\"]\n"), "{toml}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What to do about Debian's default site, when this host has one enabled.
    let default = Path::new("/etc/nginx/sites-enabled/default");
    assert_eq!(
        stdout.contains("/etc/nginx/sites-enabled/default is enabled: it is the default server of port 80"),
        default.exists(),
        "{stdout}"
    );
    assert!(!stdout.contains("this host's name"), "{stdout}");
}

#[test]
fn without_the_flag_the_hosts_fqdn_names_the_site_or_init_refuses() {
    let d = tempfile::tempdir().unwrap();
    let named = fake_hostname(d.path(), "app1.example.com");
    let out = init(d.path(), &[], Some(&named));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let site = std::fs::read_to_string(d.path().join("site.conf")).unwrap();
    assert!(site.contains("    server_name app1.example.com;\n"), "{site}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "the site's server_name is this host's name, app1.example.com; if users reach the app by another name, \
             run again with --server-name NAME --force"
        ),
        "{stdout}"
    );

    // A host whose only name is a short one: refused, with the flag to use; nothing written.
    let e = tempfile::tempdir().unwrap();
    let short = fake_hostname(e.path(), "buildbox");
    let out = init(e.path(), &[], Some(&short));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "error: the site needs the name users reach the app by, and this host has no fully qualified name to use \
         (`hostname --fqdn` gives none): pass --server-name shop.example.com. A site without a name gets requests \
         only as the default server of its port, which nginx's own default site already is on Debian\n"
    );
    assert!(!e.path().join("site.conf").exists() && !e.path().join("cutover.toml").exists());
    // `_` is no name a request can match.
    let out = init(e.path(), &["--server-name", "_"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--server-name \"_\" is not a name a request's Host header can match"));
}

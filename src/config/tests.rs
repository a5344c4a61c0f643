//! Loading and validating `cutover.toml`.
use super::*;
use crate::exit;
use std::path::Path;

const MINIMAL: &str = r#"
[app]
name = "shop"
start = "python3 app.py --port {{port}}"

[ports]
pool = [8081, 8082]

[nginx]
upstream_file = "shop.upstream.conf"
"#;

fn parse(text: &str) -> Result<Config> {
    Config::parse(text, Path::new("/srv/cutover.toml"))
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

#[test]
fn minimal_config_gets_defaults_and_absolute_paths() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.pool(), vec![8081, 8082]);
    assert_eq!(c.nginx.upstream_file, PathBuf::from("/srv/shop.upstream.conf"));
    assert_eq!(c.health.successes, 2);
    assert_eq!(c.deploy.strategy, Strategy::BlueGreen);
    assert_eq!(c.nginx.reload, Reload::Signal);
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = MINIMAL.replace("pool = [8081, 8082]", "pool = [8081, 8082]\nbnid = \"127.0.0.1\"");
    let e = err(&text);
    assert!(e.starts_with("invalid config /srv/cutover.toml: TOML parse error at line 8, column 1"), "{e}");
    assert!(e.contains("unknown field `bnid`"), "{e}");
}

#[test]
fn injection_attempts_are_rejected_where_they_are_written() {
    for (needle, replacement, expect) in [
        (r#"name = "shop""#, r#"name = "x; include /etc/shadow""#, "invalid app name"),
        (r#"name = "shop""#, r#"name = "}""#, "invalid app name"),
        (r#"name = "shop""#, "name = \"a\\nb\"", "invalid app name"),
        ("pool = [8081, 8082]", r#"pool = ["8081; server 10.0.0.1:80", 8082]"#, "invalid type"),
        ("pool = [8081, 8082]", "pool = [8081, 8082]\nbind = \"127.0.0.1; server 10.0.0.1\"", "invalid bind address"),
        ("pool = [8081, 8082]", "pool = [70000, 8082]", "invalid port 70000"),
    ] {
        let e = err(&MINIMAL.replace(needle, replacement));
        assert!(e.contains("TOML parse error at line"), "{e}");
        assert!(e.contains(expect), "{e}");
        assert_eq!(exit::code_of(&parse(&MINIMAL.replace(needle, replacement)).unwrap_err()), exit::Code::Usage);
    }
}

#[test]
fn absurd_or_zero_durations_and_statuses_name_their_line() {
    let e = err(&format!("{MINIMAL}\n[deploy]\ndrain_timeout = \"18446744073709551615s\"\n"));
    assert!(e.contains("TOML parse error at line 13") && e.contains("invalid duration"), "{e}");
    let e = err(&format!("{MINIMAL}\n[health]\ndeadline = \"0s\"\n"));
    assert!(e.contains("line 13") && e.contains("must be above 0"), "{e}");
    let e = err(&MINIMAL.replace("shop.upstream.conf\"", "shop.upstream.conf\"\nconfirm_timeout = \"0s\""));
    assert!(e.contains("line 11") && e.contains("must be above 0"), "{e}");
    let e = err(&format!("{MINIMAL}\n[health]\nexpect_status = 700\n"));
    assert!(e.contains("invalid HTTP status 700: use 100 to 599"), "{e}");
    let e = err(&MINIMAL.replace("--port {{port}}\"", "--port {{port}} &\""));
    assert!(e.contains("line 4") && e.contains("ends with `&`"), "{e}");
}

#[test]
fn durations_are_human() {
    let c = parse(&format!("{MINIMAL}\n[health]\ninterval = \"100ms\"\ndeadline = \"2m\"\n")).unwrap();
    assert_eq!(c.health.interval.0, Duration::from_millis(100));
    assert_eq!(c.health.deadline.0, Duration::from_secs(120));
    let e = err(&format!("{MINIMAL}\n[health]\ninterval = \"soon\"\n"));
    assert!(e.contains("invalid duration \"soon\""), "{e}");
}

#[test]
fn pool_must_fit_two_generations() {
    let e = err(&format!("{MINIMAL}\n[deploy]\ninstances = 2\n"));
    assert!(
        e.contains("ports.pool has 2 port(s) but deploy.strategy = \"blue-green\" with 2 instance(s) needs 4"),
        "{e}"
    );
    // Rolling without surge replaces instances in place: it needs no spare port.
    let c = parse(&format!("{MINIMAL}\n[deploy]\ninstances = 2\nstrategy = \"rolling\"\n[rolling]\nsurge = false\n"));
    assert!(c.is_ok(), "{:#}", c.unwrap_err());
    let e = err(&format!("{MINIMAL}\n[deploy]\ninstances = 2\nstrategy = \"rolling\"\n"));
    assert!(e.contains("needs 3"), "{e}");
}

#[test]
fn release_names_are_inert() {
    assert!("v42".parse::<Release>().is_ok());
    assert!("2026.11.23-abc_1".parse::<Release>().is_ok());
    for bad in ["", "-x", "v1;rm", "v1 x", "a/b", "$(id)", "v1\n"] {
        assert!(bad.parse::<Release>().is_err(), "{bad:?}");
    }
}

#[test]
fn rolling_without_surge_may_not_take_every_instance_out_and_all_at_once_needs_one_more_port() {
    let rolling =
        |more: &str| format!("{MINIMAL}\n[deploy]\ninstances = 2\nstrategy = \"rolling\"\n[rolling]\n{more}\n");
    let e = err(&rolling("surge = false\nbatch = 2"));
    assert!(e.contains("rolling.batch 2 with rolling.surge = false takes all 2 instance(s) out at once"), "{e}");
    assert!(parse(&rolling("surge = false\nbatch = 1")).is_ok());
    let one = MINIMAL.replace("[ports]\npool = [8081, 8082]", "[ports]\npool = [8081]");
    let e = err(&format!("{one}\n[deploy]\nstrategy = \"all-at-once\"\n"));
    assert!(e.contains("needs 2: the new release starts on the ports of the old one, and nginx answers"), "{e}");
    let c = parse(&format!("{MINIMAL}\n[maintenance]\nretry_after = \"1500ms\"\n")).unwrap();
    assert_eq!(c.maintenance.retry_after_secs(), 2, "whole seconds, rounded up");
    assert_eq!(parse(MINIMAL).unwrap().maintenance.retry_after_secs(), 5);
}

#[test]
fn the_release_directory_comes_from_release_dir_or_the_start_command() {
    let c = parse(&MINIMAL.replace(
        "start = \"python3 app.py --port {{port}}\"",
        "start = \"exec java -jar /srv/shop/releases/{{release}}/shop.jar --port={{port}}\"",
    ))
    .unwrap();
    assert_eq!(c.release_dir("v42"), Some(PathBuf::from("/srv/shop/releases/v42")));
    // A file named after the release is not a release directory.
    let c = parse(&MINIMAL.replace("--port {{port}}", "--port {{port}} $(cat /etc/flags/{{release}})")).unwrap();
    assert_eq!(c.release_dir("v42"), None);
    let c = parse(&MINIMAL.replace("[ports]", "release_dir = \"releases/{{release}}\"\n\n[ports]")).unwrap();
    assert_eq!(c.release_dir("v1"), Some(PathBuf::from("/srv/releases/v1")));
    let e = err(&MINIMAL.replace("[ports]", "release_dir = \"releases\"\n\n[ports]"));
    assert!(e.contains("app.release_dir must contain {{release}}"), "{e}");
}

#[test]
fn runtime_keys_load_and_a_per_port_workdir_is_refused() {
    let text = MINIMAL.replace(
        "[ports]",
        "workdir = \"/srv/shop/{{release}}\"\nuser = \"shop\"\ninherit_env = [\"JAVA_HOME\"]\n\n[runtime]\nkind = \"systemd\"\n\
         systemctl = [\"sudo\", \"systemctl\"]\nlog_max_size = \"1MiB\"\n\n[ports]",
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.runtime.kind, Some(RuntimeKind::Systemd));
    assert_eq!(c.runtime.systemctl, ["sudo", "systemctl"]);
    assert_eq!(c.runtime.unit_dir, PathBuf::from("/etc/systemd/system"));
    assert_eq!(c.runtime.log_max_size.0, 1 << 20);
    let e = err(&MINIMAL.replace("[ports]", "workdir = \"/srv/{{port}}\"\n\n[ports]"));
    assert!(e.contains("app.workdir /srv/{{port}} holds {{port}}"), "{e}");
    let e = err(&MINIMAL.replace("[ports]", "env = { PORT = \"1\" }\n\n[ports]"));
    assert!(e.contains("app.env sets PORT, which cutover sets itself"), "{e}");
    let e = err(&MINIMAL.replace("[ports]", "user = \"root\\nUser=x\"\n\n[ports]"));
    assert!(e.contains("invalid user or group name"), "{e}");
}

//! The command line a CI job or an SSH session uses, through the real binary: config lookup with --app, release
//! names derived from CI refs, and the man pages and completions the package installs.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The real binary with no config from the caller's environment, run in `dir`.
fn cutover_in(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
    c.env_remove("CUTOVER_CONFIG").current_dir(dir);
    c
}

#[test]
fn app_finds_the_working_directory_config_of_that_app() {
    let env = Env::new();
    env.ok(&["deploy", "--release", "v1"]);
    let mut c = cutover_in(env.path());
    c.args(["--app", "shop", "status", "--json"]);
    let (code, out, err) = outcome(&mut c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["live"]["release"], "v1");
    assert_eq!(err, "", "nothing to say when ./cutover.toml is the app's");
}

#[test]
fn app_passes_over_another_apps_config_and_lists_every_path_tried() {
    let env = Env::new();
    // A name no host has a /etc/cutover file for; the lookup only reads /etc/cutover.
    let app = format!("nosuchapp{}", std::process::id());
    let mut c = cutover_in(env.path());
    c.args(["--app", &app, "status"]);
    let (code, out, err) = outcome(&mut c);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    let local = format!("{} (./cutover.toml)", env.path().join("cutover.toml").display());
    let expected = format!(
        "error: no config found. Tried, in order:\n  \
         {local} is the config of app \"shop\", not \"{app}\"\n  \
         /etc/cutover/{app}.toml: not found\n  \
         /etc/cutover/cutover.toml"
    );
    assert!(err.starts_with(&expected), "{err}");
    // The shared /etc file is not found on a test machine, or (a host with one) it is another app's.
    let last = format!(
        "\nWrite one with `cutover init`, put it in /etc/cutover/{app}.toml, or name it with -c PATH or $CUTOVER_CONFIG.\n"
    );
    assert!(err.ends_with(&last), "{err}");
    assert_eq!(err.lines().count(), 5, "{err}");
}

#[test]
fn an_explicit_config_of_another_app_is_refused() {
    let env = Env::new();
    let (code, out, err) = env.run(&["--app", "blog", "status"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        format!(
            "error: {} (from -c or $CUTOVER_CONFIG) is the config of app \"shop\", not \"blog\" (--app); drop one of \
             the two\n",
            env.config.display()
        )
    );
    let (code, _, err) = env.run(&["--app", "shop", "status"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn release_from_ref_derives_the_name_in_a_dry_run_and_a_deploy() {
    let env = Env::new();
    let (code, out, err) = env.run(&["deploy", "--release-from-ref", "refs/heads/feature/x", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("plan: deploy feature-x (blue-green) for app shop\n"), "{out}");
    assert!(err.starts_with("cutover: release feature-x (from ref refs/heads/feature/x)\n"), "{err}");
    let plan = env.json(&["deploy", "--release-from-ref", "jenkins-myorg/myapp/main-42", "--dry-run"]);
    assert_eq!(plan["plan"]["release"], "jenkins-myorg-myapp-main-42");
    assert!(!env.path().join("state/shop/state.json").exists(), "a dry run writes no state");

    let d = env.json(&["deploy", "--release-from-ref", "jenkins-myorg/myapp/main-42"]);
    assert_eq!(d["release"], "jenkins-myorg-myapp-main-42");
    assert_eq!(env.serving(), "jenkins-myorg-myapp-main-42");
}

#[test]
fn release_and_release_from_ref_exclude_each_other_and_one_is_needed() {
    let env = Env::new();
    let (code, _, err) = env.run(&["deploy", "--release", "v1", "--release-from-ref", "main"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: the argument '--release <RELEASE>' cannot be used with '--release-from-ref <REF>'\n"),
        "{err}"
    );
    let (code, _, err) = env.run(&["deploy"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "error: the following required arguments were not provided:\n  <--release <RELEASE>|--release-from-ref <REF>>\n"
        ),
        "{err}"
    );
    let (code, _, err) = env.run(&["deploy", "--release-from-ref", "refs/heads/"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: --release-from-ref \"refs/heads/\" has no letter or digit to make a release name from\n");
    assert!(!env.path().join("state/shop/state.json").exists());
}

#[test]
fn release_name_prints_the_derived_name_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cutover_in(dir.path());
    c.args(["release-name", "jenkins-myorg/myapp/feature%2Fx-7"]);
    assert_eq!(outcome(&mut c), (0, "jenkins-myorg-myapp-feature-x-7\n".into(), String::new()));
    let mut c = cutover_in(dir.path());
    c.args(["release-name", "--json", "refs/tags/v1.2.0"]);
    let (code, out, _) = outcome(&mut c);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({ "ref": "refs/tags/v1.2.0", "release": "v1.2.0" }));
}

/// The commands `cutover --help` lists, without `help`.
fn visible_commands(dir: &Path) -> Vec<String> {
    let mut c = cutover_in(dir);
    c.arg("--help");
    let (_, help, _) = outcome(&mut c);
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn generate_man_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cutover_in(dir.path());
    c.args(["generate", "man", "man"]);
    let (code, out, err) = outcome(&mut c);
    assert_eq!(code, 0, "{err}");
    let commands = visible_commands(dir.path());
    assert!(commands.len() >= 12 && commands.contains(&"deploy".to_string()), "{commands:?}");
    let mut expected: Vec<String> = commands.iter().map(|c| format!("cutover-{c}.1")).collect();
    expected.extend(["cutover.1".to_string(), "cutover-canary-set.1".to_string()]);
    expected.sort();
    assert_eq!(names_in(&dir.path().join("man")), expected, "the hidden generate command gets no page");
    assert_eq!(out.lines().count(), expected.len(), "one line per file written: {out}");

    let top = std::fs::read_to_string(dir.path().join("man/cutover.1")).unwrap();
    for needle in [
        ".TH cutover 1",
        ".SH \"EXIT STATUS\"",
        "\\fB5\\fR\nanother cutover run holds the lock",
        "\\fB8\\fR\nrefused",
        ".SH FILES",
    ] {
        assert!(top.contains(needle), "cutover.1 has no {needle:?}:\n{top}");
    }
    let deploy = std::fs::read_to_string(dir.path().join("man/cutover-deploy.1")).unwrap();
    for needle in [".TH cutover-deploy 1", "\\-\\-release\\-from\\-ref", "\\-\\-dry\\-run", "\\-\\-app", "cutover(1)"] {
        assert!(deploy.contains(needle), "cutover-deploy.1 has no {needle:?}:\n{deploy}");
    }
}

#[test]
fn generated_bash_completion_loads_in_bash_and_hides_generate() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cutover_in(dir.path());
    c.args(["generate", "completions", "out"]);
    let (code, _, err) = outcome(&mut c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names_in(&dir.path().join("out")), ["_cutover", "cutover.bash", "cutover.fish"]);
    // Complete `cutover de` and `cutover deploy --rel` with bash's own machinery.
    let script = format!(
        "source {}/out/cutover.bash\n\
         COMP_WORDS=(cutover de); COMP_CWORD=1; _cutover cutover de cutover; echo \"${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(cutover deploy --rel); COMP_CWORD=2; _cutover cutover --rel deploy; echo \"${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(cutover ge); COMP_CWORD=1; _cutover cutover ge cutover; echo \"[${{COMPREPLY[*]}}]\"\n",
        dir.path().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "deploy\n--release --release-from-ref\n[]\n", "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["_cutover", "cutover.bash", "cutover.fish"] {
        let body = std::fs::read_to_string(dir.path().join("out").join(f)).unwrap();
        assert!(!body.contains("generate"), "{f} offers the hidden generate command");
        assert!(body.contains("release-from-ref"), "{f}");
    }
    let mut c = cutover_in(dir.path());
    c.args(["completions", "bash"]);
    let (_, stdout, _) = outcome(&mut c);
    assert_eq!(stdout, std::fs::read_to_string(dir.path().join("out/cutover.bash")).unwrap());
}

#[test]
fn init_refuses_app_rather_than_ignoring_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cutover_in(dir.path());
    c.args(["--app", "shop", "init"]);
    assert_eq!(
        outcome(&mut c),
        (
            2,
            String::new(),
            "error: init names the app with --name; it writes ./cutover.toml or -c PATH, not a --app config\n".into()
        )
    );
    assert!(names_in(dir.path()).is_empty(), "nothing written");
}

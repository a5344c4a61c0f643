//! Release bookkeeping through the real binary: `cutover releases` lists what history, the release
//! directories and the logs know, with what is live and previous; `cutover prune --keep N` removes old release
//! directories and their logs and never the live or previous one; `rollback --to` completes from history in a
//! real bash.

mod common;

use std::process::Command;

use common::*;

fn env_with_release_dirs() -> Env {
    let env = Env::new();
    env.write_config(
        &env.default_config()
            .replace("stop_timeout = \"5s\"\n", "stop_timeout = \"5s\"\nrelease_dir = \"releases/{{release}}\"\n"),
    );
    env
}

fn stage(env: &Env, release: &str) {
    let dir = env.path().join("releases").join(release);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.jar"), release).unwrap();
}

fn names(v: &serde_json::Value) -> Vec<(String, String)> {
    v["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["role"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn releases_are_listed_and_old_ones_pruned_but_never_live_or_previous() {
    let env = env_with_release_dirs();
    for r in ["v1", "v2", "v3", "v4", "v5"] {
        stage(&env, r);
    }
    for r in ["v1", "v2", "v3", "v4"] {
        env.ok(&["deploy", "--release", r]);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    env.flags("v5", "--fail-health");
    let (code, _, _) = env.run(&["deploy", "--release", "v5"]);
    assert_eq!(code, 3);
    let v = env.json(&["releases"]);
    assert_eq!(
        names(&v),
        [("v4", "live"), ("v5", "none"), ("v3", "previous"), ("v2", "none"), ("v1", "none")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let v5 = &v["releases"][1];
    assert_eq!(
        (v5["last_live"].clone(), v5["last_event"].as_str()),
        (serde_json::Value::Null, Some("deploy unhealthy"))
    );
    assert_eq!(v5["dir_exists"], true);
    assert_eq!(v5["logs"].as_array().unwrap().len(), 1, "the failed release's log: {v5}");
    let text = env.ok(&["releases"]);
    assert!(text.starts_with("release "), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("v4                        live       20"), "{text}");
    // What rollback --to accepts: made live here before, not live now; newest first.
    assert_eq!(env.ok(&["releases", "--names"]), "v3\nv2\nv1\n");

    // prune --keep 3 --dry-run: v2 and v1 would go (v3 is previous; the newest three stay); nothing is removed.
    let (code, out, _) = env.run(&["prune", "--keep", "3", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    let rel = |r: &str| env.path().join("releases").join(r);
    let log = |r: &str| {
        env.path()
            .join("logs")
            .join(format!("{r}-{}.log", env.pool[if r == "v1" || r == "v3" || r == "v5" { 0 } else { 1 }]))
    };
    // The spawn runtime already removed the logs of v1 and v2 when they stopped being previous; their
    // directories are what is left.
    assert!(!log("v1").exists() && !log("v2").exists());
    assert_eq!(
        out,
        format!("would remove {}\nwould remove {}\nkept: v4, v5, v3\n", rel("v2").display(), rel("v1").display())
    );
    assert!(rel("v1").exists() && rel("v2").exists());
    let v = env.json(&["prune", "--keep", "3"]);
    assert_eq!(v["pruned"], serde_json::json!(["v2", "v1"]));
    assert!(!rel("v1").exists() && !rel("v2").exists());
    assert!(rel("v3").exists() && rel("v4").exists() && rel("v5").exists());
    // The failed v5's log is still there until prune takes it with its directory.
    assert!(log("v5").exists());
    // Whatever N: the live and the previous release stay.
    let v = env.json(&["prune", "--keep", "0"]);
    assert_eq!(v["pruned"], serde_json::json!(["v5"]));
    assert!(!rel("v5").exists() && !log("v5").exists());
    assert!(rel("v4").exists() && rel("v3").exists() && log("v4").exists() && log("v3").exists());
    assert_eq!(env.serving(), "v4");
    // History still names the pruned releases; a rollback to one is refused, its directory being gone.
    let v = env.json(&["releases"]);
    assert_eq!(v["releases"][3]["name"], "v2");
    assert_eq!(v["releases"][3]["dir_exists"], false);
    let (code, _, err) = env.run(&["rollback", "--to", "v2"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("release v2 is not on this host"), "{err}");
    env.ok(&["rollback", "--to", "v3"]);
    assert_eq!(env.serving(), "v3");
}

/// Complete `cutover -c CONFIG rollback --to CUR` in a real bash with the generated completions.
fn complete(env: &Env, script: &std::path::Path, cur: &str) -> Vec<String> {
    let bin = env!("CARGO_BIN_EXE_cutover");
    let cfg = env.config.display().to_string();
    let prog = format!(
        "source {script}\nCOMP_WORDS=({bin} -c {cfg} rollback --to '{cur}')\nCOMP_CWORD=5\n\
         _cutover {bin} '{cur}' --to\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.display()
    );
    let out = Command::new("bash").arg("-c").arg(prog).env_remove("CUTOVER_CONFIG").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

#[test]
fn rollback_to_completes_release_names_from_history_in_bash() {
    let env = Env::new();
    for r in ["v1", "v2", "v3"] {
        env.ok(&["deploy", "--release", r]);
    }
    let script = env.path().join("cutover.bash");
    let out = Command::new(env!("CARGO_BIN_EXE_cutover")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    assert_eq!(complete(&env, &script, ""), ["v2", "v1"], "the releases rollback --to accepts, newest first");
    assert_eq!(complete(&env, &script, "v1"), ["v1"]);
    // The packaged file is the same script.
    let dir = env.path().join("gen");
    let st = Command::new(env!("CARGO_BIN_EXE_cutover")).arg("generate").arg("completions").arg(&dir).output().unwrap();
    assert!(st.status.success());
    assert_eq!(std::fs::read(dir.join("cutover.bash")).unwrap(), out.stdout);
    // zsh and fish get the same hook.
    let zsh = Command::new(env!("CARGO_BIN_EXE_cutover")).args(["completions", "zsh"]).output().unwrap();
    let zsh = String::from_utf8_lossy(&zsh.stdout);
    assert!(zsh.contains(":RELEASE:_cutover_releases'") && zsh.contains("releases --names"), "{zsh}");
    let fish = Command::new(env!("CARGO_BIN_EXE_cutover")).args(["completions", "fish"]).output().unwrap();
    let fish = String::from_utf8_lossy(&fish.stdout);
    assert!(fish.contains("-l to -d 'Roll back to this release from history instead of the previous one' -r -f -a '(__fish_cutover_releases)'"), "{fish}");
}

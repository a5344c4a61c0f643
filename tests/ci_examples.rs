//! The CI examples in examples/ run here, as their CI system would run them on the host: the CodeDeploy hooks in
//! appspec.yml's order with the agent's environment variables, the GitHub Actions remote script streamed to
//! `bash -s` as the workflow's ssh step does, and the Jenkins post-build step with Jenkins' variables. Each runs
//! the real `cutover` (first on PATH) against a private nginx and the fixture app, which is started from the
//! release directory the script staged, so a script that stages nothing deploys nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// jq must be there: the examples read cutover's --json with it. Fails with how to install it, never skips.
fn require_jq() {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join("jq").is_file())).unwrap_or(false);
    assert!(found, "jq is not installed: the CI examples read cutover's --json with it. Install it (apt-get install jq) or run .ci/test, which does");
}

struct Host {
    env: Env,
    /// The app's directory on the "host": releases/ and incoming/ live here.
    srv: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Host {
    fn new() -> Host {
        require_jq();
        let env = Env::new();
        let srv = env.path().join("srv/shop");
        // app.start runs the build that was staged for the release, as a real app.start would.
        let releases = srv.join("releases");
        let start = format!(
            "start = \"exec python3 {r}/{{{{release}}}}/app.py --port {{{{port}}}} --release {{{{release}}}} \
             $(cat {r}/{{{{release}}}}/flags 2>/dev/null)\"",
            r = releases.display()
        );
        let config: Vec<String> = env
            .default_config()
            .lines()
            .map(|l| if l.starts_with("start = ") { start.clone() } else { l.to_string() })
            .collect();
        env.write_config(&(config.join("\n") + "\n"));
        Host { env, srv }
    }

    /// A build of the fixture app in `dir`; `flags` (e.g. `--fail-health`) make that build misbehave.
    fn build(&self, dir: &Path, flags: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(FIXTURE, dir.join("app.py")).unwrap();
        if !flags.is_empty() {
            std::fs::write(dir.join("flags"), flags).unwrap();
        }
        dir.to_path_buf()
    }

    /// A command with the host's environment: the cutover under test first on PATH, its config in
    /// CUTOVER_CONFIG (what /etc/cutover/shop.toml is on a real host), the app's directory in SRV, and a
    /// working directory that is neither the repository nor the config's.
    fn command(&self, program: &str) -> Command {
        let bin = Path::new(env!("CARGO_BIN_EXE_cutover")).parent().unwrap();
        let mut c = Command::new(program);
        c.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("CUTOVER_CONFIG", &self.env.config)
            .env("APP", "shop")
            .env("SRV", &self.srv)
            .current_dir(self.env.path().join("flags"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, mut c: Command) -> Run {
        let out = c.output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn live_pids(&self) -> Vec<i32> {
        let s = self.env.state();
        s["live"]["instances"].as_array().unwrap().iter().map(|i| i["pid"].as_i64().unwrap() as i32).collect()
    }
}

// --- CodeDeploy ---------------------------------------------------------------------------------------------------

/// appspec.yml's hooks, in order: (lifecycle event, script location).
fn appspec_hooks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/codedeploy/appspec.yml")).unwrap();
    let mut hooks = Vec::new();
    let mut event = None;
    for line in text.lines().skip_while(|l| *l != "hooks:").skip(1) {
        let t = line.trim();
        if line.starts_with("  ") && !line.starts_with("    ") && t.ends_with(':') {
            event = Some(t.trim_end_matches(':').to_string());
        } else if let Some(loc) = t.strip_prefix("- location: ") {
            hooks.push((event.clone().expect("a location outside a hook"), loc.to_string()));
        }
    }
    hooks
}

struct Deployment<'a> {
    host: &'a Host,
    id: &'a str,
}

impl Deployment<'_> {
    fn hook(&self, event: &str, script: &str) -> Command {
        let mut c = self.host.command(&format!("{EXAMPLES}/codedeploy/{script}"));
        c.env("DEPLOYMENT_ID", self.id)
            .env("APPLICATION_NAME", "ShopApp")
            .env("DEPLOYMENT_GROUP_NAME", "production")
            .env("DEPLOYMENT_GROUP_ID", "8f1c2d3e-0000-4000-8000-000000000001")
            .env("LIFECYCLE_EVENT", event);
        c
    }

    /// Run the deployment as the agent does: each hook in order (the scripts themselves, executed), with the
    /// agent's Install step (copy the bundle's `build` to the files destination) after BeforeInstall; stop at
    /// the first hook that fails. Returns each hook that ran with its result.
    fn run(&self, build: &Path) -> Vec<(String, Run)> {
        let mut ran = Vec::new();
        for (event, script) in appspec_hooks() {
            if event == "AfterInstall" {
                let incoming = self.host.srv.join("incoming");
                for f in std::fs::read_dir(build).unwrap() {
                    let f = f.unwrap();
                    std::fs::copy(f.path(), incoming.join(f.file_name())).unwrap();
                }
            }
            let r = self.host.run(self.hook(&event, &script));
            let failed = r.code != 0;
            ran.push((event, r));
            if failed {
                break;
            }
        }
        ran
    }
}

fn assert_all_ok(ran: &[(String, Run)]) {
    for (event, r) in ran {
        assert_eq!(r.code, 0, "{event} failed: {r}");
    }
    assert_eq!(ran.len(), 4, "not every hook ran: {:?}", ran.iter().map(|(e, _)| e).collect::<Vec<_>>());
}

#[test]
fn codedeploy_appspec_hooks_and_paths_agree_with_the_scripts() {
    let hooks = appspec_hooks();
    let events: Vec<&str> = hooks.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService"]);
    for (_, script) in &hooks {
        let path = Path::new(EXAMPLES).join("codedeploy").join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert!(mode & 0o111 != 0, "{} is not executable: the agent runs it directly", path.display());
    }
    let appspec = std::fs::read_to_string(format!("{EXAMPLES}/codedeploy/appspec.yml")).unwrap();
    let common = std::fs::read_to_string(format!("{EXAMPLES}/codedeploy/scripts/common.sh")).unwrap();
    assert!(appspec.contains("    destination: /srv/shop/incoming\n"), "{appspec}");
    for line in ["APP=${APP:-shop}", "SRV=${SRV:-/srv/$APP}", "INCOMING=$SRV/incoming"] {
        assert!(common.contains(line), "common.sh no longer has {line}: keep it in step with appspec.yml");
    }
}

#[test]
fn codedeploy_deploys_each_revision_from_its_own_release_directory_without_losing_a_request() {
    let host = Host::new();
    let first = Deployment { host: &host, id: "d-A1B2C3D4E" };
    let ran = first.run(&host.build(&host.env.path().join("bundle1"), ""));
    assert_all_ok(&ran);
    assert_eq!(host.env.serving(), "d-A1B2C3D4E");
    assert!(ran[2].1.stdout.contains("[ApplicationStart d-A1B2C3D4E] live: d-A1B2C3D4E on "), "{}", ran[2].1);
    assert!(ran[2].1.stdout.contains("(replaced: nothing;"), "{}", ran[2].1);
    assert!(ran[3].1.stdout.contains("ok: d-A1B2C3D4E is live and healthy"), "{}", ran[3].1);

    // The second revision lacks a file the first had: BeforeInstall's cleanup keeps it out of the new release.
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(host.env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(host.srv.join("incoming/stale.txt"), "from an old bundle").unwrap();
    let second = Deployment { host: &host, id: "d-F5G6H7I8J" };
    let ran = second.run(&host.build(&host.env.path().join("bundle2"), ""));
    std::thread::sleep(Duration::from_millis(300));
    let releases = assert_no_loss(&stop, handles, &tally, "CodeDeploy hooks, second revision", 200);
    assert_all_ok(&ran);
    assert!(releases.contains_key("d-A1B2C3D4E") && releases.contains_key("d-F5G6H7I8J"), "{releases:?}");
    assert_eq!(host.env.serving(), "d-F5G6H7I8J");
    assert!(ran[2].1.stdout.contains("(replaced: d-A1B2C3D4E;"), "{}", ran[2].1);
    assert_eq!(names_in(&host.srv.join("releases")), ["d-A1B2C3D4E", "d-F5G6H7I8J"]);
    assert_eq!(names_in(&host.srv.join("releases/d-F5G6H7I8J")), ["app.py"]);
}

#[test]
fn codedeploy_an_unhealthy_revision_fails_application_start_and_traffic_stays() {
    let host = Host::new();
    assert_all_ok(&Deployment { host: &host, id: "d-GOOD00001" }.run(&host.build(&host.env.path().join("b1"), "")));
    let bad = Deployment { host: &host, id: "d-BAD000002" };
    let ran = bad.run(&host.build(&host.env.path().join("b2"), "--fail-health"));
    let events: Vec<&str> = ran.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        events,
        ["BeforeInstall", "AfterInstall", "ApplicationStart"],
        "the deployment stops at the failed hook"
    );
    let start = &ran[2].1;
    assert_eq!(start.code, 3, "{start}");
    assert!(
        start.stdout.contains(
            "[ApplicationStart d-BAD000002] cutover deploy exited 3: the new release failed its health check (or \
             died right after the switch); the old release serves"
        ),
        "{start}"
    );
    assert!(start.stderr.contains("health"), "cutover's own reason is in the log: {start}");
    assert_eq!(host.env.serving(), "d-GOOD00001");

    // ValidateService of that deployment (run by hand here) says the live release is not this one.
    let r = host.run(bad.hook("ValidateService", "scripts/validate_service.sh"));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("live release is d-GOOD00001, not this deployment's d-BAD000002"), "{r}");
}

#[test]
fn codedeploy_validate_service_fails_with_the_reason_when_a_live_instance_died() {
    let host = Host::new();
    let d = Deployment { host: &host, id: "d-A1B2C3D4E" };
    assert_all_ok(&d.run(&host.build(&host.env.path().join("b1"), "")));
    for pid in host.live_pids() {
        kill(pid, 9);
        assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)));
    }
    let r = host.run(d.hook("ValidateService", "scripts/validate_service.sh"));
    assert_eq!(r.code, 7, "{r}");
    assert!(
        r.stdout.contains(
            "[ValidateService d-A1B2C3D4E] cutover status --check exited 7: status --check: drift, an unhealthy live \
             instance, an unfinished operation or nginx not running\n  live d-A1B2C3D4E on port "
        ),
        "the unhealthy instance read from --json: {r}"
    );
}

// --- GitHub Actions -----------------------------------------------------------------------------------------------

const WORKFLOW_SSH: &str = r#"ssh -i ~/.ssh/id_deploy "$HOST" bash -s -- "$ref" "/tmp/shop-$GITHUB_RUN_ID.tar.gz""#;

/// What the workflow's last step does on the host: `bash -s -- REF TARBALL < remote-deploy.sh`.
fn remote_deploy(host: &Host, reference: &str, tarball: &Path) -> Command {
    let mut c = host.command("bash");
    c.args(["-s", "--", reference]).arg(tarball);
    c.stdin(std::fs::File::open(format!("{EXAMPLES}/github-actions/remote-deploy.sh")).unwrap());
    c
}

fn tarball(host: &Host, name: &str, flags: &str) -> PathBuf {
    let build = host.build(&host.env.path().join("dist").join(name), flags);
    let tar = host.env.path().join(format!("{name}.tar.gz"));
    let st = Command::new("tar").arg("-C").arg(&build).arg("-czf").arg(&tar).arg(".").status().unwrap();
    assert!(st.success());
    tar
}

#[test]
fn github_actions_workflow_streams_the_remote_script_with_the_ref_and_the_copied_build() {
    let wf = std::fs::read_to_string(format!("{EXAMPLES}/github-actions/deploy.yml")).unwrap();
    assert!(wf.contains(WORKFLOW_SSH), "the ssh step changed; keep remote_deploy() in step with it:\n{wf}");
    assert!(wf.contains(r#"< .github/deploy/remote-deploy.sh"#), "{wf}");
    assert!(wf.contains(r#"scp -i ~/.ssh/id_deploy build.tar.gz "$HOST:/tmp/shop-$GITHUB_RUN_ID.tar.gz""#), "{wf}");
    assert!(wf.contains(r#"ref="$GITHUB_REF-${GITHUB_SHA::7}""#), "{wf}");
}

#[test]
fn github_actions_remote_script_stages_and_deploys_the_ref_and_reports_failures() {
    let host = Host::new();
    let tar = tarball(&host, "one", "");
    let r = host.run(remote_deploy(&host, "refs/heads/feature/login-1a2b3c4", &tar));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("staged "), "{r}");
    assert!(r.stdout.contains("live: feature-login-1a2b3c4 (was: nothing), switched in "), "{r}");
    assert!(
        r.stderr.contains("cutover: release feature-login-1a2b3c4 (from ref refs/heads/feature/login-1a2b3c4)"),
        "{r}"
    );
    assert_eq!(host.env.serving(), "feature-login-1a2b3c4");
    assert!(!tar.exists(), "the copied build is removed");
    assert_eq!(names_in(&host.srv.join("releases")), ["feature-login-1a2b3c4"]);

    // Under load, the next commit of main.
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(host.env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let r = host.run(remote_deploy(&host, "refs/heads/main-9f8e7d6", &tarball(&host, "two", "")));
    std::thread::sleep(Duration::from_millis(300));
    assert_no_loss(&stop, handles, &tally, "GitHub Actions remote deploy", 200);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("live: main-9f8e7d6 (was: feature-login-1a2b3c4)"), "{r}");

    // A build that never gets healthy: the job fails with cutover's code and an annotation; traffic stays.
    let r = host.run(remote_deploy(&host, "refs/heads/main-0000bad", &tarball(&host, "bad", "--fail-health")));
    assert_eq!(r.code, 3, "{r}");
    assert!(
        r.stdout
            .contains("::error::main-0000bad failed its health check; traffic untouched, the old release still serves"),
        "{r}"
    );
    assert_eq!(host.env.serving(), "main-9f8e7d6");
}

#[test]
fn github_actions_a_second_pipeline_is_told_that_the_first_holds_the_lock() {
    let host = Host::new();
    // The first pipeline's deploy: an app that takes a few seconds to listen, so its deploy holds the lock.
    host.build(&host.srv.join("releases/slow"), "--start-delay 4");
    let mut first = host.command(env!("CARGO_BIN_EXE_cutover"));
    first.args(["deploy", "--release", "slow"]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = first.spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || host.env.json(&["status"])["lock"].is_object()),
        "the first deploy never took the lock"
    );
    let r = host.run(remote_deploy(&host, "refs/heads/main-2222222", &tarball(&host, "second", "")));
    assert_eq!(r.code, 5, "{r}");
    assert!(r.stdout.contains("::error::another deploy of shop holds the lock; nothing changed"), "{r}");
    assert!(first.wait().unwrap().success(), "the first deploy went on and finished");
    assert_eq!(host.env.serving(), "slow");
}

// --- Jenkins ------------------------------------------------------------------------------------------------------

fn jenkins_step(host: &Host, workspace: &Path, build_tag: &str, number: &str) -> Command {
    let mut c = host.command("bash");
    c.arg(format!("{EXAMPLES}/jenkins/deploy.sh"))
        .env("BUILD_TAG", build_tag)
        .env("BUILD_NUMBER", number)
        .env("JOB_NAME", "myorg/myapp/main")
        .env("WORKSPACE", workspace);
    c
}

#[test]
fn jenkins_post_build_step_shows_the_plan_then_deploys_the_build_tag() {
    let host = Host::new();
    let ws = host.env.path().join("workspace");
    host.build(&ws.join("dist"), "");
    let r = host.run(jenkins_step(&host, &ws, "jenkins-myorg/myapp/main-42", "42"));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("plan: deploy jenkins-myorg-myapp-main-42 (blue-green) for app shop"), "dry run: {r}");
    assert!(r.stdout.contains("deployed jenkins-myorg-myapp-main-42 (was: nothing) in "), "{r}");
    assert_eq!(host.env.serving(), "jenkins-myorg-myapp-main-42");

    // A multibranch job: Jenkins writes feature/login as feature%2Flogin in the job name. Under load.
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, tally) = load(host.env.nginx_port, 4, 50_000, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let r = host.run(jenkins_step(&host, &ws, "jenkins-myorg/myapp/feature%2Flogin-7", "7"));
    std::thread::sleep(Duration::from_millis(300));
    assert_no_loss(&stop, handles, &tally, "Jenkins post-build step", 200);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("deployed jenkins-myorg-myapp-feature-login-7 (was: jenkins-myorg-myapp-main-42)"),
        "{r}"
    );

    // A broken build fails the Jenkins build with cutover's code; the previous build keeps serving.
    std::fs::write(ws.join("dist/flags"), "--fail-health").unwrap();
    let r = host.run(jenkins_step(&host, &ws, "jenkins-myorg/myapp/main-43", "43"));
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stdout.contains("DEPLOY FAILED: jenkins-myorg-myapp-main-43 failed its health check"), "{r}");
    assert_eq!(host.env.serving(), "jenkins-myorg-myapp-feature-login-7");
}

#[test]
fn the_ci_and_packaging_scripts_pass_shellcheck() {
    let root = env!("CARGO_MANIFEST_DIR");
    let scripts = [
        "examples/codedeploy/scripts/common.sh",
        "examples/codedeploy/scripts/before_install.sh",
        "examples/codedeploy/scripts/after_install.sh",
        "examples/codedeploy/scripts/application_start.sh",
        "examples/codedeploy/scripts/validate_service.sh",
        "examples/github-actions/remote-deploy.sh",
        "examples/jenkins/deploy.sh",
        "packaging/build-deb",
        ".ci/package-test",
        ".ci/install-missing",
    ];
    let out = Command::new("shellcheck")
        .args(["--external-sources", "--source-path=SCRIPTDIR"])
        .args(scripts)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run shellcheck ({e}): install it (apt-get install shellcheck) or run .ci/test, which does"
            )
        });
    assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
}

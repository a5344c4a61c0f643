//! A real systemd for the systemd runtime's tests: `tests/systemd-sandbox.sh` boots one as PID 1 of a private
//! pid+mount namespace with every boot unit masked (so it runs only journald and what a test starts), reading
//! units from the test's own unit directory first. `stop` then `start` with the same directory is a power cut
//! and a reboot. A test points `runtime.unit_dir` at [`Sandbox::unit_dir`] and `runtime.systemctl` /
//! `runtime.journalctl` at [`Sandbox::prefix`].

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd-sandbox.sh");

pub struct Sandbox {
    pub pid: Option<i32>,
    pub unit_dir: PathBuf,
}

impl Sandbox {
    /// Boot a sandbox reading units from `unit_dir`. Fails with what to install when systemd is missing.
    pub fn start(unit_dir: &Path) -> Sandbox {
        assert!(
            Path::new("/lib/systemd/systemd").exists(),
            "systemd is not installed: the systemd runtime's tests boot a real one in a private namespace. Install it \
             (apt-get install systemd) or run .ci/test, which does"
        );
        assert!(nix_is_root(), "the systemd sandbox needs root (namespaces and mounts); run the tests as root");
        let mut s = Sandbox { pid: None, unit_dir: unit_dir.to_path_buf() };
        s.boot();
        s
    }

    fn boot(&mut self) {
        let out = Command::new("bash").arg(SCRIPT).arg("start").arg(&self.unit_dir).output().unwrap();
        assert!(out.status.success(), "systemd-sandbox start failed: {}", String::from_utf8_lossy(&out.stderr));
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("sandbox pid");
        self.pid = Some(pid);
    }

    pub fn pid(&self) -> i32 {
        self.pid.expect("the sandbox is running")
    }

    /// The argv prefix that runs `cmd` inside the sandbox.
    pub fn prefix(&self, cmd: &str) -> Vec<String> {
        vec!["bash".into(), SCRIPT.into(), "exec".into(), self.pid().to_string(), cmd.into()]
    }

    /// `[runtime]` for a config that runs its instances in this sandbox.
    pub fn runtime_toml(&self) -> String {
        let q = |v: Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        format!(
            "[runtime]\nkind = \"systemd\"\nunit_dir = {:?}\nsystemctl = [{}]\njournalctl = [{}]\n",
            self.unit_dir.display().to_string(),
            q(self.prefix("systemctl")),
            q(self.prefix("journalctl"))
        )
    }

    /// Run a command inside the sandbox; (exit code, stdout).
    pub fn exec(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("bash").arg(SCRIPT).arg("exec").arg(self.pid().to_string()).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.exec(&["systemctl", "show", "-p", prop, "--value", unit]).1.trim().to_string()
    }

    /// A power cut: systemd and everything it runs are killed at once.
    pub fn power_cut(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(pid.to_string()).status();
        }
    }

    /// Boot again with the same unit directory: what is enabled there comes back.
    pub fn boot_again(&mut self) {
        assert!(self.pid.is_none(), "power_cut first");
        self.boot();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.power_cut();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

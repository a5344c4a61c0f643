//! The user's hooks (`[hooks]`): shell commands run at fixed points, with one environment builder and one
//! runner. Where they fire is decided in two places only: [`super::launch`] (`before_start`, `after_healthy`:
//! only when instances start) and [`super::Engine::run`] (`after_switch`, `after_rollback`, `on_failure`: after
//! every operation, by which way traffic moved).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::Engine;
use crate::journal::OpKind;
use crate::output::human_ms;
use crate::strategy::Strategy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    BeforeStart,
    AfterHealthy,
    AfterSwitch,
    AfterRollback,
    OnFailure,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::BeforeStart => "before_start",
            Hook::AfterHealthy => "after_healthy",
            Hook::AfterSwitch => "after_switch",
            Hook::AfterRollback => "after_rollback",
            Hook::OnFailure => "on_failure",
        }
    }
}

/// What the `CUTOVER_*` variables say.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub release: String,
    /// The release that was live before the operation.
    pub previous: String,
    pub kind: OpKind,
    pub strategy: Option<Strategy>,
    /// The ports the hook is about: the new instances' (start hooks), or what is live after.
    pub ports: Vec<u16>,
    /// `on_failure`: what went wrong.
    pub error: Option<String>,
}

impl HookEnv {
    pub fn vars(&self, app: &str, hook: Hook) -> Vec<(&'static str, String)> {
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        let mut v = vec![
            ("CUTOVER_HOOK", hook.name().to_string()),
            ("CUTOVER_APP", app.to_string()),
            ("CUTOVER_RELEASE", self.release.clone()),
            ("CUTOVER_PREVIOUS_RELEASE", self.previous.clone()),
            ("CUTOVER_KIND", self.kind.to_string()),
            ("CUTOVER_STRATEGY", self.strategy.map(|s| s.to_string()).unwrap_or_default()),
            ("CUTOVER_PORTS", ports.join(",")),
        ];
        if let Some(e) = &self.error {
            v.push(("CUTOVER_ERROR", e.clone()));
        }
        v
    }
}

/// Run a hook if it is configured. Its stdout goes to cutover's stderr, so that `--json` stdout stays one
/// document. It runs in a process group of its own; one still running after `hooks.timeout` is killed (the whole
/// group) and counts as failed.
pub fn fire(eng: &Engine, hook: Hook, env: &HookEnv) -> Result<()> {
    let h = &eng.cfg.hooks;
    let cmd = match hook {
        Hook::BeforeStart => &h.before_start,
        Hook::AfterHealthy => &h.after_healthy,
        Hook::AfterSwitch => &h.after_switch,
        Hook::AfterRollback => &h.after_rollback,
        Hook::OnFailure => &h.on_failure,
    };
    let Some(cmd) = cmd else { return Ok(()) };
    let name = hook.name();
    let started = Instant::now();
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd).stdin(Stdio::null()).process_group(0);
    for (k, v) in env.vars(eng.cfg.app.name.as_str(), hook) {
        c.env(k, v);
    }
    if let Some(dir) = &eng.cfg.app.workdir {
        // `{{release}}` in app.workdir is the release this hook is about, as for the app itself.
        c.current_dir(dir.display().to_string().replace("{{release}}", &env.release));
    }
    let stderr = std::io::stderr();
    c.stdout(Stdio::from(std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned()?));
    let mut child = c.spawn().with_context(|| format!("could not run hook {name}"))?;
    let timeout = h.timeout.0;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("could not wait for hook {name}"))? {
            break status;
        }
        if started.elapsed() >= timeout {
            let group = Pid::from_raw(child.id() as i32);
            let _ = killpg(group, Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            bail!("hook {name} ({cmd:?}) was still running after hooks.timeout {}: killed", h.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eng.progress.note(format!("hook {name} exited {} ({})", status.code().unwrap_or(-1), human_ms(started.elapsed())));
    if !status.success() {
        bail!("hook {name} ({cmd:?}) exited {}", status.code().map(|c| c.to_string()).unwrap_or("on a signal".into()));
    }
    Ok(())
}

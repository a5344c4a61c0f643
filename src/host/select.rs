//! Which runtime runs an app's instances, and the runtime the engine talks to.
//!
//! `runtime.kind` decides; without it, systemd when PID 1 is systemd (the host's service manager is there to
//! keep the app alive), else spawn. [`Runtimes`] starts new instances with that runtime but answers for every
//! recorded instance with the runtime that started it (a unit is systemd's, a pid is spawn's), so that changing
//! `runtime.kind` between deploys moves the app over with the next deploy instead of losing track of what runs.

use std::time::Duration;

use anyhow::Result;

use super::spawn::Spawn;
use super::systemd::Systemd;
use super::{Details, LogLine, LogQuery, Runtime, StartSpec, Status, Stopped};
use crate::config::{Config, RuntimeKind};
use crate::journal::{Instance, State};

/// The runtime for this config and why (for `check`).
pub fn choose(config: &Config) -> (RuntimeKind, String) {
    if let Some(k) = config.runtime.kind {
        return (k, format!("runtime.kind = \"{k}\""));
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").map(|s| s.trim().to_string()).unwrap_or_default();
    if pid1 == "systemd" {
        (RuntimeKind::Systemd, "the default here: PID 1 is systemd".into())
    } else {
        let what = if pid1.is_empty() { "unknown".to_string() } else { pid1 };
        (RuntimeKind::Spawn, format!("the default here: PID 1 is {what}, not systemd"))
    }
}

pub struct Runtimes {
    kind: RuntimeKind,
    spawn: Spawn,
    systemd: Systemd,
}

impl Runtimes {
    pub fn new(config: &Config) -> Runtimes {
        Runtimes { kind: choose(config).0, spawn: Spawn::new(config), systemd: Systemd::new(config) }
    }

    fn chosen(&self) -> &dyn Runtime {
        match self.kind {
            RuntimeKind::Spawn => &self.spawn,
            RuntimeKind::Systemd => &self.systemd,
        }
    }

    /// The runtime that started `inst`: a unit is systemd's; a pid is spawn's; a start only intended (marker,
    /// no identity yet) belongs to the configured runtime.
    fn of(&self, inst: &Instance) -> &dyn Runtime {
        match (&inst.unit, inst.pid) {
            (Some(_), _) => &self.systemd,
            (None, Some(_)) => &self.spawn,
            (None, None) => self.chosen(),
        }
    }
}

impl Runtime for Runtimes {
    fn kind(&self) -> &'static str {
        self.chosen().kind()
    }
    fn start(&self, spec: &StartSpec) -> Result<Instance> {
        self.chosen().start(spec)
    }
    fn status(&self, inst: &Instance) -> Status {
        self.of(inst).status(inst)
    }
    fn stop(&self, inst: &Instance, timeout: Duration) -> Stopped {
        self.of(inst).stop(inst, timeout)
    }
    fn find(&self, marker: &str) -> Vec<i32> {
        self.chosen().find(marker)
    }
    fn log_excerpt(&self, inst: &Instance) -> String {
        self.of(inst).log_excerpt(inst)
    }
    fn settle(&self, state: &State) -> Result<()> {
        // Spawn's log pruning always applies; systemd's enabling only where units are in play.
        self.spawn.settle(state)?;
        if self.kind == RuntimeKind::Systemd || state.owned().iter().any(|(_, i)| i.unit.is_some()) {
            self.systemd.settle(state)?;
        }
        Ok(())
    }
    fn details(&self, inst: &Instance) -> Details {
        self.of(inst).details(inst)
    }
    fn preview(&self, release: &str, port: u16) -> Result<String> {
        self.chosen().preview(release, port)
    }
    fn logs(&self, query: &LogQuery, emit: &mut dyn FnMut(&LogLine) -> bool) -> Result<()> {
        self.chosen().logs(query, emit)
    }
}

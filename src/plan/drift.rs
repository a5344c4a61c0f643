//! Drift: where the host differs from what state records (an instance that does not run or listen, a hand-edited
//! or missing upstream file, a state file gone while a release is live), found without side effects.

use std::fmt;

use serde::Serialize;

use super::Snapshot;
use crate::config::Config;
use crate::host::Status;
use crate::journal::State;
use crate::upstream;

/// A difference between what state says and what the host shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Drift {
    /// A live, canary or rolling instance that does not run.
    NotRunning { what: String, release: String, port: u16, pid: Option<i32> },
    /// A running instance that does not listen on its port.
    NotListening { what: String, release: String, port: u16, pid: Option<i32> },
    /// A recorded pid that runs but cannot be proven to be the instance.
    Unproven { what: String, why: String },
    /// The upstream file differs from what cutover last wrote and from what it would write now.
    UpstreamEdited { path: String },
    /// The upstream file is gone.
    UpstreamMissing { path: String },
    /// No state, but the upstream file says a release is live: state.json was deleted or moved.
    StateMissing { path: String, live: String },
}

impl Drift {
    /// Whether a command that changes the upstream must stop (unless `--force`): it would overwrite someone's
    /// edit, or orphan a release that runs without a record.
    pub fn blocks(&self) -> bool {
        matches!(self, Drift::UpstreamEdited { .. } | Drift::StateMissing { .. })
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = |p: &Option<i32>| p.map(|p| p.to_string()).unwrap_or("-".into());
        match self {
            Drift::NotRunning { what, release, port, pid: p } => {
                write!(f, "{what} {release} on port {port} (pid {}) is not running", pid(p))
            }
            Drift::NotListening { what, release, port, pid: p } => {
                write!(f, "{what} {release} (pid {}) is not listening on port {port}", pid(p))
            }
            Drift::Unproven { what, why } => write!(f, "{what}: {why}"),
            Drift::UpstreamEdited { path } => {
                write!(f, "upstream file {path} differs from what cutover last wrote (see `cutover render --diff`)")
            }
            Drift::UpstreamMissing { path } => write!(f, "upstream file {path} is missing"),
            Drift::StateMissing { path, live } => write!(
                f,
                "no state is recorded, but the upstream file {path} says {live} is live: state.json was deleted or \
                 moved; put it back, or run with --force to deploy over the release that runs unrecorded"
            ),
        }
    }
}

/// Compare state with the snapshot. `rendered` is the upstream cutover would write for this state with the
/// current config: a file equal to it is not a hand edit (someone re-rendered after a config change), so
/// drift and `render --diff` agree.
pub fn reconcile(cfg: &Config, state: &State, snap: &Snapshot, rendered: Option<&str>) -> Vec<Drift> {
    let mut drift = Vec::new();
    let serving = state
        .live
        .iter()
        .map(|d| ("live", d))
        .chain(state.canary.iter().map(|c| ("canary", &c.deployment)))
        .chain(state.rolling.iter().map(|r| ("rolling", &r.deployment)));
    for (what, d) in serving {
        for i in d.instances.iter().filter(|i| i.recorded_running()) {
            match snap.status_of(i) {
                Status::Running if snap.not_listening.iter().any(|n| n.same(i)) => drift.push(Drift::NotListening {
                    what: what.into(),
                    release: d.release.clone(),
                    port: i.port,
                    pid: i.pid,
                }),
                Status::Running => {}
                Status::Unproven(why) => drift.push(Drift::Unproven { what: format!("{what} {}", i.describe()), why }),
                _ => drift.push(Drift::NotRunning {
                    what: what.into(),
                    release: d.release.clone(),
                    port: i.port,
                    pid: i.pid,
                }),
            }
        }
    }
    let path = cfg.nginx.upstream_file.display().to_string();
    match (&state.upstream, &snap.upstream_on_disk) {
        (Some(expected), Some(disk)) if disk != expected && Some(disk.as_str()) != rendered => {
            drift.push(Drift::UpstreamEdited { path })
        }
        (Some(_), None) => drift.push(Drift::UpstreamMissing { path }),
        (None, Some(disk)) if state.live.is_none() => {
            if let Some(live) = upstream::parse_header(disk).and_then(|h| h.live) {
                drift.push(Drift::StateMissing { path, live });
            }
        }
        _ => {}
    }
    drift
}

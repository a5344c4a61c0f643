//! What cutover knows about an app between runs: `<state_dir>/<app>/state.json` (what is live, what was live
//! before, the operation in progress) and `history.jsonl` (one event per deploy or rollback).
//!
//! Written atomically, 0600 in a 0700 directory; a symlink at any state path is refused. `in_progress` is
//! written before each side effect, so that a cutover killed mid-deploy leaves enough behind for the next run
//! to clean up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::util;

pub const STATE_VERSION: u32 = 1;

/// One running (or once running) app process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub release: String,
    pub port: u16,
    /// The process cutover started (a session and process-group leader). `None` once stopped.
    pub pid: Option<i32>,
    /// Its start time in clock ticks since boot, from /proc: guards against a reused pid.
    pub start_ticks: Option<u64>,
    pub started_at: String,
    pub log: PathBuf,
}

/// A release and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub release: String,
    pub instances: Vec<Instance>,
    pub since: String,
}

impl Deployment {
    /// A release on these ports with no process yet: what a plan renders before anything starts.
    pub fn planned(release: &str, ports: impl IntoIterator<Item = u16>) -> Deployment {
        Deployment {
            release: release.into(),
            instances: ports
                .into_iter()
                .map(|port| Instance {
                    release: release.into(),
                    port,
                    pid: None,
                    start_ticks: None,
                    started_at: String::new(),
                    log: Default::default(),
                })
                .collect(),
            since: String::new(),
        }
    }
}

/// A canary in progress: its instances and its current share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryState {
    pub deployment: Deployment,
    /// Percent of traffic the canary gets now.
    pub weight: u8,
    /// The configured steps, as they were when the canary started.
    pub steps: Vec<u8>,
    /// Index in `steps` of the current step (`None` when the weight was set by hand).
    pub step: Option<usize>,
}

impl CanaryState {
    /// The step `promote` or the end of a hold moves to: its index in `steps` and its share; `None` past the
    /// last step. After a weight set by hand (`step` is `None`) it is the first step above that weight.
    pub fn next_step(&self) -> Option<(usize, u8)> {
        let i = match self.step {
            Some(s) => s + 1,
            None => self.steps.iter().position(|&s| s > self.weight)?,
        };
        self.steps.get(i).map(|&p| (i, p))
    }
}

/// The operation that was under way when state was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub kind: String,
    pub release: String,
    pub pid: u32,
    pub started_at: String,
    /// Instances this operation started; stopped if it does not finish.
    pub started: Vec<Instance>,
    /// The upstream file before this operation touched it (`None`: it did not exist).
    pub upstream_before: Option<String>,
    /// True once the upstream file may have been changed.
    pub upstream_touched: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub app: String,
    /// Bumped on every upstream change; written into the upstream file as its generation marker.
    pub generation: u64,
    pub live: Option<Deployment>,
    pub canary: Option<CanaryState>,
    pub previous: Option<Deployment>,
    /// The upstream file exactly as cutover last wrote it; drift is any difference on disk.
    pub upstream: Option<String>,
    pub in_progress: Option<Operation>,
}

/// One line of history.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub kind: String,
    pub release: String,
    pub from: Option<String>,
    pub strategy: Option<String>,
    pub outcome: String,
    pub exit_code: i32,
    pub message: Option<String>,
    pub steps: Vec<Step>,
    pub total_ms: u64,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub ms: u64,
    pub detail: String,
}

/// The state directory of one app.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn history_path(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log_path(&self, release: &str, port: u16) -> PathBuf {
        self.logs_dir().join(format!("{release}-{port}.log"))
    }

    /// Create the directory tree (0700), refusing symlinks on the way.
    pub fn ensure(&self) -> Result<()> {
        if let Some(parent) = self.dir.parent() {
            util::refuse_symlink(parent)?;
            if !parent.exists() {
                fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
            }
        }
        util::private_dir(&self.dir)?;
        util::private_dir(&self.logs_dir())?;
        for p in [self.state_path(), self.history_path(), self.lock_path()] {
            util::refuse_symlink(&p)?;
        }
        Ok(())
    }

    /// The saved state, or an empty one when nothing was ever deployed.
    pub fn load(&self, app: &str) -> Result<State> {
        let path = self.state_path();
        util::refuse_symlink(&path)?;
        match fs::read_to_string(&path) {
            Ok(text) => {
                let state: State = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "could not parse {}; fix or move it away (history.jsonl beside it says what was deployed)",
                        path.display()
                    )
                })?;
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { version: STATE_VERSION, app: app.to_string(), ..State::default() })
            }
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let mut text = serde_json::to_string_pretty(state).context("could not serialize state")?;
        text.push('\n');
        util::write_atomic(&self.state_path(), text.as_bytes(), 0o600)
    }

    /// Append one event. A line is written with one `write` on an O_APPEND file, so concurrent readers never
    /// see half a line.
    pub fn append_history(&self, event: &Event) -> Result<()> {
        let path = self.history_path();
        util::refuse_symlink(&path)?;
        let mut line = serde_json::to_string(event).context("could not serialize history event")?;
        line.push('\n');
        let mut f = open_private_append(&path)?;
        f.write_all(line.as_bytes()).with_context(|| format!("could not append to {}", path.display()))?;
        f.sync_all().with_context(|| format!("could not fsync {}", path.display()))?;
        Ok(())
    }

    pub fn history(&self) -> Result<Vec<Event>> {
        let path = self.history_path();
        util::refuse_symlink(&path)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: not a history event", path.display(), i + 1))
            })
            .collect()
    }
}

fn open_private_append(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn state_round_trips_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("cutover/shop"));
        store.ensure().unwrap();
        let mut s = store.load("shop").unwrap();
        assert_eq!(s.live, None);
        s.generation = 3;
        store.save(&s).unwrap();
        assert_eq!(store.load("shop").unwrap(), s);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.dir), 0o700);
        assert_eq!(mode(&store.state_path()), 0o600);
    }

    #[test]
    fn symlinked_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("shop")).unwrap();
        let e = Store::new(dir.path().join("shop")).ensure().unwrap_err();
        assert!(format!("{e:#}").contains("it is a symlink"), "{e:#}");
    }
}

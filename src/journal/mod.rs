//! The journal: the only code that changes `state.json`, one method per transition, each written before the
//! side effect it announces, so that a run killed at any point leaves a true record for the next one.
//!
//! Changes to what nginx serves are [`Change`]s. The engine renders the upstream for [`Journal::preview`] of a
//! change, makes nginx serve it, and only then [`Journal::commit`]s the same change: state never claims nginx
//! routes somewhere it might not. What is to be stopped is recorded in the operation's `to_stop` in the same
//! write that takes it out of service, and [`Journal::stopped`] clears it once it is.

mod change;
pub mod history;
pub mod state;
pub mod store;

use anyhow::{bail, Result};

pub use change::{Change, Leave, RollStep};
pub use history::{Event, Outcome};
pub use state::{CanaryState, Deployment, Instance, OpKind, Operation, RollingState, Serving, State, STATE_VERSION};
pub use store::Store;

use crate::host::Host;
use crate::strategy::Strategy;
use crate::util;

/// The state of one app and the only way to change it.
pub struct Journal<'h> {
    store: Store,
    state: State,
    host: &'h dyn Host,
}

impl<'h> Journal<'h> {
    /// Load the app's state (an empty one when nothing was ever deployed).
    pub fn open(store: Store, app: &str, host: &'h dyn Host) -> Result<Journal<'h>> {
        store.ensure()?;
        let state = store.load(app)?;
        Ok(Journal { store, state, host })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The state a change would leave, with the generation its upstream file will carry. Nothing is written.
    pub fn preview(&self, change: &Change) -> State {
        let mut s = self.state.clone();
        change.apply(&mut s);
        s.generation += 1;
        s
    }

    fn save(&mut self, what: &str) -> Result<()> {
        self.host.checkpoint(&format!("journal {what}"));
        self.store.save(&self.state)
    }

    /// An operation begins: recorded before its first side effect.
    pub fn begin(
        &mut self,
        kind: OpKind,
        release: &str,
        strategy: Option<Strategy>,
        upstream_before: Option<String>,
    ) -> Result<()> {
        if let Some(op) = &self.state.in_progress {
            bail!("a `{}` of {} is still recorded as in progress; `cutover recover` finishes it", op.kind, op.release);
        }
        let before = Serving {
            live: self.state.live.clone(),
            previous: self.state.previous.clone(),
            backup: self.state.backup.clone(),
            rolling: self.state.rolling.clone(),
        };
        self.state.version = STATE_VERSION;
        self.state.in_progress = Some(Operation {
            kind,
            release: release.into(),
            strategy,
            pid: std::process::id(),
            started_at: util::now_rfc3339(),
            started: Vec::new(),
            to_stop: Vec::new(),
            upstream_before,
            upstream_touched: false,
            before: Some(before),
        });
        self.save("begin")
    }

    fn op(&mut self) -> Result<&mut Operation> {
        match self.state.in_progress.as_mut() {
            Some(op) => Ok(op),
            None => bail!("no operation is recorded as in progress"),
        }
    }

    /// An instance is about to start: its marker is recorded first, so that the next run can find it even if
    /// cutover dies before the start returns.
    pub fn launching(&mut self, intent: Instance) -> Result<()> {
        self.op()?.started.push(intent);
        self.save("launching")
    }

    /// The instance started: its identity replaces the intent.
    pub fn started(&mut self, inst: Instance) -> Result<()> {
        let op = self.op()?;
        match op.started.iter_mut().find(|i| i.port == inst.port && i.marker == inst.marker) {
            Some(slot) => *slot = inst,
            None => op.started.push(inst),
        }
        self.save("started")
    }

    /// The upstream file is about to change.
    pub fn touch_upstream(&mut self) -> Result<()> {
        let op = self.op()?;
        if op.upstream_touched {
            return Ok(());
        }
        op.upstream_touched = true;
        self.save("upstream touched")
    }

    /// nginx serves `upstream` now (or the change needs no upstream write: `None`): record the change and, with
    /// a file, bump the generation (exactly once per applied file).
    /// A change whose write fails is not applied here either: the state in memory stays what is on disk.
    pub fn commit(&mut self, change: &Change, upstream: Option<String>) -> Result<()> {
        let kept = self.state.clone();
        change.apply(&mut self.state);
        if let Some(text) = upstream {
            self.state.generation += 1;
            self.state.upstream = Some(text);
        }
        self.save("commit").inspect_err(|_| self.state = kept)
    }

    /// These instances are stopped: their records keep release and port, lose their identity, and leave
    /// `to_stop`, the backup list and the operation's `started`.
    pub fn stopped(&mut self, insts: &[Instance]) -> Result<()> {
        if insts.is_empty() {
            return Ok(());
        }
        let hit = |i: &Instance| insts.iter().any(|s| s.same(i));
        let s = &mut self.state;
        s.backup.retain(|b| !hit(b));
        let rolled = s.rolling.as_mut().map(|r| (&mut r.deployment.instances, &mut r.down));
        let (rolled, down) = match rolled {
            Some((d, down)) => (Some(d), Some(down)),
            None => (None, None),
        };
        let lists = s.previous.iter_mut().chain(s.live.iter_mut()).map(|d| &mut d.instances).chain(rolled).chain(down);
        for list in lists {
            for i in list.iter_mut() {
                if hit(i) {
                    *i = i.clone().stopped();
                }
            }
        }
        if let Some(op) = &mut s.in_progress {
            op.to_stop.retain(|i| !hit(i));
            op.started.retain(|i| !hit(i));
        }
        self.save("stopped")
    }

    /// Record an adopted release (a [`Change::Adopt`]) that nginx now serves through `upstream`, in one write.
    /// Refused when anything is recorded for the app already: adoption starts a record, it never rewrites one.
    pub fn adopt(&mut self, change: &Change, upstream: String) -> Result<()> {
        if !matches!(change, Change::Adopt { .. }) {
            bail!("Journal::adopt records a Change::Adopt only");
        }
        let s = &self.state;
        if s.live.is_some() || s.canary.is_some() || s.rolling.is_some() || s.in_progress.is_some() {
            bail!(
                "state for {} already records a release; adoption is for an app cutover has no record of (see \
                 `cutover status`)",
                s.app
            );
        }
        self.state.version = STATE_VERSION;
        self.commit(change, Some(upstream))
    }

    /// The operation finished.
    pub fn done(&mut self) -> Result<()> {
        self.state.in_progress = None;
        self.save("done")
    }

    /// The operation failed and everything it did was undone.
    pub fn abandon(&mut self) -> Result<()> {
        self.state.in_progress = None;
        self.save("abandon")
    }

    /// Append one history event; a failure to write it is a warning, never a changed outcome.
    pub fn append_history(&self, event: &Event) -> Result<()> {
        self.host.checkpoint("history append");
        self.store.append_history(event)
    }
}

#[cfg(test)]
mod tests;

//! The journal: the only code that changes `state.json`, one method per transition, each written before the
//! side effect it announces, so that a run killed at any point leaves a true record for the next one.
//!
//! Changes to what nginx serves are [`Change`]s. The engine renders the upstream for [`Journal::preview`] of a
//! change, makes nginx serve it, and only then [`Journal::commit`]s the same change: state never claims nginx
//! routes somewhere it might not. What is to be stopped is recorded in the operation's `to_stop` in the same
//! write that takes it out of service, and [`Journal::stopped`] clears it once it is.

pub mod history;
pub mod state;
pub mod store;

use anyhow::{bail, Result};

pub use history::{Event, Outcome};
pub use state::{CanaryState, Deployment, Instance, OpKind, Operation, RollingState, Serving, State, STATE_VERSION};
pub use store::Store;

use crate::host::Host;
use crate::strategy::Strategy;
use crate::util;

/// A change to what nginx serves. [`Change::apply`] is the one place each rule is written.
#[derive(Debug, Clone)]
pub enum Change {
    /// Traffic moves to `to` (new instances, a kept previous release, or a canary being promoted). What was
    /// live becomes the previous release and stays listed as nginx `backup` until it is unlisted; it is recorded
    /// to stop unless `keep_previous`. An older previous release still running is recorded to stop. Redeploying
    /// the live release (a restart) keeps the previous release and records the replaced instances to stop.
    Flip { to: Deployment, keep_previous: bool },
    /// A canary serves at its weight (the first step, a promote short of 100 %, `canary set`).
    Canary(CanaryState),
    /// The canary leaves the upstream; its instances are recorded to stop.
    CanaryEnd,
    /// Instances recorded to stop leave the backup listing (the verify window passed).
    Unlist,
    /// Idle previous instances give up their ports (the pool is full): out of the backup listing, to stop.
    Reclaim(Vec<Instance>),
    /// Back to what served when the operation began: the new release died after the switch. It is recorded to
    /// stop.
    FlipBack,
    /// What a killed run left (instances it started that never served, instances it meant to stop) leaves the
    /// upstream and is recorded to stop; except, with `keep_previous`, the previous release's instances: what
    /// the operator keeps stays (listed as backup again, if the killed run had taken it out to reclaim its port).
    Recover { keep_previous: bool },
    /// Nothing changes but the file (a re-render after a config or template change).
    Rerender,
    /// A rolling deploy's fleet: `live` is what remains of the old release, `rolling` the new one so far.
    Rolling { live: Option<Deployment>, rolling: Option<RollingState>, to_stop: Vec<Instance> },
    /// Dead instances replaced by fresh ones of the same release (`cutover up`), in whichever of the live,
    /// canary or rolling deployment held them; the dead ones are dropped. The app is online again.
    Replace { old: Vec<Instance>, new: Vec<Instance> },
    /// The app taken offline (`cutover stop`): nothing serves (the live servers are listed `down`); every
    /// running instance (live, backup, canary, a previous release kept running) is recorded to stop, the canary
    /// ends, and the live release stays recorded so that `up` or `deploy` bring it back.
    Offline,
    /// `cutover init --adopt`: processes cutover did not start become the record. `live` is what nginx routed
    /// to; `previous` an idle copy of the app on another pool port (the switch.sh pattern leaves one), kept
    /// running and not listed in the upstream. Only for an app with nothing recorded ([`Journal::adopt`]).
    Adopt { live: Deployment, previous: Option<Deployment> },
}

impl Change {
    /// Apply the change to `state` (and its operation, where `to_stop` lives). Pure.
    pub fn apply(&self, state: &mut State) {
        let mut to_stop: Vec<Instance> = Vec::new();
        match self {
            Change::Flip { to, keep_previous } => {
                let old_live = state.live.take();
                let redeploy = old_live.as_ref().is_some_and(|l| l.release == to.release);
                let reused = |i: &Instance| to.instances.iter().any(|t| t.same(i));
                let old_running: Vec<Instance> = old_live.iter().flat_map(|d| d.running()).collect();
                if redeploy {
                    // A restart: the replaced instances serve as backup until verified, then stop.
                    to_stop.extend(old_running.iter().filter(|i| !reused(i)).cloned());
                    let mut backup: Vec<Instance> = old_running.iter().filter(|i| !reused(i)).cloned().collect();
                    for b in &state.backup {
                        if !reused(b) && !backup.iter().any(|x| x.same(b)) {
                            backup.push(b.clone());
                        }
                    }
                    state.backup = backup;
                } else {
                    for i in state.previous.iter().flat_map(|d| d.running()) {
                        if !reused(&i) {
                            to_stop.push(i);
                        }
                    }
                    if !keep_previous {
                        to_stop.extend(old_running.iter().cloned());
                    }
                    state.backup = old_running.clone();
                    if old_live.is_some() {
                        state.previous = old_live;
                    }
                }
                state.live = Some(to.clone());
                state.canary = None;
                state.rolling = None;
                state.offline = false;
            }
            Change::Canary(c) => state.canary = Some(c.clone()),
            Change::CanaryEnd => {
                if let Some(c) = state.canary.take() {
                    to_stop.extend(c.deployment.running());
                }
            }
            Change::Unlist => {
                let listed = state.in_progress.as_ref().map(|o| o.to_stop.clone()).unwrap_or_default();
                state.backup.retain(|b| !listed.iter().any(|s| s.same(b)));
            }
            Change::Reclaim(insts) => {
                state.backup.retain(|b| !insts.iter().any(|s| s.same(b)));
                to_stop.extend(insts.iter().cloned());
            }
            Change::FlipBack => {
                let Some(before) = state.in_progress.as_ref().and_then(|o| o.before.clone()) else { return };
                let kept = |i: &Instance| serving_has(&before, i);
                for d in state.live.iter().chain(state.canary.as_ref().map(|c| &c.deployment)) {
                    to_stop.extend(d.running().into_iter().filter(|i| !kept(i)));
                }
                if let Some(op) = &mut state.in_progress {
                    op.to_stop.retain(|i| !kept(i));
                }
                state.live = before.live;
                state.previous = before.previous;
                state.backup = before.backup;
                state.canary = None;
                state.rolling = None;
            }
            Change::Recover { keep_previous } => {
                let Some(op) = state.in_progress.clone() else { return };
                let serving = |i: &Instance| {
                    state
                        .live
                        .iter()
                        .chain(state.canary.as_ref().map(|c| &c.deployment))
                        .any(|d| d.instances.iter().any(|x| x.same(i)))
                        || state.rolling.as_ref().is_some_and(|r| r.deployment.instances.iter().any(|x| x.same(i)))
                };
                let kept_previous = |i: &Instance| {
                    *keep_previous
                        && state
                            .previous
                            .as_ref()
                            .is_some_and(|p| p.instances.iter().any(|x| x.same(i) && x.recorded_running()))
                };
                let stop: Vec<Instance> = op
                    .started
                    .iter()
                    .chain(op.to_stop.iter())
                    .filter(|i| !serving(i) && !kept_idle(state, i) && !kept_previous(i))
                    .cloned()
                    .collect();
                for i in op.to_stop.iter().filter(|i| kept_previous(i)) {
                    if !state.backup.iter().any(|b| b.same(i)) {
                        state.backup.push(i.clone());
                    }
                }
                if let Some(op) = &mut state.in_progress {
                    op.to_stop.retain(|i| !kept_previous(i));
                }
                state.backup.retain(|b| !stop.iter().any(|s| s.same(b)));
                if let Some(r) = &mut state.rolling {
                    r.down.retain(|b| !stop.iter().any(|s| s.same(b)));
                }
                to_stop.extend(stop);
            }
            Change::Rerender => {}
            Change::Rolling { live, rolling, to_stop: stop } => {
                state.live = live.clone();
                state.rolling = rolling.clone();
                to_stop.extend(stop.iter().cloned());
            }
            Change::Replace { old, new } => {
                let deps = state
                    .live
                    .iter_mut()
                    .chain(state.canary.as_mut().map(|c| &mut c.deployment))
                    .chain(state.rolling.as_mut().map(|r| &mut r.deployment));
                for d in deps {
                    let before = d.instances.len();
                    d.instances.retain(|i| !old.iter().any(|o| o.same(i)));
                    if d.instances.len() == before {
                        continue;
                    }
                    d.instances.extend(new.iter().filter(|n| n.release == d.release).cloned());
                    d.instances.sort_by_key(|i| i.port);
                }
                state.offline = false;
            }
            Change::Adopt { live, previous } => {
                state.live = Some(live.clone());
                state.previous = previous.clone();
                state.backup.clear();
                state.canary = None;
                state.rolling = None;
            }
            Change::Offline => {
                if let Some(live) = &state.live {
                    to_stop.extend(live.running());
                }
                to_stop.append(&mut state.backup);
                if let Some(c) = state.canary.take() {
                    to_stop.extend(c.deployment.running());
                }
                if let Some(p) = &state.previous {
                    to_stop.extend(p.running());
                }
                state.offline = true;
            }
        }
        if let Some(op) = &mut state.in_progress {
            for i in to_stop {
                if !op.to_stop.iter().any(|s| s.same(&i)) {
                    op.to_stop.push(i);
                }
            }
        }
    }
}

/// A previous instance that is neither scheduled to stop nor in the backup list: kept idle for a fast rollback
/// (`deploy.keep_previous`). A killed run's record may name it as started (a rollback that reused it).
fn kept_idle(state: &State, i: &Instance) -> bool {
    let scheduled = state.in_progress.as_ref().is_some_and(|o| o.to_stop.iter().any(|s| s.same(i)));
    !scheduled && state.previous.as_ref().is_some_and(|p| p.instances.iter().any(|x| x.same(i) && x.recorded_running()))
}

/// Whether `i` serves in `s` or is kept there (live, backup, or a previous release still running).
fn serving_has(s: &Serving, i: &Instance) -> bool {
    s.live.iter().chain(s.previous.iter()).any(|d| d.instances.iter().any(|x| x.same(i) && x.recorded_running()))
        || s.backup.iter().any(|x| x.same(i))
}

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
    pub fn commit(&mut self, change: &Change, upstream: Option<String>) -> Result<()> {
        change.apply(&mut self.state);
        if let Some(text) = upstream {
            self.state.generation += 1;
            self.state.upstream = Some(text);
        }
        self.save("commit")
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
        for d in s.previous.iter_mut().chain(s.live.iter_mut()) {
            for i in &mut d.instances {
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

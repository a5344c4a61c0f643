//! The rules of what each change to what nginx serves does to state: [`Change::apply`] is the one place each is
//! written, used both to preview a change (the upstream it renders) and to commit it.

use super::state::{CanaryState, Deployment, Instance, RollingState, Serving, State};
use crate::strategy::Strategy;

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
    /// One step of a rolling or all-at-once deploy (or of its rollback): instances join the fleet and leave it.
    /// See [`RollStep`].
    Roll(RollStep),
    /// A rolling deploy ends where it stands: when every instance runs the rolled-out release, it becomes the live
    /// release (`since`) and the old one the previous release (stopped; a rollback restarts it); when none does
    /// (rolled back, or a rolling restart), the live release is the whole fleet again. A fleet still mixed, or
    /// with slots taken out and not yet refilled, does not end: nothing changes.
    RollEnd { since: String },
    /// A rolling deploy stops part-way on purpose (`rolling.on_failure = "pause"`), with the reason `status`
    /// shows.
    RollPause(String),
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
                let serving = state
                    .live
                    .iter()
                    .chain(state.canary.as_ref().map(|c| &c.deployment))
                    .chain(state.rolling.as_ref().map(|r| &r.deployment));
                for d in serving {
                    to_stop.extend(d.running().into_iter().filter(|i| !kept(i)));
                }
                if let Some(op) = &mut state.in_progress {
                    op.to_stop.retain(|i| !kept(i));
                }
                state.live = before.live;
                state.previous = before.previous;
                state.backup = before.backup;
                state.canary = None;
                state.rolling = before.rolling;
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
                // A rolling deploy stays where the run left it, between two batches: its `down` slots stay
                // recorded (stopped) for the command that resumes it or rolls it back.
                if let Some(r) = &mut state.rolling {
                    if r.paused.is_none() {
                        r.paused = Some(format!("interrupted: the `{}` that drove it did not finish", op.kind));
                    }
                }
                to_stop.extend(stop);
            }
            Change::Rerender => {}
            Change::Roll(step) => step.apply(state, &mut to_stop),
            Change::RollEnd { since } => {
                let Some(r) = state.rolling.clone() else { return };
                let old_left = state.live.as_ref().is_none_or(|l| l.instances.is_empty());
                if !r.down.is_empty() {
                    return;
                }
                if r.deployment.instances.is_empty() {
                    state.rolling = None;
                } else if old_left {
                    let old = state.live.take();
                    let before = state.in_progress.as_ref().and_then(|o| o.before.as_ref());
                    if let Some(old) = old {
                        // The old release's record: its ports as the deploy found them, stopped.
                        let was = before.and_then(|b| b.live.as_ref()).filter(|l| l.release == old.release);
                        let instances = was.map(|l| l.instances.clone()).unwrap_or_default();
                        for i in state.previous.iter().flat_map(|d| d.running()) {
                            to_stop.push(i);
                        }
                        state.previous = Some(Deployment {
                            instances: instances.into_iter().map(Instance::stopped).collect(),
                            ..old
                        });
                    }
                    state.live = Some(Deployment { since: since.clone(), ..r.deployment });
                    state.rolling = None;
                }
            }
            Change::RollPause(why) => {
                if let Some(r) = &mut state.rolling {
                    r.paused = Some(why.clone());
                }
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

/// How an instance leaves the fleet in a [`RollStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Listed as nginx `backup` behind its replacements until [`Change::Unlist`], then stopped (surge: a
    /// connection a new instance refuses is retried on the old one while the batch is verified).
    Backup,
    /// Listed `down` in its slot until a replacement on the same port fills it (no surge: out first, drained,
    /// stopped, replaced). The slot stays recorded, stopped, so that a fleet interrupted there is not smaller.
    Down,
    /// Out of the upstream at once (the instances of a batch that failed its verification).
    Out,
}

/// One step of a rolling or all-at-once deploy, in either direction. Each instance in `join` serves beside the
/// instances of its release (the live release's, or the release being rolled out), is no longer scheduled to
/// stop and fills the `down` slot on its port; each in `leave` stops serving as `leave_as` says and is scheduled
/// to stop. The first step records the rolling deploy (`state.rolling`); each records its progress.
#[derive(Debug, Clone)]
pub struct RollStep {
    /// The release being rolled out (during a rollback too: the rollback moves instances back from it).
    pub release: String,
    pub strategy: Strategy,
    /// All at once: the port of the maintenance answer (see [`RollingState::maintenance`]).
    pub maintenance: Option<u16>,
    /// When the rolling deploy began (the `since` of its deployment).
    pub since: String,
    /// Batches of the rolled-out release in the fleet after this step, of `batches`.
    pub batch: usize,
    pub batches: usize,
    pub join: Vec<Instance>,
    pub leave: Vec<Instance>,
    pub leave_as: Leave,
}

impl RollStep {
    fn apply(&self, state: &mut State, to_stop: &mut Vec<Instance>) {
        let r = state.rolling.get_or_insert_with(|| RollingState {
            deployment: Deployment { release: self.release.clone(), instances: Vec::new(), since: self.since.clone() },
            batch: 0,
            batches: self.batches,
            down: Vec::new(),
            paused: None,
            strategy: self.strategy,
            maintenance: self.maintenance,
        });
        r.batch = self.batch;
        r.batches = self.batches;
        r.maintenance = self.maintenance;
        r.paused = None;
        for i in &self.leave {
            r.deployment.instances.retain(|x| !x.same(i));
            if let Some(live) = &mut state.live {
                live.instances.retain(|x| !x.same(i));
            }
            match self.leave_as {
                Leave::Backup if !state.backup.iter().any(|b| b.same(i)) => state.backup.push(i.clone()),
                Leave::Down => {
                    r.down.retain(|d| d.port != i.port);
                    r.down.push(i.clone());
                }
                _ => {}
            }
            to_stop.push(i.clone());
        }
        for i in &self.join {
            r.down.retain(|d| d.port != i.port);
            state.backup.retain(|b| !b.same(i));
            to_stop.retain(|s| !s.same(i));
            if let Some(op) = &mut state.in_progress {
                op.to_stop.retain(|s| !s.same(i));
            }
            let side = match &mut state.live {
                Some(live) if live.release == i.release => &mut live.instances,
                _ => &mut r.deployment.instances,
            };
            if !side.iter().any(|x| x.same(i)) {
                side.push(i.clone());
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

/// Whether `i` serves in `s` or is kept there (live, rolled out, backup, or a previous release still running).
fn serving_has(s: &Serving, i: &Instance) -> bool {
    s.live
        .iter()
        .chain(s.previous.iter())
        .chain(s.rolling.as_ref().map(|r| &r.deployment))
        .any(|d| d.instances.iter().any(|x| x.same(i) && x.recorded_running()))
        || s.backup.iter().any(|x| x.same(i))
}

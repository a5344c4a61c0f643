//! One batch, in either direction: the engine's steps for surge (start beside, swap with the old ones as backup,
//! verify, retire) and in place (take out, drain, stop, start on the same ports, put in, verify), and the hold
//! with analysis between batches.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Batch;
use crate::engine::flip::{is_unsettled, Applied};
use crate::engine::hooks::HookEnv;
use crate::engine::Engine;
use crate::exit::{Code, Failure};
use crate::journal::{Change, Instance, Leave, OpKind, RollStep, State};
use crate::strategy::canary::{self, Watch};
use crate::strategy::Strategy;

/// The instances of the fleet (live, or rolled out) on these ports, in that order.
pub(super) fn fleet_on(state: &State, ports: &[u16]) -> Vec<Instance> {
    let fleet: Vec<&Instance> = state
        .live
        .iter()
        .flat_map(|d| d.instances.iter())
        .chain(state.rolling.iter().flat_map(|r| r.deployment.instances.iter()))
        .collect();
    ports.iter().filter_map(|p| fleet.iter().find(|i| i.port == *p).map(|i| (*i).clone())).collect()
}

/// One run of batches in one direction.
pub(super) struct Run {
    /// The release being rolled out (`state.rolling.deployment.release`).
    pub release: String,
    /// What this run starts: `release` going forward, the old release going back.
    pub target: String,
    /// The release that was live when the run began, for the hooks.
    pub from: String,
    pub kind: OpKind,
    pub strategy: Strategy,
    pub since: String,
    /// Batches of `release` in the fleet, of `batches`.
    pub batch: usize,
    pub batches: usize,
    /// The batch being run or held (for messages), and the count to record if it is undone.
    pub current: usize,
    pub undo_batch: usize,
    pub back: bool,
    /// A change of the upstream was committed: traffic moved.
    pub moved: bool,
    /// Since when nothing serves (all at once), and the total so far.
    pub dark_since: Option<Instant>,
    pub dark: Duration,
    pub stopped: Vec<Instance>,
    pub drained: bool,
    pub last_healthy: Option<(Instant, u64)>,
    /// The last batch failed in its launch (its instances never got traffic).
    pub launch_failed: bool,
}

impl Run {
    pub fn step(&self, join: Vec<Instance>, leave: Vec<Instance>, leave_as: Leave, maintenance: Option<u16>) -> Change {
        Change::Roll(self.roll_step(join, leave, leave_as, maintenance))
    }

    fn roll_step(
        &self,
        join: Vec<Instance>,
        leave: Vec<Instance>,
        leave_as: Leave,
        maintenance: Option<u16>,
    ) -> RollStep {
        RollStep {
            release: self.release.clone(),
            strategy: self.strategy,
            maintenance,
            since: self.since.clone(),
            batch: self.batch,
            batches: self.batches,
            join,
            leave,
            leave_as,
        }
    }

    /// Apply a step; measure the time nothing served (the upstream lists only the maintenance answer), from
    /// the start of the change that took the last instance out to the confirmed reload that put one in: an
    /// upper bound of what clients saw.
    pub fn apply(&mut self, eng: &mut Engine, change: Change) -> Result<Applied> {
        let t = Instant::now();
        let applied = eng.apply(change)?;
        self.moved = true;
        let serving = eng.state().live.iter().any(|l| !l.instances.is_empty())
            || eng.state().rolling.as_ref().is_some_and(|r| !r.deployment.instances.is_empty());
        match (serving, self.dark_since) {
            (false, None) => self.dark_since = Some(t),
            (true, Some(t)) => {
                self.dark += t.elapsed();
                self.dark_since = None;
                eng.downtime = Some(self.dark);
            }
            _ => {}
        }
        Ok(applied)
    }

    pub fn drain(&mut self, eng: &mut Engine, applied: &Applied, consequence: &str) {
        self.drained &= eng.drain(applied, "drain", consequence);
    }

    pub fn label(&self) -> String {
        if self.back {
            format!("back to {}", self.target)
        } else {
            format!("batch {} of {}", self.current, self.batches)
        }
    }

    /// A step recorded with the count before the batch: taking its old instances out (a batch counts once its
    /// replacements are in), or its failed instances out again.
    pub fn step_before(
        &self,
        join: Vec<Instance>,
        leave: Vec<Instance>,
        leave_as: Leave,
        maintenance: Option<u16>,
    ) -> Change {
        Change::Roll(RollStep { batch: self.undo_batch, ..self.roll_step(join, leave, leave_as, maintenance) })
    }

    /// The step that takes a failed batch's instances out again.
    pub fn undo(
        &mut self,
        join: Vec<Instance>,
        leave: Vec<Instance>,
        leave_as: Leave,
        maintenance: Option<u16>,
    ) -> Change {
        self.batch = self.undo_batch;
        self.step(join, leave, leave_as, maintenance)
    }
}

/// Run one batch. On error the batch is undone as far as it can be: with surge the fleet is as it was; in place
/// the instances it took out are stopped and their slots stay `down` for the caller to refill.
pub(super) fn batch(eng: &mut Engine, run: &mut Run, b: &Batch) -> Result<()> {
    let retire = fleet_on(eng.state(), &b.retire);
    if retire.len() != b.retire.len() {
        anyhow::bail!("the fleet changed since the plan: no instance serves on every port of {:?}", b.retire);
    }
    let env = HookEnv {
        release: run.target.clone(),
        previous: run.from.clone(),
        kind: run.kind,
        strategy: Some(run.strategy),
        ports: b.start.clone(),
        error: None,
    };
    let from = eng.progress.steps.len();
    let list = |v: &[u16]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    run.undo_batch = run.batch;
    if !run.back && !b.retire.is_empty() {
        run.batch += 1;
    } else if run.back && retire.iter().any(|i| i.release == run.release) {
        run.batch = run.batch.saturating_sub(1);
    }
    run.current = if run.back { run.undo_batch } else { run.undo_batch + 1 };
    let result = if b.in_place() { in_place(eng, run, b, &retire, &env) } else { surge(eng, run, b, &retire, &env) };
    if result.is_err() {
        run.batch = run.undo_batch;
    }
    let what = match retire.first() {
        None => format!("{} started on port {} in empty slots", run.target, list(&b.start)),
        Some(r) => {
            format!("{} on port {} replaced {} on port {}", run.target, list(&b.start), r.release, list(&b.retire))
        }
    };
    let name = if run.back { "back".to_string() } else { format!("batch {}/{}", run.current, run.batches) };
    eng.progress.fold(from, &name, if result.is_ok() { what } else { format!("FAILED: {what}") });
    result
}

fn surge(eng: &mut Engine, run: &mut Run, b: &Batch, retire: &[Instance], env: &HookEnv) -> Result<()> {
    // Beside the old ones, which leave as backup; after a failed verify they rejoin (still running) and the
    // failed instances leave the upstream.
    put_in(eng, run, b, env, retire, Leave::Backup, (retire, Leave::Out))?;
    run.stopped.extend(eng.retire()?);
    Ok(())
}

fn in_place(eng: &mut Engine, run: &mut Run, b: &Batch, retire: &[Instance], env: &HookEnv) -> Result<()> {
    if !retire.is_empty() {
        let out = run.step_before(Vec::new(), retire.to_vec(), Leave::Down, b.maintenance);
        let applied = run.apply(eng, out)?;
        run.drain(eng, &applied, " (long requests or open connections); stopping them anyway");
        run.stopped.extend(eng.stop(retire, "stop")?);
    }
    put_in(eng, run, b, env, &[], Leave::Down, (&[], Leave::Down))
}

/// Start the batch's new instances and put them in nginx's upstream, `leave` leaving as `leave_as`. A failed
/// upstream change stops them again (unless nginx may still route to them). If they fail their verify window,
/// `on_failure` says who rejoins and how the failed instances leave; then they are stopped: exit 3.
fn put_in(
    eng: &mut Engine,
    run: &mut Run,
    b: &Batch,
    env: &HookEnv,
    leave: &[Instance],
    leave_as: Leave,
    on_failure: (&[Instance], Leave),
) -> Result<()> {
    let launched = eng.launch(&run.target, &b.start, env).inspect_err(|_| run.launch_failed = true)?;
    let step = run.step(launched.instances.clone(), leave.to_vec(), leave_as, b.maintenance);
    let applied = match run.apply(eng, step) {
        Ok(a) => a,
        Err(e) => {
            if !is_unsettled(&e) {
                eng.undo_launch(&launched.instances);
            }
            return Err(e);
        }
    };
    run.drain(eng, &applied, " (long requests or open connections); going on");
    if let Err(why) = eng.verify(&launched.instances) {
        eng.progress.warn(format!("{} failed after it got traffic ({why}); taking it out again", run.label()));
        let (rejoin, failed_leave_as) = on_failure;
        let undo = run.undo(rejoin.to_vec(), launched.instances.clone(), failed_leave_as, b.maintenance);
        let applied = run.apply(eng, undo)?;
        run.drain(eng, &applied, "; stopping the failed instances anyway");
        eng.stop(&launched.instances, "stop")?;
        return Err(Failure::error(Code::Unhealthy, format!("{} failed after the switch: {why}", run.target)));
    }
    run.last_healthy = Some((launched.healthy_at, launched.healthy_unix_ms));
    Ok(())
}

/// The hold between two batches (`rolling.pause`): the new instances against the old ones. `Err` (exit 6)
/// when analysis says the batch is bad.
pub(super) fn hold(eng: &mut Engine, run: &Run) -> Result<()> {
    let pause = eng.cfg.rolling.pause.0;
    if pause.is_zero() {
        return Ok(());
    }
    let state = eng.state().clone();
    let new: Vec<Instance> = state.rolling.as_ref().map(|r| r.deployment.instances.clone()).unwrap_or_default();
    let old: Vec<Instance> = state.live.as_ref().map(|l| l.instances.clone()).unwrap_or_default();
    let verdict = canary::watch(
        eng,
        pause,
        &Watch {
            new: &new,
            old: &old,
            label: format!("{} held", run.label()),
            subject: "new instance",
            blind_fix:
                "send traffic during a rolling deploy, check the site's access_log, or set rolling.pause = \"0s\"",
        },
    )
    .unwrap_or_else(|e| Some(format!("analysis failed: {e:#}")));
    match verdict {
        None => Ok(()),
        Some(why) => Err(Failure::error(Code::CanaryAborted, format!("analysis of {}: {why}", run.label()))),
    }
}

pub(super) fn share_note(eng: &Engine) {
    let s = eng.state();
    let (Some(r), Some(live)) = (&s.rolling, &s.live) else { return };
    let (new, old) = (r.deployment.instances.len(), live.instances.len());
    let total = (new + old).max(1);
    eng.progress.note(format!(
        "{} serves {}% of traffic ({new} of {total} instances), {} {}%",
        r.deployment.release,
        100 * new / total,
        live.release,
        100 * old / total
    ));
}

//! Rolling and all-at-once (README.md, "Rolling" and "All at once"): replace the live instances where they
//! stand, a batch at a time, each batch a short sequence of the engine's steps (launch, apply a
//! [`RollStep`], drain, verify, retire).
//!
//! - **Surge** (`rolling.surge = true`, EB's *rolling with additional batch*): the batch's replacements start on
//!   idle pool ports and pass their health check; one upstream change puts them in beside the old instances and
//!   lists the ones they replace as nginx `backup`; after the drain and `deploy.verify` those leave the upstream
//!   (a second change), nginx's old workers exit, and they are stopped. Capacity never drops below
//!   `deploy.instances`.
//! - **No surge**: the batch's old instances are listed `down` (an upstream change), drained and stopped; their
//!   replacements start on the same ports, pass their health check and are put in. Capacity drops by one batch,
//!   never more, and no spare port is needed.
//! - **All at once**: one batch of every instance, without surge. While nothing runs, the upstream points at nginx
//!   itself answering 503 with `Retry-After` on one more pool port (see [`crate::upstream::view`]); the time
//!   nothing served is measured and recorded.
//!
//! Between batches, `rolling.pause` holds with the canary's access-log analysis of the new instances against
//! the old ones ([`canary::watch`]). A failed batch is undone first (its replacements stopped, its emptied slots
//! refilled with the old release); then `rolling.on_failure = "rollback"` runs the same batch steps backwards,
//! with the old release as the target, over every batch already replaced (the last first), and `"pause"`
//! records the mixed fleet as paused. A failed all-at-once always restarts the old release.
//!
//! State is true after every step: a run killed anywhere leaves a fleet that the next command's recovery brings
//! to a batch boundary without starting anything (what the killed batch started and never served is stopped,
//! what it took out is stopped and its slot stays recorded `down`), recorded as paused. `cutover deploy --release
//! R` with the same release resumes it; `cutover rollback` and `cutover recover` roll it back ([`roll_back`]).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::canary::{self, Watch};
use super::{blue_green, Strategy, Switched};
use crate::config::{Config, OnFailure};
use crate::engine::flip::is_unsettled;
use crate::engine::hooks::HookEnv;
use crate::engine::Engine;
use crate::exit::{self, Code, Failure, Returned};
use crate::journal::{Change, Deployment, Instance, Leave, OpKind, RollStep, State};
use crate::plan::ports::PortUse;
use crate::plan::{no_port_message, scratch_op, Plan, Refusal, Snapshot};
use crate::upstream::Renderer;

/// One batch of a rolling deploy: the ports of the instances that leave, the ports their replacements start on
/// (the same ones without surge), and, all at once, where nginx answers the maintenance page meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// Empty for a batch that refills slots an interrupted run left empty.
    pub retire: Vec<u16>,
    pub start: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<u16>,
}

impl Batch {
    /// The replacements start where the instances they replace were (no surge), so those go first.
    pub fn in_place(&self) -> bool {
        self.retire.iter().all(|p| self.start.contains(p))
    }
}

/// How batches run: their size and whether replacements start beside the old instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    size: usize,
    surge: bool,
}

impl Shape {
    fn of(cfg: &Config, strategy: Strategy) -> Shape {
        match strategy {
            Strategy::AllAtOnce => Shape { size: usize::MAX, surge: false },
            _ => Shape { size: cfg.rolling.batch.0 as usize, surge: cfg.rolling.surge },
        }
    }
}

/// The batches that refill `slots` (first, in one batch) and replace the instances on `old` (in that order,
/// `shape.size` at a time). With surge each batch starts on the first idle ports in pool order, `free`, and
/// the ports it empties become idle for the next. `Err(n)` when the idle ports are `n` short. Pure.
fn layout(
    shape: Shape,
    slots: &[u16],
    old: &[u16],
    free: &[u16],
    pool: &[u16],
    maintenance: Option<u16>,
) -> std::result::Result<Vec<Batch>, usize> {
    let mut batches = Vec::new();
    if maintenance.is_some() {
        // All at once: everything in one batch, slots included.
        let start = slots.iter().chain(old).copied().collect();
        return Ok(vec![Batch { retire: old.to_vec(), start, maintenance }]);
    }
    if !slots.is_empty() {
        batches.push(Batch { retire: Vec::new(), start: slots.to_vec(), maintenance: None });
    }
    let rank = |p: &u16| pool.iter().position(|x| x == p).unwrap_or(usize::MAX);
    let mut idle: Vec<u16> = free.to_vec();
    for chunk in old.chunks(shape.size.max(1)) {
        if !shape.surge {
            batches.push(Batch { retire: chunk.to_vec(), start: chunk.to_vec(), maintenance: None });
            continue;
        }
        idle.sort_by_key(rank);
        if idle.len() < chunk.len() {
            return Err(chunk.len() - idle.len());
        }
        let start: Vec<u16> = idle.drain(..chunk.len()).collect();
        batches.push(Batch { retire: chunk.to_vec(), start, maintenance: None });
        idle.extend_from_slice(chunk);
    }
    Ok(batches)
}

/// Plan a rolling or all-at-once deploy (or the resume of one stopped part-way): idle previous instances to
/// stop first (in-place strategies keep no previous release running), the batches, the instances stopped on
/// the way, and the upstream after the first batch (all at once: while nothing runs). Refusals go to `refuse`.
pub fn plan(
    cfg: &Config,
    state: &State,
    snap: &Snapshot,
    renderer: &Renderer,
    plan: &mut Plan,
    refuse: &mut dyn FnMut(Refusal),
) -> Result<()> {
    let Some(live) = state.live.as_ref() else { return Ok(()) };
    if plan.strategy == Strategy::Rolling {
        if let Some(why) = cfg.rolling_takes_everything_out() {
            refuse(Refusal::new(Code::Usage, why));
        }
    }
    let shape = Shape::of(cfg, plan.strategy);
    let resuming = state.rolling.as_ref();
    // Idle previous or backup instances: stopped first, which also frees their ports.
    plan.reclaim = state
        .owned()
        .into_iter()
        .filter(|(what, _)| matches!(*what, "previous" | "backup"))
        .map(|(_, i)| i.clone())
        .filter(|i| snap.running(i) && !live.instances.iter().any(|l| l.same(i)))
        .collect();
    let slots: Vec<u16> = resuming.map(|r| r.down.iter().map(|d| d.port).collect()).unwrap_or_default();
    // A rolling restart that was interrupted cannot tell its fresh instances from the old ones: refill only.
    let restart_resumed = resuming.is_some_and(|r| r.deployment.release == live.release);
    let old: Vec<Instance> = if restart_resumed { Vec::new() } else { live.instances.clone() };
    let old_ports: Vec<u16> = old.iter().map(|i| i.port).collect();
    let fleet: Vec<u16> = state
        .owned()
        .into_iter()
        .filter(|(what, i)| !matches!(*what, "previous" | "backup") || !plan.reclaim.iter().any(|r| r.same(i)))
        .map(|(_, i)| i.port)
        .chain(slots.iter().copied())
        .collect();
    let reclaimed = |p: u16| plan.reclaim.iter().any(|r| r.port == p);
    let free: Vec<u16> = snap
        .pool
        .iter()
        .filter(|(p, u)| !fleet.contains(p) && (*u == PortUse::Free || reclaimed(*p)))
        .map(|(p, _)| *p)
        .collect();
    let maintenance = match (plan.strategy, resuming.and_then(|r| r.maintenance)) {
        (Strategy::AllAtOnce, Some(p)) => Some(p),
        (Strategy::AllAtOnce, None) => match free.first() {
            Some(&p) => Some(p),
            None => {
                let busy: Vec<String> = snap.pool.iter().map(|(p, u)| format!("{p} {u}")).collect();
                refuse(Refusal::new(
                    Code::Refused,
                    format!(
                        "no idle port in ports.pool for the maintenance answer nginx gives while nothing runs \
                         (--strategy all-at-once needs one beside the app's): {}; free one or widen ports.pool",
                        busy.join(", ")
                    ),
                ));
                None
            }
        },
        _ => None,
    };
    let free_for_surge: Vec<u16> = free.iter().copied().filter(|p| Some(*p) != maintenance).collect();
    plan.batches = match layout(shape, &slots, &old_ports, &free_for_surge, &cfg.pool(), maintenance) {
        Ok(b) => b,
        Err(short) => {
            let busy: Vec<crate::plan::ports::Busy> = snap
                .pool
                .iter()
                .filter(|(p, _)| !free_for_surge.contains(p))
                .map(|(p, u)| crate::plan::ports::Busy { port: *p, why: u.to_string() })
                .collect();
            refuse(Refusal::new(
                Code::Refused,
                format!("{} ({short} short for rolling.surge)", no_port_message(shape.size, &busy)),
            ));
            Vec::new()
        }
    };
    let mut new_ports: Vec<u16> = Vec::new();
    for b in &plan.batches {
        new_ports.extend(b.start.iter().filter(|p| !new_ports.contains(p)).copied().collect::<Vec<_>>());
    }
    plan.new_ports = new_ports;
    plan.stop_after = old;
    if restart_resumed {
        plan.notes.push(format!(
            "the interrupted rolling restart of {} refills its empty slots only: run it again to restart the \
             instances it had not reached",
            live.release
        ));
    }
    if cfg.deploy.keep_previous {
        plan.notes.push(format!(
            "deploy.keep_previous does not apply to --strategy {}: the old release is replaced where it runs",
            plan.strategy
        ));
    }

    // The upstream after the first batch (all at once: while nothing runs).
    let mut after = state.clone();
    after.in_progress = Some(scratch_op());
    if !plan.reclaim.is_empty() {
        Change::Reclaim(plan.reclaim.clone()).apply(&mut after);
        Change::Unlist.apply(&mut after);
    }
    if let Some(first) = plan.batches.first() {
        let total = plan.batches.len() + resuming.map(|r| r.batch).unwrap_or(0);
        let retire = fleet_on(&after, &first.retire);
        let join: Vec<Instance> = first.start.iter().map(|&p| Instance::planned(&plan.release, p)).collect();
        let mut step = RollStep {
            release: resuming.map(|r| r.deployment.release.clone()).unwrap_or_else(|| plan.release.clone()),
            strategy: plan.strategy,
            maintenance: first.maintenance,
            since: String::new(),
            batch: total - plan.batches.len() + 1,
            batches: total,
            join,
            leave: retire,
            leave_as: Leave::Out,
        };
        if first.maintenance.is_some() {
            step.join.clear();
            step.leave_as = Leave::Down;
        }
        Change::Roll(step).apply(&mut after);
    }
    after.generation += 1;
    after.in_progress = None;
    plan.upstream_after = renderer.render(cfg, &after)?;
    Ok(())
}

/// The instances of the fleet (live, or rolled out) on these ports, in that order.
fn fleet_on(state: &State, ports: &[u16]) -> Vec<Instance> {
    let fleet: Vec<&Instance> = state
        .live
        .iter()
        .flat_map(|d| d.instances.iter())
        .chain(state.rolling.iter().flat_map(|r| r.deployment.instances.iter()))
        .collect();
    ports.iter().filter_map(|p| fleet.iter().find(|i| i.port == *p).map(|i| (*i).clone())).collect()
}

/// One run of batches in one direction.
struct Run {
    /// The release being rolled out (`state.rolling.deployment.release`).
    release: String,
    /// What this run starts: `release` going forward, the old release going back.
    target: String,
    /// The release that was live when the run began, for the hooks.
    from: String,
    kind: OpKind,
    strategy: Strategy,
    since: String,
    /// Batches of `release` in the fleet, of `batches`.
    batch: usize,
    batches: usize,
    /// The batch being run or held (for messages), and the count to record if it is undone.
    current: usize,
    undo_batch: usize,
    back: bool,
    /// A change of the upstream was committed: traffic moved.
    moved: bool,
    /// Since when nothing serves (all at once), and the total so far.
    dark_since: Option<Instant>,
    dark: Duration,
    stopped: Vec<Instance>,
    drained: bool,
    last_healthy: Option<(Instant, u64)>,
}

impl Run {
    fn step(&self, join: Vec<Instance>, leave: Vec<Instance>, leave_as: Leave, maintenance: Option<u16>) -> Change {
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
    fn apply(&mut self, eng: &mut Engine, change: Change) -> Result<crate::engine::flip::Applied> {
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

    fn drain(&mut self, eng: &mut Engine, applied: &crate::engine::flip::Applied, consequence: &str) {
        self.drained &= eng.drain(applied, "drain", consequence);
    }

    fn label(&self) -> String {
        if self.back {
            format!("back to {}", self.target)
        } else {
            format!("batch {} of {}", self.current, self.batches)
        }
    }

    /// A step recorded with the count before the batch: taking its old instances out (a batch counts once its
    /// replacements are in), or its failed instances out again.
    fn step_before(
        &self,
        join: Vec<Instance>,
        leave: Vec<Instance>,
        leave_as: Leave,
        maintenance: Option<u16>,
    ) -> Change {
        Change::Roll(RollStep { batch: self.undo_batch, ..self.roll_step(join, leave, leave_as, maintenance) })
    }

    /// The step that takes a failed batch's instances out again.
    fn undo(&mut self, join: Vec<Instance>, leave: Vec<Instance>, leave_as: Leave, maintenance: Option<u16>) -> Change {
        self.batch = self.undo_batch;
        self.step(join, leave, leave_as, maintenance)
    }
}

/// Run one batch. On error the batch is undone as far as it can be: with surge the fleet is as it was; in place
/// the instances it took out are stopped and their slots stay `down` for the caller to refill.
fn batch(eng: &mut Engine, run: &mut Run, b: &Batch) -> Result<()> {
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
    let launched = eng.launch(&run.target, &b.start, env)?;
    let step = run.step(launched.instances.clone(), retire.to_vec(), Leave::Backup, b.maintenance);
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
        // Back to the instances it replaced: still running, listed as backup.
        eng.progress.warn(format!("{} failed after it got traffic ({why}); taking it out again", run.label()));
        let back = run.undo(retire.to_vec(), launched.instances.clone(), Leave::Out, b.maintenance);
        let applied = run.apply(eng, back)?;
        run.drain(eng, &applied, "; stopping the failed instances anyway");
        eng.stop(&launched.instances, "stop")?;
        return Err(Failure::error(Code::Unhealthy, format!("{} failed after the switch: {why}", run.target)));
    }
    run.last_healthy = Some((launched.healthy_at, launched.healthy_unix_ms));
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
    let launched = eng.launch(&run.target, &b.start, env)?;
    let step = run.step(launched.instances.clone(), Vec::new(), Leave::Down, b.maintenance);
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
        let out = run.undo(Vec::new(), launched.instances.clone(), Leave::Down, b.maintenance);
        let applied = run.apply(eng, out)?;
        run.drain(eng, &applied, "; stopping the failed instances anyway");
        eng.stop(&launched.instances, "stop")?;
        return Err(Failure::error(Code::Unhealthy, format!("{} failed after the switch: {why}", run.target)));
    }
    run.last_healthy = Some((launched.healthy_at, launched.healthy_unix_ms));
    Ok(())
}

/// The hold between two batches (`rolling.pause`): the new instances against the old ones. `Err` (exit 6)
/// when analysis says the batch is bad.
fn hold(eng: &mut Engine, run: &Run) -> Result<()> {
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

fn share_note(eng: &Engine) {
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

/// `cutover deploy --strategy rolling|all-at-once` (also the resume of one stopped part-way).
pub fn run(eng: &mut Engine, plan: &Plan) -> Result<Switched> {
    eng.begin(plan.kind, &plan.release, Some(plan.strategy))?;
    let result = forward(eng, plan);
    if let Err(e) = &result {
        blue_green::end_failed(eng, e)?;
    }
    result
}

fn forward(eng: &mut Engine, plan: &Plan) -> Result<Switched> {
    blue_green::reclaim(eng, &plan.reclaim)?;
    let state = eng.state().clone();
    let from = state.live.as_ref().map(|l| l.release.clone()).unwrap_or_default();
    let done = state.rolling.as_ref().map(|r| r.batch).unwrap_or(0);
    let mut run = Run {
        release: state.rolling.as_ref().map(|r| r.deployment.release.clone()).unwrap_or_else(|| plan.release.clone()),
        target: plan.release.clone(),
        from,
        kind: plan.kind,
        strategy: plan.strategy,
        since: state.rolling.as_ref().map(|r| r.deployment.since.clone()).unwrap_or_else(crate::util::now_rfc3339),
        batch: done,
        batches: done + plan.batches.iter().filter(|b| !b.retire.is_empty()).count(),
        current: done,
        undo_batch: done,
        back: false,
        moved: false,
        dark_since: None,
        dark: Duration::ZERO,
        stopped: Vec::new(),
        drained: true,
        last_healthy: None,
    };
    for (k, b) in plan.batches.iter().enumerate() {
        let outcome = batch(eng, &mut run, b).and_then(|()| {
            share_note(eng);
            if k + 1 < plan.batches.len() {
                hold(eng, &run)
            } else {
                Ok(())
            }
        });
        if let Err(e) = outcome {
            return Err(after_failure(eng, &mut run, e));
        }
    }
    finish(eng, &mut run)
}

/// Every batch is in: end the rolling deploy (the rolled-out release becomes the live one, or the old one is the
/// whole fleet again), take the maintenance listener away, finish the operation.
fn finish(eng: &mut Engine, run: &mut Run) -> Result<Switched> {
    let t = run.last_healthy.map(|(t, _)| t).unwrap_or_else(Instant::now);
    let applied = eng.apply(Change::RollEnd { since: crate::util::now_rfc3339() })?;
    run.drain(eng, &applied, "; going on");
    run.stopped.extend(eng.retire()?);
    eng.journal.done()?;
    let live = eng.state().live.clone().context("nothing is live after the rolling deploy")?;
    Ok(Switched {
        live,
        previous: eng.state().previous.clone(),
        stopped: std::mem::take(&mut run.stopped),
        drained: run.drained,
        healthy_unix_ms: run.last_healthy.map(|(_, ms)| ms),
        switch_ms: crate::output::ms(t.elapsed()),
        downtime_ms: (run.strategy == Strategy::AllAtOnce).then(|| crate::output::ms(run.dark)),
    })
}

/// The marker of a rolling deploy stopped part-way on purpose (`rolling.on_failure = "pause"`): history records
/// `paused`.
#[derive(Debug)]
pub struct Paused(pub String);

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Paused {}

pub fn is_paused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Paused>().is_some()
}

/// A batch failed with `cause`: undo what it left (slots refilled with the old release), then roll back every
/// batch (`rolling.on_failure = "rollback"`, and always all at once) or record the pause. Finishes the
/// operation unless nginx could not be brought back (then the next run's recovery does). Returns the error to
/// report.
fn after_failure(eng: &mut Engine, run: &mut Run, cause: anyhow::Error) -> anyhow::Error {
    if is_unsettled(&cause) {
        return cause;
    }
    let code = exit::code_of(&cause);
    let old = run.from.clone();
    let failed_at = format!("{} failed at batch {} of {}", run.release, run.current, run.batches);
    let everything = run.strategy == Strategy::AllAtOnce || eng.cfg.rolling.on_failure == OnFailure::Rollback;
    eng.progress.warn(format!(
        "{failed_at}: {}; {}",
        first_line(&cause),
        if everything {
            format!("rolling every replaced instance back to {old}")
        } else {
            "pausing here (rolling.on_failure = \"pause\")".into()
        }
    ));
    let back = back_steps(eng, run.kind, !everything, run.dark_since);
    let moved = run.moved || back.as_ref().is_ok_and(|m| *m);
    if let Err(e) = back {
        if is_unsettled(&e) {
            return e.context(format!("{failed_at}: {cause:#}"));
        }
        let why = format!("{failed_at} and going back to {old} failed too: {e:#}");
        return match pause(eng, &why) {
            Ok(()) => Failure::error(code, format!("{why}\n{cause:#}\nthe fleet is mixed: `cutover status` shows it"))
                .context(Paused(why)),
            Err(p) => p.context(why),
        };
    }
    let mixed = eng.state().rolling.is_some();
    if mixed {
        let n = eng.state().rolling.as_ref().map(|r| r.deployment.instances.len()).unwrap_or(0);
        let why = format!(
            "{failed_at}: {}; paused with {n} instance(s) of {} serving beside {old}",
            first_line(&cause),
            run.release
        );
        return match pause(eng, &why) {
            Ok(()) => Failure::error(
                code,
                format!(
                    "{why}. `cutover deploy --release {}` finishes it, `cutover rollback` returns every instance to \
                     {old}\n{cause:#}",
                    run.release
                ),
            )
            .context(Paused(format!("rolling deploy of {} paused", run.release))),
            Err(p) => p.context(why),
        };
    }
    if let Err(e) = eng.journal.done() {
        return e.context(format!("{cause:#}"));
    }
    if !moved {
        return cause;
    }
    let n = eng.state().live.as_ref().map(|l| l.instances.len()).unwrap_or(0);
    let how = if code == Code::CanaryAborted { Returned::Aborted } else { Returned::AfterSwitch };
    let downtime = match eng.downtime {
        Some(d) if run.strategy == Strategy::AllAtOnce => format!("; nothing served for {} ms", d.as_millis()),
        _ => String::new(),
    };
    Failure::returned(
        code,
        format!("{failed_at} and was rolled back: all {n} instance(s) run {old} again{downtime}\n{cause:#}"),
        how,
    )
}

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or_default().to_string()
}

/// Record the pause (nothing changes in the upstream) and finish the operation.
fn pause(eng: &mut Engine, why: &str) -> Result<()> {
    eng.journal.commit(&Change::RollPause(why.to_string()), None)?;
    eng.journal.done()
}

/// Move the fleet back towards the old release, inside the current operation: refill the empty slots with it,
/// then (unless `slots_only`) replace every instance of the rolled-out release, the last batch first, and end
/// the rolling deploy when nothing of it is left. Returns whether the upstream changed.
fn back_steps(eng: &mut Engine, kind: OpKind, slots_only: bool, dark_since: Option<Instant>) -> Result<bool> {
    let state = eng.state().clone();
    let (Some(r), Some(live)) = (state.rolling.clone(), state.live.clone()) else { return Ok(false) };
    let shape = Shape::of(eng.cfg, r.strategy);
    let slots: Vec<u16> = r.down.iter().map(|d| d.port).collect();
    let mut new: Vec<u16> = if slots_only { Vec::new() } else { r.deployment.ports() };
    new.reverse();
    let fleet: Vec<u16> = state.owned().iter().map(|(_, i)| i.port).chain(slots.iter().copied()).collect();
    let pool = eng.cfg.pool();
    let bind = eng.cfg.ports.bind.0;
    let free: Vec<u16> = pool
        .iter()
        .copied()
        .filter(|p| !fleet.contains(p) && Some(*p) != r.maintenance)
        .filter(|p| eng.host.port_free(std::net::SocketAddr::new(bind, *p)))
        .collect();
    let batches = match layout(shape, &slots, &new, &free, &pool, r.maintenance) {
        Ok(b) => b,
        Err(_) => {
            eng.progress.warn("no idle pool port to roll back beside the new instances: replacing them in place");
            layout(Shape { surge: false, ..shape }, &slots, &new, &free, &pool, r.maintenance)
                .map_err(|_| anyhow::anyhow!("no batches to roll back"))?
        }
    };
    let mut run = Run {
        release: r.deployment.release.clone(),
        target: live.release.clone(),
        from: r.deployment.release.clone(),
        kind,
        strategy: r.strategy,
        since: r.deployment.since.clone(),
        batch: r.batch,
        batches: r.batches,
        current: r.batch,
        undo_batch: r.batch,
        back: true,
        moved: false,
        dark_since,
        dark: eng.downtime.unwrap_or_default(),
        stopped: Vec::new(),
        drained: true,
        last_healthy: None,
    };
    let dark = live.instances.is_empty() && r.deployment.instances.is_empty();
    if dark && run.dark_since.is_none() {
        // Nothing serves (all at once): the time counts until the old release is back.
        run.dark_since = Some(Instant::now());
    }
    for b in &batches {
        batch(eng, &mut run, b)?;
        share_note(eng);
    }
    let ends = eng.state().rolling.as_ref().is_some_and(|r| r.deployment.instances.is_empty() && r.down.is_empty());
    if ends {
        let applied = run.apply(eng, Change::RollEnd { since: crate::util::now_rfc3339() })?;
        run.drain(eng, &applied, "; going on");
        eng.retire()?;
    }
    Ok(run.moved)
}

/// `cutover rollback` (or `cutover recover`) while a rolling deploy is stopped part-way: every instance of the
/// rolled-out release back to the old one, the last batch first, and empty slots refilled.
pub fn roll_back(eng: &mut Engine) -> Result<Switched> {
    let r = eng.state().rolling.clone().context("no rolling deploy is recorded")?;
    let old = eng.live_release().context("a rolling deploy is recorded without a live release")?;
    eng.progress.note(format!(
        "returning the {} deploy of {} (batch {} of {}) to {old}",
        r.strategy, r.deployment.release, r.batch, r.batches
    ));
    eng.begin(OpKind::Rollback, &old, Some(r.strategy))?;
    let t = Instant::now();
    let result = back_steps(eng, OpKind::Rollback, false, None);
    if let Err(e) = result {
        if is_unsettled(&e) {
            return Err(e);
        }
        let why = format!("rolling back to {old} failed: {}", first_line(&e));
        pause(eng, &why)?;
        return Err(e.context(Paused(why)));
    }
    if eng.state().in_progress.is_some() {
        eng.journal.done()?;
    }
    let live = eng.state().live.clone().context("nothing is live after the rollback")?;
    Ok(Switched {
        live,
        previous: eng.state().previous.clone(),
        stopped: Vec::new(),
        drained: true,
        healthy_unix_ms: None,
        switch_ms: crate::output::ms(t.elapsed()),
        downtime_ms: eng.downtime.map(crate::output::ms),
    })
}

/// Instances `Deployment` lists on `ports`, for the dry run's descriptions.
pub fn describe_ports(d: Option<&Deployment>, ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| match d.and_then(|d| d.instances.iter().find(|i| i.port == *p)) {
            Some(i) => format!("{} on {p}", i.release),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: [u16; 6] = [1, 2, 3, 4, 5, 6];

    fn b(retire: &[u16], start: &[u16]) -> Batch {
        Batch { retire: retire.to_vec(), start: start.to_vec(), maintenance: None }
    }

    #[test]
    fn surge_starts_each_batch_on_the_ports_the_last_one_emptied() {
        let one = Shape { size: 1, surge: true };
        assert_eq!(
            layout(one, &[], &[1, 2, 3, 4], &[5, 6], &POOL, None).unwrap(),
            [b(&[1], &[5]), b(&[2], &[1]), b(&[3], &[2]), b(&[4], &[3])]
        );
        let two = Shape { size: 2, surge: true };
        assert_eq!(
            layout(two, &[], &[1, 2, 3, 4], &[5, 6], &POOL, None).unwrap(),
            [b(&[1, 2], &[5, 6]), b(&[3, 4], &[1, 2])]
        );
        assert_eq!(layout(two, &[], &[1, 2, 3, 4], &[5], &POOL, None), Err(1), "one idle port short");
    }

    #[test]
    fn without_surge_each_batch_replaces_in_place_and_empty_slots_are_refilled_first() {
        let one = Shape { size: 1, surge: false };
        let v = layout(one, &[2], &[3, 4], &[], &POOL, None).unwrap();
        assert_eq!(v, [b(&[], &[2]), b(&[3], &[3]), b(&[4], &[4])]);
        assert!(v.iter().all(Batch::in_place));
        assert!(!b(&[1], &[5]).in_place());
    }

    #[test]
    fn all_at_once_is_one_batch_with_the_maintenance_answer() {
        let all = Shape { size: usize::MAX, surge: false };
        let v = layout(all, &[], &[1, 2], &[3], &POOL, Some(3)).unwrap();
        assert_eq!(v, [Batch { retire: vec![1, 2], start: vec![1, 2], maintenance: Some(3) }]);
    }
}

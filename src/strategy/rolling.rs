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

mod batch;
mod plan;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{blue_green, Strategy, Switched};
use crate::config::OnFailure;
use crate::engine::flip::is_unsettled;
use crate::engine::Engine;
use crate::exit::{self, Code, Failure, Returned};
use crate::journal::{Change, OpKind};
use crate::plan::Plan;
use batch::{batch, hold, share_note, Run};
pub use plan::{describe_ports, plan, Batch};
use plan::{layout, Shape};

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
        launch_failed: false,
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
    let from = eng.progress.steps.len();
    let applied = eng.apply(Change::RollEnd { since: crate::util::now_rfc3339() })?;
    run.drain(eng, &applied, "; going on");
    run.stopped.extend(eng.retire()?);
    let ended = match run.strategy {
        Strategy::AllAtOnce => "the rolling record and the maintenance listener left the upstream",
        _ => "the rolling record left the upstream",
    };
    eng.progress.fold(from, "finish", ended);
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
    let cause = if run.moved && run.launch_failed { launch_in_a_moved_fleet(cause) } else { cause };
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
    if let Some(r) = eng.state().rolling.clone() {
        let why = format!("{failed_at}: {}", first_line(&cause));
        let summary = format!(
            "rolling deploy of {rel} paused: batch {k} of {n} failed, {new} of {total} instance(s) run {rel} beside \
             {old} (`cutover deploy --release {rel}` finishes it, `cutover rollback` returns every instance to {old})",
            rel = run.release,
            k = run.current,
            n = run.batches,
            new = r.deployment.instances.len(),
            total = r.deployment.instances.len() + eng.state().live.as_ref().map(|l| l.instances.len()).unwrap_or(0),
        );
        return match pause(eng, &why) {
            Ok(()) => Failure::error(code, format!("{cause:#}")).context(Paused(summary)),
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

/// A launch failure said for a fleet where traffic already moved: the launch's own summary ("traffic
/// untouched") is true of its batch only. Same code, the instances' details kept.
fn launch_in_a_moved_fleet(cause: anyhow::Error) -> anyhow::Error {
    let Some(f) = cause.downcast_ref::<Failure>() else { return cause };
    let (first, details) = f.message.split_once('\n').unwrap_or((f.message.as_str(), ""));
    let details = if details.is_empty() { first } else { details };
    Failure::error(
        f.code,
        format!("its new instance(s) did not become healthy and were stopped before they got traffic\n{details}"),
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
        launch_failed: false,
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

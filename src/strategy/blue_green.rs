//! Blue/green (also a rollback and a restart): launch the target beside what is live, flip, drain, verify,
//! retire. Every step before the flip is undone on failure; a failure in the verify window flips back.

use std::time::Instant;

use anyhow::Result;

use super::Switched;
use crate::engine::flip::is_unsettled;
use crate::engine::hooks::HookEnv;
use crate::engine::Engine;
use crate::journal::{Change, Instance};
use crate::output::ms;
use crate::plan::Plan;

/// Run `plan` (a deploy, rollback or restart). On error everything it changed has been undone, or the
/// operation stays recorded for the next run when nginx could not be brought back (an unsettled undo).
pub fn run(eng: &mut Engine, plan: &Plan) -> Result<Switched> {
    eng.begin(plan.kind, &plan.release, Some(plan.strategy))?;
    let result = steps(eng, plan);
    if let Err(e) = &result {
        end_failed(eng, e)?;
    }
    result
}

/// After a failure: clear the operation, unless nginx could not be brought back (the next run finishes it) or
/// a step already cleared it.
pub fn end_failed(eng: &mut Engine, e: &anyhow::Error) -> Result<()> {
    if !is_unsettled(e) && eng.state().in_progress.is_some() {
        eng.journal.abandon()?;
    }
    Ok(())
}

/// The hook variables for a plan's start hooks.
pub fn start_env(eng: &Engine, plan: &Plan) -> HookEnv {
    HookEnv {
        release: plan.release.clone(),
        previous: eng.live_release().unwrap_or_default(),
        kind: plan.kind,
        strategy: Some(plan.strategy),
        ports: plan.reuse.iter().map(|i| i.port).chain(plan.new_ports.iter().copied()).collect(),
        error: None,
    }
}

/// Stop idle previous instances whose ports the new release needs: out of the upstream (if listed), drained,
/// stopped.
pub fn reclaim(eng: &mut Engine, instances: &[Instance]) -> Result<()> {
    if instances.is_empty() {
        return Ok(());
    }
    let from = eng.progress.steps.len();
    let applied = eng.apply(Change::Reclaim(instances.to_vec()))?;
    eng.drain(&applied, "drain", "; stopping the idle previous release anyway");
    eng.stop(instances, "stop")?;
    eng.progress.fold(from, "reclaim", "stopped the idle previous release to free its port");
    let ports: Vec<String> = instances.iter().map(|i| i.port.to_string()).collect();
    eng.progress.note(format!("stopped the idle previous release on port {} to free it", ports.join(", ")));
    Ok(())
}

fn steps(eng: &mut Engine, plan: &Plan) -> Result<Switched> {
    reclaim(eng, &plan.reclaim)?;
    let env = start_env(eng, plan);
    let launched = eng.launch(&plan.release, &plan.new_ports, &env)?;
    let mut to = plan.target();
    for slot in &mut to.instances {
        if let Some(i) = launched.instances.iter().find(|i| i.port == slot.port) {
            *slot = i.clone();
        }
    }
    to.since = crate::util::now_rfc3339();
    let healthy_at = if launched.instances.is_empty() { Instant::now() } else { launched.healthy_at };
    switch(
        eng,
        to,
        healthy_at,
        (!launched.instances.is_empty()).then_some(launched.healthy_unix_ms),
        &launched.instances,
    )
}

/// Flip to `to`, drain, verify, retire, finish the operation. `started` are the instances this operation
/// launched (stopped if the flip fails).
pub fn switch(
    eng: &mut Engine,
    to: crate::journal::Deployment,
    healthy_at: Instant,
    healthy_unix_ms: Option<u64>,
    started: &[Instance],
) -> Result<Switched> {
    let keep_previous = eng.cfg.deploy.keep_previous;
    let applied = match eng.apply(Change::Flip { to: to.clone(), keep_previous }) {
        Ok(a) => a,
        Err(e) => {
            if !is_unsettled(&e) {
                eng.undo_launch(started);
            }
            return Err(e);
        }
    };
    let drained = eng.drain(&applied, "drain", " (long requests or open connections); stopping anyway");
    let switch_ms = ms(healthy_at.elapsed());
    if let Err(why) = eng.verify(&to.instances) {
        return Err(eng.flip_back(&why)?);
    }
    let stopped = eng.retire()?;
    let kept: Vec<String> = eng.state().previous.iter().flat_map(|d| d.running()).map(|i| i.describe()).collect();
    if !kept.is_empty() {
        eng.progress.note(format!(
            "kept {} running idle for a fast rollback (deploy.keep_previous), listed as nginx backup",
            kept.join(", ")
        ));
    }
    eng.journal.done()?;
    Ok(Switched {
        live: eng.state().live.clone().unwrap_or(to),
        previous: eng.state().previous.clone(),
        stopped,
        drained,
        healthy_unix_ms,
        switch_ms,
        downtime_ms: None,
    })
}

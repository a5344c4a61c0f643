//! `cutover promote`, `abort`, `canary set PCT`: drive a running canary. Each takes the lock, changes one thing,
//! and reports; the engine records the history event and fires the hooks.
//!
//! `canary set` changes only the weight (0 keeps the canary running with no traffic, 100 sends it all traffic
//! while the stable release keeps running); `promote` and `abort` are what end a canary.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::{CanaryArgs, CanaryCommand, LockArgs};
use crate::engine::{Done, Engine, OpMeta};
use crate::exit::Code;
use crate::journal::OpKind;
use crate::output::print_json;
use crate::strategy::{canary, rolling, Strategy};

/// What a running canary looks like now, and what to do next.
pub fn report_canary(setup: &Setup, eng: &Engine, kind: OpKind, json: bool) -> Result<()> {
    let state = eng.state();
    let Some(c) = &state.canary else { return Ok(()) };
    if json {
        return print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": setup.config.app.name.as_str(),
            "strategy": "canary",
            "release": c.deployment.release,
            "canary": c,
            "live": state.live,
            "steps": eng.progress.steps,
            "total_ms": crate::output::ms(eng.progress.elapsed()),
        }));
    }
    say!("canary:   {} with {}% of traffic", setup.describe(&c.deployment), c.weight);
    if let Some(live) = &state.live {
        say!("stable:   {} with {}%", setup.describe(live), 100 - c.weight);
    }
    let next = c.next_step().map(|(_, pct)| pct).unwrap_or(100);
    say!(
        "next:     `cutover promote` ({next}%{}), `cutover canary set PCT`, or `cutover abort`",
        if next >= 100 { ": the canary becomes the live release" } else { "" }
    );
    Ok(())
}

/// `cutover promote`: the canary's next step; past the last one (or at 100 %) it becomes the live release.
pub fn promote(setup: &Setup, args: LockArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock_wait, false, "promote")?;
    let from = eng.live_release();
    match canary::promote(&mut eng)? {
        Some(s) => super::deploy::report(setup, &eng, OpKind::Promote, Strategy::Canary, &s, from, json)?,
        None => report_canary(setup, &eng, OpKind::Promote, json)?,
    }
    Ok(Code::Ok)
}

/// `cutover abort`.
pub fn abort(setup: &Setup, args: LockArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock_wait, false, "abort")?;
    abort_cmd(setup, &mut eng, OpKind::Abort, json)
}

/// Abort the running canary (from `abort`, or `rollback` during a canary) and report.
pub fn abort_cmd(setup: &Setup, eng: &mut Engine, kind: OpKind, json: bool) -> Result<Code> {
    let release = eng.state().canary.as_ref().map(|c| c.deployment.release.clone()).unwrap_or_default();
    let stopped = canary::abort_op(eng, kind)?;
    if json {
        print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": setup.config.app.name.as_str(),
            "aborted": release,
            "live": eng.state().live,
            "stopped": stopped,
            "steps": eng.progress.steps,
            "total_ms": crate::output::ms(eng.progress.elapsed()),
        }))?;
    } else {
        say!("aborted:  canary {release} (stopped)");
        if let Some(live) = &eng.state().live {
            say!("live:     {} with all traffic", setup.describe(live));
        }
    }
    Ok(Code::Ok)
}

/// `cutover canary set PCT`.
pub fn run(setup: &Setup, args: CanaryArgs, json: bool) -> Result<Code> {
    let CanaryCommand::Set { percent, lock } = args.command;
    let (_lock, mut eng) = super::begin(setup, lock.lock_wait, false, "canary set")?;
    canary::set_op(&mut eng, percent)?;
    report_canary(setup, &eng, OpKind::CanarySet, json)?;
    Ok(Code::Ok)
}

/// `cutover rollback` (or `recover`) while a rolling deploy is stopped part-way: every replaced instance back to
/// the old release.
pub fn rolling_back(setup: &Setup, eng: &mut Engine, json: bool) -> Result<Code> {
    let r = eng.state().rolling.clone().expect("checked by the caller");
    let old = eng.live_release().unwrap_or_default();
    let s = eng.run(&OpMeta { kind: OpKind::Rollback, release: old, strategy: Some(r.strategy) }, |e| {
        rolling::roll_back(e).map(Done::back)
    })?;
    super::deploy::report(setup, eng, OpKind::Rollback, r.strategy, &s, Some(r.deployment.release), json)?;
    Ok(Code::Ok)
}

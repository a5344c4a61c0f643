//! `cutover deploy --strategy canary`, `promote`, `abort`, `canary set PCT`: the commands around
//! [`crate::canary`]. Each takes the lock, changes one thing, records one history event and reports.
//!
//! `canary set` changes only the weight (0 keeps the canary running with no traffic, 100 sends it all traffic
//! while the stable release keeps running); `promote` and `abort` are what end a canary.

use anyhow::Result;
use serde_json::json;

use crate::canary::{self, End};
use crate::cli::{CanaryArgs, CanaryCommand, LockArgs};
use crate::exit::{self, Failure};
use crate::history::{self, Record};
use crate::progress::Progress;
use crate::state::State;
use crate::transaction::{self, Ctx, Target};

pub fn deploy(ctx: &Ctx, state: &mut State, target: &Target, progress: &mut Progress, json: bool) -> Result<i32> {
    let from = state.live.as_ref().map(|d| d.release.clone());
    progress.note(format!(
        "deploying {} as a canary beside {} ({}, {}, steps {:?}, interval {})",
        target.release,
        from.as_deref().unwrap_or("-"),
        ctx.config.app.name,
        canary::describe_split(ctx),
        ctx.config.canary.steps.iter().map(|p| p.0).collect::<Vec<_>>(),
        ctx.config.canary.interval
    ));
    let result =
        transaction::plan(ctx, state, target, true).and_then(|plan| canary::deploy(ctx, state, target, plan, progress));
    let paused = matches!(result, Ok(End::Paused));
    history::record(
        &ctx.store,
        Record {
            kind: "deploy",
            release: target.release.as_str(),
            from: from.clone(),
            strategy: Some("canary".into()),
            ok: if paused { "canary-started" } else { "ok" },
        },
        &result,
        progress,
    );
    match result? {
        End::Promoted(outcome) => super::deploy::report(ctx, "deploy", "canary", &outcome, from, progress, json)?,
        End::Paused => report_canary(ctx, state, "deploy", progress, json)?,
    }
    Ok(exit::OK)
}

/// What a running canary looks like now, and what to do next.
fn report_canary(ctx: &Ctx, state: &State, kind: &str, progress: &Progress, json: bool) -> Result<()> {
    let Some(c) = &state.canary else { return Ok(()) };
    if json {
        return super::print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": ctx.config.app.name.as_str(),
            "strategy": "canary",
            "release": c.deployment.release,
            "canary": c,
            "live": state.live,
            "steps": progress.steps,
            "total_ms": crate::util::ms(progress.elapsed()),
        }));
    }
    say!("canary:   {} with {}% of traffic", super::describe(ctx, &c.deployment), c.weight);
    if let Some(live) = &state.live {
        say!("stable:   {} with {}%", super::describe(ctx, live), 100 - c.weight);
    }
    let next = c.next_step().map(|(_, pct)| pct).unwrap_or(100);
    say!(
        "next:     `cutover promote` ({next}%{}), `cutover canary set PCT`, or `cutover abort`",
        if next >= 100 { ": the canary becomes the live release" } else { "" }
    );
    Ok(())
}

fn need_canary(state: &State) -> Result<()> {
    if state.canary.is_none() {
        return Err(Failure::error(
            exit::UNEXPECTED,
            "no canary is running for this app (start one with `cutover deploy --release R --strategy canary`)",
        ));
    }
    Ok(())
}

/// `cutover promote`: the canary's next step; past the last one (or at 100 %) it becomes the live release.
pub fn promote(ctx: &Ctx, args: LockArgs, json: bool) -> Result<i32> {
    let mut progress = Progress::new();
    let (_lock, mut state) = super::begin(ctx, args.lock_wait, false, &progress)?;
    need_canary(&state)?;
    let c = state.canary.clone().expect("checked");
    let from = state.live.as_ref().map(|d| d.release.clone());
    let to = c.next_step().filter(|&(_, pct)| pct < 100);
    let result = match to {
        Some((next, pct)) => {
            progress.note(format!("promoting canary {} from {}% to {pct}%", c.deployment.release, c.weight));
            canary::set_weight(ctx, &mut state, pct, Some(next), &mut progress).map(|()| None)
        }
        None => {
            progress.note(format!("promoting canary {} to the live release", c.deployment.release));
            canary::finish(ctx, &mut state, &mut progress).map(Some)
        }
    };
    history::record(
        &ctx.store,
        Record {
            kind: "promote",
            release: &c.deployment.release,
            from: from.clone(),
            strategy: Some("canary".into()),
            ok: if to.is_some() { "canary-step" } else { "ok" },
        },
        &result,
        &progress,
    );
    match result? {
        Some(outcome) => {
            let env = hook_env(&state, "promote", &c.deployment.release, from.as_deref());
            if let Err(e) = ctx.hook("after_switch", &env, &progress) {
                progress.warn(format!("{e:#} (the promote itself succeeded)"));
            }
            super::deploy::report(ctx, "promote", "canary", &outcome, from, &progress, json)?
        }
        None => report_canary(ctx, &state, "promote", &progress, json)?,
    }
    Ok(exit::OK)
}

/// `cutover abort`.
pub fn abort(ctx: &Ctx, args: LockArgs, json: bool) -> Result<i32> {
    let mut progress = Progress::new();
    let (_lock, mut state) = super::begin(ctx, args.lock_wait, false, &progress)?;
    need_canary(&state)?;
    abort_cmd(ctx, &mut state, &mut progress, "abort", json)
}

/// Abort the running canary (from `abort`, or `rollback` during a canary) and report.
pub fn abort_cmd(ctx: &Ctx, state: &mut State, progress: &mut Progress, kind: &str, json: bool) -> Result<i32> {
    let c = state.canary.clone().expect("checked by the caller");
    let stable = state.live.as_ref().map(|d| d.release.clone());
    progress.note(format!("aborting canary {} at {}%", c.deployment.release, c.weight));
    let result = canary::abort(ctx, state, progress);
    history::record(
        &ctx.store,
        Record {
            kind,
            release: &c.deployment.release,
            from: stable.clone(),
            strategy: Some("canary".into()),
            // Not "ok": an aborted canary was never the live release, so `rollback --to` must not offer it.
            ok: "aborted",
        },
        &result,
        progress,
    );
    let stopped = result?;
    let env = hook_env(state, kind, stable.as_deref().unwrap_or_default(), Some(&c.deployment.release));
    if let Err(e) = ctx.hook("after_rollback", &env, progress) {
        progress.warn(format!("{e:#} (the abort itself succeeded)"));
    }
    if json {
        super::print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": ctx.config.app.name.as_str(),
            "aborted": c.deployment.release,
            "live": state.live,
            "stopped": stopped,
            "steps": progress.steps,
            "total_ms": crate::util::ms(progress.elapsed()),
        }))?;
    } else {
        say!("aborted:  canary {} (stopped)", c.deployment.release);
        if let Some(live) = &state.live {
            say!("live:     {} with all traffic", super::describe(ctx, live));
        }
    }
    Ok(exit::OK)
}

/// `cutover canary set PCT`.
pub fn run(ctx: &Ctx, args: CanaryArgs, json: bool) -> Result<i32> {
    let CanaryCommand::Set { percent, lock } = args.command;
    let mut progress = Progress::new();
    let (_lock, mut state) = super::begin(ctx, lock.lock_wait, false, &progress)?;
    need_canary(&state)?;
    let c = state.canary.clone().expect("checked");
    let step = c.steps.iter().position(|&s| s == percent);
    progress.note(format!("setting canary {} from {}% to {percent}%", c.deployment.release, c.weight));
    let result = canary::set_weight(ctx, &mut state, percent, step, &mut progress);
    history::record(
        &ctx.store,
        Record {
            kind: "canary-set",
            release: &c.deployment.release,
            from: state.live.as_ref().map(|d| d.release.clone()),
            strategy: Some("canary".into()),
            ok: "canary-step",
        },
        &result,
        &progress,
    );
    result?;
    report_canary(ctx, &state, "canary-set", &progress, json)?;
    Ok(exit::OK)
}

/// The hook variables after a canary command: the ports are those of what is live now.
fn hook_env(
    state: &State,
    kind: &str,
    release: &str,
    previous: Option<&str>,
) -> std::collections::BTreeMap<&'static str, String> {
    let ports = state.live.iter().flat_map(|d| d.instances.iter().map(|i| i.port));
    transaction::hook_vars(release, previous.unwrap_or_default(), kind, "canary", ports)
}

//! `cutover rollback`: back to the previous release, or to `--to R` from history.
//!
//! When the previous release still runs (deploy.keep_previous) and answers its health check, this is a flip
//! of the upstream only; otherwise it is started again, health-checked and flipped, like a deploy.

use anyhow::Result;

use crate::cli::RollbackArgs;
use crate::config::Release;
use crate::exit::{self, Failure};
use crate::history::{self, Record};
use crate::progress::Progress;
use crate::transaction::{self, Ctx, Target};

pub fn run(ctx: &Ctx, args: RollbackArgs, json: bool) -> Result<i32> {
    let to: Option<Release> = args.to.as_deref().map(str::parse).transpose().map_err(exit::usage)?;
    let mut progress = Progress::new();
    let (_lock, mut state) = super::begin(ctx, args.lock.lock_wait, args.force, &progress)?;
    if state.canary.is_some() {
        if to.is_some() {
            return Err(exit::usage(
                "a canary is running: `cutover rollback` aborts it; --to applies once it has ended",
            ));
        }
        progress.note("a canary is running: rolling back means aborting it");
        return super::canary::abort_cmd(ctx, &mut state, &mut progress, "rollback", json);
    }
    let Some(live) = state.live.clone() else {
        return Err(Failure::error(exit::UNEXPECTED, "nothing is deployed, so there is nothing to roll back"));
    };
    let release = match (&to, &state.previous) {
        (Some(r), _) => {
            let known = ctx.store.history()?.iter().any(|e| e.release == r.as_str() && e.outcome == "ok");
            if !known {
                return Err(exit::usage(format!(
                    "release {r} was never live here; `cutover history` lists the releases you can roll back to"
                )));
            }
            r.clone()
        }
        (None, Some(prev)) => prev.release.parse().map_err(exit::usage)?,
        (None, None) => {
            return Err(Failure::error(
                exit::UNEXPECTED,
                format!("no previous release is recorded for {}; pass --to RELEASE", ctx.config.app.name),
            ))
        }
    };
    if release.as_str() == live.release {
        return Err(Failure::error(exit::UNEXPECTED, format!("{release} is already live")));
    }
    let running = state
        .previous
        .as_ref()
        .filter(|p| p.release == release.as_str())
        .map(|p| p.instances.clone())
        .filter(|i| transaction::usable(ctx, i));
    let (reuse, start) = match running {
        Some(instances) => (instances, 0),
        None => (Vec::new(), ctx.config.deploy.instances.0 as usize),
    };
    progress.note(format!(
        "rolling back {} from {} to {release}{}",
        ctx.config.app.name,
        live.release,
        if start == 0 { " (still running: flip only)" } else { " (not running: start, health-check, flip)" }
    ));
    let target = Target { kind: "rollback", release: release.clone(), strategy: "blue-green".into(), reuse, start };
    let result = transaction::plan(ctx, &state, &target, true)
        .and_then(|plan| transaction::switch(ctx, &mut state, &target, plan, &mut progress));
    history::record(
        &ctx.store,
        Record {
            kind: "rollback",
            release: release.as_str(),
            from: Some(live.release.clone()),
            strategy: None,
            ok: "ok",
        },
        &result,
        &progress,
    );
    let outcome = result?;
    super::deploy::report(ctx, "rollback", "blue-green", &outcome, Some(live.release), &progress, json)?;
    Ok(exit::OK)
}

//! `cutover rollback`: back to the previous release, or to `--to R` from history; during a canary, an abort;
//! during a paused rolling deploy, every instance back to the old release.
//!
//! When the previous release still runs (deploy.keep_previous) and answers its health check, this is a flip
//! of the upstream only; otherwise it is started again, health-checked and flipped, like a deploy.

use anyhow::Result;

use super::Setup;
use crate::cli::RollbackArgs;
use crate::config::Release;
use crate::exit::{self, Code};
use crate::journal::OpKind;
use crate::strategy;

pub fn run(setup: &Setup, args: RollbackArgs, json: bool) -> Result<Code> {
    let to: Option<Release> = args.to.as_deref().map(str::parse).transpose().map_err(exit::usage)?;
    let (_lock, mut eng) = super::begin(setup, args.lock.lock_wait, args.force, "rollback")?;
    if eng.state().canary.is_some() {
        if to.is_some() {
            return Err(exit::usage(
                "a canary is running: `cutover rollback` aborts it; --to applies once it has ended",
            ));
        }
        eng.progress.note("a canary is running: rolling back means aborting it");
        return super::canary::abort_cmd(setup, &mut eng, OpKind::Rollback, json);
    }
    if eng.state().rolling.is_some() {
        return super::canary::rolling_back(setup, &mut eng, json);
    }
    let req = strategy::rollback_request(&eng, to, args.force)?;
    let plan = super::deploy::resolve(setup, &eng, &req)?;
    eng.progress.note(format!(
        "rolling back {} from {} to {}{}",
        setup.config.app.name,
        eng.live_release().unwrap_or_default(),
        req.release,
        if plan.new_ports.is_empty() {
            " (still running: flip only)"
        } else {
            " (not running: start, health-check, flip)"
        }
    ));
    super::deploy::execute(setup, &mut eng, plan, json)
}

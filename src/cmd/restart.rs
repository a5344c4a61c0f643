//! `cutover restart`: the live release on fresh instances, switched to without losing a request. It is a
//! redeploy of the live release through blue/green: new instances start beside the old ones, pass their health
//! check, nginx flips to them, the old ones drain and stop; the previous release stays the rollback target.

use anyhow::Result;

use super::Setup;
use crate::cli::RestartArgs;
use crate::exit::{self, Code};
use crate::journal::OpKind;
use crate::plan::Request;
use crate::strategy::Strategy;

pub fn run(setup: &Setup, args: RestartArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock.lock_wait, args.force, "restart")?;
    let Some(live) = eng.state().live.clone() else {
        return Err(exit::refused("nothing is deployed, so there is nothing to restart"));
    };
    let release = live.release.parse().map_err(exit::usage)?;
    let req = Request { kind: OpKind::Restart, release, strategy: Strategy::BlueGreen, force: args.force };
    let plan = super::deploy::resolve(setup, &eng, &req)?;
    super::deploy::execute(setup, &mut eng, plan, json)
}

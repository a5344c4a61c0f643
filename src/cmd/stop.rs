//! `cutover stop`: take the app offline. The live servers are listed `down` (nginx answers 502 for the app),
//! nginx is reloaded and its old workers waited for, then every instance is stopped. State keeps the live
//! release: `cutover up` starts it again on its ports, `cutover deploy` deploys over it.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::LockArgs;
use crate::engine::{Done, Moved, OpMeta};
use crate::exit::{self, Code};
use crate::journal::{OpKind, Outcome};
use crate::output::print_json;
use crate::strategy::up;

pub fn run(setup: &Setup, args: LockArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock_wait, false, "stop")?;
    let Some(live) = eng.state().live.clone() else {
        return Err(exit::refused("nothing is deployed, so there is nothing to stop"));
    };
    if let Some(r) = &eng.state().rolling {
        return Err(exit::refused(format!(
            "a rolling deploy of {} stopped part-way; `cutover rollback` or a new deploy resolves it first",
            r.deployment.release
        )));
    }
    if eng.state().offline && eng.state().owned().is_empty() {
        say!("nothing to do: {} is already stopped (`cutover up` starts it)", setup.config.app.name);
        return Ok(Code::Ok);
    }
    let meta = OpMeta { kind: OpKind::Stop, release: live.release.clone(), strategy: None };
    let stopped = eng.run(&meta, |e| up::stop(e).map(|s| Done::with(s, Moved::Nothing, Outcome::Ok)))?;
    if json {
        print_json(&json!({
            "ok": true,
            "app": setup.config.app.name.as_str(),
            "offline": true,
            "release": live.release,
            "stopped": stopped,
            "steps": eng.progress.steps,
        }))?;
    } else {
        say!(
            "stopped:  {} is offline (nginx lists its servers down); `cutover up` brings {} back",
            setup.config.app.name,
            live.release
        );
    }
    Ok(Code::Ok)
}

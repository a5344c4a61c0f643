//! `cutover recover`: finish or undo an operation a killed run left; exit 0 when there is none. Every command
//! that takes the lock does this first; this command does only that, and undoes a rolling deploy stopped
//! part-way (by a kill, or `rolling.on_failure = "pause"`): every instance back to the old release, as
//! `cutover rollback` does. `cutover deploy --release R` finishes one instead.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::LockArgs;
use crate::exit::Code;
use crate::output::print_json;

pub fn run(setup: &Setup, args: LockArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock_wait, true, "recover")?;
    if let Some(r) = eng.state().rolling.clone() {
        eng.progress.note(format!(
            "the {} deploy of {} is stopped after batch {} of {}: recovering means returning every instance to {} \
             (`cutover deploy --release {}` would finish it instead)",
            r.strategy,
            r.deployment.release,
            r.batch,
            r.batches,
            eng.live_release().unwrap_or_default(),
            r.deployment.release
        ));
        return super::canary::rolling_back(setup, &mut eng, json);
    }
    let recovered = eng.recovered;
    if json {
        print_json(&json!({
            "ok": true,
            "app": setup.config.app.name.as_str(),
            "recovered": recovered,
            "live": eng.state().live,
            "previous": eng.state().previous,
            "canary": eng.state().canary,
            "rolling": eng.state().rolling,
        }))?;
    } else if recovered {
        say!("recovered: the unfinished operation was cleaned up (see `cutover history`)");
        if let Some(l) = &eng.state().live {
            say!("live:      {}", setup.describe(l));
        }
    } else {
        say!("nothing to recover: no unfinished operation");
    }
    Ok(Code::Ok)
}

//! `cutover up`: make the recorded live state true again after a reboot or a crash (see [`crate::strategy::up`]).
//! Idempotent: when everything runs and nginx has the right file, it says "nothing to do" and exits 0.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::UpArgs;
use crate::engine::{Done, Moved, OpMeta};
use crate::exit::Code;
use crate::host::Host;
use crate::journal::{OpKind, Outcome};
use crate::output::print_json;
use crate::strategy::up;

pub fn run(setup: &Setup, args: UpArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock.lock_wait, args.force, "up")?;
    if eng.state().live.is_none() && eng.state().canary.is_none() {
        if json {
            print_json(
                &json!({ "ok": true, "app": setup.config.app.name.as_str(), "nothing_to_do": true, "live": null }),
            )?;
        } else {
            say!("nothing to do: nothing is deployed for {}", setup.config.app.name);
        }
        return Ok(Code::Ok);
    }
    let release = eng.live_release().unwrap_or_default();
    let need = up::needed(&eng)?;
    let revived = if need.dead.is_empty() && !need.rewrite {
        // Nothing to start or reload: no operation, no history event; dead idle instances are only recorded.
        up::up(&mut eng)?
    } else {
        let meta = OpMeta { kind: OpKind::Up, release: release.clone(), strategy: None };
        eng.run(&meta, |e| up::up(e).map(|r| Done::with(r, Moved::Nothing, Outcome::Ok)))?
    };
    let live = eng.state().live.clone();
    if json {
        print_json(&json!({
            "ok": true,
            "app": setup.config.app.name.as_str(),
            "nothing_to_do": revived.nothing(),
            "runtime": setup.host.runtime().kind(),
            "started": revived.started,
            "replaced": revived.dead,
            "forgotten": revived.forgotten,
            "reloaded": revived.reloaded,
            "live": live,
            "steps": eng.progress.steps,
        }))?;
        return Ok(Code::Ok);
    }
    if revived.nothing() {
        say!("nothing to do: every live instance runs and nginx has the upstream state records");
    } else {
        for i in &revived.started {
            say!("started:  {}", i.describe());
        }
        for i in &revived.forgotten {
            say!("gone:     {} (idle; recorded as stopped, `rollback` starts it when needed)", i.describe());
        }
        say!(
            "nginx:    {}",
            if revived.reloaded { "upstream rewritten and reloaded" } else { "upstream unchanged, no reload" }
        );
    }
    if let Some(l) = &live {
        say!("live:     {}", setup.describe(l));
    }
    Ok(Code::Ok)
}

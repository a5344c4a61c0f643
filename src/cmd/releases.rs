//! `cutover releases`: every release this host knows of (history, release directories, logs), newest first,
//! with what is live and previous. `--names` (hidden) prints the releases `rollback --to` accepts, one a line:
//! the shell completions call it.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::ReleasesArgs;
use crate::exit::Code;
use crate::output::print_json;
use crate::releases;

pub fn run(setup: &Setup, args: ReleasesArgs, json: bool) -> Result<Code> {
    let state = setup.state()?;
    let (events, warning) = setup.store.history()?;
    let list = releases::gather(&setup.config, &state, &events);
    if args.names {
        for name in releases::rollback_targets(&list) {
            say!("{name}");
        }
        return Ok(Code::Ok);
    }
    if let Some(w) = warning {
        crate::output::err_line(&format!("cutover: warning: {w}"));
    }
    if json {
        print_json(&json!({ "app": setup.config.app.name.as_str(), "releases": list }))?;
        return Ok(Code::Ok);
    }
    if list.is_empty() {
        say!("no releases known for {}", setup.config.app.name);
        return Ok(Code::Ok);
    }
    say!("{:<24}  {:<9}  {:<24}  {:<22}  {:<8}  logs", "release", "status", "last live", "last event", "dir");
    for r in &list {
        let dir = match (&r.dir, r.dir_exists) {
            (None, _) => "-",
            (Some(_), true) => "present",
            (Some(_), false) => "missing",
        };
        say!(
            "{:<24}  {:<9}  {:<24}  {:<22}  {:<8}  {}",
            r.name,
            r.role.as_str(),
            r.last_live.as_deref().unwrap_or("never"),
            r.last_event.as_deref().unwrap_or("-"),
            dir,
            r.logs.len()
        );
    }
    Ok(Code::Ok)
}

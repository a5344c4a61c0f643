//! `cutover apply`: after a change to the config (canary.sticky, canary.header, ports.bind) or to the upstream
//! template, make nginx serve the upstream file cutover renders now, without a deploy.
//!
//! It is an operation like any other: the app's lock, recovery of a killed run, drift refused unless `--force`
//! (a hand edit is not overwritten silently), then the engine's flip of a [`Change::Rerender`]: written, `nginx
//! -t`, reloaded and confirmed, the previous file restored on failure (exit 4), and a history event. What is
//! live does not change. When the file on disk and state already hold what cutover renders now, nothing is
//! written or reloaded (exit 0). A file someone re-rendered by hand (`cutover render > FILE`) is no drift (it is
//! what cutover renders), and `apply` then records it in state.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::ApplyArgs;
use crate::engine::{Done, Moved, OpMeta};
use crate::exit::Code;
use crate::journal::{Change, OpKind, Outcome};
use crate::output::print_json;
use crate::strategy::blue_green;
use crate::upstream;

pub fn run(setup: &Setup, args: ApplyArgs, json: bool) -> Result<Code> {
    let (_lock, mut eng) = super::begin(setup, args.lock.lock_wait, args.force, "apply")?;
    let cfg = &setup.config;
    let path = cfg.nginx.upstream_file.display().to_string();
    let on_disk = eng.host.nginx().read_upstream()?;
    let now = eng.renderer.render(cfg, eng.state())?;
    if on_disk.as_deref() == Some(now.as_str()) && eng.state().upstream.as_deref() == Some(now.as_str()) {
        if json {
            print_json(&json!({
                "ok": true, "kind": "apply", "app": cfg.app.name.as_str(), "changed": false,
                "generation": eng.state().generation, "diff": "",
            }))?;
        } else {
            say!("{path} already is what cutover renders (generation {}): nothing to apply", eng.state().generation);
        }
        return Ok(Code::Ok);
    }
    let diff = upstream::diff(on_disk.as_deref().unwrap_or_default(), &now, &path);
    let release = eng.live_release().unwrap_or_else(|| "-".into());
    eng.progress.note(format!("applying the upstream cutover renders now for {}", cfg.app.name));
    let meta = OpMeta { kind: OpKind::Apply, release: release.clone(), strategy: None };
    eng.run(&meta, |e| {
        e.begin(OpKind::Apply, &release, None)?;
        match e.apply(Change::Rerender) {
            Ok(applied) => {
                e.journal.done()?;
                Ok(Done::with(applied, Moved::Nothing, Outcome::Ok))
            }
            Err(err) => {
                blue_green::end_failed(e, &err)?;
                Err(err)
            }
        }
    })?;
    let generation = eng.state().generation;
    if json {
        print_json(&json!({
            "ok": true,
            "kind": "apply",
            "app": cfg.app.name.as_str(),
            "changed": true,
            "generation": generation,
            "diff": diff,
            "steps": eng.progress.steps,
            "total_ms": crate::output::ms(eng.progress.elapsed()),
        }))?;
    } else {
        put!("{diff}");
        say!("applied: {path} (generation {generation}); nginx reloaded and confirmed, live release unchanged");
    }
    Ok(Code::Ok)
}

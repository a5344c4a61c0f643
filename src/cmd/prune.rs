//! `cutover prune --keep N`: remove the release directories (`app.release_dir`) and instance logs
//! (`runtime.log_dir`) of old releases. The newest N releases are kept, and so are the live release, the
//! previous one (a rollback target), a canary or rolling one, and any release with an instance still running,
//! whatever N is. `--dry-run` lists what would go. A release directory that is a symlink loses the link, never
//! what it points to. Holds the app's lock, so that no deploy starts a release while its directory goes.

use anyhow::{Context, Result};
use serde_json::json;

use super::Setup;
use crate::cli::PruneArgs;
use crate::exit::Code;
use crate::lock::{self, Scope};
use crate::output::print_json;
use crate::releases;

pub fn run(setup: &Setup, args: PruneArgs, json: bool) -> Result<Code> {
    let cfg = &setup.config;
    let _lock = if args.dry_run {
        None
    } else {
        setup.store.ensure()?;
        let (l, stale) = lock::acquire(&setup.store.lock_path(), Scope::App, args.lock.lock_wait)?;
        if let Some(h) = stale {
            crate::output::err_line(&format!("cutover: warning: took over the lock left by {h}: that process is gone"));
        }
        Some(l)
    };
    let state = setup.state()?;
    let (events, _) = setup.store.history()?;
    let list = releases::gather(cfg, &state, &events);
    let gone = releases::to_prune(&list, args.keep);
    let mut removed: Vec<String> = Vec::new();
    for r in &gone {
        let mut paths: Vec<std::path::PathBuf> = r.dir.iter().filter(|_| r.dir_exists).cloned().collect();
        paths.extend(r.logs.iter().cloned());
        for p in paths {
            if !args.dry_run {
                remove(&p)?;
            }
            removed.push(p.display().to_string());
        }
    }
    let kept: Vec<&str> =
        list.iter().filter(|r| !gone.iter().any(|g| g.name == r.name)).map(|r| r.name.as_str()).collect();
    if json {
        print_json(&json!({
            "ok": true,
            "dry_run": args.dry_run,
            "pruned": gone.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "removed": removed,
            "kept": kept,
        }))?;
        return Ok(Code::Ok);
    }
    if cfg.release_dir("x").is_none() {
        say!("note: app.release_dir is not set (nor derived from app.start): only logs are pruned");
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    if removed.is_empty() {
        say!("nothing to prune: {} release(s) known, keeping the newest {}", list.len(), args.keep);
    }
    for p in &removed {
        say!("{verb} {p}");
    }
    say!("kept: {}", if kept.is_empty() { "-".to_string() } else { kept.join(", ") });
    Ok(Code::Ok)
}

/// Remove a file, a directory tree, or a symlink (the link only).
fn remove(p: &std::path::Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(p).with_context(|| format!("could not inspect {}", p.display()))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(p).with_context(|| format!("could not remove {}", p.display()))
    } else {
        std::fs::remove_file(p).with_context(|| format!("could not remove {}", p.display()))
    }
}

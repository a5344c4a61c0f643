//! One module per subcommand, dispatched from one `match`.

mod canary;
mod check;
mod deploy;
mod generate;
mod history;
mod init;
mod release_name;
mod render;
mod rollback;
mod status;

use std::io::Write;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::{self, Config};
use crate::exit;
use crate::transaction::Ctx;

pub fn run(cli: Cli) -> Result<i32> {
    let json = cli.json;
    let find = || crate::config_path::find(cli.config.as_deref(), cli.app.as_deref());
    let load = || -> Result<Ctx> { Ctx::new(Config::load(&find()?)?) };
    match cli.command {
        Command::Init(_) if cli.app.is_some() => {
            Err(exit::usage("init names the app with --name; it writes ./cutover.toml or -c PATH, not a --app config"))
        }
        Command::Init(args) => init::run(&config::config_path(cli.config.as_deref()), args),
        Command::Completions { shell } => {
            generate::print_completions(shell);
            Ok(exit::OK)
        }
        Command::ReleaseName { reference } => release_name::run(&reference, json),
        Command::Generate { what } => generate::run(what),
        Command::Check => check::run(&find()?, json),
        Command::Deploy(args) => deploy::run(&load()?, args, json),
        Command::Status(args) => status::run(&load()?, args, json),
        Command::Rollback(args) => rollback::run(&load()?, args, json),
        Command::Render(args) => render::run(&load()?, args, json),
        Command::History(args) => history::run(&load()?, args, json),
        Command::Promote(args) => canary::promote(&load()?, args, json),
        Command::Abort(args) => canary::abort(&load()?, args, json),
        Command::Canary(args) => canary::run(&load()?, args, json),
    }
}

/// Print one JSON document on stdout. A reader that went away (`| head`) is not an error.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The start of every command that changes something: take the lock, load state, clean up after a killed
/// run, and report drift. Upstream drift stops the command unless `force`: cutover would overwrite a change
/// someone made by hand.
pub fn begin(
    ctx: &Ctx,
    lock_wait: Option<std::time::Duration>,
    force: bool,
    progress: &crate::progress::Progress,
) -> Result<(crate::lock::Lock, crate::state::State)> {
    ctx.store.ensure()?;
    let (lock, stale) = crate::lock::acquire(&ctx.store, lock_wait)?;
    if let Some(h) = stale {
        progress.warn(format!("took over the lock left by {h}: that process is gone"));
    }
    let mut state = ctx.store.load(ctx.config.app.name.as_str())?;
    crate::transaction::recover(ctx, &mut state, progress)?;
    let drift = crate::transaction::reconcile(ctx, &state)?;
    for d in &drift {
        progress.warn(format!("drift: {d}"));
    }
    let upstream_drift = drift.iter().any(|d| d.starts_with("upstream file"));
    if upstream_drift && !force {
        return Err(exit::Failure::error(
            exit::UNEXPECTED,
            format!(
                "the upstream file {} was changed outside cutover; look at `cutover render --diff`, then run again \
                 with --force to replace it",
                ctx.config.nginx.upstream_file.display()
            ),
        ));
    }
    Ok((lock, state))
}

/// `release v2 on 127.0.0.1:8082 (pid 41), 127.0.0.1:8083 (pid 42)`.
pub fn describe(ctx: &Ctx, d: &crate::state::Deployment) -> String {
    let inst: Vec<String> = d
        .instances
        .iter()
        .map(|i| {
            let pid = match i.pid {
                Some(p) if crate::proc::alive(i) => format!("pid {p}"),
                _ => "stopped".into(),
            };
            format!("{} ({pid})", ctx.config.ports.bind.with_port(i.port))
        })
        .collect();
    format!("{} on {}", d.release, inst.join(", "))
}

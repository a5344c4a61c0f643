//! One module per subcommand, dispatched from one `match`: each parses what it needs, calls the engine, and
//! reports. With `--json`, a failing command still prints one JSON document (`"ok": false`, its exit code, the
//! error, and what is known), so that a CI step can parse every outcome.

mod adopt;
mod apply;
mod canary;
mod check;
mod deploy;
mod generate;
mod history;
mod init;
mod init_names;
mod logs;
mod prune;
mod recover;
mod release_name;
mod releases;
mod render;
mod restart;
mod rollback;
mod status;
mod stop;
mod up;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::config::{self, Config};
use crate::engine::Engine;
use crate::exit::{self, Code};
use crate::host::real::RealHost;
use crate::host::Host;
use crate::journal::{Deployment, State, Store};
use crate::lock::Lock;
use crate::output::{print_json, Progress};

/// What every command that reads or changes an app works with: its config, the machine, its state directory.
pub struct Setup {
    pub config: Config,
    pub host: RealHost,
    pub store: Store,
}

impl Setup {
    /// Load the config, refusing (as root) files other users could change unless `insecure` (see
    /// [`crate::trust`]).
    pub fn load(path: &Path, insecure: bool) -> Result<Setup> {
        let config = Config::load(path)?;
        crate::trust::enforce(&config, insecure)?;
        let host = RealHost::new(&config);
        let store = Store::new(config.state_dir());
        Ok(Setup { config, host, store })
    }

    /// The app's state, read only (nothing is created).
    pub fn state(&self) -> Result<State> {
        self.store.load(self.config.app.name.as_str())
    }

    pub fn engine(&self, progress: Progress) -> Result<Engine<'_>> {
        Engine::new(&self.config, &self.host, self.store.clone(), progress)
    }

    /// `v2 on 127.0.0.1:8082 (pid 41), 127.0.0.1:8083 (pid 42)`.
    pub fn describe(&self, d: &Deployment) -> String {
        let inst: Vec<String> = d
            .instances
            .iter()
            .map(|i| {
                let who = match (&i.unit, i.pid) {
                    (Some(u), _) if self.host.runtime().status(i).running() => u.clone(),
                    (None, Some(p)) if self.host.runtime().status(i).running() => format!("pid {p}"),
                    _ => "stopped".into(),
                };
                format!("{} ({who})", self.config.ports.bind.with_port(i.port))
            })
            .collect();
        format!("{} on {}", d.release, inst.join(", "))
    }
}

pub fn run(cli: Cli) -> Result<Code> {
    let json = cli.json;
    let name = command_name(&cli.command);
    let (explicit, app) = (cli.config.clone(), cli.app.clone());
    let result = dispatch(cli);
    if let (true, Err(e)) = (json, &result) {
        let path = crate::config_path::find(explicit.as_deref(), app.as_deref()).ok();
        print_failure(path.as_deref(), name, e);
    }
    result
}

fn dispatch(cli: Cli) -> Result<Code> {
    let json = cli.json;
    let insecure = cli.insecure_config;
    let find = || crate::config_path::find(cli.config.as_deref(), cli.app.as_deref());
    let load = || Setup::load(&find()?, insecure);
    match cli.command {
        // --boot writes the boot unit of an existing config, which --app may name.
        Command::Init(args) if args.boot => init::boot(&load()?),
        Command::Init(_) if cli.app.is_some() => {
            Err(exit::usage("init names the app with --name; it writes ./cutover.toml or -c PATH, not a --app config"))
        }
        Command::Init(args) => init::run(&config::config_path(cli.config.as_deref()), *args),
        Command::Completions { shell } => {
            generate::print_completions(shell)?;
            Ok(Code::Ok)
        }
        Command::ReleaseName { reference } => release_name::run(&reference, json),
        Command::Generate { what } => generate::run(what),
        Command::Check => check::run(&find()?, json, insecure),
        Command::Deploy(args) => deploy::run(&load()?, args, json),
        Command::Status(args) => status::run(&load()?, args, json),
        Command::Rollback(args) => rollback::run(&load()?, args, json),
        Command::Render(args) => render::run(&load()?, args, json),
        Command::History(args) => history::run(&load()?, args, json),
        Command::Promote(args) => canary::promote(&load()?, args, json),
        Command::Abort(args) => canary::abort(&load()?, args, json),
        Command::Canary(args) => canary::run(&load()?, args, json),
        Command::Recover(args) => recover::run(&load()?, args, json),
        Command::Apply(args) => apply::run(&load()?, args, json),
        Command::Releases(args) => releases::run(&load()?, args, json),
        Command::Prune(args) => prune::run(&load()?, args, json),
        Command::Up(args) => up::run(&load()?, args, json),
        Command::Stop(args) => stop::run(&load()?, args, json),
        Command::Restart(args) => restart::run(&load()?, args, json),
        Command::Logs(args) => logs::run(&load()?, args, json),
        Command::LogWriter(args) => {
            crate::host::logfile::run_writer(&args.file, args.max_size, args.keep)?;
            Ok(Code::Ok)
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Init(_) => "init",
        Command::Check => "check",
        Command::Deploy(_) => "deploy",
        Command::Status(_) => "status",
        Command::Rollback(_) => "rollback",
        Command::Promote(_) => "promote",
        Command::Abort(_) => "abort",
        Command::Canary(_) => "canary",
        Command::Render(_) => "render",
        Command::History(_) => "history",
        Command::Recover(_) => "recover",
        Command::Apply(_) => "apply",
        Command::Releases(_) => "releases",
        Command::Prune(_) => "prune",
        Command::Up(_) => "up",
        Command::Stop(_) => "stop",
        Command::Restart(_) => "restart",
        Command::Logs(_) => "logs",
        Command::LogWriter(_) => "__log-writer",
        Command::Completions { .. } => "completions",
        Command::ReleaseName { .. } => "release-name",
        Command::Generate { .. } => "generate",
    }
}

/// The JSON document of a failed command: the error and what is known after it (what is live, and this run's
/// history event when it wrote one).
fn print_failure(path: Option<&Path>, command: &str, e: &anyhow::Error) {
    let code = exit::code_of(e);
    let mut doc = json!({
        "ok": false,
        "command": command,
        "exit_code": code.number(),
        "error": format!("{e:#}"),
    });
    if let Some(setup) = path.and_then(|p| Setup::load(p, true).ok()) {
        doc["app"] = json!(setup.config.app.name.as_str());
        if let Ok(state) = setup.state() {
            doc["live"] = json!(state.live);
            doc["previous"] = json!(state.previous);
            doc["canary"] = json!(state.canary);
            doc["rolling"] = json!(state.rolling);
            doc["in_progress"] = json!(state.in_progress);
        }
        if let Ok((events, _)) = setup.store.history() {
            if let Some(ev) = events.into_iter().last().filter(|ev| ev.pid == std::process::id()) {
                doc["outcome"] = json!(ev.outcome);
                doc["steps"] = json!(ev.steps);
                doc["total_ms"] = json!(ev.total_ms);
            }
        }
    }
    let _ = print_json(&doc);
}

/// The start of every command that changes something: see [`Engine::open`].
pub fn begin<'a>(setup: &'a Setup, lock_wait: Option<Duration>, force: bool, by: &str) -> Result<(Lock, Engine<'a>)> {
    Engine::open(&setup.config, &setup.host, setup.store.clone(), lock_wait, force, by, Progress::new())
}

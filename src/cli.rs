//! Command-line interface: the clap types and their help text. Nothing here acts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::strategy::Strategy;

/// Zero-downtime deploys on one Linux host behind nginx.
///
/// cutover starts the new release on an idle port, health-checks it, renders the nginx upstream, validates it
/// with `nginx -t`, reloads nginx and confirms the reload, drains the old release and stops it. Every step is
/// undone if a later one fails. Exit codes: 0 done, 1 unexpected error, 2 usage or invalid config, 3 new release
/// unhealthy (also after the switch), 4 nginx rejected the config or the reload was not applied, 5 locked,
/// 6 canary aborted, 7 `status --check` found a problem, 8 refused: the host is not in a state where this can
/// run (nothing changed).
#[derive(Debug, Parser)]
#[command(name = "cutover", version, max_term_width = 110)]
pub struct Cli {
    /// Config file [default: $CUTOVER_CONFIG, else ./cutover.toml, else /etc/cutover/<app>.toml with --app, else
    /// /etc/cutover/cutover.toml]
    #[arg(short, long, global = true, env = "CUTOVER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The app to act on: finds /etc/cutover/NAME.toml, and makes sure the config found is NAME's
    #[arg(long, global = true, value_name = "NAME")]
    pub app: Option<String>,

    /// Print one JSON document on stdout instead of text (progress still goes to stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Use files that users other than root (and the user running cutover) can change, with a warning, instead
    /// of refusing them when running as root (see "Running as root" in the README)
    #[arg(long, global = true)]
    pub insecure_config: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented cutover.toml and an nginx site file that includes the upstream file
    Init(InitArgs),
    /// Check the config and whether this host is ready to deploy
    Check,
    /// Deploy a release: start, health-check, switch nginx, drain and stop the old release
    Deploy(DeployArgs),
    /// Show what is live: release, instances, health, weights, drift, lock, last event
    Status(StatusArgs),
    /// Go back to the previous release (a flip when it is still running)
    Rollback(RollbackArgs),
    /// Move a running canary to its next step
    Promote(LockArgs),
    /// Abort a running canary: weight 0, drain and stop it
    Abort(LockArgs),
    /// Drive a running canary by hand
    Canary(CanaryArgs),
    /// Print the upstream file for the current state
    Render(RenderArgs),
    /// List past deploys and rollbacks with outcome and step timings
    History(HistoryArgs),
    /// Finish or undo an operation a killed run left (exit 0 when there is none)
    Recover(LockArgs),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the release name that --release-from-ref makes of a CI ref or build tag
    ReleaseName {
        /// A branch ref or build tag, e.g. refs/heads/feature/x or jenkins-myorg/myapp/main-42
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Write man pages or completion files into a directory (for packaging)
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// One man page per command: cutover.1, cutover-deploy.1, ...
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Completion files for bash (cutover.bash), zsh (_cutover) and fish (cutover.fish)
    Completions {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Wait up to this long for another cutover run to finish instead of failing with exit 5 (e.g. 5m, at most
    /// 24h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_wait: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("which_release").required(true).args(["release", "release_from_ref"]))]
pub struct DeployArgs {
    /// The release to deploy; substituted for {{release}} in app.start ([A-Za-z0-9._-], up to 128)
    #[arg(short, long)]
    pub release: Option<String>,
    /// Derive the release name from a CI ref or build tag instead (refs/heads/feature/x -> feature-x; see
    /// `cutover release-name`)
    #[arg(long, value_name = "REF")]
    pub release_from_ref: Option<String>,
    /// Override deploy.strategy
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Print the plan and the upstream diff; start nothing, write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy even when the upstream file on disk was changed outside cutover
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 7 on drift, a live instance down or unhealthy, an unfinished operation, an automatic canary nobody
    /// analyses, or nginx not running
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Roll back to this release from history instead of the previous one
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Roll back even when the upstream file on disk was changed outside cutover
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct CanaryArgs {
    #[command(subcommand)]
    pub command: CanaryCommand,
}

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Set the canary's share of traffic, in percent (0 to 100)
    Set {
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        #[command(flatten)]
        lock: LockArgs,
    },
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Show a unified diff against the upstream file on disk instead (exit 0 either way)
    #[arg(long)]
    pub diff: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Show at most this many events, newest last
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// App name ([a-z0-9_-])
    #[arg(long, default_value = "app")]
    pub name: String,
    /// Where to write the nginx site file
    #[arg(long, default_value = "cutover-site.conf")]
    pub site: PathBuf,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

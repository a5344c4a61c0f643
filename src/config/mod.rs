//! `cutover.toml`: parsed into validated types ([`values`]), so that a bad value is reported by toml with its
//! file, line and column, and so that nothing reaching nginx syntax can carry more than the one token it should.
//! Checks that span several keys are in [`Config::validate`].

mod load;
pub mod runtime;
pub mod values;

pub use load::config_path;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::strategy::Strategy;
pub use runtime::{Account, ByteSize, RuntimeKind};
pub use values::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub app: App,
    pub ports: Ports,
    #[serde(default)]
    pub health: Health,
    pub nginx: Nginx,
    #[serde(default)]
    pub deploy: Deploy,
    #[serde(default)]
    pub canary: Canary,
    #[serde(default)]
    pub rolling: Rolling,
    #[serde(default)]
    pub maintenance: Maintenance,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub runtime: RuntimeCfg,
    /// The file this was read from, for messages; relative paths inside are resolved against its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: Name,
    /// Shell command; `{{port}}` and `{{release}}` are substituted.
    pub start: StartCommand,
    /// Where the app runs; `{{release}}` is substituted. Default: the directory cutover runs from.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// `KEY=VALUE` lines for the app's environment, so that secrets stay out of cutover.toml.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub env_file: Option<PathBuf>,
    /// Variables passed through from cutover's own environment; nothing else is (beyond PATH, LANG, HOME).
    #[serde(default)]
    pub inherit_env: Vec<EnvName>,
    /// The user the app runs as (default: the user cutover runs as).
    pub user: Option<Account>,
    /// Its group (default: the user's primary group).
    pub group: Option<Account>,
    /// Where a release's files are, with `{{release}}`: a deploy of a release whose directory is missing is
    /// refused before anything starts. Without it, derived from `start` (a path with a `{{release}}` directory).
    pub release_dir: Option<ReleasePath>,
    #[serde(default = "defaults::stop_timeout")]
    pub stop_timeout: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub pool: Option<Vec<Port>>,
    pub range: Option<PortRange>,
    #[serde(default = "defaults::bind")]
    pub bind: BindAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default = "defaults::health_path")]
    pub path: HttpPath,
    #[serde(default = "defaults::expect_status")]
    pub expect_status: StatusCode,
    pub expect_body: Option<String>,
    #[serde(default = "defaults::interval")]
    pub interval: Positive,
    #[serde(default = "defaults::probe_timeout")]
    pub timeout: Positive,
    #[serde(default = "defaults::deadline")]
    pub deadline: Positive,
    #[serde(default = "defaults::successes")]
    pub successes: u32,
    /// A process that is up and answers this many probes in a row with the wrong status fails at once, instead of
    /// waiting out the deadline (a release that answers 500 every time will not get better).
    #[serde(default = "defaults::fail_after")]
    pub fail_after: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: defaults::health_path(),
            expect_status: defaults::expect_status(),
            expect_body: None,
            interval: defaults::interval(),
            timeout: defaults::probe_timeout(),
            deadline: defaults::deadline(),
            successes: defaults::successes(),
            fail_after: defaults::fail_after(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nginx {
    #[serde(deserialize_with = "values::path")]
    pub upstream_file: PathBuf,
    #[serde(default = "defaults::nginx_binary")]
    pub binary: String,
    /// `-p PREFIX` for a private nginx.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub prefix: Option<PathBuf>,
    /// `-c CONF` for a private nginx.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub conf: Option<PathBuf>,
    /// The master's pid file; found from `nginx -T` / `nginx -V` when absent.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub pid_file: Option<PathBuf>,
    #[serde(default)]
    pub reload: Reload,
    #[serde(default, deserialize_with = "values::opt_path")]
    pub template: Option<PathBuf>,
    /// A URL on nginx whose body is the upstream file's generation marker (`$cutover_<app>_generation`); when set,
    /// a reload counts only once nginx answers it with the new generation.
    pub confirm_url: Option<ConfirmUrl>,
    /// How long a reload may take to show new workers before it counts as not applied.
    #[serde(default = "defaults::confirm_timeout")]
    pub confirm_timeout: Positive,
    /// An argv prefix that runs nginx as root for a non-root deploy user (`["sudo", "-n"]`): used for
    /// `nginx -t`, `nginx -T` and the reload (`nginx -s reload` for "signal", `systemctl reload nginx` for
    /// "systemctl"). See `cutover init` for the sudoers lines it needs.
    pub run_as_root: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reload {
    /// SIGHUP to the master named by the pid file.
    #[default]
    Signal,
    /// `systemctl reload nginx`.
    Systemctl,
    Command(Vec<String>),
}

impl<'de> Deserialize<'de> for Reload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Argv(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "signal" => Ok(Reload::Signal),
            Raw::Word(w) if w == "systemctl" => Ok(Reload::Systemctl),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "unknown reload method `{w}`: use \"signal\", \"systemctl\" or an argv list such as [\"sudo\", \"nginx\", \"-s\", \"reload\"]"
            ))),
            Raw::Argv(v) if v.is_empty() => Err(serde::de::Error::custom("reload command is empty")),
            Raw::Argv(v) => Ok(Reload::Command(v)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "defaults::instances")]
    pub instances: Count,
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Dur,
    #[serde(default)]
    pub keep_previous: bool,
    #[serde(default, deserialize_with = "values::opt_path")]
    pub state_dir: Option<PathBuf>,
    /// After the drain, keep probing the new instances this long; one that dies or turns unhealthy flips traffic
    /// back (exit 3). `0s` turns it off.
    #[serde(default = "defaults::verify")]
    pub verify: Dur,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::BlueGreen,
            instances: defaults::instances(),
            drain_timeout: defaults::drain_timeout(),
            keep_previous: false,
            state_dir: None,
            verify: defaults::verify(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    #[serde(default = "defaults::canary_steps")]
    pub steps: Vec<Percent>,
    #[serde(default = "defaults::canary_interval")]
    pub interval: Interval,
    #[serde(default = "defaults::max_error_rate")]
    pub max_error_rate: Rate,
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    /// Abort when the canary's p95 upstream time exceeds the stable release's by this factor.
    pub max_latency_factor: Option<f64>,
    /// `cookie:NAME` or `ip`: route by a hash of that key so each user stays on one release.
    pub sticky: Option<Sticky>,
    /// Requests carrying this header go to the canary whatever the split.
    pub header: Option<HeaderName>,
    /// The JSON access log the template writes and cutover reads during each hold.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub access_log: Option<PathBuf>,
}

impl Default for Canary {
    fn default() -> Self {
        Canary {
            steps: defaults::canary_steps(),
            interval: defaults::canary_interval(),
            max_error_rate: defaults::max_error_rate(),
            min_requests: defaults::min_requests(),
            max_latency_factor: None,
            sticky: None,
            header: None,
            access_log: None,
        }
    }
}

/// `[rolling]`: how `--strategy rolling` replaces `deploy.instances` instances in batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    #[serde(default = "defaults::batch")]
    pub batch: Count,
    /// Start each batch's replacements on idle ports before the old ones leave (capacity never drops).
    #[serde(default = "defaults::yes")]
    pub surge: bool,
    /// Hold between batches with the canary's access-log analysis of the new instances against the old ones.
    #[serde(default)]
    pub pause: Dur,
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling { batch: defaults::batch(), surge: true, pause: Dur(Duration::ZERO), on_failure: OnFailure::Rollback }
    }
}

/// What a failed rolling batch does to the batches already replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Roll every replaced batch back to the old release, in reverse order.
    #[default]
    Rollback,
    /// Stop where it is: a mixed fleet that `status` shows and `rollback`, `recover` or a new `deploy` resolve.
    Pause,
}

/// `[maintenance]`: what nginx answers while no instance serves (`--strategy all-at-once`, between stopping
/// the old release and the new one passing its health check): a 503 with `Retry-After`, from the upstream
/// template (overridable with `nginx.template`), instead of nginx's 502.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// The `Retry-After` the 503 carries (whole seconds, rounded up).
    #[serde(default = "defaults::retry_after")]
    pub retry_after: Positive,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance { retry_after: defaults::retry_after() }
    }
}

impl Maintenance {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// `[runtime]`: who runs the app's instances and where their output goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeCfg {
    /// `spawn` or `systemd`; default: systemd when PID 1 is systemd, else spawn (see `host::select`).
    pub kind: Option<RuntimeKind>,
    /// systemd runtime: where cutover writes its units and their `WantedBy` symlinks.
    #[serde(default = "defaults::unit_dir", deserialize_with = "values::path")]
    pub unit_dir: PathBuf,
    /// systemd runtime: the argv prefix that runs systemctl (`["sudo", "systemctl"]` for a non-root user).
    #[serde(default = "defaults::systemctl")]
    pub systemctl: Vec<String>,
    /// systemd runtime: the argv prefix that runs journalctl.
    #[serde(default = "defaults::journalctl")]
    pub journalctl: Vec<String>,
    /// spawn runtime: where each instance's output is written (`<release>-<port>.log`). Default
    /// `/var/log/cutover/<app>` as root, else `$XDG_STATE_HOME/cutover-logs/<app>`; never the state directory.
    #[serde(default, deserialize_with = "values::opt_path")]
    pub log_dir: Option<PathBuf>,
    /// spawn runtime: a log file is rotated when it reaches this size...
    #[serde(default = "defaults::log_max_size")]
    pub log_max_size: ByteSize,
    /// ...and this many rotated files (`.1` newest) are kept per instance.
    #[serde(default = "defaults::log_keep")]
    pub log_keep: u32,
}

impl Default for RuntimeCfg {
    fn default() -> Self {
        RuntimeCfg {
            kind: None,
            unit_dir: defaults::unit_dir(),
            systemctl: defaults::systemctl(),
            journalctl: defaults::journalctl(),
            log_dir: None,
            log_max_size: defaults::log_max_size(),
            log_keep: defaults::log_keep(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub before_start: Option<String>,
    pub after_healthy: Option<String>,
    pub after_switch: Option<String>,
    pub after_rollback: Option<String>,
    pub on_failure: Option<String>,
    /// A hook still running after this is killed (its whole process group) and counts as failed.
    #[serde(default = "defaults::hook_timeout")]
    pub timeout: Positive,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            before_start: None,
            after_healthy: None,
            after_switch: None,
            after_rollback: None,
            on_failure: None,
            timeout: defaults::hook_timeout(),
        }
    }
}

mod defaults {
    use super::*;
    pub fn stop_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn bind() -> BindAddr {
        BindAddr("127.0.0.1".parse().unwrap())
    }
    pub fn health_path() -> HttpPath {
        HttpPath("/health".into())
    }
    pub fn expect_status() -> StatusCode {
        StatusCode(200)
    }
    pub fn interval() -> Positive {
        Positive(Duration::from_millis(250))
    }
    pub fn probe_timeout() -> Positive {
        Positive(Duration::from_secs(2))
    }
    pub fn deadline() -> Positive {
        Positive(Duration::from_secs(60))
    }
    pub fn successes() -> u32 {
        2
    }
    pub fn fail_after() -> u32 {
        10
    }
    pub fn nginx_binary() -> String {
        "nginx".into()
    }
    pub fn confirm_timeout() -> Positive {
        Positive(Duration::from_secs(5))
    }
    pub fn instances() -> Count {
        Count(1)
    }
    pub fn drain_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn verify() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn canary_steps() -> Vec<Percent> {
        vec![Percent(10), Percent(25), Percent(50), Percent(100)]
    }
    pub fn canary_interval() -> Interval {
        Interval::Every(Dur(Duration::from_secs(60)))
    }
    pub fn max_error_rate() -> Rate {
        Rate(0.01)
    }
    pub fn min_requests() -> u64 {
        50
    }
    pub fn batch() -> Count {
        Count(1)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn retry_after() -> Positive {
        Positive(Duration::from_secs(5))
    }
    pub fn hook_timeout() -> Positive {
        Positive(Duration::from_secs(300))
    }
    pub fn unit_dir() -> PathBuf {
        PathBuf::from("/etc/systemd/system")
    }
    pub fn systemctl() -> Vec<String> {
        vec!["systemctl".into()]
    }
    pub fn journalctl() -> Vec<String> {
        vec!["journalctl".into()]
    }
    pub fn log_max_size() -> ByteSize {
        ByteSize(10 << 20)
    }
    pub fn log_keep() -> u32 {
        3
    }
}

#[cfg(test)]
mod tests;

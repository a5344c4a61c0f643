//! `cutover.toml`: parsed into validated types, so that a bad value is reported by toml with its file, line
//! and column, and so that nothing reaching nginx syntax can carry more than the one token it should.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::exit;

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
    #[allow(dead_code)]
    pub rolling: Rolling,
    #[serde(default)]
    pub hooks: Hooks,
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
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
    /// `KEY=VALUE` lines for the app's environment, so that secrets stay out of cutover.toml.
    pub env_file: Option<PathBuf>,
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
    pub expect_status: u16,
    pub expect_body: Option<String>,
    #[serde(default = "defaults::interval")]
    pub interval: Dur,
    #[serde(default = "defaults::probe_timeout")]
    pub timeout: Dur,
    #[serde(default = "defaults::deadline")]
    pub deadline: Dur,
    #[serde(default = "defaults::successes")]
    pub successes: u32,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nginx {
    pub upstream_file: PathBuf,
    #[serde(default = "defaults::nginx_binary")]
    pub binary: String,
    /// `-p PREFIX` for a private nginx.
    pub prefix: Option<PathBuf>,
    /// `-c CONF` for a private nginx.
    pub conf: Option<PathBuf>,
    /// The master's pid file; found from `nginx -T` / `nginx -V` when absent.
    pub pid_file: Option<PathBuf>,
    #[serde(default)]
    pub reload: Reload,
    pub template: Option<PathBuf>,
    /// A URL on nginx whose body is the upstream file's generation marker (`$cutover_<app>_generation`); when set,
    /// a reload counts only once nginx answers it with the new generation.
    pub confirm_url: Option<ConfirmUrl>,
    /// How long a reload may take to show new workers before it counts as not applied.
    #[serde(default = "defaults::confirm_timeout")]
    pub confirm_timeout: Dur,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    BlueGreen,
    Canary,
    Rolling,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
            Strategy::Rolling => "rolling",
        })
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
    pub state_dir: Option<PathBuf>,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::BlueGreen,
            instances: defaults::instances(),
            drain_timeout: defaults::drain_timeout(),
            keep_previous: false,
            state_dir: None,
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

/// Parsed and validated so that a config with a `[rolling]` section loads; the rolling strategy itself is not
/// built yet and `deploy` says so.
#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    #[serde(default = "defaults::batch")]
    pub batch: Count,
    #[serde(default = "defaults::yes")]
    pub surge: bool,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling { batch: defaults::batch(), surge: true }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub before_start: Option<String>,
    pub after_healthy: Option<String>,
    pub after_switch: Option<String>,
    pub after_rollback: Option<String>,
    pub on_failure: Option<String>,
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
    pub fn expect_status() -> u16 {
        200
    }
    pub fn interval() -> Dur {
        Dur(Duration::from_millis(250))
    }
    pub fn probe_timeout() -> Dur {
        Dur(Duration::from_secs(2))
    }
    pub fn deadline() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn successes() -> u32 {
        2
    }
    pub fn nginx_binary() -> String {
        "nginx".into()
    }
    pub fn confirm_timeout() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn instances() -> Count {
        Count(1)
    }
    pub fn drain_timeout() -> Dur {
        Dur(Duration::from_secs(30))
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
}

/// Deserialize a newtype from a string through `FromStr`, so toml reports a bad value at its span.
macro_rules! from_str_de {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// An app name: `[a-z0-9_-]`, 1 to 64 characters, starting with a letter or digit. It names the nginx upstream,
/// the state directory and log files, so it must be one nginx token and one path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);
from_str_de!(Name);

impl std::str::FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(format!("invalid app name {s:?}: use 1 to 64 of a-z 0-9 _ -, starting with a letter or digit"))
        }
    }
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A release name: `[A-Za-z0-9._-]`, 1 to 128 characters, starting with a letter or digit. It is substituted
/// into a shell command and written into nginx comments and file names, so it is kept to inert characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release(String);
from_str_de!(Release);

impl std::str::FromStr for Release {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(Release(s.to_string()))
        } else {
            Err(format!("invalid release {s:?}: use 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"))
        }
    }
}

impl Release {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct StartCommand(pub String);

impl<'de> Deserialize<'de> for StartCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(serde::de::Error::custom("app.start is empty"));
        }
        if !s.contains("{{port}}") {
            return Err(serde::de::Error::custom(
                "app.start must contain {{port}} so that each instance listens on the port cutover picked \
                 (PORT is also set in its environment; write {{port}} where the app reads it)",
            ));
        }
        Ok(StartCommand(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvName(pub String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(EnvName(s))
        } else {
            Err(serde::de::Error::custom(format!("invalid environment variable name {s:?}")))
        }
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p > 0 => Ok(Port(p)),
            _ => Err(serde::de::Error::custom(format!("invalid port {n}: use 1 to 65535"))),
        }
    }
}

/// `"8081-8090"`.
#[derive(Debug, Clone, Copy)]
pub struct PortRange(pub u16, pub u16);
from_str_de!(PortRange);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("invalid port range {s:?}: write it as \"8081-8090\"");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let a: u16 = a.trim().parse().map_err(|_| err())?;
        let b: u16 = b.trim().parse().map_err(|_| err())?;
        if a == 0 || b < a || b - a > 1000 {
            return Err(format!("invalid port range {s:?}: need 1 <= first <= last, at most 1000 ports"));
        }
        Ok(PortRange(a, b))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The address the app binds and nginx connects to: an IP address, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr(pub IpAddr);
from_str_de!(BindAddr);

impl std::str::FromStr for BindAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<IpAddr>()
            .map(BindAddr)
            .map_err(|_| format!("invalid bind address {s:?}: use an IP address such as 127.0.0.1 or ::1"))
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl BindAddr {
    /// `ADDR:PORT` as nginx and URLs write it (`[::1]:8081` for IPv6).
    pub fn with_port(&self, port: u16) -> String {
        std::net::SocketAddr::new(self.0, port).to_string()
    }
}

/// An HTTP path for the health probe: starts with `/`, printable ASCII, no spaces.
#[derive(Debug, Clone)]
pub struct HttpPath(pub String);
from_str_de!(HttpPath);

impl std::str::FromStr for HttpPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('/') && s.chars().all(|c| c.is_ascii_graphic()) {
            Ok(HttpPath(s.into()))
        } else {
            Err(format!("invalid health path {s:?}: it must start with / and have no spaces"))
        }
    }
}

impl fmt::Display for HttpPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `http://HOST[:PORT]/PATH`: printable ASCII, no spaces (nginx answers it; cutover only reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmUrl(pub String);
from_str_de!(ConfirmUrl);

impl std::str::FromStr for ConfirmUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").unwrap_or("");
        if !rest.is_empty() && !rest.starts_with('/') && s.chars().all(|c| c.is_ascii_graphic()) {
            Ok(ConfirmUrl(s.into()))
        } else {
            Err(format!("invalid nginx.confirm_url {s:?}: use http://HOST[:PORT]/PATH, e.g. http://127.0.0.1/.cutover"))
        }
    }
}

impl fmt::Display for ConfirmUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A human duration: `250ms`, `30s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);
from_str_de!(Dur);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 250ms, 30s, 5m)"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Manual,
    Every(Dur),
}
from_str_de!(Interval);

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "manual" {
            Ok(Interval::Manual)
        } else {
            s.parse().map(Interval::Every).map_err(|e| format!("{e}, or \"manual\""))
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interval::Manual => f.write_str("manual"),
            Interval::Every(d) => d.fmt(f),
        }
    }
}

/// A whole count of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(c) if (1..=64).contains(&c) => Ok(Count(c)),
            _ => Err(serde::de::Error::custom(format!("invalid count {n}: use 1 to 64"))),
        }
    }
}

/// A share of traffic in percent, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u8::try_from(n) {
            Ok(p) if p <= 100 => Ok(Percent(p)),
            _ => Err(serde::de::Error::custom(format!("invalid percent {n}: use 0 to 100"))),
        }
    }
}

/// A rate between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&n) {
            Ok(Rate(n))
        } else {
            Err(serde::de::Error::custom(format!("invalid rate {n}: use 0.0 to 1.0 (0.01 is 1 %)")))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Cookie(String),
    Ip,
}
from_str_de!(Sticky);

impl std::str::FromStr for Sticky {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "ip" {
            return Ok(Sticky::Ip);
        }
        if let Some(name) = s.strip_prefix("cookie:") {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Ok(Sticky::Cookie(name.to_string()));
            }
        }
        Err(format!("invalid sticky key {s:?}: use \"ip\" or \"cookie:NAME\" (NAME of A-Z a-z 0-9 _)"))
    }
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Ip => f.write_str("ip"),
            Sticky::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// An HTTP header name that nginx can read as `$http_<name>`: letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderName(pub String);
from_str_de!(HeaderName);

impl std::str::FromStr for HeaderName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            Ok(HeaderName(s.into()))
        } else {
            Err(format!("invalid header name {s:?}: use letters, digits and -"))
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl HeaderName {
    /// The nginx variable for this header: `X-Canary` → `$http_x_canary`.
    pub fn nginx_var(&self) -> String {
        format!("$http_{}", self.0.to_ascii_lowercase().replace('-', "_"))
    }
}

/// Where the config comes from: `-c`, else `$CUTOVER_CONFIG` (both through clap), else `./cutover.toml`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("cutover.toml"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            exit::usage(format!(
                "could not read config {}: {e}{}",
                path.display(),
                if e.kind() == std::io::ErrorKind::NotFound {
                    " (write one with `cutover init`, or point at it with -c / CUTOVER_CONFIG)"
                } else {
                    ""
                }
            ))
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| exit::usage(format!("invalid config {}: {}", path.display(), e.to_string().trim_end())))?;
        config.path = path.to_path_buf();
        config.resolve_paths();
        config.validate()?;
        Ok(config)
    }

    /// The config file's directory, absolute, so that paths handed to nginx and to apps mean one thing.
    fn base_dir(&self) -> PathBuf {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let abs = std::path::absolute(&dir).unwrap_or(dir);
        // Drop `.` components so paths print cleanly.
        abs.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.nginx.upstream_file);
        for p in [
            &mut self.app.workdir,
            &mut self.app.env_file,
            &mut self.nginx.prefix,
            &mut self.nginx.pid_file,
            &mut self.nginx.template,
            &mut self.deploy.state_dir,
            &mut self.canary.access_log,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        // `-c` is relative to the prefix in nginx's own terms; resolve it the same way nginx would.
        if let (Some(conf), Some(prefix)) = (&mut self.nginx.conf, &self.nginx.prefix) {
            if conf.is_relative() {
                *conf = prefix.join(&*conf);
            }
        } else if let Some(conf) = &mut self.nginx.conf {
            abs(conf);
        }
    }

    /// Checks that span several keys (single values are checked as they are parsed).
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(exit::usage(format!("invalid config {}: {msg}", self.path.display())));
        match (&self.ports.pool, &self.ports.range) {
            (None, None) => return bad("[ports] needs `pool = [8081, 8082]` or `range = \"8081-8090\"`".into()),
            (Some(_), Some(_)) => return bad("[ports] takes `pool` or `range`, not both".into()),
            _ => {}
        }
        let pool = self.pool();
        let mut seen = std::collections::BTreeSet::new();
        for p in &pool {
            if !seen.insert(p) {
                return bad(format!("ports.pool lists port {p} twice"));
            }
        }
        let needed = self.deploy.instances.0 as usize * 2;
        if pool.len() < needed {
            return bad(format!(
                "ports.pool has {} port(s) but {} instance(s) need {needed}: the new release starts beside the live one; \
                 add ports to [ports]",
                pool.len(),
                self.deploy.instances.0
            ));
        }
        if self.health.successes == 0 {
            return bad("health.successes must be at least 1".into());
        }
        let steps: Vec<u8> = self.canary.steps.iter().map(|p| p.0).collect();
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 {
            return bad(format!("canary.steps must rise from above 0, e.g. [10, 50, 100]; got {steps:?}"));
        }
        if let Some(f) = self.canary.max_latency_factor {
            if f.is_nan() || f < 1.0 {
                return bad(format!("canary.max_latency_factor must be at least 1.0; got {f}"));
            }
        }
        if self.nginx.binary.trim().is_empty() {
            return bad("nginx.binary is empty".into());
        }
        Ok(())
    }

    /// The configured ports, in order of preference.
    pub fn pool(&self) -> Vec<u16> {
        match (&self.ports.pool, &self.ports.range) {
            (Some(p), _) => p.iter().map(|p| p.0).collect(),
            (None, Some(r)) => (r.0..=r.1).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// `<state_dir>/<app>`: `deploy.state_dir`, else /var/lib/cutover as root, else $XDG_STATE_HOME/cutover.
    pub fn state_dir(&self) -> PathBuf {
        let base = self.deploy.state_dir.clone().unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/lib/cutover")
            } else if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
                PathBuf::from(x).join("cutover")
            } else {
                let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
                PathBuf::from(home).join(".local/state/cutover")
            }
        });
        base.join(self.app.name.as_str())
    }

    /// The JSON access log canary analysis reads: `canary.access_log`, else `/var/log/nginx/<app>.cutover.log`.
    pub fn access_log(&self) -> PathBuf {
        self.canary
            .access_log
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/log/nginx/{}.cutover.log", self.app.name)))
    }

    pub fn template_text(&self) -> Result<Option<String>> {
        match &self.nginx.template {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("could not read nginx.template {}", p.display()))
                .map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[app]
name = "shop"
start = "python3 app.py --port {{port}}"

[ports]
pool = [8081, 8082]

[nginx]
upstream_file = "shop.upstream.conf"
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/srv/cutover.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.pool(), vec![8081, 8082]);
        assert_eq!(c.nginx.upstream_file, PathBuf::from("/srv/shop.upstream.conf"));
        assert_eq!(c.health.successes, 2);
        assert_eq!(c.deploy.strategy, Strategy::BlueGreen);
        assert_eq!(c.nginx.reload, Reload::Signal);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = MINIMAL.replace("pool = [8081, 8082]", "pool = [8081, 8082]\nbnid = \"127.0.0.1\"");
        let e = err(&text);
        assert!(e.starts_with("invalid config /srv/cutover.toml: TOML parse error at line 8, column 1"), "{e}");
        assert!(e.contains("unknown field `bnid`"), "{e}");
    }

    #[test]
    fn injection_attempts_are_rejected_where_they_are_written() {
        for (needle, replacement, expect) in [
            (r#"name = "shop""#, r#"name = "x; include /etc/shadow""#, "invalid app name"),
            (r#"name = "shop""#, r#"name = "}""#, "invalid app name"),
            (r#"name = "shop""#, "name = \"a\\nb\"", "invalid app name"),
            ("pool = [8081, 8082]", r#"pool = ["8081; server 10.0.0.1:80", 8082]"#, "invalid type"),
            (
                "pool = [8081, 8082]",
                "pool = [8081, 8082]\nbind = \"127.0.0.1; server 10.0.0.1\"",
                "invalid bind address",
            ),
            ("pool = [8081, 8082]", "pool = [70000, 8082]", "invalid port 70000"),
        ] {
            let e = err(&MINIMAL.replace(needle, replacement));
            assert!(e.contains("TOML parse error at line"), "{e}");
            assert!(e.contains(expect), "{e}");
            assert_eq!(exit::code_of(&parse(&MINIMAL.replace(needle, replacement)).unwrap_err()), 2);
        }
    }

    #[test]
    fn durations_are_human() {
        let c = parse(&format!("{MINIMAL}\n[health]\ninterval = \"100ms\"\ndeadline = \"2m\"\n")).unwrap();
        assert_eq!(c.health.interval.0, Duration::from_millis(100));
        assert_eq!(c.health.deadline.0, Duration::from_secs(120));
        let e = err(&format!("{MINIMAL}\n[health]\ninterval = \"soon\"\n"));
        assert!(e.contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn pool_must_fit_two_generations() {
        let e = err(&format!("{MINIMAL}\n[deploy]\ninstances = 2\n"));
        assert!(e.contains("ports.pool has 2 port(s) but 2 instance(s) need 4"), "{e}");
    }

    #[test]
    fn release_names_are_inert() {
        assert!("v42".parse::<Release>().is_ok());
        assert!("2026.11.23-abc_1".parse::<Release>().is_ok());
        for bad in ["", "-x", "v1;rm", "v1 x", "a/b", "$(id)", "v1\n"] {
            assert!(bad.parse::<Release>().is_err(), "{bad:?}");
        }
    }
}

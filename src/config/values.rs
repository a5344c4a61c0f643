//! The value types of `cutover.toml`: each parses and validates one value, so that toml reports a bad one with
//! its file, line and column, and so that nothing reaching nginx syntax or a shell command can carry more than the
//! one inert token it should.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
        if backgrounds(&s) {
            return Err(serde::de::Error::custom(
                "app.start ends with `&`: the app would run in the background, untracked, while cutover sees the \
                 shell exit; run it in the foreground (`exec app --port {{port}}`, or the app's foreground or \
                 no-daemon mode) so that cutover and the runtime can watch and stop it",
            ));
        }
        Ok(StartCommand(s))
    }
}

/// Whether a shell command visibly ends by sending its last command to the background (`… &`, not `… &&`).
fn backgrounds(cmd: &str) -> bool {
    let t = cmd.trim_end().trim_end_matches(';').trim_end();
    t.ends_with('&') && !t.ends_with("&&")
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

/// The longest duration cutover accepts anywhere (a config key or `--lock-wait`): a day. Anything longer is a
/// typo, and unbounded values overflow the clock arithmetic mid-deploy.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A human duration: `250ms`, `30s`, `5m`; 0 to 24 hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dur(pub Duration);
from_str_de!(Dur);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

/// Parse a human duration, bounded by [`MAX_DURATION`]; also used for command-line flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (examples: 250ms, 30s, 5m)"))?;
    if d > MAX_DURATION {
        return Err(format!("invalid duration {s:?}: at most 24h"));
    }
    Ok(d)
}

/// A duration that must be above zero because zero can only fail (a probe timeout, a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positive(pub Duration);
from_str_de!(Positive);

impl std::str::FromStr for Positive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match parse_duration(s)? {
            d if d.is_zero() => Err(format!("invalid duration {s:?}: must be above 0 (a zero here can only fail)")),
            d => Ok(Positive(d)),
        }
    }
}

impl fmt::Display for Positive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An HTTP status code a health check can expect: 100 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(c) if (100..=599).contains(&c) => Ok(StatusCode(c)),
            _ => Err(serde::de::Error::custom(format!("invalid HTTP status {n}: use 100 to 599"))),
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
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
            // A hold of no time sees no request, and such a hold aborts: zero can only fail.
            s.parse::<Positive>().map(|p| Interval::Every(Dur(p.0))).map_err(|e| format!("{e}, or \"manual\""))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_and_zero_is_refused_where_it_can_only_fail() {
        assert_eq!("30s".parse::<Dur>().unwrap().0, Duration::from_secs(30));
        assert_eq!("0s".parse::<Dur>().unwrap().0, Duration::ZERO);
        let e = "18446744073709551615s".parse::<Dur>().unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        assert_eq!("25h".parse::<Dur>().unwrap_err(), "invalid duration \"25h\": at most 24h");
        assert!("0s".parse::<Positive>().unwrap_err().contains("must be above 0"));
        assert_eq!("2s".parse::<Positive>().unwrap().0, Duration::from_secs(2));
    }

    #[test]
    fn a_start_command_sent_to_the_background_is_seen() {
        assert!(backgrounds("python3 app.py --port {{port}} &"));
        assert!(backgrounds("app --port {{port}} & "));
        assert!(backgrounds("app --port {{port}} &;"));
        assert!(!backgrounds("exec app --port {{port}}"));
        assert!(!backgrounds("migrate && exec app --port {{port}}"));
        assert!(!backgrounds("app --port {{port}} >log 2>&1"));
    }
}

/// A path with `{{release}}` in it (`app.release_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePath(pub String);

impl<'de> Deserialize<'de> for ReleasePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.contains("{{release}}") {
            return Err(serde::de::Error::custom(
                "app.release_dir must contain {{release}}, e.g. \"/srv/shop/releases/{{release}}\"",
            ));
        }
        Ok(ReleasePath(s))
    }
}

/// A path key must name something: an empty string would resolve to the config's own directory, and every use of
/// it (the upstream file, a template, a state dir) would then fail far from the line that caused it.
pub fn path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    non_empty(d, "an empty path: name a file or directory")
}

/// [`path`] for an optional key (with `#[serde(default)]`).
pub fn opt_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    non_empty(d, "an empty path: name a file or directory, or leave the key out").map(Some)
}

fn non_empty<'de, D: serde::Deserializer<'de>>(d: D, msg: &str) -> Result<PathBuf, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if p.as_os_str().is_empty() {
        return Err(serde::de::Error::custom(msg));
    }
    Ok(p)
}

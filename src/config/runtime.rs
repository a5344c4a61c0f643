//! The value types of `[runtime]` and of the app's identity (`app.user`, `app.group`): which runtime runs the
//! instances, how big a spawn log file may grow, and the names of accounts. Each is checked as it is parsed, so
//! toml points at the line of a bad one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who runs the app's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// cutover starts each instance itself, detached; nothing restarts a crashed one (`cutover up` does, after
    /// a reboot).
    Spawn,
    /// Each instance is a systemd unit that restarts on failure and comes back at boot.
    Systemd,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Spawn => "spawn",
            RuntimeKind::Systemd => "systemd",
        })
    }
}

/// A size in bytes: an integer, or a string with a unit (`"512KiB"`, `"10MiB"`, `"1GiB"`; `K`, `M`, `G` and
/// `KB`, `MB`, `GB` mean the same powers of 1024). At least 4 KiB, so that a line or two fit in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: use bytes or e.g. \"10MiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" => 1 << 10,
            "M" | "MB" | "MiB" => 1 << 20,
            "G" | "GB" | "GiB" => 1 << 30,
            other => return Err(format!("invalid size unit {other:?} in {s:?}: use KiB, MiB or GiB")),
        };
        let v = n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))?;
        if v < 4096 {
            return Err(format!("size {s:?} is below the minimum of 4KiB"));
        }
        Ok(ByteSize(v))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

/// A user or group name as `useradd` accepts it (`[a-z_][a-z0-9_-]*`, optionally ending in `$`, up to 32), or a
/// numeric id. It is written into a systemd unit (`User=`), so it must be one inert token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account(pub String);

impl std::str::FromStr for Account {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let numeric = !s.is_empty() && s.len() <= 10 && s.chars().all(|c| c.is_ascii_digit());
        let body = s.strip_suffix('$').unwrap_or(s);
        let named = !body.is_empty()
            && s.len() <= 32
            && body.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && body.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if numeric || named {
            Ok(Account(s.to_string()))
        } else {
            Err(format!("invalid user or group name {s:?}: use a name like \"shop\" ([a-z_][a-z0-9_-]*) or a number"))
        }
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names the runtime sets for the app itself; `app.env` and `app.env_file` may not set them.
pub const RESERVED_ENV: &[&str] = &["PORT", "CUTOVER_APP", "CUTOVER_RELEASE", "CUTOVER_INSTANCE"];

/// Checks of `[runtime]` and the app's environment that span keys.
pub fn validate(c: &super::Config) -> Result<(), String> {
    for k in c.app.env.keys() {
        if RESERVED_ENV.contains(&k.0.as_str()) {
            return Err(format!("app.env sets {}, which cutover sets itself for each instance", k.0));
        }
    }
    if let Some(w) = &c.app.workdir {
        let text = w.display().to_string();
        if text.contains("{{port}}") {
            return Err(format!(
                "app.workdir {text} holds {{{{port}}}}: a working directory may vary by release ({{{{release}}}}), \
                 not by port (hooks run there too)"
            ));
        }
    }
    if c.runtime.systemctl.first().is_none_or(|w| w.trim().is_empty()) {
        return Err("runtime.systemctl is empty: use [\"systemctl\"] or [\"sudo\", \"systemctl\"]".into());
    }
    if c.runtime.journalctl.first().is_none_or(|w| w.trim().is_empty()) {
        return Err("runtime.journalctl is empty: use [\"journalctl\"] or [\"sudo\", \"journalctl\"]".into());
    }
    if c.runtime.log_keep > 100 {
        return Err(format!("runtime.log_keep {} is more than 100 files", c.runtime.log_keep));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!("10MiB".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("512K".parse::<ByteSize>().unwrap().0, 512 << 10);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert_eq!(ByteSize(10 << 20).to_string(), "10MiB");
        assert!("10 parsecs".parse::<ByteSize>().unwrap_err().contains("invalid size unit"));
        assert!("100".parse::<ByteSize>().unwrap_err().contains("minimum"));
    }

    #[test]
    fn accounts_are_one_token() {
        assert!("shop".parse::<Account>().is_ok());
        assert!("65534".parse::<Account>().is_ok());
        assert!("shop\nUser=root".parse::<Account>().is_err());
        assert!("Shop".parse::<Account>().is_err());
        assert!("".parse::<Account>().is_err());
    }
}

//! Reading `cutover.toml`: the file, relative paths resolved against its directory, the checks that span several
//! keys, and the paths and values derived from the config.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::Config;
use crate::exit;
use crate::strategy::Strategy;

/// `$XDG_STATE_HOME`, else `~/.local/state`.
fn xdg_state() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".local/state"),
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
        abs(&mut self.runtime.unit_dir);
        for p in [
            &mut self.app.workdir,
            &mut self.app.env_file,
            &mut self.nginx.prefix,
            &mut self.nginx.pid_file,
            &mut self.nginx.template,
            &mut self.deploy.state_dir,
            &mut self.canary.access_log,
            &mut self.runtime.log_dir,
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
        let strategy = self.deploy.strategy;
        let needed = strategy.ports_needed(self);
        if pool.len() < needed {
            return bad(format!(
                "ports.pool has {} port(s) but deploy.strategy = \"{strategy}\" with {} instance(s) needs {needed}: {}; \
                 add ports to [ports]",
                pool.len(),
                self.deploy.instances.0,
                strategy.why_ports(self)
            ));
        }
        if self.rolling.batch.0 > self.deploy.instances.0 {
            return bad(format!(
                "rolling.batch {} is larger than deploy.instances {}",
                self.rolling.batch.0, self.deploy.instances.0
            ));
        }
        if strategy == Strategy::Rolling {
            if let Some(why) = self.rolling_takes_everything_out() {
                return bad(why);
            }
        }
        if self.health.fail_after == 0 {
            return bad("health.fail_after must be at least 1".into());
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
        if self.nginx.run_as_root.as_ref().is_some_and(|v| v.is_empty() || v[0].trim().is_empty()) {
            return bad("nginx.run_as_root is empty: use e.g. [\"sudo\", \"-n\"], or leave it out".into());
        }
        if let Err(msg) = super::runtime::validate(self) {
            return bad(msg);
        }
        Ok(())
    }

    /// Why `--strategy rolling` cannot run with this config: without surge, a batch of every instance would take
    /// the whole app out at once, which is all-at-once (not zero-downtime) under another name.
    pub fn rolling_takes_everything_out(&self) -> Option<String> {
        let (batch, n) = (self.rolling.batch.0, self.deploy.instances.0);
        (!self.rolling.surge && batch >= n).then(|| {
            format!(
                "rolling.batch {batch} with rolling.surge = false takes all {n} instance(s) out at once: that is \
                 --strategy all-at-once, which is not zero-downtime; lower rolling.batch, set rolling.surge = true, \
                 or use deploy.strategy = \"all-at-once\" if downtime is acceptable"
            )
        })
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
            } else {
                xdg_state().join("cutover")
            }
        });
        base.join(self.app.name.as_str())
    }

    /// Where the spawn runtime writes the app's output: `runtime.log_dir`, else `/var/log/cutover/<app>` as root,
    /// else `$XDG_STATE_HOME/cutover-logs/<app>` (`~/.local/state/cutover-logs/<app>`).
    pub fn log_dir(&self) -> PathBuf {
        self.runtime.log_dir.clone().unwrap_or_else(|| {
            if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/log/cutover").join(self.app.name.as_str())
            } else {
                xdg_state().join("cutover-logs").join(self.app.name.as_str())
            }
        })
    }

    /// The directory a release's files must be in before it is deployed: `app.release_dir`, else `app.workdir`
    /// when it names the release (the app cannot start without it), else the part of an absolute path in
    /// `app.start` up to its `{{release}}` directory (`/srv/shop/releases/{{release}}/shop.jar` →
    /// `/srv/shop/releases/v42`). `None` when none names one.
    pub fn release_dir(&self, release: &str) -> Option<PathBuf> {
        if let Some(p) = &self.app.release_dir {
            let p = PathBuf::from(p.0.replace("{{release}}", release));
            return Some(if p.is_relative() { self.base_dir().join(p) } else { p });
        }
        if let Some(w) = self.app.workdir.as_ref().map(|w| w.display().to_string()) {
            if w.contains("{{release}}") {
                return Some(PathBuf::from(w.replace("{{release}}", release)));
            }
        }
        self.app.start.0.split_whitespace().find_map(|word| {
            let word = word.trim_matches(|c| matches!(c, '"' | '\'' | '(' | ')' | ';'));
            let at = word.find("/{{release}}/")?;
            word.starts_with('/').then(|| PathBuf::from(format!("{}/{release}", &word[..at])))
        })
    }

    /// The JSON access log canary analysis reads: `canary.access_log`, else `/var/log/nginx/<app>.cutover.log`.
    pub fn access_log(&self) -> PathBuf {
        self.canary
            .access_log
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/log/nginx/{}.cutover.log", self.app.name)))
    }

    /// The upstream template's text (`None`: the built-in one). A template that cannot be read is a config
    /// error (exit 2).
    pub fn template_text(&self) -> Result<Option<String>> {
        match &self.nginx.template {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| exit::usage(format!("could not read nginx.template {}: {e}", p.display())))
                .map(Some),
        }
    }

    /// `<state_dir>`: the directory shared by every app (it holds the host-wide `nginx.lock`).
    pub fn state_base(&self) -> PathBuf {
        self.state_dir().parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

//! The `systemd` runtime: each instance is a unit `cutover-<app>@<port>.service`, so systemd restarts it when it
//! dies, brings it back at boot, runs it as `app.user` and keeps its output in the journal.
//!
//! Two files per app and instance, written by cutover into `runtime.unit_dir`:
//! - the template `cutover-<app>@.service`: how cutover runs any instance (`Restart=on-failure` after 100 ms,
//!   `KillMode=mixed`, output to the journal, `WantedBy=multi-user.target`). It holds nothing from the config,
//!   so rewriting it never changes a running instance.
//! - a drop-in `cutover-<app>@<port>.service.d/cutover.conf` per instance: its release, command, working
//!   directory, account, environment, `EnvironmentFile=` and `TimeoutStopSec=`, as they were when it started.
//!   An instance keeps the config it was started with, as a spawn instance does, also when systemd restarts it
//!   or the host reboots; a config change reaches it with the next deploy.
//!
//! Enabling is what `systemctl enable` does, done by cutover itself: a symlink
//! `multi-user.target.wants/cutover-<app>@<port>.service` to the template ([`Runtime::settle`] keeps exactly the
//! instances state owns enabled). A stopped instance is disabled and its drop-in removed. Then `daemon-reload`.
//!
//! The unit is the instance's identity; its drop-in carries the instance's marker (`CUTOVER_INSTANCE`), so a unit
//! that runs a later instance on the same port is never mistaken for an earlier one. cutover never signals a
//! process of a unit: `systemctl stop` does (SIGTERM to the main process, SIGKILL to what is left after
//! `TimeoutStopSec`).
//!
//! Crash loops: systemd restarts a failed instance every 100 ms, at most 20 times in 60 s
//! (`StartLimitBurst=20`, `StartLimitIntervalSec=60s`); past that the unit stays failed until `cutover up`
//! (or a deploy) starts it again, so an app that cannot start does not spin the CPU and flood the journal.

mod show;
mod unit;

pub use show::{journal_line, Shown};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::appenv::{self, MARKER_VAR};
use super::{proc, Details, LogLine, LogQuery, Runtime, StartSpec, Status, StopHow, Stopped};
use crate::config::Config;
use crate::journal::{Instance, State};
use crate::util;

/// systemd's restart delay after a failure.
pub const RESTART_SEC: &str = "100ms";
const WANTS: &str = "multi-user.target.wants";
const DROPIN: &str = "cutover.conf";

pub struct Systemd {
    config: Config,
}

impl Systemd {
    pub fn new(config: &Config) -> Systemd {
        Systemd { config: config.clone() }
    }

    fn app(&self) -> &str {
        self.config.app.name.as_str()
    }

    pub fn template_name(&self) -> String {
        format!("cutover-{}@.service", self.app())
    }

    pub fn unit_name(&self, port: u16) -> String {
        format!("cutover-{}@{port}.service", self.app())
    }

    fn unit_dir(&self) -> &Path {
        &self.config.runtime.unit_dir
    }

    fn dropin_dir(&self, unit: &str) -> PathBuf {
        self.unit_dir().join(format!("{unit}.d"))
    }

    fn wants_link(&self, unit: &str) -> PathBuf {
        self.unit_dir().join(WANTS).join(unit)
    }

    fn unit_of(&self, inst: &Instance) -> String {
        inst.unit.clone().unwrap_or_else(|| self.unit_name(inst.port))
    }

    /// Run `runtime.systemctl ARGS`; its stdout, or an error with its stderr.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        run(&self.config.runtime.systemctl, args)
    }

    fn show(&self, unit: &str) -> Result<Shown> {
        let text = self.systemctl(&[
            "show",
            unit,
            "-p",
            "LoadState,ActiveState,SubState,MainPID,NRestarts,Result,ExecMainCode,ExecMainStatus,Environment",
        ])?;
        Ok(Shown::parse(&text))
    }

    /// The marker in the instance drop-in on disk, if there is one.
    fn marker_on_disk(&self, unit: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dropin_dir(unit).join(DROPIN)).ok()?;
        let entry = format!("\"{MARKER_VAR}=");
        let at = text.find(&entry)? + entry.len();
        Some(text[at..].split('"').next()?.to_string())
    }

    /// Whether `shown` is this instance: the loaded unit carries its marker (a record without a marker, from
    /// before markers, is taken at its word).
    fn ours(inst: &Instance, shown: &Shown) -> bool {
        shown.load == "loaded" && inst.marker.as_ref().is_none_or(|m| shown.has_marker(m))
    }

    /// Write the template when it differs from what is on disk.
    fn write_template(&self) -> Result<bool> {
        let path = self.unit_dir().join(self.template_name());
        let text = self.template_text();
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        std::fs::create_dir_all(self.unit_dir())
            .with_context(|| format!("could not create runtime.unit_dir {}", self.unit_dir().display()))?;
        util::write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(true)
    }

    /// Disable the unit and remove its drop-in.
    fn remove(&self, unit: &str) -> Result<()> {
        let link = self.wants_link(unit);
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("could not remove {}", link.display()))?;
        }
        let dir = self.dropin_dir(unit);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("could not remove {}", dir.display()))?;
        }
        Ok(())
    }

    /// The app's instance units that are enabled (their `WantedBy` symlinks).
    fn enabled(&self) -> Vec<String> {
        let prefix = format!("cutover-{}@", self.app());
        let Ok(entries) = std::fs::read_dir(self.unit_dir().join(WANTS)) else { return Vec::new() };
        let mut v: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".service") && n.len() > prefix.len() + 8)
            .collect();
        v.sort();
        v
    }

    /// `journalctl` arguments that select the app's output of `releases` (all of the app's without).
    fn journal_matches(&self, releases: &[String]) -> Vec<String> {
        let mut m = vec![format!("CUTOVER_APP={}", self.app())];
        for r in releases {
            m.push(format!("CUTOVER_RELEASE={r}"));
        }
        m
    }
}

impl Runtime for Systemd {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn start(&self, spec: &StartSpec) -> Result<Instance> {
        let launch = appenv::prepare(&self.config, spec)?;
        let unit = self.unit_name(spec.port);
        let before = self.show(&unit).unwrap_or_default();
        if before.active == "active" || before.active == "activating" || before.active == "deactivating" {
            bail!(
                "{unit} is already {} (main pid {}): another instance runs on port {}; stop it first",
                before.state(),
                before.main_pid.unwrap_or(0),
                spec.port
            );
        }
        self.write_template()?;
        let dir = self.dropin_dir(&unit);
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        util::write_atomic(&dir.join(DROPIN), self.dropin_text(spec, &launch)?.as_bytes(), 0o644)?;
        self.systemctl(&["daemon-reload"])?;
        let _ = self.systemctl(&["reset-failed", &unit]);
        if let Err(e) = self.systemctl(&["start", &unit]) {
            let _ = self.remove(&unit);
            let _ = self.systemctl(&["daemon-reload"]);
            return Err(e);
        }
        Ok(Instance {
            release: spec.release.clone(),
            port: spec.port,
            pid: None,
            start_ticks: None,
            marker: Some(spec.marker.clone()),
            unit: Some(unit),
            started_at: util::now_rfc3339(),
            log: None,
        })
    }

    fn status(&self, inst: &Instance) -> Status {
        let unit = self.unit_of(inst);
        let shown = match self.show(&unit) {
            Ok(s) => s,
            Err(e) => return Status::Unproven(format!("could not ask systemd about {unit}: {e:#}")),
        };
        if !Self::ours(inst, &shown) {
            return Status::Gone;
        }
        let exited = |what: &str| {
            let how = if shown.last_exit.is_empty() { shown.result.clone() } else { shown.last_exit.clone() };
            Status::Exited(format!("{how}; {unit} {what}"))
        };
        match (shown.active.as_str(), shown.sub.as_str()) {
            ("active", _) => Status::Running,
            ("activating", "auto-restart") => {
                exited(&format!("is restarting it (restart {})", shown.restarts.map(|n| n + 1).unwrap_or(1)))
            }
            ("activating", _) | ("reloading", _) => Status::Running,
            ("deactivating", _) => exited("is stopping"),
            ("failed", _) => exited(&format!("failed ({})", shown.result)),
            _ if !shown.last_exit.is_empty() => exited("is inactive"),
            _ => Status::Gone,
        }
    }

    fn stop(&self, inst: &Instance, _timeout: Duration) -> Stopped {
        let mut out = Stopped { how: StopHow::Gone, strays: Vec::new(), survivors: Vec::new() };
        let unit = self.unit_of(inst);
        let shown = match self.show(&unit) {
            Ok(s) => s,
            Err(e) => {
                out.how = StopHow::Unproven(format!("could not ask systemd about {unit}: {e:#}; not stopped"));
                return out;
            }
        };
        let on_disk_is_ours = inst.marker.is_some() && self.marker_on_disk(&unit) == inst.marker;
        if !Self::ours(inst, &shown) {
            // A later instance runs in the unit (or nothing does): leave it, but clear our own leftovers.
            if on_disk_is_ours && shown.active != "active" {
                let _ = self.remove(&unit);
                let _ = self.systemctl(&["daemon-reload"]);
            }
            return out;
        }
        let was_running = matches!(shown.active.as_str(), "active" | "activating" | "reloading");
        if let Err(e) = self.systemctl(&["stop", &unit]) {
            out.how = StopHow::Unproven(format!("systemctl stop {unit} failed: {e:#}"));
            return out;
        }
        let after = self.show(&unit).unwrap_or_default();
        if was_running {
            out.how = if after.result == "timeout" { StopHow::Killed } else { StopHow::Terminated };
        }
        if after.active == "active" {
            out.survivors.extend(after.main_pid);
        }
        if let Err(e) = self.remove(&unit) {
            out.how = StopHow::Unproven(format!("{unit} stopped, but {e:#}"));
        }
        let _ = self.systemctl(&["daemon-reload"]);
        let _ = self.systemctl(&["reset-failed", &unit]);
        out
    }

    fn find(&self, marker: &str) -> Vec<i32> {
        let port = marker.split_once('@').and_then(|(_, rest)| rest.split('#').next()?.parse::<u16>().ok());
        let Some(port) = port else { return Vec::new() };
        let unit = self.unit_name(port);
        match self.show(&unit) {
            Ok(s) if s.has_marker(marker) && s.active != "inactive" && s.active != "failed" => {
                s.main_pid.into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    fn log_excerpt(&self, inst: &Instance) -> String {
        let unit = self.unit_of(inst);
        let since = humantime::parse_rfc3339_weak(inst.started_at.trim_end_matches('Z'))
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("--since=@{}", d.as_secs()));
        let mut args = vec!["--no-pager", "-o", "cat", "-n", "200", "-u", unit.as_str()];
        if let Some(s) = &since {
            args.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
        let text = match run(&self.config.runtime.journalctl, &args) {
            Ok(t) => proc::error_excerpt(&t, None, 15),
            Err(e) => format!("(could not read the journal: {e:#})"),
        };
        format!("output of {} (journalctl -u {unit}):\n{}", inst.describe(), crate::output::indent(&text))
    }

    fn settle(&self, state: &State) -> Result<()> {
        let want: Vec<String> = state.owned().iter().filter_map(|(_, i)| i.unit.clone()).collect();
        let have = self.enabled();
        let mut changed = false;
        for unit in &have {
            if !want.contains(unit) {
                let link = self.wants_link(unit);
                std::fs::remove_file(&link).with_context(|| format!("could not disable {unit}"))?;
                changed = true;
            }
        }
        let template = self.unit_dir().join(self.template_name());
        for unit in &want {
            if have.contains(unit) || !self.dropin_dir(unit).join(DROPIN).exists() {
                continue;
            }
            let dir = self.unit_dir().join(WANTS);
            std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
            std::os::unix::fs::symlink(&template, self.wants_link(unit))
                .with_context(|| format!("could not enable {unit} (symlink in {})", dir.display()))?;
            changed = true;
        }
        if changed {
            self.systemctl(&["daemon-reload"])?;
        }
        Ok(())
    }

    fn details(&self, inst: &Instance) -> Details {
        let unit = self.unit_of(inst);
        let at_boot = Some(std::fs::symlink_metadata(self.wants_link(&unit)).is_ok());
        match self.show(&unit) {
            Ok(s) if Self::ours(inst, &s) => {
                Details { main_pid: s.main_pid, state: Some(s.state()), restarts: s.restarts, at_boot }
            }
            Ok(_) => Details {
                state: Some("not running (the unit runs another instance or none)".into()),
                at_boot,
                ..Details::default()
            },
            Err(e) => Details { state: Some(format!("unknown: {e:#}")), ..Details::default() },
        }
    }

    fn preview(&self, release: &str, port: u16) -> Result<String> {
        let spec = StartSpec { release: release.into(), port, marker: format!("{}@{port}#...", self.app()) };
        let l = appenv::prepare(&self.config, &spec)?;
        let unit = self.unit_name(port);
        Ok(format!(
            "{}:\n{}\n{}:\n{}",
            self.unit_dir().join(self.template_name()).display(),
            crate::output::indent(self.template_text().trim_end()),
            self.dropin_dir(&unit).join(DROPIN).display(),
            crate::output::indent(self.dropin_text(&spec, &l)?.trim_end())
        ))
    }

    fn logs(&self, query: &LogQuery, emit: &mut dyn FnMut(&LogLine) -> bool) -> Result<()> {
        let lines = query.lines.to_string();
        let mut args: Vec<String> = vec![
            "--no-pager".into(),
            "-o".into(),
            "json".into(),
            "-n".into(),
            lines,
            "--output-fields=MESSAGE,CUTOVER_RELEASE,CUTOVER_PORT".into(),
        ];
        if query.follow {
            args.push("-f".into());
        }
        args.extend(self.journal_matches(&query.releases));
        let prefix = &self.config.runtime.journalctl;
        let mut child = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not run {}", prefix.join(" ")))?;
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(l) = journal_line(&line) else { continue };
            if !emit(&l) {
                let _ = child.kill();
                break;
            }
        }
        let out = child.wait_with_output().context("journalctl did not finish")?;
        if !out.status.success() && !query.follow {
            bail!("{} exited {}: {}", prefix.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

/// Run an argv prefix with more arguments; stdout, or an error that says whether it could not run or failed.
fn run(prefix: &[String], args: &[&str]) -> Result<String> {
    let out = Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {}", prefix.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} {} exited {}: {}",
            prefix.join(" "),
            args.join(" "),
            out.status.code().map(|c| c.to_string()).unwrap_or_else(|| "on a signal".into()),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

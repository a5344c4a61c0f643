//! The releases of an app on this host: what history says was deployed (and when each was last made live), the
//! release directories on disk (`app.release_dir`, or derived from `app.start`), the instance logs
//! (`runtime.log_dir`), and what state says is live, previous, canary or still running. `cutover releases`
//! lists them; `cutover prune` removes old ones; `cutover releases --names` feeds shell completion of
//! `rollback --to`.
//!
//! The order is newest first: a release's time is the last time history made it live, else the last event that
//! named it, else its directory's modification time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::config::Config;
use crate::journal::{Event, State};

/// What state says a release is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Live,
    Canary,
    Rolling,
    Previous,
    /// Not live or previous, but an instance of it is recorded running (kept as backup).
    Running,
    None,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Canary => "canary",
            Role::Rolling => "rolling",
            Role::Previous => "previous",
            Role::Running => "running",
            Role::None => "-",
        }
    }

    /// Never pruned.
    pub fn protected(self) -> bool {
        self != Role::None
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub name: String,
    pub role: Role,
    /// When history last made it live (RFC 3339), if ever.
    pub last_live: Option<String>,
    /// The last event that named it: its kind and outcome (`deploy ok`, `deploy unhealthy`).
    pub last_event: Option<String>,
    /// Its directory, when the config names one, and whether it exists.
    pub dir: Option<PathBuf>,
    pub dir_exists: bool,
    /// Its instance log files (rotated ones included).
    pub logs: Vec<PathBuf>,
    /// Seconds since the epoch used for the order.
    #[serde(skip)]
    pub time: f64,
}

fn epoch(at: &str) -> f64 {
    humantime::parse_rfc3339_weak(at)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn mtime(p: &Path) -> f64 {
    std::fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The release directories on disk: every entry of the directory that holds `app.release_dir`'s `{{release}}`
/// component whose name fits it, with the release name it stands for.
pub fn release_dirs(cfg: &Config) -> Vec<(String, PathBuf)> {
    const MARK: &str = "@@release@@";
    let Some(template) = cfg.release_dir(MARK) else { return Vec::new() };
    let comps: Vec<String> = template.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let Some(at) = comps.iter().position(|c| c.contains(MARK)) else { return Vec::new() };
    let parent: PathBuf = comps[..at].iter().collect();
    let (before, after) = comps[at].split_once(MARK).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&parent) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_prefix(before).and_then(|r| r.strip_suffix(after)) else { continue };
        if name.parse::<crate::config::Release>().is_err() {
            continue;
        }
        if let Some(dir) = cfg.release_dir(name) {
            if std::fs::symlink_metadata(&dir).is_ok() {
                out.push((name.to_string(), dir));
            }
        }
    }
    out
}

/// The instance logs in `runtime.log_dir`, by release: `<release>-<port>.log` and its rotations (`.log.1`).
pub fn logs_by_release(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = log_release(&name) {
            out.entry(release).or_default().push(e.path());
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// `v1.2-8081.log` or `v1.2-8081.log.3` → `v1.2`. Pure.
pub fn log_release(file: &str) -> Option<String> {
    let stem = match file.rsplit_once(".log") {
        Some((stem, "")) => stem,
        Some((stem, rot))
            if rot.strip_prefix('.').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            stem
        }
        _ => return None,
    };
    let (release, port) = stem.rsplit_once('-')?;
    (!release.is_empty() && port.parse::<u16>().is_ok()).then(|| release.to_string())
}

/// What state says each release is.
pub fn role_of(state: &State, name: &str) -> Role {
    if state.live.as_ref().is_some_and(|d| d.release == name) {
        Role::Live
    } else if state.canary.as_ref().is_some_and(|c| c.deployment.release == name) {
        Role::Canary
    } else if state.rolling.as_ref().is_some_and(|r| r.deployment.release == name) {
        Role::Rolling
    } else if state.previous.as_ref().is_some_and(|d| d.release == name) {
        Role::Previous
    } else if state.owned().iter().any(|(_, i)| i.release == name) {
        Role::Running
    } else {
        Role::None
    }
}

/// Every release the host knows of, newest first. Pure over its inputs.
pub fn list(
    state: &State,
    events: &[Event],
    dirs: &[(String, PathBuf)],
    logs: &BTreeMap<String, Vec<PathBuf>>,
    dir_of: &dyn Fn(&str) -> Option<PathBuf>,
) -> Vec<Release> {
    let mut by: BTreeMap<String, Release> = BTreeMap::new();
    let entry = |by: &mut BTreeMap<String, Release>, name: &str| {
        by.entry(name.to_string()).or_insert_with(|| Release {
            name: name.to_string(),
            role: Role::None,
            last_live: None,
            last_event: None,
            dir: None,
            dir_exists: false,
            logs: Vec::new(),
            time: 0.0,
        });
    };
    for e in events {
        if e.release.parse::<crate::config::Release>().is_err() {
            continue;
        }
        entry(&mut by, &e.release);
        let r = by.get_mut(&e.release).unwrap();
        r.last_event = Some(format!("{} {}", e.kind, e.outcome.as_str()));
        if e.made_live() {
            r.last_live = Some(e.at.clone());
            r.time = epoch(&e.at);
        } else if r.last_live.is_none() {
            r.time = r.time.max(epoch(&e.at));
        }
    }
    for (name, dir) in dirs {
        entry(&mut by, name);
        let r = by.get_mut(name).unwrap();
        if r.time == 0.0 {
            r.time = mtime(dir);
        }
    }
    for name in state.owned().iter().map(|(_, i)| i.release.clone()).chain(state.live.iter().map(|d| d.release.clone()))
    {
        entry(&mut by, &name);
    }
    for (name, files) in logs {
        entry(&mut by, name);
        by.get_mut(name).unwrap().logs = files.clone();
    }
    let mut out: Vec<Release> = by
        .into_values()
        .map(|mut r| {
            r.role = role_of(state, &r.name);
            r.dir = dir_of(&r.name);
            r.dir_exists = r.dir.as_ref().is_some_and(|d| std::fs::symlink_metadata(d).is_ok());
            if r.time == 0.0 {
                r.time = r.logs.iter().map(|l| mtime(l)).fold(0.0, f64::max);
            }
            r
        })
        .collect();
    // Live first, then newest first; ties by name for a stable listing.
    out.sort_by(|a, b| {
        (b.role == Role::Live)
            .cmp(&(a.role == Role::Live))
            .then(b.time.partial_cmp(&a.time).unwrap_or(std::cmp::Ordering::Equal))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// The releases of `cfg`'s app as the host shows them now.
pub fn gather(cfg: &Config, state: &State, events: &[Event]) -> Vec<Release> {
    let dirs = release_dirs(cfg);
    let logs = logs_by_release(&cfg.log_dir());
    list(state, events, &dirs, &logs, &|r| cfg.release_dir(r))
}

/// What `prune --keep N` removes: releases outside the newest `keep` that are not protected (live, previous,
/// canary, rolling, or running) and have a directory or logs to remove. Pure.
pub fn to_prune(releases: &[Release], keep: usize) -> Vec<&Release> {
    releases
        .iter()
        .enumerate()
        .filter(|(i, r)| *i >= keep && !r.role.protected() && (r.dir_exists || !r.logs.is_empty()))
        .map(|(_, r)| r)
        .collect()
}

/// The names `rollback --to` accepts: releases history made live that are not live now, newest first.
pub fn rollback_targets(releases: &[Release]) -> Vec<&str> {
    releases.iter().filter(|r| r.last_live.is_some() && r.role != Role::Live).map(|r| r.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Deployment, Instance, OpKind, Outcome};

    fn ev(kind: OpKind, release: &str, outcome: Outcome, at: &str) -> Event {
        let mut e = Event::of(kind, release, outcome, &Ok::<(), anyhow::Error>(()));
        e.at = at.into();
        e
    }

    #[test]
    fn log_files_name_their_release() {
        assert_eq!(log_release("v1.2-8081.log").as_deref(), Some("v1.2"));
        assert_eq!(log_release("feature-x-8081.log.3").as_deref(), Some("feature-x"));
        assert_eq!(log_release("v1-8081.log.").as_deref(), None);
        assert_eq!(log_release("v1.log"), None);
        assert_eq!(log_release("notes.txt"), None);
    }

    #[test]
    fn releases_are_listed_newest_first_and_old_ones_pruned_except_live_and_previous() {
        let mut state = State::empty("shop");
        let mut live = Instance::planned("v4", 8082);
        live.pid = Some(42);
        state.live = Some(Deployment { release: "v4".into(), instances: vec![live], since: String::new() });
        state.previous = Some(Deployment::planned("v1", [8081]));
        let events = vec![
            ev(OpKind::Deploy, "v1", Outcome::Ok, "2026-01-01T00:00:00Z"),
            ev(OpKind::Deploy, "v2", Outcome::Ok, "2026-01-02T00:00:00Z"),
            ev(OpKind::Deploy, "v3", Outcome::Unhealthy, "2026-01-03T00:00:00Z"),
            ev(OpKind::Deploy, "v4", Outcome::Ok, "2026-01-04T00:00:00Z"),
            ev(OpKind::Rollback, "v1", Outcome::Ok, "2026-01-05T00:00:00Z"),
            ev(OpKind::Deploy, "v4", Outcome::Ok, "2026-01-06T00:00:00Z"),
        ];
        let mut logs = BTreeMap::new();
        for r in ["v1", "v2", "v3", "v4"] {
            logs.insert(r.to_string(), vec![PathBuf::from(format!("/l/{r}-8081.log"))]);
        }
        let list = list(&state, &events, &[], &logs, &|_| None);
        let names: Vec<(&str, Role)> = list.iter().map(|r| (r.name.as_str(), r.role)).collect();
        assert_eq!(names, [("v4", Role::Live), ("v1", Role::Previous), ("v3", Role::None), ("v2", Role::None)]);
        assert_eq!(list[2].last_live, None, "v3 never went live");
        assert_eq!(list[2].last_event.as_deref(), Some("deploy unhealthy"));
        assert_eq!(rollback_targets(&list), ["v1", "v2"]);
        let gone: Vec<&str> = to_prune(&list, 3).iter().map(|r| r.name.as_str()).collect();
        assert_eq!(gone, ["v2"]);
        let gone: Vec<&str> = to_prune(&list, 0).iter().map(|r| r.name.as_str()).collect();
        assert_eq!(gone, ["v3", "v2"], "live and previous stay whatever N is");
    }
}

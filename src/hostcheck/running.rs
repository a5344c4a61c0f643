//! Does the running nginx run the config on disk? `nginx -s reload` exits 0 even when the master then keeps its
//! old config (a `listen` on a port in use, for one), and `nginx -t` only judges the files: so a host can pass
//! every other check while nginx serves something older than what is on disk.
//!
//! Two signs, both read-only:
//! - every reload that takes starts new worker processes, so a config file changed after the newest worker
//!   started has not been loaded (allowing [`SLACK`] for clock granularity: a file written just before the
//!   reload that loaded it);
//! - with `nginx.confirm_url`, nginx answers the generation of the upstream file it runs, which must be the
//!   generation written in the file on disk.
//!
//! Process start times come from /proc in clock ticks since boot; file times are wall-clock. Both are put on
//! the boot clock with /proc/uptime.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Finding;
use crate::config::Config;
use crate::host::{proc, Host};
use crate::nginx::dump;
use crate::upstream::parse_header;

/// A file changed less than this before the newest workers started may have been loaded by them.
pub const SLACK: Duration = Duration::from_secs(1);

/// The config files that changed after `loaded` (seconds since boot, when the newest workers started), with how
/// long after. Pure.
pub fn changed_after(loaded: f64, files: &[(PathBuf, f64)], slack: Duration) -> Vec<(PathBuf, Duration)> {
    files
        .iter()
        .filter(|(_, m)| *m > loaded + slack.as_secs_f64())
        .map(|(p, m)| (p.clone(), Duration::from_secs_f64(m - loaded)))
        .collect()
}

/// Seconds since boot now (/proc/uptime), and the wall clock at the same moment.
fn clocks() -> Option<(f64, f64)> {
    let up: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some((up, wall))
}

/// When a process started, in seconds since boot.
fn started(pid: i32) -> Option<f64> {
    let ticks = proc::stat(pid)?.start_ticks;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0)?;
    Some(ticks as f64 / hz as f64)
}

/// A file's modification time in seconds since boot.
fn modified(path: &Path, (up, wall): (f64, f64)) -> Option<f64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(m - (wall - up))
}

/// The "nginx config" item; `None` when nginx is not running (the "nginx running" item says so).
pub fn freshness(host: &dyn Host, dump_text: &str, cfg: &Config) -> Option<Finding> {
    let nginx = host.nginx();
    let master = nginx.master().ok()?;
    let clocks = clocks()?;
    let newest = nginx
        .workers(&master)
        .into_iter()
        .filter_map(started)
        .fold(None, |a: Option<f64>, s| Some(a.map_or(s, |a| a.max(s))))?;
    let files: Vec<(PathBuf, f64)> =
        dump::included_files(dump_text).into_iter().filter_map(|p| modified(&p, clocks).map(|m| (p, m))).collect();
    let age = humantime::format_duration(Duration::from_secs((clocks.0 - newest).max(0.0) as u64));
    let fix = "run nginx -t, then reload nginx (systemctl reload nginx) and check again; if the workers do not \
               change, nginx's error log says why it kept the old config";
    let stale = changed_after(newest, &files, SLACK);
    if !stale.is_empty() {
        let list: Vec<String> = stale
            .iter()
            .map(|(p, after)| format!("{} changed {} later", p.display(), humantime::format_duration(round(*after))))
            .collect();
        return Some(Finding::fail(
            "nginx config",
            format!(
                "nginx master {} runs workers started {age} ago, but {}: the running nginx has not loaded it (a \
                 reload that failed, for one on a listen port in use, keeps the old config)",
                master.pid,
                list.join(", ")
            ),
            fix,
        ));
    }
    let mut detail =
        format!("nginx master {}'s workers (started {age} ago) run the files on disk: none changed since", master.pid);
    if let Some(url) = &cfg.nginx.confirm_url {
        let on_disk = nginx.read_upstream().ok().flatten().as_deref().and_then(parse_header).map(|h| h.generation);
        let answered = get(&url.0);
        match (on_disk, &answered) {
            (Some(g), Ok(a)) if a.trim() == g.to_string() => {
                detail.push_str(&format!("; {} answers generation {g}, as the upstream file says", url.0))
            }
            (Some(g), Ok(a)) => {
                return Some(Finding::fail(
                    "nginx config",
                    format!(
                        "{} answers generation {:?}, but the upstream file on disk is generation {g}: nginx serves an \
                         older upstream",
                        url.0,
                        a.trim().chars().take(40).collect::<String>()
                    ),
                    fix,
                ))
            }
            (_, Err(e)) => {
                return Some(Finding::fail(
                    "nginx config",
                    format!("nginx.confirm_url {} does not answer: {e}", url.0),
                    "make nginx.confirm_url reach the site's `location = /.cutover` (see the site file `cutover init` \
                     writes), or remove it",
                ))
            }
            (None, Ok(_)) => {}
        }
    }
    Some(Finding::ok("nginx config", detail))
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

fn get(url: &str) -> Result<String, String> {
    match crate::host::real::agent(Duration::from_secs(2)).get(url).call() {
        Ok(mut r) if r.status().is_success() => r.body_mut().read_to_string().map_err(|e| e.to_string()),
        Ok(r) => Err(format!("status {}", r.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_changed_after_the_newest_workers_count() {
        let files = vec![
            (PathBuf::from("/etc/nginx/nginx.conf"), 50.0),
            (PathBuf::from("/etc/nginx/sites-enabled/shop"), 100.5),
            (PathBuf::from("/etc/nginx/cutover/shop.upstream.conf"), 160.0),
        ];
        assert_eq!(
            changed_after(100.0, &files, SLACK),
            vec![(PathBuf::from("/etc/nginx/cutover/shop.upstream.conf"), Duration::from_secs(60))],
            "a file written half a second before the reload that loaded it is not stale"
        );
        assert!(changed_after(200.0, &files, SLACK).is_empty());
    }

    #[test]
    fn this_process_started_before_now_on_the_boot_clock() {
        let (up, _) = clocks().unwrap();
        let me = started(std::process::id() as i32).unwrap();
        assert!(me <= up + 0.02 && me > 0.0, "{me} vs {up}");
    }
}

//! Canary analysis: read the JSON access log nginx writes (the `cutover_<app>` format of the upstream
//! template) from where a step began, tally each side's requests, 5xx answers and upstream times, and judge
//! the canary against `canary.max_error_rate` and `canary.max_latency_factor`.
//!
//! Requests are attributed per upstream attempt: when nginx tried the canary, failed, and retried on the
//! stable release (`proxy_next_upstream`), the canary is charged a failure even though the client saw a 200.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Canary;

/// A position in the access log. Survives rotation: when the file at the path is a new one (other inode, or
/// shorter than the position), reading starts at its beginning.
#[derive(Debug, Clone)]
pub struct Cursor {
    path: PathBuf,
    inode: u64,
    offset: u64,
    /// A line nginx had not finished writing at the last read.
    partial: String,
}

impl Cursor {
    /// A cursor at the end of the log: only requests from now on count.
    pub fn at_end(path: &Path) -> Result<Cursor> {
        let meta = std::fs::metadata(path).with_context(|| format!("could not read access log {}", path.display()))?;
        Ok(Cursor { path: path.to_path_buf(), inode: meta.ino(), offset: meta.len(), partial: String::new() })
    }

    /// Complete lines written since the last read.
    pub fn read_lines(&mut self) -> Result<Vec<String>> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("could not read access log {}", self.path.display())),
        };
        if meta.ino() != self.inode || meta.len() < self.offset {
            self.inode = meta.ino();
            self.offset = 0;
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return Ok(Vec::new());
        }
        let mut f =
            File::open(&self.path).with_context(|| format!("could not open access log {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).with_context(|| format!("could not read access log {}", self.path.display()))?;
        self.offset += buf.len() as u64;
        let text = std::mem::take(&mut self.partial) + &String::from_utf8_lossy(&buf);
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        Ok(lines.into_iter().filter(|l| !l.trim().is_empty()).collect())
    }
}

/// One line of the `cutover_<app>` log format.
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(default)]
    upstream: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    upstream_status: String,
    #[serde(default)]
    upstream_time: String,
}

/// One side's tally.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Side {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Upstream response times in milliseconds.
    #[serde(skip)]
    pub times_ms: Vec<f64>,
}

impl Side {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }

    /// The 95th percentile of upstream time (nearest rank), `None` without samples.
    pub fn p95_ms(&self) -> Option<f64> {
        if self.times_ms.is_empty() {
            return None;
        }
        let mut v = self.times_ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((v.len() as f64) * 0.95).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

/// Both sides' tallies for one step.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tally {
    pub canary: Side,
    pub stable: Side,
    /// Lines that were not in the expected format (another log format, a truncated line).
    pub unreadable: u64,
}

impl Tally {
    /// Add log lines; `canary` and `stable` are the `ADDR:PORT` strings of each side's servers.
    pub fn add(&mut self, lines: &[String], canary: &HashSet<String>, stable: &HashSet<String>) {
        for l in lines {
            let Ok(line) = serde_json::from_str::<Line>(l) else {
                self.unreadable += 1;
                continue;
            };
            // Attempts are listed `a, b` (retries) and groups `a : b` (internal redirects).
            let addrs = split_list(&line.upstream);
            let statuses = split_list(&line.upstream_status);
            let times = split_list(&line.upstream_time);
            for (n, addr) in addrs.iter().enumerate() {
                let side = if canary.contains(*addr) {
                    &mut self.canary
                } else if stable.contains(*addr) {
                    &mut self.stable
                } else {
                    continue;
                };
                // No per-attempt status (nginx answered itself): the response's status stands for it.
                let status = statuses.get(n).copied().filter(|s| *s != "-").unwrap_or(line.status.as_str());
                side.requests += 1;
                if status.starts_with('5') {
                    side.errors_5xx += 1;
                }
                if let Some(secs) = times.get(n).and_then(|t| t.parse::<f64>().ok()) {
                    side.times_ms.push(secs * 1000.0);
                }
            }
        }
    }
}

/// `a, b : c` → `[a, b, c]`. Addresses keep their own `:` (`127.0.0.1:8081`, `[::1]:8081`).
fn split_list(s: &str) -> Vec<&str> {
    s.split(", ").flat_map(|p| p.split(" : ")).map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// Why the canary must be aborted, or `None` while it is within bounds (or has too few requests to judge).
/// Below `min_requests` the 5xx rate is judged too once its errors alone decide it: whatever the requests still
/// missing to `min_requests` answered, the rate would stay above `max_error_rate`.
pub fn judge(t: &Tally, cfg: &Canary) -> Option<String> {
    let c = &t.canary;
    let decided = c.errors_5xx as f64 > cfg.max_error_rate.0 * cfg.min_requests as f64;
    if c.requests < cfg.min_requests && !decided {
        return None;
    }
    if c.error_rate() > cfg.max_error_rate.0 {
        return Some(format!(
            "canary 5xx rate {:.1}% ({} of {} requests) exceeds canary.max_error_rate {:.1}% (stable: {:.1}%, {} of {})",
            c.error_rate() * 100.0,
            c.errors_5xx,
            c.requests,
            cfg.max_error_rate.0 * 100.0,
            t.stable.error_rate() * 100.0,
            t.stable.errors_5xx,
            t.stable.requests
        ));
    }
    if let Some(factor) = cfg.max_latency_factor {
        if t.stable.requests >= cfg.min_requests {
            if let (Some(cp), Some(sp)) = (c.p95_ms(), t.stable.p95_ms()) {
                // A floor of 1 ms keeps a stable release answering in 0 ms from making any canary "slower".
                if cp > factor * sp.max(1.0) {
                    return Some(format!(
                        "canary p95 upstream time {cp:.0} ms exceeds {factor} x the stable release's {sp:.0} ms \
                         (canary.max_latency_factor)"
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn cfg(min: u64, rate: f64, factor: Option<f64>) -> Canary {
        Canary { min_requests: min, max_error_rate: Rate(rate), max_latency_factor: factor, ..Canary::default() }
    }

    fn line(addr: &str, status: &str, ustatus: &str, time: &str) -> String {
        format!(
            r#"{{"msec":"1.0","upstream":"{addr}","status":"{status}","upstream_status":"{ustatus}","upstream_time":"{time}","request_time":"0.001"}}"#
        )
    }

    fn sides() -> (HashSet<String>, HashSet<String>) {
        (HashSet::from(["127.0.0.1:8082".to_string()]), HashSet::from(["127.0.0.1:8081".to_string()]))
    }

    #[test]
    fn attempts_are_charged_to_the_side_that_served_them() {
        let (c, s) = sides();
        let mut t = Tally::default();
        t.add(
            &[
                line("127.0.0.1:8082", "200", "200", "0.010"),
                line("127.0.0.1:8082", "500", "500", "0.020"),
                line("127.0.0.1:8081", "200", "200", "0.005"),
                // Tried the canary, it refused, retried on stable: the canary is charged the failure.
                line("127.0.0.1:8082, 127.0.0.1:8081", "200", "502, 200", "0.000, 0.004"),
                "not json".into(),
                line("10.9.9.9:80", "200", "200", "0.001"),
            ],
            &c,
            &s,
        );
        assert_eq!((t.canary.requests, t.canary.errors_5xx), (3, 2));
        assert_eq!((t.stable.requests, t.stable.errors_5xx), (2, 0));
        assert_eq!(t.unreadable, 1);
        assert_eq!(t.canary.p95_ms(), Some(20.0));
    }

    #[test]
    fn too_few_requests_are_not_judged_and_bounds_are_exclusive() {
        let (c, s) = sides();
        let mut t = Tally::default();
        let lines: Vec<String> = (0..100)
            .map(|n| {
                if n < 2 {
                    line("127.0.0.1:8082", "502", "502", "0.001")
                } else {
                    line("127.0.0.1:8082", "200", "200", "0.001")
                }
            })
            .collect();
        t.add(&lines[..10], &c, &s);
        assert_eq!(judge(&t, &cfg(50, 0.05, None)), None, "10 requests, 2 errors: 50 could still be within 5%");
        let why = judge(&t, &cfg(50, 0.01, None)).expect("2 errors: 50 requests could not be within 1%");
        assert_eq!(
            why,
            "canary 5xx rate 20.0% (2 of 10 requests) exceeds canary.max_error_rate 1.0% (stable: 0.0%, 0 of 0)"
        );
        t.add(&lines[10..], &c, &s);
        assert_eq!(judge(&t, &cfg(50, 0.02, None)), None, "2% is not above 2%");
        let why = judge(&t, &cfg(50, 0.01, None)).unwrap();
        assert_eq!(
            why,
            "canary 5xx rate 2.0% (2 of 100 requests) exceeds canary.max_error_rate 1.0% (stable: 0.0%, 0 of 0)"
        );
    }

    #[test]
    fn latency_is_compared_with_the_stable_release() {
        let (c, s) = sides();
        let mut t = Tally::default();
        let mut lines = Vec::new();
        for _ in 0..60 {
            lines.push(line("127.0.0.1:8081", "200", "200", "0.010"));
            lines.push(line("127.0.0.1:8082", "200", "200", "0.050"));
        }
        t.add(&lines, &c, &s);
        assert_eq!(judge(&t, &cfg(50, 0.01, Some(10.0))), None);
        let why = judge(&t, &cfg(50, 0.01, Some(2.0))).unwrap();
        assert!(why.starts_with("canary p95 upstream time 50 ms exceeds 2 x the stable release's 10 ms"), "{why}");
    }

    #[test]
    fn cursor_reads_only_new_complete_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "old\n").unwrap();
        let mut cur = Cursor::at_end(&p).unwrap();
        assert!(cur.read_lines().unwrap().is_empty());
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"one\ntw").unwrap();
        assert_eq!(cur.read_lines().unwrap(), vec!["one"]);
        std::io::Write::write_all(&mut f, b"o\n").unwrap();
        assert_eq!(cur.read_lines().unwrap(), vec!["two"]);
        std::fs::rename(&p, dir.path().join("a.log.1")).unwrap();
        std::fs::write(&p, "three\n").unwrap();
        assert_eq!(cur.read_lines().unwrap(), vec!["three"]);
    }
}

//! The spawn runtime's log files: the writer that sits between an app and its file, and the readers behind
//! `cutover logs`.
//!
//! An app started by the spawn runtime writes its stdout and stderr into a pipe; a `cutover __log-writer`
//! process in its own session reads the pipe and appends to `<log_dir>/<release>-<port>.log`. Why a separate
//! process rather than the file itself as the app's stdout:
//! - **Size**: the writer rotates the file when it reaches `runtime.log_max_size` (default 10 MiB) and keeps
//!   `runtime.log_keep` rotated files (default 3: `.1` newest to `.3`), so an instance's output takes at most
//!   40 MiB by default. An app holding an O_APPEND file could not be rotated without its cooperation.
//! - **A full disk**: a write that fails (ENOSPC, EIO) is the writer's problem, not the app's. It drops the
//!   line, counts it, and writes how many it dropped once writing works again. The app never sees an error on
//!   its stdout and never blocks on the disk, so a full log filesystem does not take requests down with it.
//! - **Lifetime**: the writer ignores SIGHUP, SIGINT and SIGTERM, is in no process group cutover signals, and
//!   exits when the pipe's last writer (the app and any child it left) has gone. Only a `kill -9` of the writer
//!   itself would leave the app writing into a closed pipe.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::util;

/// A line longer than this is written in pieces.
const MAX_LINE: usize = 64 * 1024;

/// Where a rotated file goes: `<path>.<n>`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The writer's file: appends, rotates by size, counts what it could not write.
pub struct Sink {
    path: PathBuf,
    max: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    dropped: u64,
    last_error: Option<String>,
}

impl Sink {
    pub fn new(path: &Path, max: u64, keep: u32) -> Sink {
        Sink { path: path.to_path_buf(), max, keep, file: None, size: 0, dropped: 0, last_error: None }
    }

    /// Lines dropped since writing last worked.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn open(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = util::open_append(&self.path).map_err(std::io::Error::other)?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.size = 0;
        Ok(())
    }

    fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.open()?;
        if self.size > 0 && self.size + bytes.len() as u64 > self.max {
            self.rotate()?;
            self.open()?;
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Write one line (with its newline). A failure drops it; the first line that goes through after drops is
    /// preceded by a note saying how many were lost and why.
    pub fn line(&mut self, bytes: &[u8]) {
        if self.dropped > 0 {
            let note = format!(
                "--- cutover: dropped {} line(s) of output at {}: {}\n",
                self.dropped,
                util::now_rfc3339(),
                self.last_error.as_deref().unwrap_or("write failed")
            );
            if self.try_write(note.as_bytes()).is_err() {
                self.file = None;
                self.dropped += 1;
                return;
            }
            self.dropped = 0;
        }
        if let Err(e) = self.try_write(bytes) {
            // Reopen next time: the file may have been removed or the filesystem remounted.
            self.file = None;
            self.dropped += 1;
            self.last_error = Some(e.to_string());
        }
    }
}

/// Copy `input` to the sink line by line until end of file.
pub fn pump(mut input: impl Read, sink: &mut Sink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(i + 1);
            sink.line(&pending);
            pending = rest;
        }
        if pending.len() >= MAX_LINE {
            pending.push(b'\n');
            sink.line(&pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        sink.line(&pending);
    }
}

/// `cutover __log-writer`: copy stdin to `path` until the app's end of the pipe is closed.
pub fn run_writer(path: &Path, max: u64, keep: u32) -> Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process handles these signals.
        #[allow(unsafe_code)]
        unsafe {
            let _ = signal(s, SigHandler::SigIgn);
        }
    }
    let mut sink = Sink::new(path, max, keep);
    pump(std::io::stdin().lock(), &mut sink);
    Ok(())
}

/// A log file of the spawn runtime: `<release>-<port>.log`, or a rotated `.N` of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogName {
    pub release: String,
    pub port: u16,
    pub rotation: Option<u32>,
}

/// Parse a file name of the log directory.
pub fn parse_name(name: &str) -> Option<LogName> {
    let (base, rotation) = match name.rsplit_once(".log.") {
        Some((b, n)) => (b, Some(n.parse().ok()?)),
        None => (name.strip_suffix(".log")?, None),
    };
    let (release, port) = base.rsplit_once('-')?;
    if release.is_empty() {
        return None;
    }
    Some(LogName { release: release.to_string(), port: port.parse().ok()?, rotation })
}

/// The current log files in `dir` (not rotated ones), optionally only of `releases`, by name.
pub fn current_files(dir: &Path, releases: &[String]) -> Vec<(LogName, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<(LogName, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = parse_name(&e.file_name().to_string_lossy())?;
            (name.rotation.is_none() && (releases.is_empty() || releases.contains(&name.release)))
                .then(|| (name, e.path()))
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// Remove the log files (current and rotated) of releases not in `keep`. Returns what it removed.
pub fn prune(dir: &Path, keep: &[String]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(removed) };
    for e in entries.flatten() {
        let Some(name) = parse_name(&e.file_name().to_string_lossy()) else { continue };
        if !keep.contains(&name.release) {
            std::fs::remove_file(e.path()).with_context(|| format!("could not remove {}", e.path().display()))?;
            removed.push(e.path());
        }
    }
    Ok(removed)
}

/// The last `n` lines of a log, reaching into the newest rotated file when the current one has fewer.
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for p in [path.to_path_buf(), rotated(path, 1)] {
        if lines.len() >= n {
            break;
        }
        let text = super::proc::tail(&p, n - lines.len());
        if text.is_empty() {
            continue;
        }
        let mut older: Vec<String> = text.lines().map(str::to_string).collect();
        older.append(&mut lines);
        lines = older;
    }
    let from = lines.len().saturating_sub(n);
    lines.split_off(from)
}

/// Follow files: where each was read to, by inode.
#[derive(Default)]
pub struct Follower {
    seen: Vec<(PathBuf, u64, u64)>,
}

impl Follower {
    /// Start at the current end of each file.
    pub fn at_end(files: &[(LogName, PathBuf)]) -> Follower {
        let mut f = Follower::default();
        for (_, p) in files {
            if let Ok(m) = std::fs::metadata(p) {
                f.seen.push((p.clone(), m.ino(), m.len()));
            }
        }
        f
    }

    /// New complete lines in `files` since the last call. A file that is new or was rotated is read from its
    /// start.
    pub fn poll(&mut self, files: &[(LogName, PathBuf)]) -> Vec<(LogName, String)> {
        let mut out = Vec::new();
        for (name, p) in files {
            let Ok(m) = std::fs::metadata(p) else { continue };
            let slot = self.seen.iter().position(|(x, _, _)| x == p);
            let from = match slot {
                Some(i) if self.seen[i].1 == m.ino() && self.seen[i].2 <= m.len() => self.seen[i].2,
                _ => 0,
            };
            if m.len() <= from && slot.is_some_and(|i| self.seen[i].1 == m.ino()) {
                continue;
            }
            let Ok(mut f) = File::open(p) else { continue };
            if f.seek(SeekFrom::Start(from)).is_err() {
                continue;
            }
            let mut reader = BufReader::new(f);
            let mut pos = from;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(k) if line.ends_with('\n') => {
                        pos += k as u64;
                        out.push((name.clone(), line.trim_end_matches('\n').to_string()));
                    }
                    Ok(_) => break,
                }
            }
            match slot {
                Some(i) => self.seen[i] = (p.clone(), m.ino(), pos),
                None => self.seen.push((p.clone(), m.ino(), pos)),
            }
        }
        out
    }
}

/// How often `logs -f` looks at the files.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-8081.log");
        let mut sink = Sink::new(&p, 100, 2);
        let input: Vec<u8> = (0..30).flat_map(|i| format!("line {i:02} ........\n").into_bytes()).collect();
        pump(&input[..], &mut sink);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&p) <= 100 && size(&rotated(&p, 1)) <= 100 && size(&rotated(&p, 2)) <= 100);
        assert!(!rotated(&p, 3).exists(), "only log_keep rotated files are kept");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("line 29 ........\n"), "{text}");
        assert_eq!(last_lines(&p, 7).last().unwrap(), "line 29 ........");
        assert_eq!(last_lines(&p, 7).len(), 7, "reaches into .1 when the current file has fewer lines");
    }

    #[test]
    fn a_failed_write_drops_the_line_and_says_so_later() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("v1-8081.log");
        let mut sink = Sink::new(&p, 1 << 20, 1);
        sink.line(b"lost\n");
        assert_eq!(sink.dropped(), 1);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        sink.line(b"kept\n");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("--- cutover: dropped 1 line(s) of output at "), "{text}");
        assert!(text.ends_with("kept\n"));
    }

    #[test]
    fn names_parse_and_pruning_keeps_the_named_releases() {
        assert_eq!(
            parse_name("v1.2-rc-8081.log.2"),
            Some(LogName { release: "v1.2-rc".into(), port: 8081, rotation: Some(2) })
        );
        assert_eq!(parse_name("notes.txt"), None);
        let dir = tempfile::tempdir().unwrap();
        for n in ["v1-8081.log", "v1-8081.log.1", "v2-8082.log", "v3-8081.log", "README"] {
            std::fs::write(dir.path().join(n), "x\n").unwrap();
        }
        let removed = prune(dir.path(), &["v2".into(), "v3".into()]).unwrap();
        assert_eq!(removed.len(), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["README", "v2-8082.log", "v3-8081.log"]);
    }

    #[test]
    fn following_reads_new_lines_and_starts_rotated_files_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1-8081.log");
        std::fs::write(&p, "old\n").unwrap();
        let files = current_files(dir.path(), &[]);
        let mut f = Follower::at_end(&files);
        assert!(f.poll(&files).is_empty());
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"new\npart").unwrap();
        let got: Vec<String> = f.poll(&files).into_iter().map(|(_, l)| l).collect();
        assert_eq!(got, ["new"], "a partial line waits for its end");
        std::fs::rename(&p, rotated(&p, 1)).unwrap();
        std::fs::write(&p, "fresh\n").unwrap();
        let got: Vec<String> = f.poll(&files).into_iter().map(|(_, l)| l).collect();
        assert_eq!(got, ["fresh"]);
    }
}

//! What /proc says about processes and sockets: the one parser of `/proc/PID/stat`, environments, listeners,
//! and log excerpts. Reads only.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fields of `/proc/PID/stat` cutover uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Start time in clock ticks since boot: with the pid, a process's identity.
    pub start_ticks: u64,
}

impl Stat {
    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parse one `/proc/PID/stat` line. The command name is in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether a pid is a live, non-zombie process.
pub fn pid_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.zombie())
}

/// Every pid in /proc.
pub fn pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// Whether the process's environment holds exactly `entry` (`KEY=VALUE`).
pub fn environ_has(pid: i32, entry: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// The command line's arguments.
pub fn argv(pid: i32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect())
}

/// The command line, arguments joined by spaces (`nginx: master process /usr/sbin/nginx`).
pub fn cmdline(pid: i32) -> Option<String> {
    argv(pid).map(|a| a.join(" "))
}

pub fn exe(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Whether `addr` could be bound right now: the exact address the app will bind, not just "nothing answers".
pub fn port_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Whether something accepts connections at `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Listening TCP sockets: their inode (`socket:[N]`) and port. Pure over the text of /proc/net/tcp or tcp6.
pub fn listening_sockets(table: &str) -> Vec<(String, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (f.len() >= 10 && f[3] == "0A").then(|| (format!("socket:[{}]", f[9]), port))
        })
        .collect()
}

/// The inodes of sockets listening on `port`, from the text of /proc/net/tcp or tcp6.
pub fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    listening_sockets(table).into_iter().filter(|(_, p)| *p == port).map(|(inode, _)| inode).collect()
}

/// Every listening TCP socket of the host (v4 and v6): inode and port.
pub fn tcp_listeners() -> Vec<(String, u16)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(t).ok())
        .flat_map(|t| listening_sockets(&t))
        .collect()
}

/// The sockets each process holds open, by inode.
pub fn socket_owners() -> BTreeMap<String, Vec<i32>> {
    let mut owners: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if t.starts_with("socket:[") {
                    owners.entry(t.into_owned()).or_default().push(pid);
                }
            }
        }
    }
    owners
}

/// The process listening on a TCP port, found through /proc/net/tcp{,6} and the sockets in /proc/*/fd.
pub fn who_listens(port: u16) -> Option<(i32, String)> {
    let inodes: Vec<String> = tcp_listeners().into_iter().filter(|(_, p)| *p == port).map(|(inode, _)| inode).collect();
    if inodes.is_empty() {
        return None;
    }
    let owners = socket_owners();
    let pid = inodes.iter().find_map(|i| owners.get(i)?.first().copied())?;
    Some((pid, comm(pid).unwrap_or_default()))
}

/// The last 64 KiB of a log file, lossily decoded.
fn tail_text(path: &Path) -> String {
    let Ok(mut f) = fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of a log file (reads at most the last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let text = tail_text(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The excerpt of an app's output that explains a failure: the first lines that look like an error (a
/// traceback's start, `Error`, `Exception`, `panicked`, `FATAL`) with a few lines after, then the last lines.
/// `since` starts the search after the last line containing it (the start of this instance's run).
pub fn error_excerpt(text: &str, since: Option<&str>, last: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = since.and_then(|s| lines.iter().rposition(|l| l.contains(s))).unwrap_or(0);
    let lines = &lines[from..];
    let looks_bad = |l: &str| {
        let t = l.trim_start();
        t.starts_with("Traceback")
            || t.starts_with("Caused by")
            || t.contains("Exception")
            || t.contains("Error")
            || t.contains("error:")
            || t.contains("panicked")
            || t.contains("FATAL")
    };
    let tail_from = lines.len().saturating_sub(last);
    let mut out: Vec<String> = Vec::new();
    if let Some(first) = lines.iter().position(|l| looks_bad(l)) {
        if first < tail_from {
            let end = (first + 6).min(tail_from);
            out.push("first error-looking lines:".into());
            out.extend(lines[first..end].iter().map(|l| l.to_string()));
            out.push("last lines:".into());
        }
    }
    out.extend(lines[tail_from..].iter().map(|l| l.to_string()));
    out.join("\n")
}

/// [`error_excerpt`] of a log file.
pub fn log_excerpt(path: &Path, since: Option<&str>, last: usize) -> String {
    error_excerpt(&tail_text(path), since, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4121 (java (main) x) S 1 4121 4121 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp, s.session, s.start_ticks), ('S', 1, 4121, 4121, 98765));
        assert!(parse_stat("garbage").is_none());
        let me = stat(std::process::id() as i32).unwrap();
        assert!(!me.zombie());
    }

    #[test]
    fn listeners_are_read_from_the_tcp_table() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n\
                     1: 0100007F:1F92 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(listening_sockets(table), vec![("socket:[4242]".to_string(), 8081)]);
    }

    #[test]
    fn listeners_are_found_in_the_tcp_table() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n\
                     1: 0100007F:1F92 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(listening_inodes(table, 8081), vec!["socket:[4242]"]);
        assert!(listening_inodes(table, 8082).is_empty(), "an established connection is not a listener");
    }

    #[test]
    fn the_excerpt_shows_the_first_error_and_the_last_lines() {
        let log = "--- cutover: starting v1\nold Error from an earlier run\n--- cutover: starting v2\nbooting\n\
                   Traceback (most recent call last):\n  File \"app.py\", line 3\nImportError: no module x\n\
                   l1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\nl9";
        let ex = error_excerpt(log, Some("--- cutover: starting"), 3);
        assert_eq!(
            ex,
            "first error-looking lines:\nTraceback (most recent call last):\n  File \"app.py\", line 3\n\
             ImportError: no module x\nl1\nl2\nl3\nlast lines:\nl7\nl8\nl9"
        );
        assert_eq!(error_excerpt("a\nb", None, 5), "a\nb", "no error: just the last lines");
    }
}

//! App processes: start them detached from cutover, tell whether one still runs, stop them gracefully.
//!
//! An instance is started in a new session (so it is its own process-group leader, has no controlling
//! terminal, and survives cutover's exit, an SSH hang-up and a CI runner killing cutover's process group),
//! with stdin from /dev/null and stdout/stderr appended to its log file. It is stopped by signalling its whole
//! process group, so a `sh -c` wrapper and the app behind it go together.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::config::Config;
use crate::state::Instance;
use crate::util;

/// Everything needed to start one instance.
pub struct StartSpec<'a> {
    pub config: &'a Config,
    pub release: &'a str,
    pub port: u16,
    pub log: &'a Path,
}

/// The shell command for an instance: `{{port}}` and `{{release}}` substituted (both are validated to be inert).
pub fn start_command(template: &str, release: &str, port: u16) -> String {
    template.replace("{{port}}", &port.to_string()).replace("{{release}}", release)
}

/// Start an instance; returns the child (so this run can reap it) and its record.
pub fn start(spec: &StartSpec) -> Result<(Child, Instance)> {
    let app = &spec.config.app;
    let command = start_command(&app.start.0, spec.release, spec.port);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)
        .with_context(|| format!("could not open log file {}", spec.log.display()))?;
    {
        use std::io::Write;
        let mut l = &log;
        let _ = writeln!(
            l,
            "--- cutover: starting {} on port {} at {}: {command}",
            spec.release,
            spec.port,
            util::now_rfc3339()
        );
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&command)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("could not duplicate log file handle")?)
        .stderr(log)
        .env("PORT", spec.port.to_string())
        .env("CUTOVER_RELEASE", spec.release)
        .env("CUTOVER_APP", app.name.as_str());
    for (k, v) in &app.env {
        cmd.env(&k.0, v);
    }
    if let Some(dir) = &app.workdir {
        cmd.current_dir(dir);
    }
    new_session(&mut cmd);
    let child = cmd.spawn().with_context(|| format!("could not run /bin/sh to start {command:?}"))?;
    let pid = child.id() as i32;
    let instance = Instance {
        release: spec.release.to_string(),
        port: spec.port,
        pid: Some(pid),
        start_ticks: start_ticks(pid),
        started_at: util::now_rfc3339(),
        log: spec.log.to_path_buf(),
    };
    Ok((child, instance))
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it is the documented way to
    // detach a child into its own session between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

/// Fields of /proc/PID/stat after the command name: (state, start time in ticks).
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ticks = fields.get(19)?.parse().ok()?;
    Some((state, ticks))
}

/// The parent pid of a process, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

pub fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// Whether the process recorded in `inst` still runs: same pid, same start time, not a zombie.
pub fn alive(inst: &Instance) -> bool {
    match (inst.pid, inst.start_ticks) {
        (Some(pid), Some(ticks)) => matches!(proc_stat(pid), Some((s, t)) if s != 'Z' && t == ticks),
        (Some(pid), None) => matches!(proc_stat(pid), Some((s, _)) if s != 'Z'),
        _ => false,
    }
}

/// Whether a pid is a live, non-zombie process (for lock holders and nginx workers).
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z')
}

/// Reap `pid` if it is our child and has exited; harmless otherwise.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Whether any process of the group led by `pid` is left, zombies aside: an exited app whose parent (init,
/// or a container's pid 1) has not reaped it yet has stopped serving, and waiting for the reap can take seconds.
fn group_alive(pid: i32) -> bool {
    reap(pid);
    if let Err(Errno::ESRCH) = killpg(Pid::from_raw(pid), None) {
        return false;
    }
    let Ok(entries) = fs::read_dir("/proc") else { return pid_alive(pid) };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).any(|p| {
        let Ok(text) = fs::read_to_string(format!("/proc/{p}/stat")) else { return false };
        let Some(close) = text.rfind(')') else { return false };
        let mut f = text[close + 2..].split_whitespace();
        let state = f.next().and_then(|s| s.chars().next());
        let pgrp = f.nth(1).and_then(|s| s.parse::<i32>().ok());
        pgrp == Some(pid) && state != Some('Z')
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Was not running.
    Gone,
    /// Exited after SIGTERM.
    Terminated,
    /// Needed SIGKILL after the stop timeout.
    Killed,
}

/// Stop an instance: SIGTERM to its process group, SIGKILL after `timeout`.
pub fn stop(inst: &Instance, timeout: Duration) -> Stopped {
    let Some(pid) = inst.pid else { return Stopped::Gone };
    if !alive(inst) {
        reap(pid);
        return Stopped::Gone;
    }
    let group = Pid::from_raw(pid);
    if killpg(group, Signal::SIGTERM).is_err() {
        let _ = kill(group, Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !group_alive(pid) {
            return Stopped::Terminated;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(5);
    while group_alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    Stopped::Killed
}

/// If our child has exited, its status as text (`exit status 1`, `killed by SIGSEGV`).
pub fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(describe_status(status)),
        _ => None,
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!(
            "killed by {}",
            Signal::try_from(s).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {s}"))
        ),
        _ => "exited".into(),
    }
}

/// Whether `addr` could be bound right now: the exact address the app will bind, not just "nothing answers".
pub fn port_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Whether something accepts connections at `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The last `n` lines of a log file (reads at most the last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_is_literal() {
        assert_eq!(
            start_command("java -jar /srv/{{release}}/a.jar --port={{port}} ${HOME}", "v42", 8081),
            "java -jar /srv/v42/a.jar --port=8081 ${HOME}"
        );
    }

    #[test]
    fn own_pid_is_alive_and_reuse_is_caught() {
        let pid = std::process::id() as i32;
        let ticks = start_ticks(pid);
        let me = Instance {
            release: "t".into(),
            port: 1,
            pid: Some(pid),
            start_ticks: ticks,
            started_at: String::new(),
            log: "/dev/null".into(),
        };
        assert!(alive(&me));
        let reused = Instance { start_ticks: ticks.map(|t| t + 1), ..me };
        assert!(!alive(&reused));
    }
}

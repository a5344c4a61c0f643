//! The `spawn` runtime: cutover starts each instance itself, detached, and stops it by process group.
//!
//! An instance is started in a new session (so it is its own process-group leader, has no controlling terminal,
//! and survives cutover's exit, an SSH hang-up and a CI runner killing cutover's process group), with stdin from
//! /dev/null, the clean environment and account of [`appenv`], and its output piped to a log writer that
//! rotates it by size and never blocks the app ([`logfile`]). Its environment carries `CUTOVER_INSTANCE=<marker>`, which
//! is how cutover proves a process is one of its own: a pid alone can be reused, and a process can leave its
//! group (an app that daemonizes), but it keeps its environment.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::appenv::{self, MARKER_VAR};
use super::{logfile, proc};
use super::{Details, LogLine, LogQuery, Runtime, StartSpec, Status, StopHow, Stopped};
use crate::config::Config;
use crate::journal::{Instance, State};
use crate::util;

pub struct Spawn {
    config: Config,
    /// Children this run started, so that their exit status can be read (and zombies reaped).
    children: Mutex<HashMap<i32, Child>>,
}

impl Spawn {
    pub fn new(config: &Config) -> Spawn {
        Spawn { config: config.clone(), children: Mutex::new(HashMap::new()) }
    }

    fn log_path(&self, release: &str, port: u16) -> PathBuf {
        self.config.log_dir().join(format!("{release}-{port}.log"))
    }

    /// The exit status of a child of this run that has exited.
    fn exited(&self, pid: i32) -> Option<String> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let child = children.get_mut(&pid)?;
        match child.try_wait() {
            Ok(Some(status)) => Some(describe_status(status)),
            _ => None,
        }
    }

    /// Whether the recorded process is provably the one cutover started: same start time, or the marker in its
    /// environment.
    fn proven(&self, inst: &Instance, pid: i32, st: &proc::Stat) -> bool {
        inst.start_ticks == Some(st.start_ticks)
            || inst.marker.as_ref().is_some_and(|m| proc::environ_has(pid, &format!("{MARKER_VAR}={m}")))
    }

    /// Live members of the process group `pgid` that are provably ours (the marker), or, without a marker, any
    /// member while the leader is the recorded process.
    fn members(&self, inst: &Instance, pgid: i32, leader_ours: bool) -> Vec<i32> {
        let entry = inst.marker.as_ref().map(|m| format!("{MARKER_VAR}={m}"));
        proc::pids()
            .into_iter()
            .filter(|&p| proc::stat(p).is_some_and(|s| s.pgrp == pgid && !s.zombie()))
            .filter(|&p| match &entry {
                Some(e) => proc::environ_has(p, e),
                None => leader_ours,
            })
            .collect()
    }
}

impl Runtime for Spawn {
    fn kind(&self) -> &'static str {
        "spawn"
    }

    fn start(&self, spec: &StartSpec) -> Result<Instance> {
        let launch = appenv::prepare(&self.config, spec)?;
        let command = launch.command.clone();
        let dir = self.config.log_dir();
        util::private_dir(&dir)?;
        let log_path = self.log_path(&spec.release, spec.port);
        {
            use std::io::Write;
            let mut l = util::open_append(&log_path)?;
            let _ = writeln!(
                l,
                "--- cutover: starting {} on port {} at {}: {command}",
                spec.release,
                spec.port,
                util::now_rfc3339()
            );
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("could not create a pipe")?;
        self.start_writer(&log_path, read)?;
        let out = std::fs::File::from(write);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("could not duplicate the log pipe")?)
            .stderr(out)
            .env_clear()
            .envs(launch.environment())
            .current_dir(&launch.workdir);
        as_account(&mut cmd, &launch.account);
        new_session(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not run /bin/sh to start {command:?} in {}", launch.workdir.display()))?;
        let pid = child.id() as i32;
        let start_ticks = proc::stat(pid).map(|s| s.start_ticks);
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, child);
        Ok(Instance {
            release: spec.release.clone(),
            port: spec.port,
            pid: Some(pid),
            start_ticks,
            marker: Some(spec.marker.clone()),
            unit: None,
            started_at: util::now_rfc3339(),
            log: Some(log_path),
        })
    }

    fn status(&self, inst: &Instance) -> Status {
        let Some(pid) = inst.pid else { return Status::Gone };
        if let Some(how) = self.exited(pid) {
            return Status::Exited(how);
        }
        match proc::stat(pid) {
            Some(st) if !st.zombie() => {
                if self.proven(inst, pid, &st) {
                    Status::Running
                } else if inst.start_ticks.is_none() && inst.marker.is_none() {
                    Status::Unproven(format!(
                        "pid {pid} runs ({}), but its start time was never recorded, so nothing proves it is the \
                         instance cutover started",
                        proc::comm(pid).unwrap_or_default()
                    ))
                } else {
                    Status::Gone
                }
            }
            _ => Status::Gone,
        }
    }

    fn stop(&self, inst: &Instance, timeout: Duration) -> Stopped {
        let mut out = Stopped { how: StopHow::Gone, strays: Vec::new(), survivors: Vec::new() };
        let leader = inst.pid.and_then(|pid| proc::stat(pid).map(|st| (pid, st)));
        let leader_ours = match &leader {
            Some((pid, st)) if !st.zombie() => self.proven(inst, *pid, st),
            _ => false,
        };
        if let (Some((pid, st)), false) = (&leader, leader_ours) {
            if !st.zombie() && inst.start_ticks.is_none() && inst.marker.is_none() {
                out.how = StopHow::Unproven(format!(
                    "pid {pid} ({}) was recorded without its start time, so nothing proves it is the instance \
                     cutover started; not signalled: stop it yourself if it is",
                    proc::comm(*pid).unwrap_or_default()
                ));
                return out;
            }
        }
        // A proven process that leads no group of its own was not started by cutover (which starts every
        // instance in a new session) but adopted (`cutover init --adopt`): its group is whatever started it.
        // Signal the process alone.
        if let (Some((pid, st)), true) = (&leader, leader_ours) {
            if st.pgrp != *pid {
                out.how = terminate(*pid, &[*pid], timeout, || {
                    vec![*pid].into_iter().filter(|p| proc::pid_alive(*p)).collect()
                });
                return out;
            }
        }
        // The group to signal: the recorded leader's, when the leader is ours or has exited (its group may live
        // on: a shell that sent the app to the background). Members are checked by marker, never by number alone.
        if let Some(pgid) = inst.pid {
            reap(pgid);
            let members = self.members(inst, pgid, leader_ours);
            if !leader_ours {
                // The recorded process is gone but its group lives on: the start command sent the app to the
                // background.
                out.strays.extend(members.iter().copied());
            }
            if !members.is_empty() || leader_ours {
                out.how = terminate(pgid, &members, timeout, || {
                    reap(pgid);
                    self.members(inst, pgid, leader_ours)
                });
            }
            reap(pgid);
        }
        // Processes of the instance that left its group (a daemonizing app): found by marker, stopped too.
        if let Some(m) = &inst.marker {
            let strays = self.find(m);
            if !strays.is_empty() {
                out.strays = strays.clone();
                for &p in &strays {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                }
                let until = Instant::now() + timeout;
                while Instant::now() < until && self.find(m).iter().any(|p| strays.contains(p)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                for p in self.find(m) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
                out.survivors = self.find(m);
                if out.how == StopHow::Gone {
                    out.how = StopHow::Terminated;
                }
            }
        }
        out
    }

    fn find(&self, marker: &str) -> Vec<i32> {
        let entry = format!("{MARKER_VAR}={marker}");
        let me = std::process::id() as i32;
        proc::pids()
            .into_iter()
            .filter(|&p| p != me && proc::stat(p).is_some_and(|s| !s.zombie()) && proc::environ_has(p, &entry))
            .collect()
    }

    fn log_excerpt(&self, inst: &Instance) -> String {
        let path = inst.log.clone().unwrap_or_else(|| self.log_path(&inst.release, inst.port));
        // The writer may still be copying the app's last words out of the pipe.
        std::thread::sleep(Duration::from_millis(50));
        let text = proc::log_excerpt(&path, Some("--- cutover: starting"), 15);
        format!("output of {} ({}):\n{}", inst.describe(), path.display(), crate::output::indent(&text))
    }

    fn settle(&self, state: &State) -> Result<()> {
        let keep = releases_kept(state);
        logfile::prune(&self.config.log_dir(), &keep)?;
        Ok(())
    }

    fn details(&self, inst: &Instance) -> Details {
        let running = self.status(inst).running();
        Details {
            main_pid: inst.pid.filter(|_| running),
            state: Some(if running { "running".into() } else { "not running".into() }),
            restarts: None,
            at_boot: None,
        }
    }

    fn preview(&self, release: &str, port: u16) -> Result<String> {
        let spec = StartSpec { release: release.into(), port, marker: format!("{}@{port}#...", self.config.app.name) };
        let l = appenv::prepare(&self.config, &spec)?;
        let names: Vec<String> = l.environment().into_iter().map(|(k, _)| k).collect();
        Ok(format!(
            "/bin/sh -c {:?}\n  in {} as uid {} gid {}, own session, output to {} (rotated at {}, {} kept)\n  \
             environment: {}",
            l.command,
            l.workdir.display(),
            l.account.uid,
            l.account.gid,
            self.log_path(release, port).display(),
            self.config.runtime.log_max_size,
            self.config.runtime.log_keep,
            names.join(" ")
        ))
    }

    fn logs(&self, query: &LogQuery, emit: &mut dyn FnMut(&LogLine) -> bool) -> Result<()> {
        let dir = self.config.log_dir();
        let files = logfile::current_files(&dir, &query.releases);
        for (name, path) in &files {
            for text in logfile::last_lines(path, query.lines) {
                if !emit(&LogLine { release: name.release.clone(), port: Some(name.port), text }) {
                    return Ok(());
                }
            }
        }
        if !query.follow {
            return Ok(());
        }
        let mut follower = logfile::Follower::at_end(&files);
        loop {
            std::thread::sleep(logfile::FOLLOW_EVERY);
            let files = logfile::current_files(&dir, &query.releases);
            for (name, text) in follower.poll(&files) {
                if !emit(&LogLine { release: name.release, port: Some(name.port), text }) {
                    return Ok(());
                }
            }
        }
    }
}

/// The releases whose logs stay: live, canary, rolling, previous, and the one an operation is deploying.
pub fn releases_kept(state: &State) -> Vec<String> {
    let mut keep: Vec<String> = Vec::new();
    let deps = state
        .live
        .iter()
        .chain(state.previous.iter())
        .chain(state.canary.iter().map(|c| &c.deployment))
        .chain(state.rolling.iter().map(|r| &r.deployment));
    for d in deps {
        keep.push(d.release.clone());
    }
    if let Some(op) = &state.in_progress {
        keep.push(op.release.clone());
        keep.extend(op.started.iter().map(|i| i.release.clone()));
    }
    keep.extend(state.backup.iter().map(|i| i.release.clone()));
    keep.sort();
    keep.dedup();
    keep
}

impl Spawn {
    /// Start the instance's log writer (`cutover __log-writer`) in its own session, reading `read`.
    fn start_writer(&self, log: &std::path::Path, read: std::os::fd::OwnedFd) -> Result<()> {
        let exe = std::env::current_exe().context("could not find the cutover binary to run its log writer")?;
        let rt = &self.config.runtime;
        let mut cmd = Command::new(&exe);
        cmd.arg("__log-writer")
            .arg("--file")
            .arg(log)
            .arg("--max-size")
            .arg(rt.log_max_size.0.to_string())
            .arg("--keep")
            .arg(rt.log_keep.to_string())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .current_dir("/");
        new_session(&mut cmd);
        cmd.spawn().with_context(|| format!("could not start the log writer {} __log-writer", exe.display()))?;
        Ok(())
    }
}

/// SIGTERM to the group, wait for `members` to go, SIGKILL after `timeout`.
fn terminate(pgid: i32, members: &[i32], timeout: Duration, left: impl Fn() -> Vec<i32>) -> StopHow {
    let group = Pid::from_raw(pgid);
    if killpg(group, Signal::SIGTERM).is_err() {
        for &m in members {
            let _ = kill(Pid::from_raw(m), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if left().is_empty() {
            return StopHow::Terminated;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(group, Signal::SIGKILL);
    for m in left() {
        let _ = kill(Pid::from_raw(m), Signal::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !left().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    StopHow::Killed
}

/// Reap `pid` if it is our child and has exited; harmless otherwise.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Run as `app.user` / `app.group`: supplementary groups (what initgroups(3) sets, looked up before the fork,
/// where a lookup is safe), then the group, then the user, so that nothing can be regained afterwards.
#[allow(unsafe_code)]
fn as_account(cmd: &mut Command, acc: &appenv::Account) {
    if !acc.switches() {
        return;
    }
    let (uid, gid, groups) = (acc.uid, acc.gid, acc.groups.clone());
    // SAFETY: setgroups(2), setgid(2) and setuid(2) are plain system calls on data computed before the fork; the
    // child has one thread, so glibc's cross-thread id synchronisation has nothing to do.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
            nix::unistd::setuid(uid).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
pub(crate) fn new_session(cmd: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it is the documented way to
    // detach a child into its own session between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_is_literal() {
        assert_eq!(
            appenv::start_command("java -jar /srv/{{release}}/a.jar --port={{port}} ${HOME}", "v42", 8081),
            "java -jar /srv/v42/a.jar --port=8081 ${HOME}"
        );
    }
}

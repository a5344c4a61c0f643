//! One deploy per app at a time: an exclusive `flock` on `<state_dir>/<app>/lock`; and one upstream change per
//! nginx at a time: `<state_dir>/nginx.lock`, held from writing a candidate upstream file to confirming the
//! reload, so that one app's `nginx -t` never sees another app's half-done candidate.
//!
//! The lock file also names its holder (pid, command, since when) so that a second run can say who is in the
//! way. The kernel drops the `flock` when its holder dies, however it dies; a holder record still in the file
//! then means the last run did not finish, and the run that takes the lock over says so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::exit::{Code, Failure};
use crate::host::proc;
use crate::util;

/// Which lock: it changes only what the messages say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One app's operations.
    App,
    /// Upstream changes on the nginx every app shares.
    Nginx,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} (`{}`) since {}", self.pid, self.command, self.since)
    }
}

pub struct Lock {
    file: Flock<File>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Clear the holder record before the flock goes, so that the next run sees a clean release.
        let _ = self.file.set_len(0);
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("could not open lock file {}", path.display()))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// Take the lock, waiting up to `wait` for a holder to finish. A holder that is still there afterwards is a
/// [`Failure`] with exit code 5 naming it. Returns the lock and, when the previous holder died without
/// releasing, who that was.
pub fn acquire(path: &Path, scope: Scope, wait: Option<Duration>) -> Result<(Lock, Option<Holder>)> {
    let deadline = Instant::now() + wait.unwrap_or(Duration::ZERO);
    let mut file = open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                let stale = read_holder(&mut locked).filter(|h| h.pid != std::process::id());
                let me = Holder {
                    pid: std::process::id(),
                    command: std::env::args().collect::<Vec<_>>().join(" "),
                    since: util::now_rfc3339(),
                };
                locked.set_len(0).context("could not truncate lock file")?;
                locked.seek(SeekFrom::Start(0)).context("could not write lock file")?;
                locked.write_all(serde_json::to_string(&me)?.as_bytes()).context("could not write lock file")?;
                locked.sync_all().context("could not fsync lock file")?;
                return Ok((Lock { file: locked }, stale));
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                file = f;
                if Instant::now() >= deadline {
                    let who = read_holder(&mut file)
                        .map(|h| format!("held by {h}"))
                        .unwrap_or_else(|| "held by another cutover run".into());
                    let what = match scope {
                        Scope::App => "the lock for this app",
                        Scope::Nginx => "the host-wide nginx lock (another app is changing its upstream)",
                    };
                    return Err(Failure::error(
                        Code::Locked,
                        format!("another cutover run holds {what} ({who}); wait for it, or pass --lock-wait 5m to queue behind it"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => return Err(e).context("could not lock the state directory"),
        }
    }
}

/// Who holds the lock right now, without taking it (for `status`).
pub fn holder(path: &Path) -> Option<Holder> {
    let file = OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((mut f, _)) => read_holder(&mut f).filter(|h| proc::pid_alive(h.pid as i32)),
    }
}

/// A shared lock on `path`, for readers that must not see a writer's work half done (`nginx -T` while another
/// app's candidate upstream is on disk). Waits up to `wait` for an exclusive holder.
pub fn shared(path: &Path, wait: Duration) -> Result<Flock<File>> {
    let deadline = Instant::now() + wait;
    let mut file = open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e).with_context(|| format!("could not lock {}", path.display())),
        }
    }
}

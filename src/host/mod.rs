//! The seam between cutover's decisions and the outside world: the runtime that runs app instances, nginx,
//! HTTP probes, ports and the clock. [`real::RealHost`] is the machine; [`fake::FakeHost`] is a simulated one
//! that lets tests kill a run at every side effect and check what the next run does.

pub mod fake;
pub mod proc;
pub mod real;
pub mod spawn;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config;
use crate::journal::Instance;

/// What the runtime knows about an instance right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// It exited (how, when the runtime can tell: `exit status 1`, `killed by SIGKILL`).
    Exited(String),
    /// Not running (stopped, never started, or gone without a trace).
    Gone,
    /// A process with the recorded pid runs, but nothing proves it is the instance cutover started (no start
    /// time or marker recorded): it is never signalled.
    Unproven(String),
}

impl Status {
    pub fn running(&self) -> bool {
        matches!(self, Status::Running)
    }
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopHow {
    /// It was not running.
    Gone,
    /// It exited after SIGTERM (or the runtime's stop) within the stop timeout.
    Terminated,
    /// It needed SIGKILL after the stop timeout.
    Killed,
    /// Not signalled: nothing proves the recorded process is ours.
    Unproven(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub how: StopHow,
    /// Processes of the instance found outside its process group (an app that daemonized), stopped too.
    pub strays: Vec<i32>,
    /// Processes that were still there after SIGKILL.
    pub survivors: Vec<i32>,
}

/// One instance to start.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub release: String,
    pub port: u16,
    /// Unique per start: put in the instance's environment as `CUTOVER_INSTANCE`.
    pub marker: String,
}

/// Who runs the app's instances.
pub trait Runtime {
    /// `spawn` or `systemd`.
    fn kind(&self) -> &'static str;
    /// Start an instance detached from cutover; returns its record.
    fn start(&self, spec: &StartSpec) -> Result<Instance>;
    fn status(&self, inst: &Instance) -> Status;
    /// Stop an instance and everything that belongs to it; never signals what is not provably its own.
    fn stop(&self, inst: &Instance, timeout: Duration) -> Stopped;
    /// Processes carrying `marker` in their environment: an instance whose start was intended but whose record
    /// never got its identity.
    fn find(&self, marker: &str) -> Vec<i32>;
    /// What the instance printed that explains a failure: error-looking lines first, then the last lines.
    fn log_excerpt(&self, inst: &Instance) -> String;
}

/// The running nginx master, verified to be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub pid: i32,
}

/// nginx as cutover drives it.
pub trait Nginx {
    /// The upstream file on disk, `None` when there is none.
    fn read_upstream(&self) -> Result<Option<String>>;
    /// Why the upstream file cannot be written where it is configured (its directory is missing), if so.
    fn upstream_dir_problem(&self) -> Option<String> {
        None
    }
    /// Replace the upstream file atomically (temp file nginx's include globs cannot match, fsync, rename).
    fn write_upstream(&self, text: &str) -> Result<()>;
    /// Put the upstream file back as it was (`None`: remove it).
    fn restore_upstream(&self, before: Option<&str>) -> Result<()>;
    /// `nginx -t`; a rejection is a `Failure` with exit 4 and nginx's own message.
    fn test(&self) -> Result<()>;
    /// The running master, verified to be an nginx master (not whatever a stale pid file names).
    fn master(&self) -> Result<Master>;
    /// The master's worker processes.
    fn workers(&self, m: &Master) -> Vec<i32>;
    /// Ask the master to reload.
    fn reload(&self, m: &Master) -> Result<()>;
    /// Wait until the master runs workers not in `old` and, with a confirm URL and a `generation`, answers it.
    fn confirm(&self, m: &Master, old: &[i32], generation: Option<u64>) -> Result<Duration>;
    /// Wait until none of `old` is still a worker of the master; false when `timeout` passed first.
    fn wait_gone(&self, m: &Master, old: &[i32], timeout: Duration) -> bool;
    /// `nginx -T`.
    fn dump(&self) -> Result<String>;
}

/// The answer to one health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass,
    /// Nothing accepts connections there (yet).
    Refused(String),
    /// It answered, but not what the health check expects.
    Wrong(String),
    /// Anything else: a timeout, a reset.
    Error(String),
}

impl Probe {
    pub fn passed(&self) -> bool {
        matches!(self, Probe::Pass)
    }

    pub fn reason(&self) -> &str {
        match self {
            Probe::Pass => "passed",
            Probe::Refused(r) | Probe::Wrong(r) | Probe::Error(r) => r,
        }
    }
}

/// The whole outside world, as the engine sees it.
pub trait Host {
    fn runtime(&self) -> &dyn Runtime;
    fn nginx(&self) -> &dyn Nginx;
    fn probe(&self, url: &str, health: &config::Health) -> Probe;
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
    /// Whether `addr` could be bound right now (the exact address the app will bind).
    fn port_free(&self, addr: SocketAddr) -> bool;
    /// Who listens on a TCP port: pid and command name.
    fn who_listens(&self, port: u16) -> Option<(i32, String)>;
    /// A point between two side effects. The real host does nothing; the fake one can end the run here, as a
    /// `kill -9` would.
    fn checkpoint(&self, _what: &str) {}
}

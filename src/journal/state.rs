//! What cutover knows about an app between runs, as `state.json` holds it: what is live, what was live before,
//! which instances nginx keeps as backup, and the operation in progress. Only [`super::Journal`] changes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;

pub const STATE_VERSION: u32 = 2;

/// One running (or once running) app instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub release: String,
    pub port: u16,
    /// spawn runtime: the process cutover started (a session and process-group leader). `None` once stopped, or
    /// while the start is only intended.
    pub pid: Option<i32>,
    /// Its start time in clock ticks since boot, from /proc: proof against a reused pid. A pid without it is
    /// never signalled.
    pub start_ticks: Option<u64>,
    /// The value of `CUTOVER_INSTANCE` in the instance's environment: finds its processes even when they left
    /// the process group or the leader exited, and finds an instance whose start was recorded as intended but
    /// whose pid never was (cutover killed in between).
    #[serde(default)]
    pub marker: Option<String>,
    /// systemd runtime: the unit that runs it (`cutover-<app>@<port>.service`), the instance's identity there.
    #[serde(default)]
    pub unit: Option<String>,
    pub started_at: String,
    #[serde(default)]
    pub log: Option<PathBuf>,
}

impl Instance {
    /// An instance on `port` with no process yet: what a plan renders before anything starts.
    pub fn planned(release: &str, port: u16) -> Instance {
        Instance {
            release: release.into(),
            port,
            pid: None,
            start_ticks: None,
            marker: None,
            unit: None,
            started_at: String::new(),
            log: None,
        }
    }

    /// Whether state records it as running (it may have died since: ask the runtime).
    pub fn recorded_running(&self) -> bool {
        self.pid.is_some() || self.unit.is_some()
    }

    /// The same instance (same port and same process identity), whatever else changed in the record.
    pub fn same(&self, other: &Instance) -> bool {
        self.port == other.port
            && self.release == other.release
            && self.pid == other.pid
            && self.unit == other.unit
            && self.marker == other.marker
    }

    /// The record once it is stopped: the release and port stay (a rollback target), the identity goes.
    pub fn stopped(mut self) -> Instance {
        self.pid = None;
        self.start_ticks = None;
        self.unit = None;
        self
    }

    /// `v2 on port 8082 (pid 41)`, for messages.
    pub fn describe(&self) -> String {
        let who = match (&self.unit, self.pid) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => format!("pid {p}"),
            (None, None) => "not running".into(),
        };
        format!("{} on port {} ({who})", self.release, self.port)
    }
}

/// A release and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub release: String,
    pub instances: Vec<Instance>,
    pub since: String,
}

impl Deployment {
    /// A release on these ports with no process yet: what a plan renders before anything starts.
    pub fn planned(release: &str, ports: impl IntoIterator<Item = u16>) -> Deployment {
        Deployment {
            release: release.into(),
            instances: ports.into_iter().map(|p| Instance::planned(release, p)).collect(),
            since: String::new(),
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.instances.iter().map(|i| i.port).collect()
    }

    pub fn running(&self) -> Vec<Instance> {
        self.instances.iter().filter(|i| i.recorded_running()).cloned().collect()
    }
}

/// A canary in progress: its instances and its current share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryState {
    pub deployment: Deployment,
    /// Percent of traffic the canary gets now.
    pub weight: u8,
    /// The configured steps, as they were when the canary started.
    pub steps: Vec<u8>,
    /// Index in `steps` of the current step (`None` when the weight was set by hand).
    pub step: Option<usize>,
    /// Driven by `cutover deploy` holding and analysing each step (an automatic interval); a canary recorded as
    /// automatic while no cutover run holds the lock is not being watched by anyone.
    #[serde(default)]
    pub automatic: bool,
}

impl CanaryState {
    /// The step `promote` or the end of a hold moves to: its index in `steps` and its share; `None` past the
    /// last step. After a weight set by hand (`step` is `None`) it is the first step above that weight.
    pub fn next_step(&self) -> Option<(usize, u8)> {
        let i = match self.step {
            Some(s) => s + 1,
            None => self.steps.iter().position(|&s| s > self.weight)?,
        };
        self.steps.get(i).map(|&p| (i, p))
    }
}

/// A rolling deploy between batches: the instances already replaced, the old ones still serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingState {
    /// The release being rolled out and its instances so far (serving beside `live`).
    pub deployment: Deployment,
    /// Batches done of `batches`.
    pub batch: usize,
    pub batches: usize,
    /// Old instances taken out of the upstream (`down`) before being replaced (rolling without surge).
    #[serde(default)]
    pub down: Vec<Instance>,
    /// The run stopped here on purpose (`rolling.on_failure = "pause"`) or was interrupted.
    #[serde(default)]
    pub paused: Option<String>,
    /// `rolling` or `all-at-once`: how a resume or a rollback of it runs.
    #[serde(default = "rolling_strategy")]
    pub strategy: Strategy,
    /// All at once: the port where nginx itself answers the maintenance page (503, `Retry-After`) while no
    /// instance serves.
    #[serde(default)]
    pub maintenance: Option<u16>,
}

fn rolling_strategy() -> Strategy {
    Strategy::Rolling
}

/// The kinds of operations cutover runs; also the `kind` of a history event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Deploy,
    Rollback,
    Promote,
    Abort,
    #[serde(alias = "canary-step")]
    CanarySet,
    Recover,
    Up,
    Stop,
    Restart,
    Apply,
    /// `cutover init --adopt`: a release cutover did not start became the live one.
    Adopt,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Deploy => "deploy",
            OpKind::Rollback => "rollback",
            OpKind::Promote => "promote",
            OpKind::Abort => "abort",
            OpKind::CanarySet => "canary-set",
            OpKind::Recover => "recover",
            OpKind::Up => "up",
            OpKind::Stop => "stop",
            OpKind::Restart => "restart",
            OpKind::Apply => "apply",
            OpKind::Adopt => "adopt",
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was serving when an operation began: where a flip goes back to when the new release dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    pub live: Option<Deployment>,
    pub previous: Option<Deployment>,
    pub backup: Vec<Instance>,
    /// A rolling deploy stopped part-way when the operation began (its rollback or its resume).
    #[serde(default)]
    pub rolling: Option<RollingState>,
}

/// The operation that was under way when state was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub kind: OpKind,
    pub release: String,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    pub pid: u32,
    pub started_at: String,
    /// Instances this operation started (a start only intended has a marker and no pid yet). Stopped by the
    /// next run unless they became live, canary, backup or a kept previous release.
    pub started: Vec<Instance>,
    /// Instances to stop once nginx no longer routes to them. The next run stops exactly these.
    #[serde(default)]
    pub to_stop: Vec<Instance>,
    /// The upstream file before this operation touched it (`None`: it did not exist).
    pub upstream_before: Option<String>,
    /// True once the upstream file may have been changed.
    pub upstream_touched: bool,
    /// What was serving when it began.
    #[serde(default)]
    pub before: Option<Serving>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub app: String,
    /// Bumped on every upstream change; written into the upstream file as its generation marker.
    pub generation: u64,
    pub live: Option<Deployment>,
    pub canary: Option<CanaryState>,
    #[serde(default)]
    pub rolling: Option<RollingState>,
    pub previous: Option<Deployment>,
    /// Instances of an older release that the upstream lists as nginx `backup` behind the live ones: until it
    /// is stopped, a connection the live release refuses is retried there instead of answered 502.
    #[serde(default)]
    pub backup: Vec<Instance>,
    /// The upstream file exactly as cutover last wrote it; drift is any difference on disk.
    pub upstream: Option<String>,
    /// Taken offline by `cutover stop`: the live release stays recorded, its servers are listed `down` and its
    /// instances stopped, until `up`, `restart` or a deploy brings it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    pub in_progress: Option<Operation>,
}

impl State {
    pub fn empty(app: &str) -> State {
        State { version: STATE_VERSION, app: app.into(), ..State::default() }
    }

    /// Every instance state records as running, with what it is (`live`, `canary`, `rolling`, `backup`,
    /// `previous`): the instances this app owns.
    pub fn owned(&self) -> Vec<(&'static str, &Instance)> {
        let mut groups: Vec<(&'static str, &[Instance])> = Vec::new();
        if let Some(d) = &self.live {
            groups.push(("live", &d.instances));
        }
        if let Some(c) = &self.canary {
            groups.push(("canary", &c.deployment.instances));
        }
        if let Some(r) = &self.rolling {
            groups.push(("rolling", &r.deployment.instances));
            groups.push(("taken out", &r.down));
        }
        groups.push(("backup", &self.backup));
        if let Some(p) = &self.previous {
            groups.push(("previous", &p.instances));
        }
        let mut v: Vec<(&'static str, &Instance)> = Vec::new();
        for (what, insts) in groups {
            for i in insts {
                if i.recorded_running() && !v.iter().any(|(_, o)| o.same(i)) {
                    v.push((what, i));
                }
            }
        }
        v
    }

    /// Whether `inst` is one state keeps (serving, backup, or a previous release kept running).
    pub fn keeps(&self, inst: &Instance) -> bool {
        self.owned().iter().any(|(_, o)| o.same(inst))
    }
}

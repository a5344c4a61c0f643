//! Resolve, then act: a request, the config, the state and a [`Snapshot`] of the host become one [`Plan`],
//! computed without side effects. `--dry-run` prints exactly this plan, including a refusal it would hit; the
//! strategies run it.

pub mod drift;
pub mod ports;

pub use drift::{reconcile, Drift};

use std::net::SocketAddr;

use anyhow::Result;
use serde::Serialize;

use crate::config::{Config, Release};
use crate::exit::{Code, Failure};
use crate::host::{Host, Master, Status};
use crate::journal::{Change, Deployment, Instance, OpKind, State};
use crate::lock::Holder;
use crate::strategy::Strategy;
use crate::upstream::Renderer;
use ports::{Busy, PortUse};

/// What the host looked like when the plan was made.
pub struct Snapshot {
    /// The runtime's view of every instance state records as running.
    pub status: Vec<(Instance, Status)>,
    /// Of those running, the ones nothing listens for on their port.
    pub not_listening: Vec<Instance>,
    /// Every pool port and what holds it.
    pub pool: Vec<(u16, PortUse)>,
    pub master: std::result::Result<Master, String>,
    pub upstream_on_disk: Option<String>,
    /// Who holds the app's lock (for a dry run, which does not take it).
    pub lock_holder: Option<Holder>,
    /// The previous release's instances all run and answer their health check: a rollback can be a flip.
    pub previous_usable: bool,
    /// Why the upstream file cannot be written (its directory is missing).
    pub upstream_dir_problem: Option<String>,
    /// Release directories (`app.release_dir`, or derived from `app.start`) checked, and whether each exists.
    pub release_dirs: Vec<(String, std::path::PathBuf, bool)>,
}

impl Snapshot {
    /// Also look whether `release`'s directory is there (a deploy of an unstaged release is refused).
    pub fn with_release(mut self, cfg: &Config, release: &str) -> Snapshot {
        if let Some(dir) = cfg.release_dir(release) {
            let exists = dir.is_dir();
            self.release_dirs.push((release.to_string(), dir, exists));
        }
        self
    }

    /// Look at the host. Reads only.
    pub fn take(host: &dyn Host, cfg: &Config, state: &State, lock_holder: Option<Holder>) -> Result<Snapshot> {
        let owned = state.owned();
        let status: Vec<(Instance, Status)> =
            owned.iter().map(|(_, i)| ((*i).clone(), host.runtime().status(i))).collect();
        let not_listening = status
            .iter()
            .filter(|(_, s)| s.running())
            .filter(|(i, _)| host.port_free(SocketAddr::new(cfg.ports.bind.0, i.port)))
            .map(|(i, _)| i.clone())
            .collect();
        let pool = cfg
            .pool()
            .into_iter()
            .map(|port| {
                let u = match owned.iter().find(|(_, i)| i.port == port) {
                    Some((what, i)) => PortUse::Ours(format!("{what} {}", i.describe())),
                    None if host.port_free(SocketAddr::new(cfg.ports.bind.0, port)) => PortUse::Free,
                    None => PortUse::Other(host.who_listens(port)),
                };
                (port, u)
            })
            .collect();
        let previous_usable = state.previous.as_ref().is_some_and(|p| {
            !p.instances.is_empty()
                && p.instances.iter().all(|i| {
                    host.runtime().status(i).running() && host.probe(&health_url(cfg, i.port), &cfg.health).passed()
                })
        });
        Ok(Snapshot {
            status,
            not_listening,
            pool,
            master: host.nginx().master().map_err(|e| format!("{e:#}")),
            upstream_on_disk: host.nginx().read_upstream()?,
            lock_holder,
            previous_usable,
            upstream_dir_problem: host.nginx().upstream_dir_problem(),
            release_dirs: Vec::new(),
        })
    }

    pub fn status_of(&self, i: &Instance) -> Status {
        self.status.iter().find(|(x, _)| x.same(i)).map(|(_, s)| s.clone()).unwrap_or(Status::Gone)
    }

    pub fn running(&self, i: &Instance) -> bool {
        self.status_of(i).running()
    }
}

pub fn health_url(cfg: &Config, port: u16) -> String {
    format!("http://{}{}", cfg.ports.bind.with_port(port), cfg.health.path)
}

/// An expected refusal the plan would hit: its exit code and message.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }

    pub fn error(&self) -> anyhow::Error {
        Failure::error(self.code, self.message.clone())
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: OpKind,
    pub release: Release,
    pub strategy: Strategy,
    /// Go ahead over a hand-edited upstream file or a missing state.
    pub force: bool,
}

/// Everything a deploy, rollback or restart will do, decided before it does anything.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub kind: OpKind,
    pub release: String,
    /// The strategy that will run (a canary with nothing live runs as blue-green).
    pub strategy: Strategy,
    pub notes: Vec<String>,
    pub refusal: Option<Refusal>,
    pub drift: Vec<String>,
    /// Idle previous instances stopped first to free their ports (the pool has no other room).
    pub reclaim: Vec<Instance>,
    /// Instances of the release that already run and are healthy (a rollback to a kept previous release).
    pub reuse: Vec<Instance>,
    /// Ports the new instances start on.
    pub new_ports: Vec<u16>,
    /// Instances that stay running idle afterwards (`deploy.keep_previous`).
    pub keep: Vec<Instance>,
    /// Instances stopped once traffic left them (after the verify window).
    pub stop_after: Vec<Instance>,
    pub upstream_before: Option<String>,
    /// The upstream the switch writes (a canary: its first step).
    pub upstream_after: String,
    /// A canary's steps, in percent.
    pub canary_steps: Vec<u8>,
    /// A rolling deploy's batches.
    pub batches: Vec<crate::strategy::rolling::Batch>,
}

impl Plan {
    /// The deployment the switch moves traffic to: reused instances and the new ones, not started yet.
    pub fn target(&self) -> Deployment {
        let mut d = Deployment::planned(&self.release, self.new_ports.iter().copied());
        d.instances.splice(0..0, self.reuse.iter().cloned());
        d
    }
}

/// Resolve a deploy, rollback or restart into a plan.
pub fn resolve(req: &Request, cfg: &Config, state: &State, snap: &Snapshot, renderer: &Renderer) -> Result<Plan> {
    let mut notes = Vec::new();
    let mut refusal: Option<Refusal> = None;
    let mut refuse = |r: Refusal| {
        if refusal.is_none() {
            refusal = Some(r);
        }
    };
    let rendered_now = renderer.render(cfg, state).ok();
    let drift = reconcile(cfg, state, snap, rendered_now.as_deref());
    if let Some(d) = drift.iter().find(|d| d.blocks()) {
        if !req.force {
            let msg = match d {
                Drift::UpstreamEdited { path } => format!(
                    "the upstream file {path} was changed outside cutover; look at `cutover render --diff`, then run \
                     again with --force to replace it"
                ),
                other => other.to_string(),
            };
            refuse(Refusal::new(Code::Refused, msg));
        }
    }
    if let Some(p) = &snap.upstream_dir_problem {
        refuse(Refusal::new(Code::Usage, p.clone()));
    }
    if let Err(e) = &snap.master {
        refuse(Refusal::new(Code::Nginx, e.clone()));
    }
    if let Some((_, dir, _)) = snap.release_dirs.iter().find(|(r, _, exists)| r == req.release.as_str() && !exists) {
        let reused = req.kind == OpKind::Rollback && snap.previous_usable;
        if !reused {
            refuse(Refusal::new(
                Code::Refused,
                format!(
                    "release {} is not on this host: {} does not exist; stage the release there first (or fix \
                     app.release_dir / app.start)",
                    req.release,
                    dir.display()
                ),
            ));
        }
    }
    if let Some(c) = &state.canary {
        refuse(Refusal::new(
            Code::Refused,
            format!(
                "a canary of {} is running at {}%: finish it with `cutover promote` or `cutover abort` first",
                c.deployment.release, c.weight
            ),
        ));
    }
    let mut strategy = req.strategy;
    if let Some(r) = &state.rolling {
        let old = state.live.as_ref().map(|l| l.release.as_str()).unwrap_or("the old release");
        let at = format!(
            "a {} deploy of {} stopped after batch {} of {}",
            r.strategy, r.deployment.release, r.batch, r.batches
        );
        if req.kind == OpKind::Deploy && r.deployment.release == req.release.as_str() {
            notes.push(format!(
                "{at}: resuming it{}",
                if strategy == r.strategy { String::new() } else { format!(" as {}", r.strategy) }
            ));
            strategy = r.strategy;
        } else {
            refuse(Refusal::new(
                Code::Refused,
                format!(
                    "{at}{}: `cutover deploy --release {}` finishes it, `cutover rollback` (or `cutover recover`) \
                     returns every instance to {old}; resolve it first",
                    r.paused.as_ref().map(|p| format!(" ({p})")).unwrap_or_default(),
                    r.deployment.release
                ),
            ));
        }
    }
    let live = state.live.as_ref();
    let redeploy = live.is_some_and(|l| l.release == req.release.as_str());
    // The pool must fit the strategy asked for: a first deploy runs as blue-green but needs no more.
    let asked = strategy;
    if strategy.needs_live() && live.is_none() {
        notes.push(if strategy.in_place() {
            "nothing is live yet, so there is nothing to replace in place: deploying blue-green".to_string()
        } else {
            format!("nothing is live yet, so there is nothing to compare a {strategy} with: deploying blue-green")
        });
        strategy = Strategy::BlueGreen;
    } else if strategy.needs_live() && state.offline {
        // Nothing serves (`cutover stop`): no running instance to replace in place or to compare a canary with.
        notes.push(format!(
            "the app is offline (`cutover stop`), so nothing runs to {}: deploying blue-green, which brings it back",
            if strategy.in_place() { "replace in place".to_string() } else { format!("compare a {strategy} with") }
        ));
        strategy = Strategy::BlueGreen;
    }
    if strategy == Strategy::Canary && redeploy {
        refuse(Refusal::new(
            Code::Usage,
            format!(
                "{} is already live: a canary compares two releases; redeploy it with --strategy blue-green",
                req.release
            ),
        ));
    }
    if redeploy && req.kind == OpKind::Deploy && state.rolling.is_none() {
        notes.push(format!("{} is already live: redeploying it on fresh instances (a restart)", req.release));
    }
    let pool_needed = asked.ports_needed(cfg);
    if cfg.pool().len() < pool_needed {
        refuse(Refusal::new(
            Code::Usage,
            format!(
                "--strategy {asked} with {} instance(s) needs {pool_needed} pool port(s), ports.pool has {}: {}",
                cfg.deploy.instances.0,
                cfg.pool().len(),
                asked.why_ports(cfg)
            ),
        ));
    }

    // Reuse: a rollback to a previous release whose instances still run and answer.
    let reuse: Vec<Instance> = match (&state.previous, req.kind) {
        (Some(p), OpKind::Rollback) if p.release == req.release.as_str() && snap.previous_usable => p.instances.clone(),
        _ => Vec::new(),
    };
    let instances = cfg.deploy.instances.0 as usize;
    let start = if reuse.is_empty() { instances } else { 0 };
    let mut plan = Plan {
        kind: req.kind,
        release: req.release.to_string(),
        strategy,
        notes: Vec::new(),
        refusal: None,
        drift: drift.iter().map(|d| d.to_string()).collect(),
        reclaim: Vec::new(),
        reuse,
        new_ports: Vec::new(),
        keep: Vec::new(),
        stop_after: Vec::new(),
        upstream_before: snap.upstream_on_disk.clone(),
        upstream_after: String::new(),
        canary_steps: Vec::new(),
        batches: Vec::new(),
    };
    if strategy.in_place() {
        crate::strategy::rolling::plan(cfg, state, snap, renderer, &mut plan, &mut refuse)?;
        notes.append(&mut plan.notes);
        plan.notes = notes;
        plan.refusal = refusal;
        return Ok(plan);
    }

    // Ports: taken by what serves and what the switch reuses; an idle previous release gives up its ports
    // when the pool has no other room.
    let mut taken: Vec<(u16, String)> = Vec::new();
    for (what, i) in state.owned() {
        if what != "previous" && what != "backup" {
            taken.push((i.port, format!("{what} {}", i.describe())));
        }
    }
    for i in &plan.reuse {
        taken.push((i.port, format!("{} being switched to", i.release)));
    }
    let idle_previous: Vec<Instance> = state
        .owned()
        .into_iter()
        .filter(|(what, i)| (*what == "previous" || *what == "backup") && !plan.reuse.iter().any(|r| r.same(i)))
        .map(|(_, i)| i.clone())
        .filter(|i| snap.running(i))
        .collect();
    let mut with_idle = taken.clone();
    for i in &idle_previous {
        with_idle.push((i.port, format!("previous {} kept running", i.describe())));
    }
    let (mut picked, busy) = ports::pick(&snap.pool, start, &with_idle);
    for i in &idle_previous {
        if picked.len() >= start {
            break;
        }
        if cfg.pool().contains(&i.port) && !picked.contains(&i.port) {
            plan.reclaim.push(i.clone());
            picked.push(i.port);
        }
    }
    if picked.len() < start {
        refuse(Refusal::new(Code::Refused, no_port_message(start, &busy)));
    }
    picked.truncate(start);
    plan.new_ports = picked;

    // What the switch leaves: the flip, previewed.
    let mut after = state.clone();
    after.in_progress = Some(scratch_op());
    if !plan.reclaim.is_empty() {
        Change::Reclaim(plan.reclaim.clone()).apply(&mut after);
    }
    let target = plan.target();
    if strategy == Strategy::Canary {
        let steps: Vec<u8> = cfg.canary.steps.iter().map(|p| p.0).collect();
        Change::Canary(crate::journal::CanaryState {
            deployment: target.clone(),
            weight: steps[0],
            steps: steps.clone(),
            step: Some(0),
            automatic: cfg.canary.interval != crate::config::Interval::Manual,
        })
        .apply(&mut after);
        plan.canary_steps = steps;
        // What happens at 100 %, for the plan's lists.
        let mut promoted = after.clone();
        Change::Flip { to: target, keep_previous: cfg.deploy.keep_previous }.apply(&mut promoted);
        plan.stop_after = promoted.in_progress.as_ref().map(|o| o.to_stop.clone()).unwrap_or_default();
        plan.keep = kept_after(&promoted);
    } else {
        Change::Flip { to: target, keep_previous: cfg.deploy.keep_previous }.apply(&mut after);
        plan.stop_after = after.in_progress.as_ref().map(|o| o.to_stop.clone()).unwrap_or_default();
        plan.keep = kept_after(&after);
    }
    plan.stop_after.retain(|i| !plan.reclaim.iter().any(|r| r.same(i)));
    after.generation += 1;
    after.in_progress = None;
    plan.upstream_after = renderer.render(cfg, &after)?;
    plan.notes = notes;
    plan.refusal = refusal;
    Ok(plan)
}

/// Previous instances still running and not scheduled to stop: kept idle.
fn kept_after(s: &State) -> Vec<Instance> {
    let to_stop = s.in_progress.as_ref().map(|o| o.to_stop.clone()).unwrap_or_default();
    s.previous.iter().flat_map(|d| d.running()).filter(|i| !to_stop.iter().any(|t| t.same(i))).collect()
}

/// An operation record to preview changes against (they record what they would stop there).
pub fn scratch_op() -> crate::journal::Operation {
    crate::journal::Operation {
        kind: OpKind::Deploy,
        release: String::new(),
        strategy: None,
        pid: 0,
        started_at: String::new(),
        started: Vec::new(),
        to_stop: Vec::new(),
        upstream_before: None,
        upstream_touched: false,
        before: None,
    }
}

pub fn no_port_message(n: usize, busy: &[Busy]) -> String {
    let why: Vec<String> = busy.iter().map(|b| format!("{} {}", b.port, b.why)).collect();
    format!("no idle port in ports.pool for {n} new instance(s): {}; free them or widen ports.pool", why.join(", "))
}

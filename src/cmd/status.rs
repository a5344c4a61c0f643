//! `cutover status`: what is live, checked against reality (instances, health, the upstream file, nginx, the
//! lock, an unfinished operation). `--check` turns every problem into exit 7, each with its reason.

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::Setup;
use crate::cli::StatusArgs;
use crate::exit::Code;
use crate::host::{Host, Status};
use crate::journal::{Deployment, Event};
use crate::lock;
use crate::output::print_json;
use crate::plan::{self, health_url, Drift, Snapshot};
use crate::upstream::Renderer;

#[derive(Serialize)]
struct InstanceReport {
    release: String,
    port: u16,
    address: String,
    pid: Option<i32>,
    unit: Option<String>,
    alive: bool,
    healthy: Option<bool>,
    health_error: Option<String>,
    /// Percent of traffic this instance gets.
    #[serde(serialize_with = "percent")]
    weight: f64,
    since: String,
    log: Option<String>,
    /// What the runtime says: main pid, its state, restarts, whether it comes back at boot.
    runtime: crate::host::Details,
}

#[derive(Serialize)]
struct DeploymentReport {
    release: String,
    since: String,
    /// Percent of traffic the release gets.
    #[serde(serialize_with = "percent")]
    weight: f64,
    instances: Vec<InstanceReport>,
}

/// A share in percent: a whole number when it is one (`100`, `25`), else two decimals.
fn percent<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64((v * 100.0).round() / 100.0)
    }
}

fn report(setup: &Setup, d: &Deployment, share: f64, probe: bool) -> DeploymentReport {
    let n = d.instances.len().max(1) as f64;
    let instances = d
        .instances
        .iter()
        .map(|i| {
            let status = setup.host.runtime().status(i);
            let alive = status.running();
            let (healthy, health_error) = if probe && alive {
                match setup.host.probe(&health_url(&setup.config, i.port), &setup.config.health) {
                    crate::host::Probe::Pass => (Some(true), None),
                    p => (Some(false), Some(p.reason().to_string())),
                }
            } else if probe {
                let why = match status {
                    Status::Unproven(why) => why,
                    _ => "not running".to_string(),
                };
                (Some(false), Some(why))
            } else {
                (None, None)
            };
            InstanceReport {
                release: i.release.clone(),
                port: i.port,
                address: setup.config.ports.bind.with_port(i.port),
                pid: i.pid,
                unit: i.unit.clone(),
                alive,
                healthy,
                health_error,
                weight: share / n,
                since: i.started_at.clone(),
                log: i.log.as_ref().map(|l| l.display().to_string()),
                runtime: setup.host.runtime().details(i),
            }
        })
        .collect();
    DeploymentReport { release: d.release.clone(), since: d.since.clone(), weight: share, instances }
}

pub fn run(setup: &Setup, args: StatusArgs, json: bool) -> Result<Code> {
    let cfg = &setup.config;
    let state = setup.state()?;
    let holder = lock::holder(&setup.store.lock_path());
    let snap = Snapshot::take(&setup.host, cfg, &state, holder.clone())?;
    let rendered = Renderer::new(cfg).and_then(|r| r.render(cfg, &state)).ok();
    let drift = plan::reconcile(cfg, &state, &snap, rendered.as_deref());

    // Shares: a canary's weight; during a rolling deploy, by instance count.
    let (live_share, side_share) = match (&state.canary, &state.rolling, &state.live) {
        (Some(c), _, _) => (f64::from(100 - c.weight), f64::from(c.weight)),
        (None, Some(r), live) => {
            let new = r.deployment.instances.len() as f64;
            let old = live.as_ref().map(|l| l.instances.len()).unwrap_or(0) as f64;
            let total = (new + old).max(1.0);
            (100.0 * old / total, 100.0 * new / total)
        }
        _ => (100.0, 0.0),
    };
    let live = state.live.as_ref().map(|d| report(setup, d, live_share, true));
    let canary = state.canary.as_ref().map(|c| report(setup, &c.deployment, side_share, true));
    let rolling = state.rolling.as_ref().map(|r| report(setup, &r.deployment, side_share, true));
    let previous = state.previous.as_ref().map(|d| report(setup, d, 0.0, false));
    let (events, history_warning) = setup.store.history().unwrap_or_else(|e| (Vec::new(), Some(format!("{e:#}"))));
    let last: Option<Event> = events.into_iter().last();

    let mut problems: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
    let unhealthy: Vec<String> = live
        .iter()
        .chain(canary.iter())
        .chain(rolling.iter())
        .flat_map(|d| d.instances.iter())
        .filter(|i| i.healthy != Some(true))
        .map(|i| format!("{} on {}: {}", i.release, i.address, i.health_error.as_deref().unwrap_or("unhealthy")))
        .collect();
    problems.extend(unhealthy.iter().map(|u| format!("unhealthy: {u}")));
    if let Some(op) = &state.in_progress {
        problems.push(match &holder {
            Some(h) => format!("a `{}` of {} is in progress ({h})", op.kind, op.release),
            None => format!(
                "a `{}` of {} (pid {}, since {}) did not finish; `cutover recover` cleans up after it",
                op.kind, op.release, op.pid, op.started_at
            ),
        });
    }
    if let (Some(c), None) = (&state.canary, &holder) {
        if c.automatic {
            problems.push(format!(
                "the automatic canary of {} at {}% is not being analysed: the deploy that drove it is gone; \
                 `cutover promote` or `cutover abort`",
                c.deployment.release, c.weight
            ));
        }
    }
    // A rolling deploy between batches is a problem once no run drives it (paused, or its run is gone).
    let dark = state.rolling.as_ref().and_then(|r| r.maintenance).filter(|_| {
        state.live.iter().chain(state.rolling.iter().map(|r| &r.deployment)).all(|d| d.instances.is_empty())
    });
    if let Some(r) = state.rolling.as_ref().filter(|r| r.paused.is_some() || holder.is_none()) {
        problems.push(format!(
            "a {} deploy of {} stopped after batch {} of {}{}: `cutover deploy --release {}` finishes it, \
             `cutover rollback` or `cutover recover` returns every instance to {}",
            r.strategy,
            r.deployment.release,
            r.batch,
            r.batches,
            r.paused.as_ref().map(|p| format!(" ({p})")).unwrap_or_default(),
            r.deployment.release,
            state.live.as_ref().map(|l| l.release.as_str()).unwrap_or("the old release")
        ));
    }
    if let Some(port) = dark {
        problems.push(format!(
            "no instance serves: nginx answers the maintenance page (503) from {}",
            cfg.ports.bind.with_port(port)
        ));
    }
    if let Err(e) = &snap.master {
        problems.push(e.clone());
    }
    if state.offline {
        problems.push(format!("{} is offline (`cutover stop`); `cutover up` brings it back", cfg.app.name));
    }
    let not_at_boot: Vec<String> = live
        .iter()
        .flat_map(|d| d.instances.iter())
        .filter(|i| i.alive && i.runtime.at_boot == Some(false))
        .map(|i| format!("{} on {}", i.release, i.address))
        .collect();
    if !not_at_boot.is_empty() {
        problems.push(format!(
            "live instance(s) not enabled for boot: {}; the next cutover command enables them",
            not_at_boot.join(", ")
        ));
    }
    let upstream_drift =
        drift.iter().find(|d| matches!(d, Drift::UpstreamEdited { .. } | Drift::UpstreamMissing { .. }));

    if json {
        print_json(&json!({
            "app": cfg.app.name.as_str(),
            "runtime": setup.host.runtime().kind(),
            "live": live,
            "canary": canary,
            "rolling": rolling.as_ref().zip(state.rolling.as_ref()).map(|(r, x)| json!({
                "strategy": x.strategy,
                "deployment": r,
                "batch": x.batch,
                "batches": x.batches,
                "down": x.down,
                "maintenance": x.maintenance.map(|p| cfg.ports.bind.with_port(p)),
                "paused": x.paused,
            })),
            "maintenance": dark.map(|p| cfg.ports.bind.with_port(p)),
            "previous": previous,
            "backup": state.backup,
            "upstream_file": cfg.nginx.upstream_file,
            "upstream_matches_state": upstream_drift.is_none(),
            "drift": drift,
            "unhealthy": unhealthy,
            "generation": state.generation,
            "offline": state.offline,
            "in_progress": state.in_progress,
            "lock": holder,
            "nginx": match &snap.master { Ok(m) => json!({"running": true, "master_pid": m.pid}), Err(e) => json!({"running": false, "error": e}) },
            "last_event": last,
            "ok": problems.is_empty(),
            "problems": problems,
        }))?;
    } else {
        say!("app:       {} ({} runtime)", cfg.app.name, setup.host.runtime().kind());
        match &live {
            None => say!("live:      nothing deployed"),
            Some(d) if state.offline => {
                say!("live:      {} OFFLINE (`cutover stop`; `cutover up` brings it back)", d.release)
            }
            Some(d) => print_deployment("live:", d),
        }
        if let Some(c) = &canary {
            print_deployment("canary:", c);
        }
        if let (Some(r), Some(rs)) = (&rolling, &state.rolling) {
            if !r.instances.is_empty() {
                print_deployment(&format!("{} {}/{}:", rs.strategy, rs.batch, rs.batches), r);
            }
            for d in &rs.down {
                say!(
                    "taken out: {} on {} (down in the upstream, {})",
                    d.release,
                    cfg.ports.bind.with_port(d.port),
                    if d.recorded_running() { "being drained" } else { "stopped; its replacement is not in yet" }
                );
            }
            if let Some(p) = &rs.paused {
                say!("paused:    {p}");
            }
        }
        if let Some(port) = dark {
            say!("maintenance: nothing serves; nginx answers 503 from {}", cfg.ports.bind.with_port(port));
        }
        match &previous {
            Some(p) => {
                let running: Vec<String> = p
                    .instances
                    .iter()
                    .filter(|i| i.alive)
                    .map(|i| match (&i.unit, i.pid) {
                        (Some(u), _) => format!("{} ({u})", i.address),
                        (None, p) => format!("{} (pid {})", i.address, p.unwrap_or(0)),
                    })
                    .collect();
                if running.is_empty() {
                    say!("previous:  {} (stopped)", p.release);
                } else {
                    say!("previous:  {} running idle on {} (nginx backup)", p.release, running.join(", "));
                }
            }
            None => say!("previous:  none"),
        }
        let path = cfg.nginx.upstream_file.display();
        match upstream_drift {
            None if state.upstream.is_some() => {
                say!("upstream:  {path} matches state (generation {})", state.generation)
            }
            None => say!("upstream:  {path} (nothing written by cutover yet)"),
            Some(Drift::UpstreamEdited { .. }) => {
                say!("upstream:  DRIFT: the upstream file differs from what cutover last wrote: {path} (see `cutover render --diff`)")
            }
            Some(_) => say!("upstream:  DRIFT: the upstream file is missing: {path}"),
        }
        match &snap.master {
            Ok(m) => say!("nginx:     running (master pid {})", m.pid),
            Err(e) => say!("nginx:     NOT RUNNING: {e}"),
        }
        match &holder {
            Some(h) => say!("lock:      held by {h}"),
            None => say!("lock:      free"),
        }
        if let Some(op) = &state.in_progress {
            say!("unfinished: {} of {} by pid {} since {}", op.kind, op.release, op.pid, op.started_at);
        }
        match &last {
            Some(e) => say!(
                "last:      {} {} {} at {} ({} ms{})",
                e.kind,
                e.release,
                e.outcome.as_str(),
                e.at,
                e.total_ms,
                e.downtime_ms.map(|d| format!(", downtime {d} ms")).unwrap_or_default()
            ),
            None => say!("last:      no deploys yet"),
        }
        for u in &unhealthy {
            say!("unhealthy: {u}");
        }
    }
    if let Some(w) = history_warning {
        crate::output::err_line(&format!("cutover: warning: {w}"));
    }
    if let Some(w) = crate::hostcheck::state_dirs::warning(cfg) {
        crate::output::err_line(&format!("cutover: warning: {w}"));
    }
    if args.check && !problems.is_empty() {
        if !json {
            crate::output::err_line(&format!("cutover: status --check failed: {}", problems.join("; ")));
        }
        return Ok(Code::CheckFailed);
    }
    Ok(Code::Ok)
}

fn print_deployment(label: &str, d: &DeploymentReport) {
    say!("{label:<10} {} ({:.0}% of traffic) since {}", d.release, d.weight, d.since);
    for i in &d.instances {
        let health = match (i.alive, i.healthy) {
            (false, _) => "NOT RUNNING".to_string(),
            (true, Some(true)) => "healthy".into(),
            (true, _) => format!("UNHEALTHY ({})", i.health_error.as_deref().unwrap_or("?")),
        };
        let who = match (&i.unit, i.pid) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => format!("pid {p}"),
            (None, None) => "pid -".into(),
        };
        say!("  {:<22} {:<14} {:<10} weight {:.0}%  since {}", i.address, who, health, i.weight, i.since);
        if i.unit.is_some() {
            let r = &i.runtime;
            say!(
                "  {:<22} {}, main pid {}, {} restart(s), {}",
                "",
                r.state.as_deref().unwrap_or("?"),
                r.main_pid.map(|p| p.to_string()).unwrap_or("-".into()),
                r.restarts.unwrap_or(0),
                if r.at_boot == Some(true) { "enabled at boot" } else { "NOT enabled at boot" }
            );
        }
    }
}

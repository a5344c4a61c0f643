//! `cutover status`: what is live, checked against reality (pids, ports, health, the upstream file).

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::cli::StatusArgs;
use crate::exit;
use crate::health;
use crate::lock;
use crate::proc;
use crate::state::{Deployment, Event};
use crate::transaction::Ctx;

#[derive(Serialize)]
struct InstanceReport {
    release: String,
    port: u16,
    address: String,
    pid: Option<i32>,
    alive: bool,
    healthy: Option<bool>,
    health_error: Option<String>,
    /// Percent of traffic this instance gets.
    weight: f64,
    since: String,
    log: String,
}

#[derive(Serialize)]
struct DeploymentReport {
    release: String,
    since: String,
    /// Percent of traffic the release gets.
    weight: u8,
    instances: Vec<InstanceReport>,
}

fn report(ctx: &Ctx, d: &Deployment, weight: u8, probe: bool) -> DeploymentReport {
    let n = d.instances.len().max(1) as f64;
    let instances = d
        .instances
        .iter()
        .map(|i| {
            let alive = proc::alive(i);
            let (healthy, health_error) = if probe && alive {
                match health::probe(&ctx.health_url(i.port), &ctx.config.health) {
                    Ok(()) => (Some(true), None),
                    Err(e) => (Some(false), Some(e)),
                }
            } else if probe {
                (Some(false), Some("not running".to_string()))
            } else {
                (None, None)
            };
            InstanceReport {
                release: i.release.clone(),
                port: i.port,
                address: ctx.config.ports.bind.with_port(i.port),
                pid: i.pid,
                alive,
                healthy,
                health_error,
                weight: f64::from(weight) / n,
                since: i.started_at.clone(),
                log: i.log.display().to_string(),
            }
        })
        .collect();
    DeploymentReport { release: d.release.clone(), since: d.since.clone(), weight, instances }
}

pub fn run(ctx: &Ctx, args: StatusArgs, json: bool) -> Result<i32> {
    let state = ctx.store.load(ctx.config.app.name.as_str())?;
    let canary_weight = state.canary.as_ref().map(|c| c.weight).unwrap_or(0);
    let live = state.live.as_ref().map(|d| report(ctx, d, 100 - canary_weight, true));
    let canary = state.canary.as_ref().map(|c| report(ctx, &c.deployment, c.weight, true));
    let previous = state.previous.as_ref().map(|d| report(ctx, d, 0, false));
    let disk = ctx.read_upstream()?;
    let drift = match (&state.upstream, &disk) {
        (None, _) => None,
        (Some(a), Some(b)) if a == b => None,
        (Some(_), Some(_)) => Some("the upstream file differs from what cutover last wrote".to_string()),
        (Some(_), None) => Some("the upstream file is missing".to_string()),
    };
    let holder = lock::holder(&ctx.store);
    let last: Option<Event> = ctx.store.history()?.pop();
    let unhealthy: Vec<String> = live
        .iter()
        .chain(canary.iter())
        .flat_map(|d| d.instances.iter())
        .filter(|i| i.healthy != Some(true))
        .map(|i| format!("{} on {}: {}", i.release, i.address, i.health_error.as_deref().unwrap_or("unhealthy")))
        .collect();
    let ok = drift.is_none() && unhealthy.is_empty();

    if json {
        super::print_json(&json!({
            "app": ctx.config.app.name.as_str(),
            "live": live,
            "canary": canary,
            "previous": previous,
            "upstream_file": ctx.config.nginx.upstream_file,
            "upstream_matches_state": drift.is_none(),
            "drift": drift,
            "unhealthy": unhealthy,
            "generation": state.generation,
            "in_progress": state.in_progress,
            "lock": holder,
            "last_event": last,
        }))?;
    } else {
        say!("app:       {}", ctx.config.app.name);
        match &live {
            None => say!("live:      nothing deployed"),
            Some(d) => print_deployment("live:", d),
        }
        if let Some(c) = &canary {
            print_deployment("canary:", c);
        }
        match &previous {
            Some(p) => {
                let running: Vec<String> = p
                    .instances
                    .iter()
                    .filter(|i| i.alive)
                    .map(|i| format!("{} (pid {})", i.address, i.pid.unwrap_or(0)))
                    .collect();
                if running.is_empty() {
                    say!("previous:  {} (stopped)", p.release);
                } else {
                    say!("previous:  {} running idle on {}", p.release, running.join(", "));
                }
            }
            None => say!("previous:  none"),
        }
        let path = ctx.config.nginx.upstream_file.display();
        match &drift {
            None if state.upstream.is_some() => {
                say!("upstream:  {path} matches state (generation {})", state.generation)
            }
            None => say!("upstream:  {path} (nothing written by cutover yet)"),
            Some(d) => say!("upstream:  DRIFT: {d}: {path} (see `cutover render --diff`)"),
        }
        match &holder {
            Some(h) => say!("lock:      held by {h}"),
            None => say!("lock:      free"),
        }
        if let Some(op) = &state.in_progress {
            say!("unfinished: {} of {} by pid {} since {}", op.kind, op.release, op.pid, op.started_at);
        }
        match &last {
            Some(e) => say!("last:      {} {} {} at {} ({} ms)", e.kind, e.release, e.outcome, e.at, e.total_ms),
            None => say!("last:      no deploys yet"),
        }
        for u in &unhealthy {
            say!("unhealthy: {u}");
        }
    }
    if args.check && !ok {
        if !json {
            eprintln!(
                "cutover: status --check failed: {}",
                drift.iter().cloned().chain(unhealthy.iter().cloned()).collect::<Vec<_>>().join("; ")
            );
        }
        return Ok(exit::CHECK_FAILED);
    }
    Ok(exit::OK)
}

fn print_deployment(label: &str, d: &DeploymentReport) {
    say!("{label:<10} {} ({}% of traffic) since {}", d.release, d.weight, d.since);
    for i in &d.instances {
        let health = match (i.alive, i.healthy) {
            (false, _) => "NOT RUNNING".to_string(),
            (true, Some(true)) => "healthy".into(),
            (true, _) => format!("UNHEALTHY ({})", i.health_error.as_deref().unwrap_or("?")),
        };
        say!(
            "  {:<22} pid {:<8} {:<10} weight {:.0}%  since {}",
            i.address,
            i.pid.map(|p| p.to_string()).unwrap_or("-".into()),
            health,
            i.weight,
            i.since
        );
    }
}

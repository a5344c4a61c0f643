//! `cutover deploy`: resolve the plan, then run its strategy (or print the plan with `--dry-run`).

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::DeployArgs;
use crate::config::Release;
use crate::engine::Engine;
use crate::exit::{self, Code};
use crate::host::Host;
use crate::journal::OpKind;
use crate::output::print_json;
use crate::plan::{self, Plan, Refusal, Request, Snapshot};
use crate::strategy::{self, canary, Ended, Strategy, Switched};
use crate::upstream::{self, Renderer};

pub fn run(setup: &Setup, args: DeployArgs, json: bool) -> Result<Code> {
    let release: Release = crate::release_ref::for_deploy(args.release.as_deref(), args.release_from_ref.as_deref())?;
    let cfg = &setup.config;
    let strategy = args.strategy.unwrap_or(cfg.deploy.strategy);
    let req = Request { kind: OpKind::Deploy, release: release.clone(), strategy, force: args.force };
    let live_now = setup.state()?.live.is_some();
    if args.dry_run {
        return dry_run(setup, &req, json);
    }
    if live_now {
        preflight(setup, strategy)?;
    }
    let (_lock, mut eng) = super::begin(setup, args.lock.lock_wait, args.force, "deploy")?;
    let plan = resolve(setup, &eng, &req)?;
    execute(setup, &mut eng, plan, json)
}

/// Checks that need nginx's config: a canary's routing and access log, the access log that `rolling.pause`
/// analyses.
fn preflight(setup: &Setup, strategy: Strategy) -> Result<()> {
    let cfg = &setup.config;
    let prefix = setup.host.real_nginx().prefix().unwrap_or_default();
    match strategy {
        Strategy::Canary => canary::preflight(cfg, &setup.host, &prefix),
        Strategy::Rolling if !cfg.rolling.pause.0.is_zero() => {
            canary::preflight_for(cfg, &setup.host, &prefix, false, true, "or set rolling.pause = \"0s\"")
        }
        _ => Ok(()),
    }
}

/// Resolve the plan against the host as it is now; a refusal is returned as its error.
pub fn resolve(_setup: &Setup, eng: &Engine, req: &Request) -> Result<Plan> {
    strategy::plan_for(eng, req)
}

/// Run a resolved deploy, rollback or restart plan and report it.
pub fn execute(setup: &Setup, eng: &mut Engine, plan: Plan, json: bool) -> Result<Code> {
    let from = eng.live_release();
    match strategy::execute(eng, &plan)? {
        Ended::Switched(s) => report(setup, eng, plan.kind, plan.strategy, &s, from, json)?,
        Ended::CanaryPaused => super::canary::report_canary(setup, eng, plan.kind, json)?,
    }
    Ok(Code::Ok)
}

/// What is live now and how long each step took: text on stdout, or one JSON document.
pub fn report(
    setup: &Setup,
    eng: &Engine,
    kind: OpKind,
    strategy: Strategy,
    s: &Switched,
    from: Option<String>,
    json: bool,
) -> Result<()> {
    let progress = &eng.progress;
    if json {
        return print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": setup.config.app.name.as_str(),
            "release": s.live.release,
            "from": from,
            "live": s.live,
            "previous": s.previous,
            "stopped": s.stopped,
            "drained": s.drained,
            "strategy": strategy,
            "healthy_unix_ms": s.healthy_unix_ms,
            "switch_ms": s.switch_ms,
            "downtime_ms": s.downtime_ms,
            "steps": progress.steps,
            "total_ms": crate::output::ms(progress.elapsed()),
        }));
    }
    say!("live:     {}", setup.describe(&s.live));
    if let Some(p) = &s.previous {
        say!("previous: {}", setup.describe(p));
    }
    if let Some(d) = s.downtime_ms {
        say!("downtime: {d} ms (all at once: nothing served meanwhile)");
    }
    let steps: Vec<String> = progress.steps.iter().map(|s| format!("{} {} ms", s.name, s.ms)).collect();
    say!("steps:    {}", steps.join(", "));
    say!("total:    {}", crate::output::human_ms(progress.elapsed()));
    Ok(())
}

/// `--dry-run`: the plan that would run, including a refusal it would hit; changes nothing. Exits with the code
/// the real run would hit (0 when it would go ahead), so a pipeline can use it as a preflight.
fn dry_run(setup: &Setup, req: &Request, json: bool) -> Result<Code> {
    let cfg = &setup.config;
    let state = setup.state()?;
    let holder = crate::lock::holder(&setup.store.lock_path());
    let snap = Snapshot::take(&setup.host, cfg, &state, holder.clone())?.with_release(cfg, req.release.as_str());
    let renderer = Renderer::new(cfg)?;
    let mut plan = plan::resolve(req, cfg, &state, &snap, &renderer)?;
    if plan.refusal.is_none() {
        if let Some(h) = holder {
            plan.refusal = Some(Refusal::new(
                Code::Locked,
                format!("another cutover run holds the lock for this app (held by {h})"),
            ));
        } else if state.live.is_some() {
            if let Err(e) = preflight(setup, plan.strategy) {
                plan.refusal = Some(Refusal::new(exit::code_of(&e), format!("{e:#}")));
            }
        }
    }
    // What each new instance would run, as the runtime would start it (systemd: the unit files).
    let start = plan.new_ports.first().map(|&p| setup.host.runtime().preview(&plan.release, p));
    let start = match start {
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => {
            if plan.refusal.is_none() {
                plan.refusal = Some(Refusal::new(exit::code_of(&e), format!("{e:#}")));
            }
            None
        }
        None => None,
    };
    let path = cfg.nginx.upstream_file.display().to_string();
    let diff = upstream::diff(plan.upstream_before.as_deref().unwrap_or_default(), &plan.upstream_after, &path);
    let code = plan.refusal.as_ref().map(|r| r.code).unwrap_or(Code::Ok);
    if json {
        print_json(&json!({
            "dry_run": true,
            "ok": code == Code::Ok,
            "exit_code": code.number(),
            "plan": plan,
            "diff": diff,
            "runtime": setup.host.runtime().kind(),
            "start": start,
        }))?;
    } else {
        print_plan(setup, &plan, &diff);
        if let Some(text) = &start {
            say!("each new instance ({} runtime) runs:\n{}", setup.host.runtime().kind(), crate::output::indent(text));
        }
    }
    crate::output::err_line("cutover: dry run: nothing was started, written or reloaded");
    Ok(code)
}

fn print_plan(setup: &Setup, plan: &Plan, diff: &str) {
    let c = &setup.config;
    say!("plan: {} {} ({}) for app {}", plan.kind, plan.release, plan.strategy, c.app.name);
    for n in &plan.notes {
        say!("  note: {n}");
    }
    for d in &plan.drift {
        say!("  drift: {d}");
    }
    if let Some(r) = &plan.refusal {
        say!("  WOULD REFUSE (exit {}): {}", r.code.number(), r.message);
    }
    for i in &plan.reclaim {
        say!("  stop idle previous {} on port {} to free its port", i.release, i.port);
    }
    if !plan.batches.is_empty() {
        print_batches(setup, plan);
    } else if !plan.new_ports.is_empty() {
        let ports: Vec<String> = plan.new_ports.iter().map(|p| p.to_string()).collect();
        say!("  start {} instance(s) of {} on port {}", plan.new_ports.len(), plan.release, ports.join(", "));
        say!(
            "  health-check GET {} until {} consecutive pass(es), deadline {}",
            plan::health_url(c, plan.new_ports[0]),
            c.health.successes,
            c.health.deadline
        );
    }
    for i in &plan.reuse {
        say!("  switch to {} already running on port {}", plan.release, i.port);
    }
    if plan.strategy == Strategy::Canary {
        let cc = &c.canary;
        let steps: Vec<String> = plan.canary_steps.iter().map(|p| format!("{p}%")).collect();
        say!(
            "  canary steps {} ({}), each written, nginx -t, reloaded and confirmed, held {} with analysis \
             (max_error_rate {}, min_requests {})",
            steps.join(" -> "),
            canary::describe_split(c),
            cc.interval,
            cc.max_error_rate.0,
            cc.min_requests
        );
        say!("  at 100%:");
    }
    if plan.batches.is_empty() {
        say!("  write {}, nginx -t, reload nginx and confirm new workers", c.nginx.upstream_file.display());
        say!("  wait for the old nginx workers to exit (up to {})", c.deploy.drain_timeout);
        if !c.deploy.verify.0.is_zero() {
            say!("  verify: keep probing the new release for {} (the old one stays as nginx backup)", c.deploy.verify);
        }
    }
    if plan.batches.is_empty() {
        for i in &plan.stop_after {
            say!("  stop {} on port {} (SIGTERM, SIGKILL after {})", i.release, i.port, c.app.stop_timeout);
        }
    }
    for i in &plan.keep {
        say!("  keep {} on port {} running idle for rollback (listed as nginx backup)", i.release, i.port);
    }
    let label = match plan.strategy {
        Strategy::Canary => "upstream diff at the first step",
        Strategy::Rolling => "upstream diff after the first batch",
        Strategy::AllAtOnce => "upstream diff while nothing runs (nginx answers the maintenance page)",
        _ => "upstream diff",
    };
    if diff.is_empty() {
        say!("upstream file unchanged");
    } else {
        say!("{label}:\n{diff}");
    }
}

/// The batches in order: which ports start, which leave, and how (README.md, "Rolling").
fn print_batches(setup: &Setup, plan: &Plan) {
    let c = &setup.config;
    let list = |v: &[u16]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    let state = setup.state().unwrap_or_default();
    let old = state.live.as_ref();
    // A resumed deploy goes on counting from the batches already in.
    let done = state.rolling.as_ref().map(|r| r.batch).unwrap_or(0);
    let n = done + plan.batches.len();
    let health = format!("health-check ({} pass(es), deadline {})", c.health.successes, c.health.deadline);
    let verify = if c.deploy.verify.0.is_zero() { String::new() } else { format!(", verify {}", c.deploy.verify) };
    for (k, b) in plan.batches.iter().enumerate() {
        let out = strategy::rolling::describe_ports(old, &b.retire);
        let start = list(&b.start);
        let r = &plan.release;
        let line = match (b.retire.is_empty(), b.maintenance, b.in_place()) {
            (true, _, _) => format!("start {r} on port {start} in the slots left empty, {health}, put in{verify}"),
            (false, Some(m), _) => format!(
                "take {out} out, drain, stop: nothing serves, nginx answers 503 (Retry-After {} s) from {}; start \
                 {r} on port {start}, {health}, put in{verify}",
                c.maintenance.retry_after_secs(),
                c.ports.bind.with_port(m)
            ),
            (false, None, true) => {
                format!("take {out} out (down), drain, stop; start {r} on port {start}, {health}, put in{verify}")
            }
            (false, None, false) => format!(
                "start {r} on port {start}, {health}; put in beside the others with {out} as backup{verify}; take \
                 {out} out, drain, stop"
            ),
        };
        say!("  batch {} of {n}: {line}", done + k + 1);
        if k + 1 < plan.batches.len() && !c.rolling.pause.0.is_zero() {
            say!(
                "  hold {} with access-log analysis of the new instances against the old (canary.max_error_rate {}, \
                 min_requests {})",
                c.rolling.pause,
                c.canary.max_error_rate.0,
                c.canary.min_requests
            );
        }
    }
    let on_failure = if plan.strategy == Strategy::AllAtOnce {
        "on failure: start the old release again on the same ports".to_string()
    } else {
        match c.rolling.on_failure {
            crate::config::OnFailure::Rollback => {
                "on failure: undo the failed batch, then roll the replaced batches back to the old release, the last \
                 first (rolling.on_failure = \"rollback\")"
                    .into()
            }
            crate::config::OnFailure::Pause => {
                "on failure: undo the failed batch and stop there with a mixed fleet (rolling.on_failure = \"pause\")"
                    .into()
            }
        }
    };
    say!("  {on_failure}");
}

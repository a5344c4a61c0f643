//! `cutover deploy`: resolve the plan, then run the transaction (or print the plan with `--dry-run`).

use anyhow::Result;
use serde_json::json;

use crate::cli::{DeployArgs, StrategyArg};
use crate::config::{Release, Strategy};
use crate::exit;
use crate::history::{self, Record};
use crate::progress::Progress;
use crate::render;
use crate::transaction::{self, Ctx, Outcome, Plan, Target};

pub fn run(ctx: &Ctx, args: DeployArgs, json: bool) -> Result<i32> {
    let release: Release = crate::release_ref::for_deploy(args.release.as_deref(), args.release_from_ref.as_deref())?;
    let strategy = match args.strategy {
        Some(StrategyArg::BlueGreen) => Strategy::BlueGreen,
        Some(StrategyArg::Canary) => Strategy::Canary,
        Some(StrategyArg::Rolling) => Strategy::Rolling,
        None => ctx.config.deploy.strategy,
    };
    if strategy == Strategy::Rolling {
        return Err(exit::usage(format!(
            "strategy {strategy} is not available in this version of cutover; use blue-green or canary"
        )));
    }
    let target = Target {
        kind: "deploy",
        release: release.clone(),
        strategy: strategy.to_string(),
        reuse: Vec::new(),
        start: ctx.config.deploy.instances.0 as usize,
    };
    let mut progress = Progress::new();
    if args.dry_run {
        let state = ctx.store.load(ctx.config.app.name.as_str())?;
        let mut plan = transaction::plan(ctx, &state, &target, false)?;
        let mut shown = strategy;
        if strategy == Strategy::Canary {
            if state.live.is_some() {
                plan.upstream_after = crate::canary::first_step_upstream(ctx, &state, &plan)?;
            } else {
                shown = Strategy::BlueGreen;
                eprintln!("cutover: nothing is live yet, so a canary deploy would run as blue-green");
            }
        }
        print_plan(ctx, &plan, shown, json)?;
        return Ok(exit::OK);
    }
    if strategy == Strategy::Canary {
        crate::canary::preflight(ctx)?;
    }
    let (_lock, mut state) = super::begin(ctx, args.lock.lock_wait, args.force, &progress)?;
    if let Some(c) = &state.canary {
        return Err(exit::Failure::error(
            exit::UNEXPECTED,
            format!(
                "a canary of {} is running at {}%: finish it with `cutover promote` or `cutover abort` first",
                c.deployment.release, c.weight
            ),
        ));
    }
    let from = state.live.as_ref().map(|d| d.release.clone());
    if strategy == Strategy::Canary && transaction::redeploys_live(&state, &target) {
        return Err(exit::usage(format!(
            "{release} is already live: a canary compares two releases; redeploy it with --strategy blue-green"
        )));
    }
    if transaction::redeploys_live(&state, &target) {
        progress.note(format!("{release} is already live: redeploying it on fresh instances (a restart)"));
    }
    if strategy == Strategy::Canary {
        if from.is_some() {
            return super::canary::deploy(ctx, &mut state, &target, &mut progress, json);
        }
        progress.note("nothing is live yet, so there is nothing to compare a canary with: deploying blue-green");
    }
    progress.note(format!(
        "deploying {release} ({strategy}) for {}{}",
        ctx.config.app.name,
        from.as_ref().map(|f| format!(", replacing {f}")).unwrap_or_default()
    ));
    let result = transaction::plan(ctx, &state, &target, true)
        .and_then(|plan| transaction::switch(ctx, &mut state, &target, plan, &mut progress));
    history::record(
        &ctx.store,
        Record {
            kind: "deploy",
            release: release.as_str(),
            from: from.clone(),
            strategy: Some(strategy.to_string()),
            ok: "ok",
        },
        &result,
        &progress,
    );
    let outcome = result?;
    report(ctx, "deploy", &strategy.to_string(), &outcome, from, &progress, json)?;
    Ok(exit::OK)
}

/// What is live now and how long each step took: text on stdout, or one JSON document.
pub fn report(
    ctx: &Ctx,
    kind: &str,
    strategy: &str,
    o: &Outcome,
    from: Option<String>,
    progress: &Progress,
    json: bool,
) -> Result<()> {
    if json {
        return super::print_json(&json!({
            "ok": true,
            "kind": kind,
            "app": ctx.config.app.name.as_str(),
            "release": o.live.release,
            "from": from,
            "live": o.live,
            "previous": o.previous,
            "stopped": o.stopped,
            "drained": o.drained,
            "strategy": strategy,
            "healthy_unix_ms": o.healthy_unix_ms,
            "switch_ms": o.switch_ms,
            "steps": progress.steps,
            "total_ms": crate::util::ms(progress.elapsed()),
        }));
    }
    say!("live:     {}", super::describe(ctx, &o.live));
    if let Some(p) = &o.previous {
        say!("previous: {}", super::describe(ctx, p));
    }
    let steps: Vec<String> = progress.steps.iter().map(|s| format!("{} {} ms", s.name, s.ms)).collect();
    say!("steps:    {}", steps.join(", "));
    say!("total:    {}", crate::util::human_ms(progress.elapsed()));
    Ok(())
}

fn print_plan(ctx: &Ctx, plan: &Plan, strategy: Strategy, json: bool) -> Result<()> {
    let path = ctx.config.nginx.upstream_file.display().to_string();
    let before = plan.upstream_before.clone().unwrap_or_default();
    let diff = render::diff(&before, &plan.upstream_after, &path);
    if json {
        return super::print_json(&json!({ "dry_run": true, "plan": plan, "diff": diff }));
    }
    let c = &ctx.config;
    say!("plan: {} {} ({}) for app {}", plan.kind, plan.release, plan.strategy, c.app.name);
    for i in &plan.reclaim {
        say!("  stop idle previous {} on port {} to free its port", i.release, i.port);
    }
    if !plan.new_ports.is_empty() {
        let ports: Vec<String> = plan.new_ports.iter().map(|p| p.to_string()).collect();
        say!("  start {} instance(s) of {} on port {}", plan.new_ports.len(), plan.release, ports.join(", "));
        say!(
            "  health-check GET {} until {} consecutive pass(es), deadline {}",
            ctx.health_url(plan.new_ports[0]),
            c.health.successes,
            c.health.deadline
        );
    }
    for p in &plan.reuse_ports {
        say!("  switch to {} already running on port {p}", plan.release);
    }
    if strategy == Strategy::Canary {
        let c = &c.canary;
        let steps: Vec<String> = c.steps.iter().map(|p| format!("{}%", p.0)).collect();
        say!(
            "  canary steps {} ({}), each written, nginx -t, reloaded and confirmed, held {} with analysis \
             (max_error_rate {}, min_requests {})",
            steps.join(" -> "),
            crate::canary::describe_split(ctx),
            c.interval,
            c.max_error_rate.0,
            c.min_requests
        );
        say!("  at 100%:");
    }
    say!("  write {path}, nginx -t, reload nginx and confirm new workers");
    say!("  wait for the old nginx workers to exit (up to {})", c.deploy.drain_timeout);
    for i in &plan.stop_after {
        say!("  stop {} on port {} (SIGTERM, SIGKILL after {})", i.release, i.port, c.app.stop_timeout);
    }
    for i in &plan.keep {
        say!("  keep {} on port {} running idle for rollback", i.release, i.port);
    }
    let label = if strategy == Strategy::Canary { "upstream diff at the first step" } else { "upstream diff" };
    if diff.is_empty() {
        say!("upstream file unchanged");
    } else {
        say!("{label}:\n{diff}");
    }
    eprintln!("cutover: dry run: nothing was started, written or reloaded");
    Ok(())
}

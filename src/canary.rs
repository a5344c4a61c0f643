//! The canary strategy (README.md, "Canary"): start the new release beside the live one, give it the
//! shares in `canary.steps` one reload at a time, hold each step for `canary.interval` while reading nginx's
//! access log, and either promote it (at 100 % it becomes the live release and the stable one is drained and
//! stopped as in a blue/green flip) or abort (weight 0, drained, stopped, exit 6).
//!
//! Between steps the canary is recorded in `state.canary`, so a manual canary (`canary.interval = "manual"`)
//! or one whose `cutover deploy` was killed can be driven later with `promote`, `abort` and `canary set`.
//! Every weight change is one [`transaction::apply_upstream`]: validated, reloaded and confirmed, and on
//! failure the previous step's upstream is put back.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::analysis::{self, Cursor, Tally};
use crate::config::{Interval, Sticky};
use crate::exit::{self, Failure};
use crate::nginx::Master;
use crate::plan;
use crate::proc;
use crate::progress::Progress;
use crate::state::{CanaryState, Deployment, Instance, State};
use crate::transaction::{self, Ctx, Outcome, Plan, Target};
use crate::util;

/// How a canary run ended without an error.
pub enum End {
    /// Manual interval: the canary runs at its current step and waits for `promote`, `abort` or `canary set`.
    Paused,
    /// Every step passed: the canary is the live release now.
    Promoted(Box<Outcome>),
}

/// Checks that need nginx's config, made before anything starts: a sticky split or a tester header only
/// work when the site proxies to the routing variable, and automatic steps need the access log.
pub fn preflight(ctx: &Ctx) -> Result<()> {
    let c = &ctx.config.canary;
    let needs_routing = c.sticky.is_some() || c.header.is_some();
    let needs_log = c.interval != Interval::Manual;
    if !needs_routing && !needs_log {
        return Ok(());
    }
    let dump = ctx.nginx.dump().context("could not read nginx's config to check the canary setup")?;
    if needs_routing {
        let var = format!("${}_upstream", plan::var_prefix(&ctx.config));
        let used = dump.lines().any(|l| {
            let code = l.split('#').next().unwrap_or("");
            code.find("proxy_pass").is_some_and(|at| code[at..].contains(&var))
        });
        if !used {
            return Err(exit::usage(format!(
                "canary.{} needs the site to route by cutover's variable, but no proxy_pass in nginx's config uses \
                 {var}; write `proxy_pass http://{var};` in the site's location (the upstream file defines it)",
                if c.sticky.is_some() { "sticky" } else { "header" }
            )));
        }
    }
    if needs_log {
        let path = ctx.config.access_log();
        let format = format!("cutover_{}", ctx.config.app.name);
        // The paths of every `access_log PATH cutover_<app>` in nginx's config, as nginx resolves them.
        let prefix = ctx.nginx.prefix().unwrap_or_default();
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let written: Vec<std::path::PathBuf> = dump
            .lines()
            .filter_map(|l| {
                let mut w = l.split('#').next().unwrap_or("").split_whitespace();
                if w.next() != Some("access_log") {
                    return None;
                }
                let file = w.next()?.trim_end_matches(';');
                w.any(|x| x.trim_end_matches(';') == format).then(|| prefix.join(file))
            })
            .collect();
        let problem = if !written.iter().any(|w| canon(w) == canon(&path)) {
            Some(if written.is_empty() {
                "no access_log in nginx's config writes that format".to_string()
            } else {
                let w: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                format!("nginx writes that format to {} instead", w.join(", "))
            })
        } else {
            std::fs::File::open(&path).err().map(|e| format!("cutover cannot read it: {e}"))
        };
        if let Some(problem) = problem {
            return Err(exit::usage(format!(
                "canary analysis reads {} in the {format} format, but {problem}; add `access_log {} {format};` to \
                 the site's server block and reload nginx, or point canary.access_log at the file nginx writes \
                 (or set canary.interval = \"manual\")",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// The first step's upstream for a plan, rendered before the canary starts (the ports are known).
pub fn first_step_upstream(ctx: &Ctx, state: &State, plan: &Plan) -> Result<String> {
    let live = state.live.as_ref().context("a canary needs a live release")?;
    let placeholder = Deployment::planned(&plan.release, plan.new_ports.iter().copied());
    let first = ctx.config.canary.steps[0].0;
    ctx.render(&plan::view(&ctx.config, state.generation + 1, Some(live), Some((&placeholder, first))))
}

/// `cutover deploy --strategy canary`: start and health-check the canary, apply the first step, then (unless
/// the interval is manual) hold, analyse and step on to 100 %.
pub fn deploy(ctx: &Ctx, state: &mut State, target: &Target, plan: Plan, progress: &mut Progress) -> Result<End> {
    let master = plan.master.clone().context("nginx master unknown")?;
    let mut env = transaction::hook_env(state, target, &plan);
    transaction::begin_op(ctx, state, target.kind, target.release.as_str(), plan.upstream_before.clone())?;
    let mut result = start(ctx, state, target, &plan, &master, &env, progress);
    if result.is_ok() && ctx.config.canary.interval != Interval::Manual {
        result = drive(ctx, state, progress).map(Some);
    }
    if let Err(e) = &result {
        transaction::on_failure(ctx, &mut env, e, progress);
    }
    match result? {
        Some(outcome) => {
            if let Err(e) = ctx.hook("after_switch", &env, progress) {
                progress.warn(format!("{e:#} (the deploy itself succeeded)"));
            }
            Ok(End::Promoted(Box::new(outcome)))
        }
        None => Ok(End::Paused),
    }
}

/// Start, health-check, and put the canary at its first step. On failure nothing is left behind.
fn start(
    ctx: &Ctx,
    state: &mut State,
    target: &Target,
    plan: &Plan,
    master: &Master,
    env: &BTreeMap<&str, String>,
    progress: &mut Progress,
) -> Result<Option<Outcome>> {
    let config = &ctx.config;
    let live = state.live.clone().context("a canary needs a live release")?;
    let steps: Vec<u8> = config.canary.steps.iter().map(|p| p.0).collect();
    let first = steps[0];
    // Rendered before anything starts (the view needs only the ports), so a template error starts nothing.
    let text = match first_step_upstream(ctx, state, plan) {
        Ok(t) => t,
        Err(e) => {
            state.in_progress = None;
            ctx.store.save(state)?;
            return Err(e);
        }
    };
    let mut launched = transaction::launch(ctx, state, target, plan, env, progress)?;
    let deployment =
        Deployment { release: target.release.to_string(), instances: launched.instances(), since: util::now_rfc3339() };
    let before = plan.upstream_before.as_deref();
    let old_workers =
        transaction::apply_recorded(ctx, state, master, before, &text, progress, |p| launched.stop(ctx, p))?;
    // Recorded before the settle: nginx routes to the canary from the reload on.
    state.generation += 1;
    state.upstream = Some(text);
    state.canary = Some(CanaryState { deployment, weight: first, steps, step: Some(0) });
    state.in_progress = None;
    ctx.store.save(state)?;
    launched.release();
    settle(ctx, master, &old_workers, progress);
    progress.note(format!("canary {} gets {first}% of traffic, {} {}%", target.release, live.release, 100 - first));
    Ok(None)
}

/// Hold the current step, analyse, move on; at the end promote. Aborts (exit 6) when analysis fails or the
/// canary dies.
pub fn drive(ctx: &Ctx, state: &mut State, progress: &mut Progress) -> Result<Outcome> {
    let Interval::Every(interval) = ctx.config.canary.interval else {
        anyhow::bail!("drive needs an automatic canary.interval");
    };
    loop {
        let c = state.canary.clone().context("no canary is running")?;
        // A hold that cannot analyse (the log became unreadable) must not leave the canary live unattended.
        let verdict =
            hold(ctx, state, interval.0, progress).unwrap_or_else(|e| Some(format!("analysis failed: {e:#}")));
        if let Some(reason) = verdict {
            return Err(abort_for(ctx, state, &reason, progress));
        }
        match c.next_step() {
            Some((next, pct)) if pct < 100 => set_weight(ctx, state, pct, Some(next), progress)?,
            _ => return finish(ctx, state, progress),
        }
    }
}

/// Abort the canary because `reason`, and turn that into the exit-6 error (or the abort's own failure).
fn abort_for(ctx: &Ctx, state: &mut State, reason: &str, progress: &mut Progress) -> anyhow::Error {
    let c = state.canary.clone();
    let stable = state.live.as_ref().map(|d| d.release.clone()).unwrap_or_default();
    progress.warn(format!("aborting the canary: {reason}"));
    match abort(ctx, state, progress) {
        Ok(_) => Failure::error(
            exit::CANARY_ABORTED,
            format!(
                "canary {} aborted: {reason}; all traffic is back on {stable} and the canary is stopped",
                c.map(|c| c.deployment.release).unwrap_or_default()
            ),
        ),
        Err(e) => e.context(format!("could not abort the canary after: {reason}")),
    }
}

/// One hold: watch the access log and the canary's processes for `duration`. `Some(reason)` means abort.
fn hold(ctx: &Ctx, state: &State, duration: Duration, progress: &mut Progress) -> Result<Option<String>> {
    let config = &ctx.config;
    let c = state.canary.as_ref().context("no canary is running")?;
    let live = state.live.as_ref().context("no stable release is live")?;
    let addrs = |d: &Deployment| -> HashSet<String> {
        d.instances.iter().map(|i| config.ports.bind.with_port(i.port)).collect()
    };
    let (canary_addrs, stable_addrs) = (addrs(&c.deployment), addrs(live));
    let path = config.access_log();
    let mut cursor = Cursor::at_end(&path)?;
    let mut tally = Tally::default();
    let t = Instant::now();
    loop {
        if let Some(dead) = c.deployment.instances.iter().find(|i| !proc::alive(i)) {
            return Ok(Some(format!(
                "canary {} on port {} (pid {}) exited during the hold",
                dead.release,
                dead.port,
                dead.pid.unwrap_or(0)
            )));
        }
        tally.add(&cursor.read_lines()?, &canary_addrs, &stable_addrs);
        if let Some(why) = analysis::judge(&tally, &config.canary) {
            progress.step("hold", t.elapsed(), format!("{}% held: {}", c.weight, summary(&tally)));
            return Ok(Some(why));
        }
        let elapsed = t.elapsed();
        if elapsed >= duration {
            break;
        }
        std::thread::sleep((duration - elapsed).min(Duration::from_millis(200)));
    }
    progress.step("hold", t.elapsed(), format!("{}% held: {}", c.weight, summary(&tally)));
    if tally.canary.requests == 0 && tally.stable.requests == 0 {
        // Fail closed: no line for either side means the analysis is blind (a log nginx does not write, a
        // site that bypasses this upstream), not that the canary is fine.
        return Ok(Some(format!(
            "no request to either release appeared in {} during the {} hold, so the canary could not be judged \
             (send traffic during a canary, check the site's access_log, or use canary.interval = \"manual\")",
            path.display(),
            humantime::format_duration(duration)
        )));
    }
    if tally.canary.requests < config.canary.min_requests {
        progress.warn(format!(
            "only {} canary request(s) in {} during the hold, fewer than canary.min_requests {}: not enough to \
             judge, moving on",
            tally.canary.requests,
            path.display(),
            config.canary.min_requests
        ));
    }
    Ok(None)
}

fn summary(t: &Tally) -> String {
    let p95 = |s: &analysis::Side| s.p95_ms().map(|p| format!(", p95 {p:.0} ms")).unwrap_or_default();
    format!(
        "canary {} requests, {} 5xx{}; stable {} requests, {} 5xx{}",
        t.canary.requests,
        t.canary.errors_5xx,
        p95(&t.canary),
        t.stable.requests,
        t.stable.errors_5xx,
        p95(&t.stable)
    )
}

/// Give the canary `pct` percent (0 to 100; the stable release keeps running either way).
pub fn set_weight(ctx: &Ctx, state: &mut State, pct: u8, step: Option<usize>, progress: &mut Progress) -> Result<()> {
    let master = ctx.nginx.master()?;
    let c = state.canary.clone().context("no canary is running")?;
    let text =
        ctx.render(&plan::view(&ctx.config, state.generation + 1, state.live.as_ref(), Some((&c.deployment, pct))))?;
    let old_workers = change_upstream(ctx, state, &master, "canary-step", &text, Vec::new(), progress)?;
    state.generation += 1;
    state.upstream = Some(text);
    if let Some(cs) = &mut state.canary {
        cs.weight = pct;
        cs.step = step;
    }
    state.in_progress = None;
    ctx.store.save(state)?;
    settle(ctx, &master, &old_workers, progress);
    let stable = state.live.as_ref().map(|d| d.release.as_str()).unwrap_or("-");
    progress.note(format!("canary {} gets {pct}% of traffic, {stable} {}%", c.deployment.release, 100 - pct));
    Ok(())
}

/// Wait for the old nginx workers to exit: until then they still accept connections and route them by the
/// previous weights, so a step (and its analysis window, and a sticky user's side) is in effect only after.
fn settle(ctx: &Ctx, master: &Master, old_workers: &[i32], progress: &mut Progress) {
    let consequence = "; they route by the previous weights until they exit";
    transaction::wait_old_workers(ctx, master, old_workers, "settle", consequence, progress);
}

/// One change of a running canary's upstream: recorded as the operation in progress (with `to_stop`, the
/// instances the next run must stop if this one is killed once they left state), written, validated,
/// reloaded, confirmed. On failure the previous file is back and the canary stays where it was. Returns the
/// old workers, for the settle or the drain.
fn change_upstream(
    ctx: &Ctx,
    state: &mut State,
    master: &Master,
    kind: &str,
    text: &str,
    to_stop: Vec<Instance>,
    progress: &mut Progress,
) -> Result<Vec<i32>> {
    let c = state.canary.clone().context("no canary is running")?;
    let before = ctx.read_upstream()?;
    transaction::begin_op(ctx, state, kind, &c.deployment.release, before.clone())?;
    if let Some(op) = &mut state.in_progress {
        op.started = to_stop;
    }
    transaction::apply_recorded(ctx, state, master, before.as_deref(), text, progress, |_| {}).map_err(|e| {
        if transaction::is_unsettled(&e) {
            e
        } else {
            e.context(format!("the canary stays at {}%", c.weight))
        }
    })
}

/// Promote: the canary becomes the live release, the stable one is drained and stopped (or kept idle with
/// `deploy.keep_previous`), exactly as at a blue/green flip.
pub fn finish(ctx: &Ctx, state: &mut State, progress: &mut Progress) -> Result<Outcome> {
    let config = &ctx.config;
    let master = ctx.nginx.master()?;
    let c = state.canary.clone().context("no canary is running")?;
    let old_live = state.live.clone();
    let new_live = Deployment { since: util::now_rfc3339(), ..c.deployment.clone() };
    let text = ctx.render(&plan::view(config, state.generation + 1, Some(&new_live), None))?;
    let t = Instant::now();
    let old_workers = change_upstream(ctx, state, &master, "promote", &text, Vec::new(), progress)?;
    // An older previous release goes; the release that was stable is kept idle or stopped.
    let mut stop: Vec<Instance> =
        state.previous.iter().flat_map(|d| d.instances.iter()).filter(|i| proc::alive(i)).cloned().collect();
    let mut keep = Vec::new();
    for i in old_live.iter().flat_map(|d| d.instances.iter()) {
        if config.deploy.keep_previous && proc::alive(i) {
            keep.push(format!("{} on {}", i.release, i.port));
        } else {
            stop.push(i.clone());
        }
    }
    // One write: the canary is live, the stable release is the previous one, and what is to be stopped is
    // recorded, so a run killed during the drain leaves state true and the next run finishes the stop.
    state.generation += 1;
    state.upstream = Some(text.clone());
    state.live = Some(new_live.clone());
    state.canary = None;
    state.previous = transaction::demote(old_live, state.previous.take());
    if let Some(op) = &mut state.in_progress {
        op.started = stop.clone();
    }
    ctx.store.save(state)?;
    progress.note(format!("canary {} promoted: it has all traffic", new_live.release));
    let (drained, drained_at, stopped) = transaction::drain_and_stop(ctx, &master, &old_workers, &stop, progress);
    if !keep.is_empty() {
        progress.note(format!("kept {} running idle for a fast rollback (deploy.keep_previous)", keep.join(", ")));
    }
    state.previous = transaction::demote(state.previous.take(), None);
    state.in_progress = None;
    ctx.store.save(state)?;
    Ok(Outcome {
        live: new_live,
        previous: state.previous.clone(),
        stopped,
        upstream: text,
        drained,
        healthy_unix_ms: None,
        switch_ms: util::ms(drained_at.duration_since(t)),
    })
}

/// Abort: weight 0 (the canary leaves the upstream), reload, wait for the old workers, stop the canary.
/// Returns the canary instances that were stopped.
pub fn abort(ctx: &Ctx, state: &mut State, progress: &mut Progress) -> Result<Vec<Instance>> {
    let master = ctx.nginx.master()?;
    let c = state.canary.clone().context("no canary is running")?;
    let text = ctx.render(&plan::view(&ctx.config, state.generation + 1, state.live.as_ref(), None))?;
    // The canary's instances are recorded to stop, so a run killed after the canary left state stops them.
    let old_workers = change_upstream(ctx, state, &master, "abort", &text, c.deployment.instances.clone(), progress)?;
    state.generation += 1;
    state.upstream = Some(text);
    state.canary = None;
    ctx.store.save(state)?;
    let (_, _, stopped) = transaction::drain_and_stop(ctx, &master, &old_workers, &c.deployment.instances, progress);
    state.in_progress = None;
    ctx.store.save(state)?;
    Ok(stopped)
}

/// The sticky key in words, for status and progress lines.
pub fn describe_split(ctx: &Ctx) -> String {
    let c = &ctx.config.canary;
    let mut parts = Vec::new();
    match &c.sticky {
        Some(Sticky::Ip) => parts.push("sticky by client address".to_string()),
        Some(Sticky::Cookie(n)) => parts.push(format!("sticky by cookie {n}")),
        None => parts.push("weighted per request".to_string()),
    }
    if let Some(h) = &c.header {
        parts.push(format!("header {h} forces the canary"));
    }
    parts.join(", ")
}

//! The canary strategy (README.md, "Canary"): start the new release beside the live one, give it the shares in
//! `canary.steps` one reload at a time, hold each step for `canary.interval` while reading nginx's access log,
//! and either promote it (at 100 % it becomes the live release: flip, drain, verify, retire, as blue/green) or
//! abort (it leaves the upstream, drained, stopped, exit 6).
//!
//! Between steps the canary is recorded in `state.canary`, so a manual canary (`canary.interval = "manual"`) or
//! one whose `cutover deploy` was killed can be driven later with `promote`, `abort` and `canary set`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::analysis::{self, Cursor, Tally};
use super::blue_green::{self, end_failed, start_env};
use super::Switched;
use crate::config::{Interval, Sticky};
use crate::engine::flip::is_unsettled;
use crate::engine::{Done, Engine, Moved, OpMeta};
use crate::exit::{self, Code, Failure, Returned};
use crate::host::{Host, Status};
use crate::journal::{CanaryState, Change, Deployment, Instance, OpKind, Outcome};
use crate::nginx::dump;
use crate::plan::Plan;
use crate::upstream::Names;

/// How a canary run ended without an error.
pub enum End {
    /// Manual interval (or a step short of 100 %): the canary runs at its step and waits for `promote`,
    /// `abort` or `canary set`.
    Paused,
    /// Every step passed: the canary is the live release now.
    Promoted(Box<Switched>),
}

/// Checks that need nginx's config, made before anything starts: a sticky split or a tester header only work
/// when the site proxies to the routing variable, and automatic steps need the access log.
pub fn preflight(cfg: &crate::config::Config, host: &dyn Host, prefix: &std::path::Path) -> Result<()> {
    let c = &cfg.canary;
    let needs_routing = c.sticky.is_some() || c.header.is_some();
    let needs_log = c.interval != Interval::Manual;
    preflight_for(cfg, host, prefix, needs_routing, needs_log, "or set canary.interval = \"manual\"")
}

/// The checks of [`preflight`], for what a deploy needs: the routing variable, the access log analysis reads.
/// `instead` ends the access-log message with the way to do without analysis.
pub fn preflight_for(
    cfg: &crate::config::Config,
    host: &dyn Host,
    prefix: &std::path::Path,
    needs_routing: bool,
    needs_log: bool,
    instead: &str,
) -> Result<()> {
    let c = &cfg.canary;
    if !needs_routing && !needs_log {
        return Ok(());
    }
    let text = host.nginx().dump().context("could not read nginx's config to check the canary setup")?;
    let names = Names::of(cfg);
    if needs_routing && !dump::proxies_to(&text, &names.routing_var) {
        let var = &names.routing_var;
        return Err(exit::usage(format!(
            "canary.{} needs the site to route by cutover's variable, but no proxy_pass in nginx's config uses \
             {var}; write `proxy_pass http://{var};` in the site's location (the upstream file defines it)",
            if c.sticky.is_some() { "sticky" } else { "header" }
        )));
    }
    if needs_log {
        let path = cfg.access_log();
        let format = &names.log_format;
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let written = dump::access_logs(&text, format, prefix);
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
                 ({instead})",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// `cutover deploy --strategy canary`: start and health-check the canary, apply the first step, then (unless the
/// interval is manual) hold, analyse and step on to 100 %.
pub fn deploy(eng: &mut Engine, plan: &Plan) -> Result<End> {
    eng.begin(plan.kind, &plan.release, Some(plan.strategy))?;
    let result = deploy_steps(eng, plan);
    if let Err(e) = &result {
        end_failed(eng, e)?;
    }
    result
}

fn deploy_steps(eng: &mut Engine, plan: &Plan) -> Result<End> {
    blue_green::reclaim(eng, &plan.reclaim)?;
    let env = start_env(eng, plan);
    let launched = eng.launch(&plan.release, &plan.new_ports, &env)?;
    let deployment = Deployment {
        release: plan.release.clone(),
        instances: launched.instances.clone(),
        since: crate::util::now_rfc3339(),
    };
    let steps = plan.canary_steps.clone();
    let first = steps[0];
    let automatic = eng.cfg.canary.interval != Interval::Manual;
    let canary = CanaryState { deployment, weight: first, steps, step: Some(0), automatic };
    let applied = match eng.apply(Change::Canary(canary)) {
        Ok(a) => a,
        Err(e) => {
            if !is_unsettled(&e) {
                eng.undo_launch(&launched.instances);
            }
            return Err(e);
        }
    };
    settle(eng, &applied);
    report_share(eng);
    if !automatic {
        eng.journal.done()?;
        return Ok(End::Paused);
    }
    drive(eng).map(|s| End::Promoted(Box::new(s)))
}

/// Wait for the old nginx workers: until they exit they still route by the previous weights, so a step (its
/// analysis window, a sticky user's side) is in effect only after.
fn settle(eng: &mut Engine, applied: &crate::engine::flip::Applied) {
    eng.drain(applied, "settle", "; they route by the previous weights until they exit");
}

fn report_share(eng: &Engine) {
    if let (Some(c), Some(live)) = (&eng.state().canary, &eng.state().live) {
        eng.progress.note(format!(
            "canary {} gets {}% of traffic, {} {}%",
            c.deployment.release,
            c.weight,
            live.release,
            100 - c.weight
        ));
    }
}

/// Hold the current step, analyse, move on; at the end promote. Aborts (exit 6) when analysis fails or the
/// canary dies. Runs inside an operation, and finishes it.
pub fn drive(eng: &mut Engine) -> Result<Switched> {
    let Interval::Every(interval) = eng.cfg.canary.interval else {
        anyhow::bail!("drive needs an automatic canary.interval");
    };
    loop {
        let c = eng.state().canary.clone().context("no canary is running")?;
        // A hold that cannot analyse (the log became unreadable) must not leave the canary live unattended.
        let verdict = hold(eng, interval.0).unwrap_or_else(|e| Some(format!("analysis failed: {e:#}")));
        if let Some(reason) = verdict {
            return Err(abort_for(eng, &reason));
        }
        match c.next_step() {
            Some((next, pct)) if pct < 100 => {
                if let Err(e) = set_weight(eng, pct, Some(next)) {
                    // A rejected step leaves the canary at the previous one, recorded; the run ends.
                    if !is_unsettled(&e) {
                        eng.journal.done()?;
                    }
                    return Err(e);
                }
            }
            _ => return finish(eng),
        }
    }
}

/// Abort because `reason`: the abort's own failure, or the exit-6 error.
fn abort_for(eng: &mut Engine, reason: &str) -> anyhow::Error {
    let c = eng.state().canary.clone();
    let stable = eng.live_release().unwrap_or_default();
    eng.progress.warn(format!("aborting the canary: {reason}"));
    match abort(eng) {
        Ok(_) => Failure::returned(
            Code::CanaryAborted,
            format!(
                "canary {} aborted: {reason}; all traffic is back on {stable} and the canary is stopped",
                c.map(|c| c.deployment.release).unwrap_or_default()
            ),
            Returned::Aborted,
        ),
        Err(e) => e.context(format!("could not abort the canary after: {reason}")),
    }
}

/// One hold of the canary's current step. `Some(reason)` means abort.
fn hold(eng: &mut Engine, duration: Duration) -> Result<Option<String>> {
    let state = eng.state().clone();
    let c = state.canary.as_ref().context("no canary is running")?;
    let live = state.live.as_ref().context("no stable release is live")?;
    watch(
        eng,
        duration,
        &Watch {
            new: &c.deployment.instances,
            old: &live.instances,
            label: format!("{}% held", c.weight),
            subject: "canary",
            blind_fix: "send traffic during a canary, check the site's access_log, or use canary.interval = \"manual\"",
        },
    )
}

/// What a hold watches: new instances against old ones, and how its messages name them.
pub struct Watch<'a> {
    pub new: &'a [Instance],
    pub old: &'a [Instance],
    /// What is held, for the progress line: `10% held`, `batch 2 of 4 held`.
    pub label: String,
    /// What a process that exits is: `canary`, `new instance`.
    pub subject: &'a str,
    /// How to get a judgement when the log shows no request at all.
    pub blind_fix: &'a str,
}

/// Hold for `duration`: read the access log from now on, tally each side (canary.* bounds judge the new side
/// against the old one), and watch the new instances' processes. `Some(reason)` means abort: a new instance
/// exited, analysis found it worse than the bounds, or the log showed no request to either side (the analysis
/// is blind, so it fails closed). Shared by the canary's steps and the pauses between rolling batches.
pub fn watch(eng: &mut Engine, duration: Duration, w: &Watch) -> Result<Option<String>> {
    let cfg = eng.cfg;
    let addrs = |d: &[Instance]| -> HashSet<String> { d.iter().map(|i| cfg.ports.bind.with_port(i.port)).collect() };
    let (new_addrs, old_addrs) = (addrs(w.new), addrs(w.old));
    let path = cfg.access_log();
    let mut cursor = Cursor::at_end(&path)?;
    let mut tally = Tally::default();
    let t = Instant::now();
    let started = eng.host.now();
    loop {
        if let Some(dead) = w.new.iter().find(|i| eng.host.runtime().status(i) != Status::Running) {
            return Ok(Some(format!("{} {} exited during the hold", w.subject, dead.describe())));
        }
        tally.add(&cursor.read_lines()?, &new_addrs, &old_addrs);
        if let Some(why) = analysis::judge(&tally, &cfg.canary) {
            eng.progress.step("hold", t.elapsed(), format!("{}: {}", w.label, summary(&tally)));
            return Ok(Some(why));
        }
        let elapsed = eng.host.now() - started;
        if elapsed >= duration {
            break;
        }
        eng.host.sleep((duration - elapsed).min(Duration::from_millis(200)));
    }
    tally.add(&cursor.read_lines()?, &new_addrs, &old_addrs);
    eng.progress.step("hold", t.elapsed(), format!("{}: {}", w.label, summary(&tally)));
    if tally.canary.requests == 0 && tally.stable.requests == 0 {
        // Fail closed: no line for either side means the analysis is blind (a log nginx does not write, a site
        // that bypasses this upstream), not that the new release is fine.
        return Ok(Some(format!(
            "no request to either release appeared in {} during the {} hold, so the {} could not be judged ({})",
            path.display(),
            humantime::format_duration(duration),
            w.subject,
            w.blind_fix
        )));
    }
    if tally.canary.requests < cfg.canary.min_requests {
        eng.progress.warn(format!(
            "only {} request(s) to the new release in {} during the hold, fewer than canary.min_requests {}: not \
             enough to judge, moving on",
            tally.canary.requests,
            path.display(),
            cfg.canary.min_requests
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

/// Give the canary `pct` percent (0 to 100; the stable release keeps running either way), inside an operation.
pub fn set_weight(eng: &mut Engine, pct: u8, step: Option<usize>) -> Result<()> {
    let mut c = eng.state().canary.clone().context("no canary is running")?;
    let was = c.weight;
    c.weight = pct;
    c.step = step;
    let applied = eng.apply(Change::Canary(c)).map_err(|e| {
        if is_unsettled(&e) {
            e
        } else {
            e.context(format!("the canary stays at {was}%"))
        }
    })?;
    settle(eng, &applied);
    report_share(eng);
    Ok(())
}

/// Promote: the canary becomes the live release, the stable one is drained, verified against and retired (or
/// kept idle with `deploy.keep_previous`), exactly as at a blue/green flip. Finishes the operation.
pub fn finish(eng: &mut Engine) -> Result<Switched> {
    let c = eng.state().canary.clone().context("no canary is running")?;
    let to = Deployment { since: crate::util::now_rfc3339(), ..c.deployment.clone() };
    eng.progress.note(format!("canary {} promoted: it gets all traffic", to.release));
    blue_green::switch(eng, to, Instant::now(), None, &[])
}

/// Abort: the canary leaves the upstream, the old workers exit, it is stopped. Finishes the operation. Returns
/// the stopped instances.
pub fn abort(eng: &mut Engine) -> Result<Vec<Instance>> {
    let applied = eng.apply(Change::CanaryEnd)?;
    eng.drain(&applied, "drain", "; stopping the canary anyway");
    let to_stop = eng.to_stop();
    let stopped = eng.stop(&to_stop, "stop")?;
    eng.journal.done()?;
    Ok(stopped)
}

/// The sticky key in words, for status and progress lines.
pub fn describe_split(cfg: &crate::config::Config) -> String {
    let c = &cfg.canary;
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

fn need_canary(eng: &Engine) -> Result<CanaryState> {
    eng.state().canary.clone().ok_or_else(|| {
        exit::refused(
            "no canary is running for this app (start one with `cutover deploy --release R --strategy canary`)",
        )
    })
}

fn meta(kind: OpKind, release: &str) -> OpMeta {
    OpMeta { kind, release: release.to_string(), strategy: Some(super::Strategy::Canary) }
}

/// `cutover promote` as one operation: the next step, or past the last one the switch. `None`: still a canary.
pub fn promote(eng: &mut Engine) -> Result<Option<Switched>> {
    let c = need_canary(eng)?;
    let to = c.next_step().filter(|&(_, pct)| pct < 100);
    let release = c.deployment.release.clone();
    eng.run(&meta(OpKind::Promote, &release), |e| {
        e.begin(OpKind::Promote, &release, Some(super::Strategy::Canary))?;
        let r = match to {
            Some((next, pct)) => {
                e.progress.note(format!("promoting canary {release} from {}% to {pct}%", c.weight));
                set_weight(e, pct, Some(next))
                    .and_then(|()| e.journal.done())
                    .map(|()| Done::with(None, Moved::Nothing, Outcome::CanaryStep))
            }
            None => finish(e).map(|s| Done::forward(Some(s))),
        };
        if let Err(err) = &r {
            end_failed(e, err)?;
        }
        r
    })
}

/// `cutover abort` (or `rollback` during a canary, `kind`) as one operation. Returns the stopped instances.
pub fn abort_op(eng: &mut Engine, kind: OpKind) -> Result<Vec<Instance>> {
    let c = need_canary(eng)?;
    let release = c.deployment.release.clone();
    eng.progress.note(format!("aborting canary {release} at {}%", c.weight));
    // Not "ok": an aborted canary was never the live release, so `rollback --to` must not offer it.
    eng.run(&meta(kind, &release), |e| {
        e.begin(kind, &release, Some(super::Strategy::Canary))?;
        let r = abort(e);
        if let Err(err) = &r {
            end_failed(e, err)?;
        }
        r.map(|s| Done::with(s, Moved::Back, Outcome::Aborted))
    })
}

/// `cutover canary set PCT` as one operation.
pub fn set_op(eng: &mut Engine, percent: u8) -> Result<()> {
    let c = need_canary(eng)?;
    let step = c.steps.iter().position(|&s| s == percent);
    let release = c.deployment.release.clone();
    eng.progress.note(format!("setting canary {release} from {}% to {percent}%", c.weight));
    eng.run(&meta(OpKind::CanarySet, &release), |e| {
        e.begin(OpKind::CanarySet, &release, Some(super::Strategy::Canary))?;
        let r = set_weight(e, percent, step).and_then(|()| e.journal.done());
        if let Err(err) = &r {
            end_failed(e, err)?;
        }
        r.map(|()| Done::with((), Moved::Nothing, Outcome::CanaryStep))
    })
}

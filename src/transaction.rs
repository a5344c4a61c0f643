//! The deploy transaction (README.md, "The deploy transaction"): start the target release, health-check it,
//! render and validate the upstream, reload nginx and confirm it, drain and stop what was live, commit.
//!
//! Every side effect is recorded in `state.in_progress` before it happens and undone in reverse if a later step
//! fails, so a failed run leaves the host as it found it and a killed run leaves enough for the next one to
//! clean up ([`recover`]).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::{Config, Release};
use crate::exit::{Failure, UNEXPECTED, UNHEALTHY};
use crate::health;
use crate::nginx::{Master, Nginx};
use crate::plan;
use crate::proc;
use crate::progress::Progress;
use crate::render;
use crate::state::{Deployment, Instance, Operation, State, Store};
use crate::util;

/// Everything a command needs: the validated config, the state directory, nginx, the template.
pub struct Ctx {
    pub config: Config,
    pub store: Store,
    pub nginx: Nginx,
    pub template: Option<String>,
}

impl Ctx {
    pub fn new(config: Config) -> Result<Ctx> {
        let store = Store::new(config.state_dir());
        let nginx = Nginx::new(&config.nginx);
        let template = config.template_text()?;
        Ok(Ctx { config, store, nginx, template })
    }

    pub fn render(&self, view: &render::View) -> Result<String> {
        render::render(self.template.as_deref(), view)
    }

    /// The upstream file on disk, `None` when there is none.
    pub fn read_upstream(&self) -> Result<Option<String>> {
        let path = &self.config.nginx.upstream_file;
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read upstream file {}", path.display())),
        }
    }

    /// Put the upstream file back as it was (`None`: it did not exist).
    pub fn restore_upstream(&self, before: Option<&str>) -> Result<()> {
        let path = &self.config.nginx.upstream_file;
        match before {
            Some(text) => util::write_atomic(path, text.as_bytes(), 0o644)
                .with_context(|| format!("could not restore {}", path.display())),
            None => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("could not remove {}", path.display())),
            },
        }
    }

    pub fn health_url(&self, port: u16) -> String {
        format!("http://{}{}", self.config.ports.bind.with_port(port), self.config.health.path)
    }

    /// Run a hook if configured. Its stdout goes to our stderr, so that `--json` stdout stays one document.
    pub fn hook(&self, name: &str, env: &BTreeMap<&str, String>, progress: &Progress) -> Result<()> {
        let h = &self.config.hooks;
        let cmd = match name {
            "before_start" => &h.before_start,
            "after_healthy" => &h.after_healthy,
            "after_switch" => &h.after_switch,
            "after_rollback" => &h.after_rollback,
            "on_failure" => &h.on_failure,
            _ => &None,
        };
        let Some(cmd) = cmd else { return Ok(()) };
        let started = Instant::now();
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(cmd).stdin(Stdio::null()).env("CUTOVER_HOOK", name);
        c.env("CUTOVER_APP", self.config.app.name.as_str());
        for (k, v) in env {
            c.env(k, v);
        }
        if let Some(dir) = &self.config.app.workdir {
            c.current_dir(dir);
        }
        let stderr = std::io::stderr();
        c.stdout(Stdio::from(std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned()?));
        let status = c.status().with_context(|| format!("could not run hook {name}"))?;
        progress.note(format!(
            "hook {name} exited {} ({})",
            status.code().unwrap_or(-1),
            util::human_ms(started.elapsed())
        ));
        if !status.success() {
            anyhow::bail!(
                "hook {name} ({cmd:?}) exited {}",
                status.code().map(|c| c.to_string()).unwrap_or("on a signal".into())
            );
        }
        Ok(())
    }
}

/// What a deploy or rollback should end with.
pub struct Target {
    /// "deploy" or "rollback".
    pub kind: &'static str,
    pub release: Release,
    pub strategy: String,
    /// Instances of the release that already run and are healthy (a rollback to a kept previous release).
    pub reuse: Vec<Instance>,
    /// How many new instances to start.
    pub start: usize,
}

/// What a finished switch did.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub live: Deployment,
    pub previous: Option<Deployment>,
    pub stopped: Vec<Instance>,
    pub upstream: String,
    pub drained: bool,
    /// When cutover saw the last new instance pass its health check (Unix ms), for measuring detection lag.
    /// `None` when the switch started no instance of its own (a canary promoted later).
    pub healthy_unix_ms: Option<u64>,
    /// From that moment until traffic was fully on the new release and the old nginx workers were gone.
    pub switch_ms: u64,
}

/// The plan, resolved before any side effect.
#[derive(Debug, serde::Serialize)]
pub struct Plan {
    pub kind: &'static str,
    pub release: String,
    pub strategy: String,
    pub new_ports: Vec<u16>,
    pub reuse_ports: Vec<u16>,
    /// Previous instances stopped first to free their ports (the pool had no other idle port).
    pub reclaim: Vec<Instance>,
    pub stop_after: Vec<Instance>,
    pub keep: Vec<Instance>,
    pub upstream_before: Option<String>,
    pub upstream_after: String,
    #[serde(skip)]
    pub master: Option<Master>,
}

/// Compare state with reality and say what differs. Never changes anything.
pub fn reconcile(ctx: &Ctx, state: &State) -> Result<Vec<String>> {
    let mut drift = Vec::new();
    let groups = state.live.iter().map(|d| ("live", d)).chain(state.canary.iter().map(|c| ("canary", &c.deployment)));
    for (what, d) in groups {
        for i in &d.instances {
            let addr = std::net::SocketAddr::new(ctx.config.ports.bind.0, i.port);
            if !proc::alive(i) {
                drift.push(format!(
                    "{what} {} on port {} (pid {}) is not running",
                    d.release,
                    i.port,
                    i.pid.map(|p| p.to_string()).unwrap_or("-".into())
                ));
            } else if !proc::listening(addr) {
                drift.push(format!("{what} {} (pid {}) is not listening on {addr}", d.release, i.pid.unwrap_or(0)));
            }
        }
    }
    if let Some(expected) = &state.upstream {
        match ctx.read_upstream()? {
            Some(disk) if &disk == expected => {}
            Some(_) => drift.push(format!(
                "upstream file {} differs from what cutover last wrote (see `cutover render --diff`)",
                ctx.config.nginx.upstream_file.display()
            )),
            None => drift.push(format!("upstream file {} is missing", ctx.config.nginx.upstream_file.display())),
        }
    }
    Ok(drift)
}

/// Finish what a killed run left behind: put the upstream file back to what state says is live, make nginx run
/// it, and only then stop the instances that run left. Runs under the lock, before this command's own
/// operation, so any operation found in progress belongs to a run that is gone.
///
/// When the killed run had touched the upstream, nginx is reloaded and confirmed even if the file on disk
/// already matches: the running nginx may still be on the killed run's file (its reload, or an earlier
/// recovery's, never completed), and the workers of that file may still route to the instances about to be
/// stopped. `in_progress` is cleared only at the end, so a recovery that fails or is killed is redone.
pub fn recover(ctx: &Ctx, state: &mut State, progress: &Progress) -> Result<()> {
    let Some(op) = state.in_progress.clone() else { return Ok(()) };
    progress.warn(format!(
        "a `{}` of {} started at {} by pid {} did not finish; cleaning up after it",
        op.kind, op.release, op.started_at, op.pid
    ));
    let kept: Vec<i32> = state
        .live
        .iter()
        .chain(state.previous.iter())
        .chain(state.canary.iter().map(|c| &c.deployment))
        .flat_map(|d| d.instances.iter().filter_map(|i| i.pid))
        .collect();
    if op.upstream_touched {
        let expected = state.upstream.clone().or(op.upstream_before.clone());
        if ctx.read_upstream()? != expected {
            ctx.restore_upstream(expected.as_deref())?;
            progress.warn(format!("restored {} to what is live", ctx.config.nginx.upstream_file.display()));
        }
        ctx.nginx.test().context("the restored upstream file does not pass nginx -t")?;
        let master = ctx.nginx.master()?;
        let old = master.workers();
        ctx.nginx.reload(&master)?;
        ctx.nginx.confirm(&master, &old).context("could not confirm the reload that puts back what is live")?;
        if !master.wait_gone(&old, ctx.config.deploy.drain_timeout.0) {
            progress.warn("old nginx workers still run after deploy.drain_timeout; stopping leftovers anyway");
        }
        progress.warn("nginx reloaded and confirmed on what is live; the killed run's nginx workers are gone");
    }
    for inst in op.started.iter().filter(|i| i.pid.is_some_and(|p| !kept.contains(&p))) {
        let how = proc::stop(inst, ctx.config.app.stop_timeout.0);
        progress.warn(format!("stopped leftover {} on port {} ({how:?})", inst.release, inst.port));
    }
    state.in_progress = None;
    ctx.store.save(state)?;
    Ok(())
}

/// Whether `target` is the release that is live now (a redeploy, not a change of release).
pub fn redeploys_live(state: &State, target: &Target) -> bool {
    state.live.as_ref().is_some_and(|l| l.release == target.release.as_str())
}

/// Resolve the plan: ports, what stops, the rendered upstream. No side effects.
pub fn plan(ctx: &Ctx, state: &State, target: &Target, need_master: bool) -> Result<Plan> {
    let config = &ctx.config;
    let master = if need_master { Some(ctx.nginx.master()?) } else { ctx.nginx.master().ok() };
    let reuse_pids: Vec<i32> = target.reuse.iter().filter_map(|i| i.pid).collect();
    let mut taken: Vec<(u16, String)> = Vec::new();
    for d in state.live.iter().chain(state.canary.iter().map(|c| &c.deployment)) {
        for i in &d.instances {
            taken.push((i.port, format!("live {} (pid {})", d.release, i.pid.unwrap_or(0))));
        }
    }
    let prev_alive: Vec<Instance> = state
        .previous
        .iter()
        .flat_map(|d| d.instances.iter())
        .filter(|i| proc::alive(i) && !i.pid.is_some_and(|p| reuse_pids.contains(&p)))
        .cloned()
        .collect();
    for i in &target.reuse {
        taken.push((i.port, format!("{} being switched to", i.release)));
    }
    let mut with_prev = taken.clone();
    for i in &prev_alive {
        with_prev.push((i.port, format!("previous {} kept running (pid {})", i.release, i.pid.unwrap_or(0))));
    }
    let (mut ports, busy) = plan::pick_ports(config, target.start, &with_prev);
    // The pool is full: an idle previous release (not in the upstream) gives up its ports.
    let mut reclaim = Vec::new();
    let pool = config.pool();
    for i in &prev_alive {
        if ports.len() >= target.start {
            break;
        }
        if pool.contains(&i.port) && !ports.contains(&i.port) {
            reclaim.push(i.clone());
            ports.push(i.port);
        }
    }
    if ports.len() < target.start {
        let why: Vec<String> = busy.iter().map(|b| format!("{} {}", b.port, b.why)).collect();
        return Err(Failure::error(
            UNEXPECTED,
            format!(
                "no idle port in ports.pool for {} new instance(s): {}; free them or widen ports.pool",
                target.start,
                why.join(", ")
            ),
        ));
    }
    ports.truncate(target.start);
    // Previous instances on ports the picks did not need still have to fit once the new release is live.
    let mut stop_after = Vec::new();
    let mut keep = Vec::new();
    let reclaim_pids: Vec<i32> = reclaim.iter().filter_map(|i| i.pid).collect();
    // Redeploying the live release (a restart on fresh instances): the previous release stays what it was, and
    // the instances being replaced are stopped, since keeping a copy of what is live is no rollback target.
    let same = redeploys_live(state, target);
    for i in &prev_alive {
        if !same && !i.pid.is_some_and(|p| reclaim_pids.contains(&p)) {
            stop_after.push(i.clone());
        }
    }
    if let Some(live) = &state.live {
        for i in &live.instances {
            if i.pid.is_some_and(|p| reuse_pids.contains(&p)) {
                continue;
            }
            if !same && config.deploy.keep_previous && proc::alive(i) {
                keep.push(i.clone());
            } else {
                stop_after.push(i.clone());
            }
        }
    }
    if let Some(c) = &state.canary {
        stop_after.extend(c.deployment.instances.iter().cloned());
    }
    let placeholder =
        Deployment::planned(target.release.as_str(), target.reuse.iter().map(|i| i.port).chain(ports.iter().copied()));
    let upstream_after = ctx.render(&plan::view(config, state.generation + 1, Some(&placeholder), None))?;
    Ok(Plan {
        kind: target.kind,
        release: target.release.to_string(),
        strategy: target.strategy.clone(),
        new_ports: ports,
        reuse_ports: target.reuse.iter().map(|i| i.port).collect(),
        reclaim,
        stop_after,
        keep,
        upstream_before: ctx.read_upstream()?,
        upstream_after,
        master,
    })
}

/// A started-but-not-committed instance, with the child handle so this run can reap it.
struct Started {
    child: Child,
    instance: Instance,
}

/// Undo for instances this run started.
fn stop_started(ctx: &Ctx, started: &mut [Started], progress: &mut Progress) {
    let t = Instant::now();
    for s in started.iter_mut() {
        let how = proc::stop(&s.instance, ctx.config.app.stop_timeout.0);
        let _ = s.child.try_wait();
        progress.note(format!("undo: stopped {} on port {} ({how:?})", s.instance.release, s.instance.port));
    }
    if !started.is_empty() {
        progress.step("undo", t.elapsed(), format!("stopped {} new instance(s)", started.len()));
    }
}

/// Write `candidate` as the upstream file, `nginx -t`, reload, and confirm. On any failure the previous file
/// is restored byte for byte (and nginx reloaded again if the reload had been sent), and the error says so.
/// Returns the workers of the old generation, for the drain.
pub fn apply_upstream(
    ctx: &Ctx,
    master: &Master,
    before: Option<&str>,
    candidate: &str,
    generation: u64,
    progress: &mut Progress,
) -> Result<Vec<i32>> {
    let path = &ctx.config.nginx.upstream_file;
    let t = Instant::now();
    util::write_atomic(path, candidate.as_bytes(), 0o644)
        .with_context(|| format!("could not write upstream file {}", path.display()))?;
    progress.step("write", t.elapsed(), format!("wrote {} atomically", path.display()));
    let t = Instant::now();
    if let Err(e) = ctx.nginx.test() {
        ctx.restore_upstream(before)?;
        progress.step("validate", t.elapsed(), "nginx -t rejected the new upstream; previous file restored");
        return Err(e);
    }
    progress.step("validate", t.elapsed(), "nginx -t passed");
    let t = Instant::now();
    let old = master.workers();
    let reloaded = ctx
        .nginx
        .reload(master)
        .and_then(|()| ctx.nginx.confirm(master, &old))
        .and_then(|_| ctx.nginx.confirm_generation(generation));
    match reloaded {
        Ok(_) => {
            let how = match &ctx.config.nginx.confirm_url {
                Some(u) => format!("new workers up, {u} answers generation {generation}"),
                None => "new workers up".into(),
            };
            progress.step("reload", t.elapsed(), format!("nginx {} runs the new config ({how})", master.pid));
            Ok(old)
        }
        Err(e) => {
            ctx.restore_upstream(before)?;
            let again = master.workers();
            let back = ctx.nginx.reload(master).and_then(|()| ctx.nginx.confirm(master, &again));
            match back {
                // Workers that ran the rejected file (it may have been applied, just not confirmed) still route
                // by it until they exit: wait for them, so the caller can stop what only that file sent to.
                Ok(_) => {
                    if !master.wait_gone(&again, ctx.config.deploy.drain_timeout.0) {
                        progress.warn("nginx workers of the rejected upstream still run after deploy.drain_timeout");
                    }
                }
                Err(b) => {
                    // nginx may still route by the rejected file: nothing may be stopped on the strength of
                    // this undo. The operation stays recorded, and the next command's recovery redoes it.
                    progress.step("reload", t.elapsed(), "not applied; previous upstream restored, reload unconfirmed");
                    return Err(e.context(Unsettled(format!(
                        "the previous upstream is back on disk, but reloading nginx with it was not confirmed \
                         either ({b:#}); the new instances are left running and the next cutover command will \
                         reload, confirm and clean up (`cutover status` shows the unfinished operation)"
                    ))));
                }
            }
            progress.step("reload", t.elapsed(), "not applied; previous upstream restored and reloaded");
            Err(e)
        }
    }
}

/// An undo that could not be confirmed: nginx may still run the rejected upstream, so the operation must stay
/// recorded for the next command's [`recover`] instead of being cleaned up now.
#[derive(Debug)]
pub struct Unsettled(String);

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn is_unsettled(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unsettled>().is_some()
}

/// Write, validate, reload and confirm `text` as the upstream of the operation in progress, marked in state
/// first so that a killed run restores it. On failure the previous file is back, `undo` runs and the operation
/// is cleared; when even the reload of the previous file went unconfirmed ([`Unsettled`]), both are left to
/// the next command's [`recover`]. Returns the old workers, for the drain.
pub fn apply_recorded(
    ctx: &Ctx,
    state: &mut State,
    master: &Master,
    before: Option<&str>,
    text: &str,
    progress: &mut Progress,
    undo: impl FnOnce(&mut Progress),
) -> Result<Vec<i32>> {
    if let Some(op) = &mut state.in_progress {
        op.upstream_touched = true;
    }
    ctx.store.save(state)?;
    match apply_upstream(ctx, master, before, text, state.generation + 1, progress) {
        Ok(w) => Ok(w),
        Err(e) if is_unsettled(&e) => Err(e),
        Err(e) => {
            undo(progress);
            state.in_progress = None;
            ctx.store.save(state)?;
            Err(e)
        }
    }
}

/// The `CUTOVER_*` variables hooks see.
pub fn hook_env(state: &State, target: &Target, plan: &Plan) -> BTreeMap<&'static str, String> {
    let previous = state.live.as_ref().map(|d| d.release.as_str()).unwrap_or_default();
    let ports = plan.reuse_ports.iter().chain(&plan.new_ports).copied();
    hook_vars(target.release.as_str(), previous, target.kind, &target.strategy, ports)
}

/// The `CUTOVER_*` variables from their parts.
pub fn hook_vars(
    release: &str,
    previous: &str,
    kind: &str,
    strategy: &str,
    ports: impl IntoIterator<Item = u16>,
) -> BTreeMap<&'static str, String> {
    let ports: Vec<String> = ports.into_iter().map(|p| p.to_string()).collect();
    BTreeMap::from([
        ("CUTOVER_RELEASE", release.to_string()),
        ("CUTOVER_PREVIOUS_RELEASE", previous.to_string()),
        ("CUTOVER_KIND", kind.to_string()),
        ("CUTOVER_STRATEGY", strategy.to_string()),
        ("CUTOVER_PORTS", ports.join(",")),
    ])
}

/// Record the operation in state before its first side effect, so a killed run can be cleaned up after.
pub fn begin_op(
    ctx: &Ctx,
    state: &mut State,
    kind: &str,
    release: &str,
    upstream_before: Option<String>,
) -> Result<()> {
    state.in_progress = Some(Operation {
        kind: kind.into(),
        release: release.into(),
        pid: std::process::id(),
        started_at: util::now_rfc3339(),
        started: Vec::new(),
        upstream_before,
        upstream_touched: false,
    });
    ctx.store.save(state)
}

/// Run the `on_failure` hook for a failed operation; its own failure is only a warning.
pub fn on_failure(ctx: &Ctx, env: &mut BTreeMap<&'static str, String>, e: &anyhow::Error, progress: &Progress) {
    env.insert("CUTOVER_ERROR", format!("{e:#}"));
    if let Err(h) = ctx.hook("on_failure", env, progress) {
        progress.warn(format!("{h:#}"));
    }
}

/// Run the transaction for `target`. On error, everything this run changed has been undone.
pub fn switch(ctx: &Ctx, state: &mut State, target: &Target, plan: Plan, progress: &mut Progress) -> Result<Outcome> {
    let master = plan.master.clone().context("nginx master unknown")?;
    let mut env = hook_env(state, target, &plan);
    begin_op(ctx, state, target.kind, target.release.as_str(), plan.upstream_before.clone())?;
    let result = run_steps(ctx, state, target, &plan, &master, &env, progress);
    if let Err(e) = &result {
        on_failure(ctx, &mut env, e, progress);
    }
    result
}

/// New instances that started and passed their health check, not yet receiving traffic.
pub struct Launched {
    started: Vec<Started>,
    pub healthy_at: Instant,
    pub healthy_unix_ms: u64,
}

impl Launched {
    pub fn instances(&self) -> Vec<Instance> {
        self.started.iter().map(|s| s.instance.clone()).collect()
    }

    /// Undo: stop them (a later step failed).
    pub fn stop(&mut self, ctx: &Ctx, progress: &mut Progress) {
        stop_started(ctx, &mut self.started, progress);
    }

    /// They now belong to state: reap what has exited and let the rest run on after cutover exits.
    pub fn release(self) {
        for mut s in self.started {
            let _ = s.child.try_wait();
        }
    }
}

/// Steps 4–5: free reclaimed ports, start the new instances detached, health-check them all at once.
/// On failure everything this did is undone, `in_progress` is cleared, and the error says why (exit 3 for
/// health).
pub fn launch(
    ctx: &Ctx,
    state: &mut State,
    target: &Target,
    plan: &Plan,
    env: &BTreeMap<&str, String>,
    progress: &mut Progress,
) -> Result<Launched> {
    let config = &ctx.config;
    let clear = |state: &mut State| -> Result<()> {
        state.in_progress = None;
        ctx.store.save(state)
    };
    if let Err(e) = ctx.hook("before_start", env, progress) {
        clear(state)?;
        return Err(e);
    }

    // Free ports held by an idle previous release when the pool has no other room.
    if !plan.reclaim.is_empty() {
        let t = Instant::now();
        for i in &plan.reclaim {
            proc::stop(i, config.app.stop_timeout.0);
        }
        let ports: Vec<String> = plan.reclaim.iter().map(|i| i.port.to_string()).collect();
        progress.step(
            "reclaim",
            t.elapsed(),
            format!("stopped idle previous instance(s) on {} to free the port(s)", ports.join(", ")),
        );
        if let Some(prev) = &mut state.previous {
            for i in &mut prev.instances {
                if plan.reclaim.iter().any(|r| r.pid == i.pid) {
                    i.pid = None;
                }
            }
        }
    }

    // 4. Start.
    let t = Instant::now();
    let mut started: Vec<Started> = Vec::new();
    for &port in &plan.new_ports {
        let log = ctx.store.log_path(target.release.as_str(), port);
        let spec = proc::StartSpec { config, release: target.release.as_str(), port, log: &log };
        match proc::start(&spec) {
            Ok((child, instance)) => {
                started.push(Started { child, instance: instance.clone() });
                if let Some(op) = &mut state.in_progress {
                    op.started.push(instance);
                }
                if let Err(e) = ctx.store.save(state) {
                    stop_started(ctx, &mut started, progress);
                    return Err(e);
                }
            }
            Err(e) => {
                stop_started(ctx, &mut started, progress);
                clear(state)?;
                return Err(e);
            }
        }
    }
    if !started.is_empty() {
        let what: Vec<String> =
            started.iter().map(|s| format!("{} (pid {})", s.instance.port, s.instance.pid.unwrap_or(0))).collect();
        progress.step("start", t.elapsed(), format!("{} on port {}", target.release, what.join(", ")));
    }

    // 5. Health-check all new instances at once.
    let t = Instant::now();
    let outcomes: Vec<health::Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = started
            .iter_mut()
            .map(|st| {
                let url = ctx.health_url(st.instance.port);
                let child = &mut st.child;
                s.spawn(move || health::wait_healthy(&url, &config.health, child))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("health thread panicked")).collect()
    });
    let mut failures = Vec::new();
    for (st, outcome) in started.iter().zip(&outcomes) {
        let why = match outcome {
            health::Outcome::Healthy { .. } => continue,
            health::Outcome::Exited(status) => format!("exited before it became healthy ({status})"),
            health::Outcome::TimedOut(last) => {
                format!("not healthy within health.deadline {}: {last}", config.health.deadline)
            }
        };
        failures.push(format!(
            "{} on port {} {why}\nlast lines of {}:\n{}",
            st.instance.release,
            st.instance.port,
            st.instance.log.display(),
            indent(&proc::tail(&st.instance.log, 15))
        ));
    }
    if !failures.is_empty() {
        progress.step("health", t.elapsed(), format!("{} of {} new instance(s) failed", failures.len(), started.len()));
        stop_started(ctx, &mut started, progress);
        clear(state)?;
        return Err(Failure::error(
            UNHEALTHY,
            format!(
                "new release {} failed its health check; nginx and traffic untouched\n{}",
                target.release,
                failures.join("\n")
            ),
        ));
    }
    if !started.is_empty() {
        let probes: u32 =
            outcomes.iter().map(|o| if let health::Outcome::Healthy { probes, .. } = o { *probes } else { 0 }).sum();
        progress.step(
            "health",
            t.elapsed(),
            format!(
                "{} instance(s) healthy at {} ({probes} probe(s), the last {} in a row passed)",
                started.len(),
                config.health.path,
                config.health.successes
            ),
        );
    }
    let healthy_at = Instant::now();
    let healthy_unix_ms = unix_ms();
    if let Err(e) = ctx.hook("after_healthy", env, progress) {
        stop_started(ctx, &mut started, progress);
        clear(state)?;
        return Err(Failure::error(UNHEALTHY, format!("{e:#}; nginx and traffic untouched")));
    }
    Ok(Launched { started, healthy_at, healthy_unix_ms })
}

/// Step 9: wait for the old nginx workers (they still send requests to what they knew), then stop `stop`.
/// Returns whether the workers were gone in time, when the drain ended, and what was stopped.
pub fn drain_and_stop(
    ctx: &Ctx,
    master: &Master,
    old_workers: &[i32],
    stop: &[Instance],
    progress: &mut Progress,
) -> (bool, Instant, Vec<Instance>) {
    let config = &ctx.config;
    let drained = wait_old_workers(
        ctx,
        master,
        old_workers,
        "drain",
        " (long requests or open connections); stopping anyway",
        progress,
    );
    let drained_at = Instant::now();
    let t = Instant::now();
    let mut stopped = Vec::new();
    for i in stop {
        let how = proc::stop(i, config.app.stop_timeout.0);
        if how == proc::Stopped::Killed {
            progress.warn(format!("{} on port {} did not exit within app.stop_timeout; killed", i.release, i.port));
        }
        stopped.push(i.clone());
    }
    if !stopped.is_empty() {
        let what: Vec<String> = stopped.iter().map(|i| format!("{} on {}", i.release, i.port)).collect();
        progress.step("stop", t.elapsed(), format!("stopped {}", what.join(", ")));
    }
    (drained, drained_at, stopped)
}

/// Wait (at most `deploy.drain_timeout`) for nginx's `old_workers` to exit, reported as step `step`; when they
/// outlive it, warn, ending with `consequence`. True when they are gone.
pub fn wait_old_workers(
    ctx: &Ctx,
    master: &Master,
    old_workers: &[i32],
    step: &str,
    consequence: &str,
    progress: &mut Progress,
) -> bool {
    let timeout = ctx.config.deploy.drain_timeout;
    let t = Instant::now();
    let gone = master.wait_gone(old_workers, timeout.0);
    if gone {
        progress.step(step, t.elapsed(), format!("{} old nginx worker(s) exited", old_workers.len()));
    } else {
        progress.step(step, t.elapsed(), "old nginx workers still running");
        progress.warn(format!("old nginx workers still run after deploy.drain_timeout {timeout}{consequence}"));
    }
    gone
}

/// What was live becomes the previous release (its instances kept running or marked stopped); an older
/// previous release is forgotten (its instances are stopped, or recorded to be stopped, by the caller).
/// `demote(previous, None)` refreshes which instances of the previous release still run.
pub fn demote(old_live: Option<Deployment>, older: Option<Deployment>) -> Option<Deployment> {
    old_live.or(older).map(|mut d| {
        for i in &mut d.instances {
            if !proc::alive(i) {
                i.pid = None;
                i.start_ticks = None;
            }
        }
        d
    })
}

fn run_steps(
    ctx: &Ctx,
    state: &mut State,
    target: &Target,
    plan: &Plan,
    master: &Master,
    env: &BTreeMap<&str, String>,
    progress: &mut Progress,
) -> Result<Outcome> {
    let mut launched = launch(ctx, state, target, plan, env, progress)?;
    let (healthy_at, healthy_unix_ms) = (launched.healthy_at, launched.healthy_unix_ms);

    // 6–8. Render (done in the plan), write, validate, reload, confirm.
    let old_workers =
        apply_recorded(ctx, state, master, plan.upstream_before.as_deref(), &plan.upstream_after, progress, |p| {
            launched.stop(ctx, p)
        })?;

    // From here the new release is live: record it before anything else can fail.
    let now = util::now_rfc3339();
    let new_live = Deployment {
        release: target.release.to_string(),
        instances: target.reuse.iter().cloned().chain(launched.instances()).collect(),
        since: now,
    };
    let old_live = state.live.take();
    state.generation += 1;
    state.upstream = Some(plan.upstream_after.clone());
    state.live = Some(new_live.clone());
    state.canary = None;
    // In the same write: what was live becomes the previous release, and what is still to be stopped is
    // recorded, so a run killed during the drain leaves state true and the next run finishes the stop.
    state.previous = if old_live.as_ref().is_some_and(|l| l.release == new_live.release) {
        demote(state.previous.take(), None)
    } else {
        demote(old_live, state.previous.take())
    };
    if let Some(op) = &mut state.in_progress {
        op.started = plan.stop_after.clone();
    }
    ctx.store.save(state)?;

    // 9. Drain: the old workers keep sending requests to the old instances until they exit.
    let (drained, drained_at, stopped) = drain_and_stop(ctx, master, &old_workers, &plan.stop_after, progress);
    let switch_ms = util::ms(drained_at.duration_since(healthy_at));
    if !plan.keep.is_empty() {
        let what: Vec<String> = plan.keep.iter().map(|i| format!("{} on {}", i.release, i.port)).collect();
        progress.note(format!("kept {} running idle for a fast rollback (deploy.keep_previous)", what.join(", ")));
    }

    // 10. Commit.
    state.previous = demote(state.previous.take(), None);
    state.in_progress = None;
    ctx.store.save(state)?;
    let hook = if target.kind == "rollback" { "after_rollback" } else { "after_switch" };
    if let Err(e) = ctx.hook(hook, env, progress) {
        progress.warn(format!("{e:#} (the {} itself succeeded)", target.kind));
    }
    launched.release();
    Ok(Outcome {
        live: new_live,
        previous: state.previous.clone(),
        stopped,
        upstream: plan.upstream_after.clone(),
        drained,
        healthy_unix_ms: Some(healthy_unix_ms),
        switch_ms,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (log is empty)".into();
    }
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Check that reused instances are alive and answer their health check once.
pub fn usable(ctx: &Ctx, instances: &[Instance]) -> bool {
    !instances.is_empty()
        && instances
            .iter()
            .all(|i| proc::alive(i) && health::probe(&ctx.health_url(i.port), &ctx.config.health).is_ok())
}

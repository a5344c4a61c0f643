//! Launch: start new instances detached, then health-check them all at once. Each start is recorded in the
//! journal before it happens (its marker) and after (its identity). On any failure every instance this started is
//! stopped and the error says why (exit 3 for health), with the part of the app's output that explains it.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::hooks::{self, Hook, HookEnv};
use super::Engine;
use crate::exit::{Code, Failure};
use crate::host::{Probe, StartSpec, Status, StopHow};
use crate::journal::Instance;
use crate::plan::health_url;

/// New instances that started and passed their health check, not yet receiving traffic.
#[derive(Debug, Clone)]
pub struct Launched {
    pub instances: Vec<Instance>,
    pub healthy_at: Instant,
    pub healthy_unix_ms: u64,
}

/// How waiting for one instance's health ended badly.
enum Unwell {
    Exited(String),
    Wrong(u32, String),
    TimedOut(String),
}

impl Engine<'_> {
    /// Start `release` on `ports` and wait until all are healthy. Fires `before_start` and `after_healthy`.
    pub fn launch(&mut self, release: &str, ports: &[u16], env: &HookEnv) -> Result<Launched> {
        if ports.is_empty() {
            return Ok(Launched { instances: Vec::new(), healthy_at: self.host.now(), healthy_unix_ms: unix_ms() });
        }
        hooks::fire(self, Hook::BeforeStart, env)?;
        let t = Instant::now();
        let mut started: Vec<Instance> = Vec::new();
        for &port in ports {
            let marker = format!("{}@{port}#{}", self.cfg.app.name, nonce());
            let mut intent = Instance::planned(release, port);
            intent.marker = Some(marker.clone());
            self.journal.launching(intent)?;
            let spec = StartSpec { release: release.to_string(), port, marker };
            match self.host.runtime().start(&spec) {
                Ok(inst) => {
                    self.journal.started(inst.clone())?;
                    started.push(inst);
                }
                Err(e) => {
                    self.undo_launch(&started);
                    return Err(e);
                }
            }
        }
        let what: Vec<String> = started.iter().map(|i| i.describe()).collect();
        self.progress.step("start", t.elapsed(), what.join(", "));

        let t = Instant::now();
        let (failures, probes) = self.wait_healthy(&started);
        if !failures.is_empty() {
            self.progress.step(
                "health",
                t.elapsed(),
                format!("{} of {} new instance(s) failed", failures.len(), started.len()),
            );
            let mut details = Vec::new();
            for (inst, why) in &failures {
                let why = match why {
                    Unwell::Exited(status) => format!("exited before it became healthy ({status})"),
                    Unwell::Wrong(n, last) => {
                        format!("answered {n} health probes in a row with the wrong answer (health.fail_after): {last}")
                    }
                    Unwell::TimedOut(last) => {
                        format!("not healthy within health.deadline {}: {last}", self.cfg.health.deadline)
                    }
                };
                details.push(format!(
                    "{} on port {} {why}\n{}",
                    inst.release,
                    inst.port,
                    self.host.runtime().log_excerpt(inst)
                ));
            }
            let strays = self.undo_launch(&started);
            if !strays.is_empty() {
                details.push(strays);
            }
            return Err(Failure::error(
                Code::Unhealthy,
                format!(
                    "new release {release} failed its health check; nginx and traffic untouched\n{}",
                    details.join("\n")
                ),
            ));
        }
        self.progress.step(
            "health",
            t.elapsed(),
            format!(
                "{} instance(s) healthy at {} ({probes} probe(s), the last {} in a row passed)",
                started.len(),
                self.cfg.health.path,
                self.cfg.health.successes
            ),
        );
        let healthy_at = Instant::now();
        let healthy_unix_ms = unix_ms();
        if let Err(e) = hooks::fire(self, Hook::AfterHealthy, env) {
            self.undo_launch(&started);
            return Err(Failure::error(Code::Unhealthy, format!("{e:#}; nginx and traffic untouched")));
        }
        Ok(Launched { instances: started, healthy_at, healthy_unix_ms })
    }

    /// Probe every instance until each has `health.successes` passes in a row, or one fails: it exits, answers
    /// wrong `health.fail_after` times in a row (a process that is up and answers 500 will not get better), or
    /// the deadline passes (a process still starting: connection refused). Probes follow `health.interval`,
    /// except that while an app does not accept connections yet the wait is at most 50 ms: most of a deploy's
    /// idle time is the app binding its port, and noticing early is free.
    fn wait_healthy(&self, instances: &[Instance]) -> (Vec<(Instance, Unwell)>, u32) {
        let h = &self.cfg.health;
        let deadline = self.host.now() + h.deadline.0;
        let n = instances.len();
        let mut streak = vec![0u32; n];
        let mut wrong = vec![0u32; n];
        let mut last = vec![String::from("no probe answered yet"); n];
        let mut probes = 0;
        loop {
            let mut failures = Vec::new();
            let mut refused = false;
            for (k, inst) in instances.iter().enumerate() {
                if streak[k] >= h.successes {
                    continue;
                }
                // A runtime that restarts a dead instance (systemd) may show it running again: a restart during
                // the health check is the process exiting first.
                if let Some(n) = self.host.runtime().details(inst).restarts.filter(|&n| n > 0) {
                    let how =
                        format!("it died and the {} runtime restarted it {n} time(s)", self.host.runtime().kind());
                    failures.push((inst.clone(), Unwell::Exited(how)));
                    continue;
                }
                match self.host.runtime().status(inst) {
                    Status::Exited(how) => {
                        failures.push((inst.clone(), Unwell::Exited(how)));
                        continue;
                    }
                    Status::Gone => {
                        failures.push((inst.clone(), Unwell::Exited("gone".into())));
                        continue;
                    }
                    _ => {}
                }
                probes += 1;
                match self.host.probe(&health_url(self.cfg, inst.port), h) {
                    Probe::Pass => {
                        streak[k] += 1;
                        wrong[k] = 0;
                    }
                    Probe::Refused(why) => {
                        refused = true;
                        streak[k] = 0;
                        last[k] = why;
                    }
                    Probe::Wrong(why) => {
                        streak[k] = 0;
                        wrong[k] += 1;
                        last[k] = why.clone();
                        if wrong[k] >= h.fail_after {
                            failures.push((inst.clone(), Unwell::Wrong(wrong[k], why)));
                        }
                    }
                    Probe::Error(why) => {
                        streak[k] = 0;
                        last[k] = why;
                    }
                }
            }
            if !failures.is_empty() {
                return (failures, probes);
            }
            if streak.iter().all(|&s| s >= h.successes) {
                return (Vec::new(), probes);
            }
            let now = self.host.now();
            if now >= deadline {
                let timed_out = instances
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| streak[*k] < h.successes)
                    .map(|(k, i)| (i.clone(), Unwell::TimedOut(last[k].clone())))
                    .collect();
                return (timed_out, probes);
            }
            let pause = if refused { h.interval.0.min(Duration::from_millis(50)) } else { h.interval.0 };
            self.host.sleep(pause.min(deadline - now));
        }
    }

    /// Undo of a launch: stop what it started. Returns a note about processes the start command left behind
    /// outside the instance (an app that sent itself to the background), if any.
    pub fn undo_launch(&mut self, started: &[Instance]) -> String {
        if started.is_empty() {
            return String::new();
        }
        let t = Instant::now();
        let mut notes = Vec::new();
        for inst in started {
            let stopped = self.host.runtime().stop(inst, self.cfg.app.stop_timeout.0);
            self.progress.note(format!("undo: stopped {} ({:?})", inst.describe(), stopped.how));
            if let StopHow::Unproven(why) = &stopped.how {
                self.progress.warn(why);
            }
            if !stopped.strays.is_empty() {
                notes.push(format!(
                    "{} left processes running outside its process group (pid {}): the start command sent the app to \
                     the background; cutover stopped them. Run the app in the foreground (`exec app …`, or its \
                     no-daemon mode)",
                    inst.describe(),
                    join(&stopped.strays)
                ));
            }
            if !stopped.survivors.is_empty() {
                notes.push(format!("still running after SIGKILL: pid {}", join(&stopped.survivors)));
            }
        }
        if let Err(e) = self.journal.stopped(started) {
            self.progress.warn(format!("could not record the stop: {e:#}"));
        }
        self.progress.step("undo", t.elapsed(), format!("stopped {} new instance(s)", started.len()));
        notes.join("\n")
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// Unique enough to tell two starts on one port apart: this process and the time.
fn nonce() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

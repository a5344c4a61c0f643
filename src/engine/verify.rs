//! The verify window: a release can pass its health check and die a second later. For `deploy.verify` after
//! the switch cutover keeps probing the new instances while the old release still runs as nginx `backup`; one
//! that exits, or fails `health.successes` probes in a row, sends traffic back.

use std::time::Instant;

use anyhow::Result;

use super::Engine;
use crate::exit::{Code, Failure, Returned};
use crate::host::{Probe, Status};
use crate::journal::{Change, Instance};
use crate::plan::health_url;

impl Engine<'_> {
    /// Watch `instances` for `deploy.verify`. `Err(reason)` when one died or turned unhealthy.
    pub fn verify(&mut self, instances: &[Instance]) -> std::result::Result<(), String> {
        let window = self.cfg.deploy.verify.0;
        if window.is_zero() || instances.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let h = &self.cfg.health;
        let started = self.host.now();
        let mut failed = vec![0u32; instances.len()];
        let mut probes = 0u32;
        // A runtime that restarts a dead instance by itself (systemd) shows it running again a moment later: a
        // restart is a death. An instance this operation started has had none; one it reuses, those it had.
        let started_here =
            |i: &Instance| self.state().in_progress.as_ref().is_some_and(|o| o.started.iter().any(|s| s.same(i)));
        let baseline: Vec<Option<u32>> = instances
            .iter()
            .map(|i| if started_here(i) { Some(0) } else { self.host.runtime().details(i).restarts })
            .collect();
        loop {
            for (k, inst) in instances.iter().enumerate() {
                if let (Some(was), Some(now)) = (baseline[k], self.host.runtime().details(inst).restarts) {
                    if now > was {
                        let why = format!(
                            "{} died and was restarted by the {} runtime ({} restart(s) since it passed its health \
                             check)",
                            inst.describe(),
                            self.host.runtime().kind(),
                            now - was
                        );
                        return Err(self.verify_failed(t, why));
                    }
                }
                match self.host.runtime().status(inst) {
                    Status::Running => {}
                    Status::Exited(how) => {
                        return Err(self.verify_failed(t, format!("{} exited ({how})", inst.describe())))
                    }
                    other => {
                        return Err(self.verify_failed(t, format!("{} is not running ({other:?})", inst.describe())))
                    }
                }
                probes += 1;
                match self.host.probe(&health_url(self.cfg, inst.port), h) {
                    Probe::Pass => failed[k] = 0,
                    p => {
                        failed[k] += 1;
                        if failed[k] >= h.successes {
                            let why = format!(
                                "{} failed {} health probes in a row: {}",
                                inst.describe(),
                                failed[k],
                                p.reason()
                            );
                            return Err(self.verify_failed(t, why));
                        }
                    }
                }
            }
            let elapsed = self.host.now() - started;
            if elapsed >= window {
                break;
            }
            self.host.sleep(h.interval.0.min(window - elapsed));
        }
        self.progress.step(
            "verify",
            t.elapsed(),
            format!("{} instance(s) stayed healthy ({probes} probe(s))", instances.len()),
        );
        Ok(())
    }

    fn verify_failed(&mut self, t: Instant, why: String) -> String {
        self.progress.step("verify", t.elapsed(), format!("FAILED: {why}"));
        why
    }

    /// The new release failed after the switch: traffic goes back to what served before (still running as
    /// backup), the new instances are stopped once nginx's workers have left them. Returns the error to report
    /// (exit 3, `failed-after-switch`).
    pub fn flip_back(&mut self, why: &str) -> Result<anyhow::Error> {
        let release = self.state().in_progress.as_ref().map(|o| o.release.clone()).unwrap_or_default();
        self.progress.warn(format!("{release} failed after the switch ({why}); switching back"));
        let applied = self.apply(Change::FlipBack)?;
        self.drain(&applied, "drain", "; stopping the failed release anyway");
        let to_stop = self.to_stop();
        self.stop(&to_stop, "stop")?;
        self.journal.abandon()?;
        let back = self.live_release().unwrap_or_else(|| "nothing".into());
        Ok(Failure::returned(
            Code::Unhealthy,
            format!(
                "release {release} failed after the switch: {why}; traffic is back on {back} and {release} is stopped"
            ),
            Returned::AfterSwitch,
        ))
    }
}

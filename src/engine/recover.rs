//! Recover: finish or undo what a killed run left. Runs under the app's lock before any command's own work, so an
//! operation found in progress belongs to a run that is gone.
//!
//! nginx is made to serve what state says serves (the killed run's leftovers taken out), reloaded and confirmed
//! even if the file on disk already matches (nginx may run a file that is no longer on disk), and the workers
//! of the killed run's file are waited for; only then are its leftovers stopped: the instances it started that
//! never served, and exactly what it recorded to stop. When the killed run had switched to a release that no
//! longer runs while the release before it still does, traffic goes back instead. The operation stays recorded
//! until all of that is done, so a recovery that fails is redone by the command after it; the history gets an
//! `interrupted` event.

use anyhow::Result;

use super::Engine;
use crate::exit::Code;
use crate::host::Status;
use crate::journal::{Change, Event, OpKind, Outcome};

impl Engine<'_> {
    /// Clean up after a killed run, if there was one. Returns whether there was.
    pub fn recover(&mut self, by: &str) -> Result<bool> {
        let Some(op) = self.state().in_progress.clone() else { return Ok(false) };
        self.progress.warn(format!(
            "a `{}` of {} started at {} by pid {} did not finish; cleaning up after it",
            op.kind, op.release, op.started_at, op.pid
        ));
        // What the killed run stopped before it could record it: recorded as stopped now, so that nothing below
        // keeps or lists an instance that is gone.
        let gone: Vec<_> = self
            .state()
            .previous
            .iter()
            .flat_map(|d| d.running())
            .chain(self.state().backup.iter().cloned())
            .chain(op.to_stop.iter().cloned())
            .filter(|i| matches!(self.host.runtime().status(i), Status::Gone | Status::Exited(_)))
            .collect();
        self.journal.stopped(&gone)?;
        let change = if self.switched_to_a_dead_release() {
            Change::FlipBack
        } else {
            Change::Recover { keep_previous: self.cfg.deploy.keep_previous }
        };
        // Starts recorded only as intended (no pid yet) are leftovers too: the runtime finds their processes by
        // marker.
        let applied = self.apply_with(change, op.upstream_touched)?;
        self.drain(&applied, "drain", "; stopping the leftovers anyway");
        if applied.reloaded {
            self.progress.warn("nginx reloaded and confirmed on what is live; the killed run's nginx workers are gone");
        }
        let leftovers = self.to_stop();
        for inst in &leftovers {
            let s = self.host.runtime().stop(inst, self.cfg.app.stop_timeout.0);
            self.progress.warn(format!("stopped leftover {} on port {} ({:?})", inst.release, inst.port, s.how));
        }
        self.journal.stopped(&leftovers)?;
        let mut event = Event::of(op.kind, &op.release, Outcome::Interrupted, &Ok::<(), anyhow::Error>(()));
        event.outcome = Outcome::Interrupted;
        event.exit_code = Code::Unexpected.number();
        event.strategy = op.strategy;
        event.from = op.before.as_ref().and_then(|b| b.live.as_ref()).map(|d| d.release.clone());
        event.message = Some(format!(
            "the run (pid {}, started {}) did not finish; cleaned up by `cutover {by}`{}",
            op.pid,
            op.started_at,
            if leftovers.is_empty() {
                String::new()
            } else {
                format!(", which stopped {} leftover(s)", leftovers.len())
            }
        ));
        event.steps = self.progress.steps.clone();
        if let Err(e) = self.journal.append_history(&event) {
            self.progress.warn(format!("could not record history: {e:#}"));
        }
        self.journal.done()?;
        self.recovered = true;
        if op.kind == OpKind::Deploy && self.state().canary.is_some() {
            self.progress.warn("the canary stays at its step: `cutover promote` or `cutover abort` drive it from here");
        }
        if let Some(r) = &self.state().rolling {
            self.progress.warn(format!(
                "the {} deploy of {} stays paused after batch {} of {}: `cutover deploy --release {}` finishes it, \
                 `cutover rollback` or `cutover recover` returns every instance to {}",
                r.strategy,
                r.deployment.release,
                r.batch,
                r.batches,
                r.deployment.release,
                self.live_release().unwrap_or_else(|| "the old release".into())
            ));
        }
        Ok(true)
    }

    /// The killed run had switched traffic (state's live differs from what served when it began), no live
    /// instance runs now, and what served before still does.
    /// Never for a rolling or all-at-once run: its fleet is recorded instance by instance, and its recovery stops
    /// at a batch boundary for `deploy`, `rollback` or `recover` to resume or undo.
    fn switched_to_a_dead_release(&self) -> bool {
        let s = self.state();
        if s.in_progress.as_ref().and_then(|o| o.strategy).is_some_and(|st| st.in_place()) {
            return false;
        }
        let Some(before) = s.in_progress.as_ref().and_then(|o| o.before.as_ref()) else { return false };
        let (Some(now), Some(then)) = (&s.live, &before.live) else { return false };
        if now == then {
            return false;
        }
        let rt = self.host.runtime();
        let dead = now.instances.iter().all(|i| !rt.status(i).running());
        let back = then.instances.iter().any(|i| rt.status(i).running());
        dead && back
    }
}

//! The flip: make nginx serve a change. Render the upstream for the state the change leaves, write it atomically,
//! `nginx -t`, reload, confirm (new workers, and the generation marker where the site exposes it), and only then
//! commit the change to the journal. On any failure the previous file is restored byte for byte; when the reload
//! had been sent, nginx is reloaded again and the workers that ran the rejected file are waited for, so that the
//! caller can stop what only that file routed to.
//!
//! The section from writing the candidate to confirming the reload holds the host-wide nginx lock: `nginx -t`
//! reads every app's upstream file, and a reload applies them all.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Engine;
use crate::exit::{Code, Failure};
use crate::host::Master;
use crate::journal::{Change, State};
use crate::lock::{self, Scope};

/// A change nginx serves now: the master and the workers that ran the previous config (the drain waits for
/// them).
#[derive(Debug, Clone)]
pub struct Applied {
    pub master: Master,
    pub old_workers: Vec<i32>,
    /// Whether the upstream file changed (an unchanged one needs no reload and no drain).
    pub reloaded: bool,
}

/// The undo of a failed reload could not be confirmed either: nginx may still route by the rejected file, so
/// nothing it routes to may be stopped, and the operation stays recorded for the next run.
#[derive(Debug)]
pub struct Unsettled;

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "nginx did not confirm the reload that restores the previous upstream either, so the new instances \
             were left running and the operation recorded; the next cutover command will reload, confirm and clean up",
        )
    }
}

impl std::error::Error for Unsettled {}

/// nginx confirmed the new upstream but state.json could not record it (a full or read-only state directory):
/// nginx routes by the new file, so nothing it routes to may be stopped, and the operation stays recorded (its
/// upstream touched) for the next run, which makes nginx serve what state records.
#[derive(Debug)]
pub struct Unrecorded;

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "nginx serves the new upstream but cutover could not record it in its state, so the new instances were \
             left running and the operation recorded; the next cutover command will make nginx serve what state \
             records and clean up",
        )
    }
}

impl std::error::Error for Unrecorded {}

pub fn is_unsettled(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unsettled>().is_some() || e.downcast_ref::<Unrecorded>().is_some()
}

impl Engine<'_> {
    /// The state a change leaves and its upstream file.
    pub fn candidate(&self, change: &Change) -> Result<(State, String)> {
        let after = self.journal.preview(change);
        let text = self.renderer.render(self.cfg, &after)?;
        Ok((after, text))
    }

    /// Make nginx serve `change`, then commit it. When the file would not change, only the journal is written.
    pub fn apply(&mut self, change: Change) -> Result<Applied> {
        self.apply_with(change, false)
    }

    /// [`Engine::apply`]; with `always_reload`, reload and confirm even when the file would not change (nginx
    /// may run a file that is no longer on disk: a killed run's).
    pub fn apply_with(&mut self, change: Change, always_reload: bool) -> Result<Applied> {
        let (after, text) = self.candidate(&change)?;
        let master = self.host.nginx().master()?;
        let before = self.host.nginx().read_upstream()?;
        let unchanged =
            before.as_deref() == Some(text.as_str()) && self.state().upstream.as_deref() == Some(text.as_str());
        if unchanged && !always_reload {
            self.journal.commit(&change, None)?;
            self.settle_runtime();
            return Ok(Applied { master, old_workers: Vec::new(), reloaded: false });
        }
        let lock_path = self.cfg.state_base().join("nginx.lock");
        let (_nginx_lock, _) = lock::acquire(&lock_path, Scope::Nginx, self.lock_wait)?;
        self.journal.touch_upstream()?;
        let old = self.write_test_reload(&master, before.as_deref(), &text, after.generation)?;
        self.journal.commit(&change, Some(text)).map_err(|e| e.context(Unrecorded))?;
        self.settle_runtime();
        Ok(Applied { master, old_workers: old, reloaded: true })
    }

    /// Write, validate, reload, confirm; on failure restore (and reload again when the reload was sent).
    /// Returns the workers of the previous config.
    fn write_test_reload(
        &mut self,
        master: &Master,
        before: Option<&str>,
        text: &str,
        generation: u64,
    ) -> Result<Vec<i32>> {
        let nginx = self.host.nginx();
        let path = self.cfg.nginx.upstream_file.display().to_string();
        let t = Instant::now();
        if let Err(e) = nginx.write_upstream(text) {
            let _ = nginx.restore_upstream(before);
            return Err(e);
        }
        self.progress.step("write", t.elapsed(), format!("{path} (generation {generation})"));
        let t = Instant::now();
        if let Err(e) = nginx.test() {
            self.progress.step("validate", t.elapsed(), "nginx -t rejected it");
            nginx.restore_upstream(before)?;
            self.progress.note(format!("restored {path} byte for byte"));
            return Err(e);
        }
        self.progress.step("validate", t.elapsed(), "nginx -t ok");
        let t = Instant::now();
        let old = nginx.workers(master);
        if let Err(e) = nginx.reload(master) {
            nginx.restore_upstream(before)?;
            self.progress.note(format!("restored {path} byte for byte"));
            return Err(e);
        }
        match nginx.confirm(master, &old, Some(generation)) {
            Ok(_) => {
                let marker = match &self.cfg.nginx.confirm_url {
                    Some(url) => format!(", {url} answers generation {generation}"),
                    None => String::new(),
                };
                self.progress.step(
                    "reload",
                    t.elapsed(),
                    format!("nginx master {} reloaded (new workers up{marker})", master.pid),
                );
                Ok(old)
            }
            Err(e) => {
                self.progress.step("reload", t.elapsed(), "not confirmed");
                Err(self.undo_reload(master, before, e))
            }
        }
    }

    /// nginx did not confirm the reload of the candidate: put the previous file back, reload, confirm that, and
    /// wait for the workers that may have run the candidate. Returns the error to report.
    fn undo_reload(&mut self, master: &Master, before: Option<&str>, cause: anyhow::Error) -> anyhow::Error {
        let nginx = self.host.nginx();
        let path = self.cfg.nginx.upstream_file.display().to_string();
        if let Err(e) = nginx.restore_upstream(before) {
            return cause.context(format!("and the previous upstream could not be restored: {e:#}")).context(Unsettled);
        }
        self.progress.note(format!("restored {path} byte for byte; reloading nginx on it"));
        let old = nginx.workers(master);
        // New workers are the proof here: the site's generation marker is what just failed to confirm.
        let settled = nginx
            .test()
            .and_then(|()| nginx.reload(master))
            .and_then(|()| nginx.confirm(master, &old, None).map(|_| ()));
        match settled {
            Ok(()) => {
                if !nginx.wait_gone(master, &old, self.cfg.deploy.drain_timeout.0) {
                    self.progress
                        .warn("workers that may have run the rejected upstream still run after deploy.drain_timeout");
                }
                cause
            }
            Err(e) => {
                self.progress.warn(format!("the reload that restores the previous upstream failed too: {e:#}"));
                let msg = format!("{cause:#}");
                Failure::error(Code::Nginx, msg).context(Unsettled)
            }
        }
    }

    /// Wait (at most `deploy.drain_timeout`) for the workers of the previous config to exit, reported as step
    /// `step`. They keep sending requests to what they knew until then. True when they are gone in time.
    pub fn drain(&mut self, applied: &Applied, step: &str, consequence: &str) -> bool {
        if !applied.reloaded || applied.old_workers.is_empty() {
            return true;
        }
        let timeout = self.cfg.deploy.drain_timeout;
        let t = Instant::now();
        let gone = self.host.nginx().wait_gone(&applied.master, &applied.old_workers, timeout.0);
        if gone {
            self.progress.step(step, t.elapsed(), format!("{} old nginx worker(s) exited", applied.old_workers.len()));
        } else {
            self.progress.step(step, t.elapsed(), "old nginx workers still running");
            self.progress
                .warn(format!("old nginx workers still run after deploy.drain_timeout {timeout}{consequence}"));
        }
        gone
    }
}

/// A pause for loops that poll the host.
pub const POLL: Duration = Duration::from_millis(50);

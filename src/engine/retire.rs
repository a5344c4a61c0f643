//! Retire: what the operation recorded to stop leaves nginx's upstream (if it is still listed, as a backup),
//! the workers that knew it exit, and only then is it stopped. Stopping earlier is what loses requests.

use std::time::Instant;

use anyhow::Result;

use super::Engine;
use crate::host::StopHow;
use crate::journal::{Change, Instance};

impl Engine<'_> {
    /// Stop instances nginx no longer routes to (the caller waited for the workers that did), and record it.
    pub fn stop(&mut self, instances: &[Instance], step: &str) -> Result<Vec<Instance>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let t = Instant::now();
        let mut stopped = Vec::new();
        for i in instances {
            let s = self.host.runtime().stop(i, self.cfg.app.stop_timeout.0);
            match &s.how {
                StopHow::Killed => {
                    self.progress.warn(format!("{} did not exit within app.stop_timeout; killed", i.describe()))
                }
                StopHow::Unproven(why) => self.progress.warn(why),
                _ => {}
            }
            if !s.strays.is_empty() {
                self.progress.warn(format!(
                    "{}: also stopped pid {:?}, which had left its process group (an app that daemonizes)",
                    i.describe(),
                    s.strays
                ));
            }
            if !s.survivors.is_empty() {
                self.progress.warn(format!("{}: still running after SIGKILL: pid {:?}", i.describe(), s.survivors));
            }
            stopped.push(i.clone());
        }
        self.journal.stopped(&stopped)?;
        let what: Vec<String> = stopped.iter().map(|i| format!("{} on {}", i.release, i.port)).collect();
        self.progress.step(step, t.elapsed(), format!("stopped {}", what.join(", ")));
        Ok(stopped)
    }

    /// Everything the operation recorded to stop: unlist what is still a backup server (a reload), wait for the
    /// workers that knew it, stop it.
    pub fn retire(&mut self) -> Result<Vec<Instance>> {
        let to_stop = self.to_stop();
        if to_stop.is_empty() {
            return Ok(Vec::new());
        }
        let listed = self.state().backup.iter().any(|b| to_stop.iter().any(|s| s.same(b)));
        if listed {
            let from = self.progress.steps.len();
            let applied = self.apply(Change::Unlist)?;
            self.drain(&applied, "drain", "; stopping the old release anyway");
            self.progress.fold(
                from,
                "unlist",
                "the old release left the upstream (it was the backup) and nginx's old workers exited",
            );
        }
        self.stop(&to_stop, "stop")
    }

    /// What the operation in progress recorded to stop.
    pub fn to_stop(&self) -> Vec<Instance> {
        self.state().in_progress.as_ref().map(|o| o.to_stop.clone()).unwrap_or_default()
    }
}

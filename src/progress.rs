//! Progress on stderr: one plain line per step with its duration, so that CI logs read well, and the step
//! timings kept for the summary and the history.

use std::time::{Duration, Instant};

use crate::state::Step;
use crate::util;

pub struct Progress {
    started: Instant,
    pub steps: Vec<Step>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { started: Instant::now(), steps: Vec::new() }
    }

    /// Record and print a finished step.
    pub fn step(&mut self, name: &str, took: Duration, detail: impl Into<String>) {
        let detail = detail.into();
        eprintln!("cutover: {name:<9} {detail} ({})", util::human_ms(took));
        self.steps.push(Step { name: name.into(), ms: util::ms(took), detail });
    }

    pub fn note(&self, msg: impl AsRef<str>) {
        eprintln!("cutover: {}", msg.as_ref());
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("cutover: warning: {}", msg.as_ref());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

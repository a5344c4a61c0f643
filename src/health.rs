//! HTTP health probes: one probe, and the wait for a new instance to become healthy.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::config::Health;
use crate::proc;

/// One probe: `Ok` when the status (and body substring, if configured) match, else why not.
pub fn probe(url: &str, health: &Health) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new().timeout(health.timeout.0).max_idle_connections(0).redirects(0).build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(format!("GET {url}: {}", transport_reason(&t))),
    };
    let status = response.status();
    let body = response.into_string().unwrap_or_default();
    if status != health.expect_status {
        return Err(format!("GET {url}: status {status}, expected {}{}", health.expect_status, snippet(&body)));
    }
    if let Some(want) = &health.expect_body {
        if !body.contains(want.as_str()) {
            return Err(format!("GET {url}: body does not contain {want:?}{}", snippet(&body)));
        }
    }
    Ok(())
}

fn transport_reason(t: &ureq::Transport) -> String {
    let text = t.to_string();
    // ureq prefixes the URL; keep the part that says what happened.
    match text.rsplit_once(": ") {
        Some((_, reason)) if !reason.is_empty() => reason.to_string(),
        _ => text,
    }
}

fn snippet(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        String::new()
    } else {
        let cut: String = b.chars().take(120).collect();
        format!(" (body: {cut:?})")
    }
}

/// How waiting for health ended.
#[derive(Debug)]
pub enum Outcome {
    /// Healthy after this many probes.
    Healthy { probes: u32 },
    /// The process exited before it became healthy.
    Exited(String),
    /// The deadline passed; the last probe's failure.
    TimedOut(String),
}

/// Probe until `successes` consecutive passes, the process exits, or the deadline passes.
///
/// Probes start at once and then follow `health.interval`, except that while the app is not yet accepting
/// connections the wait between probes is at most 50 ms: most of a deploy's idle time is spent waiting for
/// the app to bind, and noticing it early is free.
pub fn wait_healthy(url: &str, health: &Health, child: &mut Child) -> Outcome {
    let started = Instant::now();
    let deadline = started + health.deadline.0;
    let mut streak = 0;
    let mut probes = 0;
    let mut last = String::from("no probe answered yet");
    loop {
        if let Some(status) = proc::exited(child) {
            return Outcome::Exited(status);
        }
        probes += 1;
        let mut refused = false;
        match probe(url, health) {
            Ok(()) => {
                streak += 1;
                if streak >= health.successes {
                    return Outcome::Healthy { probes };
                }
            }
            Err(reason) => {
                refused = reason.contains("refused");
                streak = 0;
                last = reason;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut(last);
        }
        let pause = if refused { health.interval.0.min(Duration::from_millis(50)) } else { health.interval.0 };
        std::thread::sleep(pause.min(deadline - now));
    }
}

//! Turning the outcome of a command into one history event.

use crate::exit;
use crate::progress::Progress;
use crate::state::{Event, Store};
use crate::util;

pub struct Record<'a> {
    pub kind: &'a str,
    pub release: &'a str,
    pub from: Option<String>,
    pub strategy: Option<String>,
    /// The outcome recorded on success: "ok", or e.g. "canary-started" when a manual canary waits for promote.
    pub ok: &'a str,
}

/// Append the event for `result`; a failure to write history is a warning, never a changed outcome.
pub fn record<T>(store: &Store, rec: Record, result: &anyhow::Result<T>, progress: &Progress) {
    let (outcome, code, message) = match result {
        Ok(_) => (rec.ok.to_string(), exit::OK, None),
        Err(e) => {
            let code = exit::code_of(e);
            let outcome = match code {
                exit::UNHEALTHY => "unhealthy",
                exit::NGINX => "nginx-rejected",
                exit::CANARY_ABORTED => "canary-aborted",
                _ => "failed",
            };
            let first_line = format!("{e:#}").lines().next().unwrap_or_default().to_string();
            (outcome.to_string(), code, Some(first_line))
        }
    };
    let event = Event {
        at: util::now_rfc3339(),
        kind: rec.kind.into(),
        release: rec.release.into(),
        from: rec.from,
        strategy: rec.strategy,
        outcome,
        exit_code: code,
        message,
        steps: progress.steps.clone(),
        total_ms: util::ms(progress.elapsed()),
        pid: std::process::id(),
    };
    if let Err(e) = store.append_history(&event) {
        progress.warn(format!("could not record history: {e:#}"));
    }
}

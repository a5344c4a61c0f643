//! `history.jsonl`: one event per operation, with its outcome and step timings.

use serde::{Deserialize, Serialize};

use super::state::OpKind;
use crate::exit::{self, Code};
use crate::output::Step;
use crate::strategy::Strategy;

/// How an operation ended, as history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done; for a deploy or rollback, the release was live: `rollback --to` may pick it.
    Ok,
    /// A manual canary is running at its first step.
    CanaryStarted,
    /// A canary moved to another step short of 100 %.
    CanaryStep,
    /// A canary ended without becoming live (`abort`, or `rollback` during a canary).
    Aborted,
    /// The new release failed its health check; traffic untouched.
    Unhealthy,
    /// nginx rejected the config or did not confirm the reload; the previous config is back.
    NginxRejected,
    /// Analysis aborted a canary or a rolling batch.
    CanaryAborted,
    /// The new release died or turned unhealthy after the switch; traffic went back to the old one.
    FailedAfterSwitch,
    /// A rolling deploy stopped part-way on purpose (`rolling.on_failure = "pause"`).
    Paused,
    /// Refused before anything changed.
    Refused,
    /// Another error.
    Failed,
    /// The run was killed or interrupted; the next command found it and cleaned up.
    Interrupted,
    /// An outcome this version does not know (written by a newer cutover).
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The outcome of a failed operation, from its exit code.
    pub fn of_failure(code: Code, after_switch: bool) -> Outcome {
        match code {
            Code::Unhealthy if after_switch => Outcome::FailedAfterSwitch,
            Code::Unhealthy => Outcome::Unhealthy,
            Code::Nginx => Outcome::NginxRejected,
            Code::CanaryAborted => Outcome::CanaryAborted,
            Code::Refused | Code::Usage | Code::Locked => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::CanaryStarted => "canary-started",
            Outcome::CanaryStep => "canary-step",
            Outcome::Aborted => "aborted",
            Outcome::Unhealthy => "unhealthy",
            Outcome::NginxRejected => "nginx-rejected",
            Outcome::CanaryAborted => "canary-aborted",
            Outcome::FailedAfterSwitch => "failed-after-switch",
            Outcome::Paused => "paused",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One line of history.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub kind: OpKind,
    pub release: String,
    pub from: Option<String>,
    pub strategy: Option<Strategy>,
    pub outcome: Outcome,
    pub exit_code: i32,
    pub message: Option<String>,
    pub steps: Vec<Step>,
    pub total_ms: u64,
    pub pid: u32,
    /// All at once: how long no instance served (the maintenance answer was up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

impl Event {
    /// The event for an operation that ended with `result`.
    pub fn of<T>(kind: OpKind, release: &str, ok: Outcome, result: &anyhow::Result<T>) -> Event {
        let (outcome, code, message) = match result {
            Ok(_) => (ok, Code::Ok, None),
            Err(e) => {
                let code = exit::code_of(e);
                let after = exit::returned_of(e) == Some(exit::Returned::AfterSwitch);
                let first_line = format!("{e:#}").lines().next().unwrap_or_default().to_string();
                let outcome = if crate::strategy::rolling::is_paused(e) {
                    Outcome::Paused
                } else {
                    Outcome::of_failure(code, after)
                };
                (outcome, code, Some(first_line))
            }
        };
        Event {
            at: crate::util::now_rfc3339(),
            kind,
            release: release.into(),
            from: None,
            strategy: None,
            outcome,
            exit_code: code.number(),
            message,
            steps: Vec::new(),
            total_ms: 0,
            pid: std::process::id(),
            downtime_ms: None,
        }
    }

    /// Whether this event made `release` live here: what `rollback --to` may return to.
    pub fn made_live(&self) -> bool {
        self.outcome == Outcome::Ok
            && matches!(self.kind, OpKind::Deploy | OpKind::Rollback | OpKind::Promote | OpKind::Adopt)
    }
}

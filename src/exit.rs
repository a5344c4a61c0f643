//! Exit codes are a contract with users' scripts (README.md, "Exit codes"); this is the one place they live.
//!
//! An outcome that sets a code other than 1 is a [`Failure`] somewhere in the error chain; anything else is an
//! unexpected error and exits 1.

use std::fmt;

use serde::Serialize;

/// What a cutover run ended with. The numbers are the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// 0: done.
    Ok,
    /// 1: an error nobody planned for.
    Unexpected,
    /// 2: a usage error or an invalid config.
    Usage,
    /// 3: the new release failed its health check (also after the switch); traffic is on the old release.
    Unhealthy,
    /// 4: nginx rejected the config or the reload could not be confirmed; the previous config is back.
    Nginx,
    /// 5: another cutover run holds the lock.
    Locked,
    /// 6: a canary (or a rolling batch) was aborted by analysis and rolled back.
    CanaryAborted,
    /// 7: `status --check` found something wrong.
    CheckFailed,
    /// 8: refused: the host is not in a state where this can run; nothing changed.
    Refused,
}

impl Code {
    pub const ALL: [Code; 9] = [
        Code::Ok,
        Code::Unexpected,
        Code::Usage,
        Code::Unhealthy,
        Code::Nginx,
        Code::Locked,
        Code::CanaryAborted,
        Code::CheckFailed,
        Code::Refused,
    ];

    /// What the code means, as README.md's table and the man page say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::Ok => "done",
            Code::Unexpected => "unexpected error",
            Code::Usage => "usage error or invalid config (config errors name file, line and column)",
            Code::Unhealthy => "the new release failed its health check (or died after the switch); traffic is on the old release",
            Code::Nginx => "nginx rejected the config, the reload could not be confirmed, or nginx is not running; previous config restored",
            Code::Locked => "another cutover run holds the lock",
            Code::CanaryAborted => "canary (or rolling batch) aborted by analysis; rolled back",
            Code::CheckFailed => "status --check: drift, an unhealthy live instance, an unfinished operation, nginx not running",
            Code::Refused => "refused: the host is not in a state where this can run (nothing to roll back, a canary running, a hand-edited upstream without --force, check not ready); nothing changed",
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Code::Ok => 0,
            Code::Unexpected => 1,
            Code::Usage => 2,
            Code::Unhealthy => 3,
            Code::Nginx => 4,
            Code::Locked => 5,
            Code::CanaryAborted => 6,
            Code::CheckFailed => 7,
            Code::Refused => 8,
        }
    }
}

/// An error that carries its exit code. Its message is the whole story for the user.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
    /// Set when the failure came after traffic had moved and cutover moved it back to the older release.
    pub returned: Option<Returned>,
}

/// How traffic got back to the older release before the failure was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// The new release died or turned unhealthy in the verify window; the flip was undone.
    AfterSwitch,
    /// Analysis aborted a canary or a rolling deploy and rolled it back.
    Aborted,
}

impl Failure {
    pub fn error(code: Code, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure { code, message: message.into(), returned: None })
    }

    /// A failure reported after traffic was returned to the older release.
    pub fn returned(code: Code, message: impl Into<String>, how: Returned) -> anyhow::Error {
        anyhow::Error::new(Failure { code, message: message.into(), returned: Some(how) })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error: the code of the first [`Failure`] in its chain, else [`Code::Unexpected`].
pub fn code_of(err: &anyhow::Error) -> Code {
    err.chain().find_map(|e| e.downcast_ref::<Failure>()).map(|f| f.code).unwrap_or(Code::Unexpected)
}

/// How traffic was returned before the failure, if it was.
pub fn returned_of(err: &anyhow::Error) -> Option<Returned> {
    err.chain().find_map(|e| e.downcast_ref::<Failure>()).and_then(|f| f.returned)
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::error(Code::Usage, message)
}

/// An expected refusal (exit 8): the host is not in a state where the command can run, and nothing changed.
pub fn refused(message: impl Into<String>) -> anyhow::Error {
    Failure::error(Code::Refused, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_in_the_chain_sets_the_code() {
        let e = Failure::error(Code::Nginx, "nginx said no").context("deploy failed");
        assert_eq!(code_of(&e), Code::Nginx);
        assert_eq!(code_of(&anyhow::anyhow!("boom")), Code::Unexpected);
        assert_eq!(Code::Refused.number(), 8);
    }
}

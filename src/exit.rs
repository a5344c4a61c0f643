//! Exit codes are a contract with users' scripts (README.md, "Exit codes"); this is the one place they live.
//!
//! An outcome that sets a code other than 1 is a [`Failure`] somewhere in the error chain; anything else is an
//! unexpected error and exits 1.

use std::fmt;

pub const OK: i32 = 0;
pub const UNEXPECTED: i32 = 1;
pub const USAGE: i32 = 2;
pub const UNHEALTHY: i32 = 3;
pub const NGINX: i32 = 4;
pub const LOCKED: i32 = 5;
pub const CANARY_ABORTED: i32 = 6;
pub const CHECK_FAILED: i32 = 7;

/// An error that carries its exit code. Its message is the whole story for the user.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn error(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure { code, message: message.into() })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error: the code of the first [`Failure`] in its chain, else 1.
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain().find_map(|e| e.downcast_ref::<Failure>()).map(|f| f.code).unwrap_or(UNEXPECTED)
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::error(USAGE, message)
}

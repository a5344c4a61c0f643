//! Everything cutover prints: command output on stdout (text, or one JSON document with `--json`) and progress
//! on stderr, one plain line per step with its duration, so CI logs read well.
//!
//! Neither stream may crash a run: a reader that went away (`| head`) or a closed stderr
//! (`cutover deploy 2>&1 | head -1`) must not stop a deploy half-way and leave an instance running. Writes to a
//! closed pipe are dropped; stdout's other write errors still panic as `println!` does.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `println!` for command output that a reader may stop reading (`cutover history | head -1`).
macro_rules! say {
    ($($arg:tt)*) => { put!("{}\n", format_args!($($arg)*)) };
}

/// `print!` with the same treatment of a closed pipe as [`say!`].
macro_rules! put {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                panic!("failed printing to stdout: {e}");
            }
        }
    }};
}

/// Print one JSON document on stdout. A reader that went away is not an error.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// One line on stderr; any failure to write it (a closed pipe, a full disk behind a redirect) is ignored:
/// progress is a courtesy, the deploy is what matters.
pub fn err_line(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// One finished step and how long it took, as progress shows it and history keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub ms: u64,
    pub detail: String,
}

/// Progress on stderr and the step timings kept for the summary and the history.
pub struct Progress {
    started: Instant,
    pub steps: Vec<Step>,
    quiet: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress { started: Instant::now(), steps: Vec::new(), quiet: false }
    }

    /// Progress that records steps but prints nothing (the fake-host tests).
    pub fn quiet() -> Progress {
        Progress { quiet: true, ..Progress::new() }
    }

    /// Record and print a finished step.
    pub fn step(&mut self, name: &str, took: Duration, detail: impl Into<String>) {
        let detail = detail.into();
        if !self.quiet {
            err_line(&format!("cutover: {name:<9} {detail} ({})", human_ms(took)));
        }
        self.steps.push(Step { name: name.into(), ms: ms(took), detail });
    }

    /// Fold the steps recorded since `from` (an index into `steps`) into one step named `name`: a phase that
    /// is one thing to the reader (taking the old release out of the upstream) but several to the engine.
    pub fn fold(&mut self, from: usize, name: &str, detail: impl Into<String>) {
        if from >= self.steps.len() {
            return;
        }
        let ms: u64 = self.steps[from..].iter().map(|s| s.ms).sum();
        self.steps.truncate(from);
        self.steps.push(Step { name: name.into(), ms, detail: detail.into() });
    }

    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            err_line(&format!("cutover: {}", msg.as_ref()));
        }
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            err_line(&format!("cutover: warning: {}", msg.as_ref()));
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `12 ms`, `1.4 s`: short, for progress lines.
pub fn human_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// Indent a block of text (log lines in an error message).
pub fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (log is empty)".into();
    }
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

//! `cutover history`: past operations, newest last. Unreadable lines (torn by a crash or a full disk) are
//! skipped with one warning.

use anyhow::Result;

use super::Setup;
use crate::cli::HistoryArgs;
use crate::exit::Code;
use crate::output::print_json;

pub fn run(setup: &Setup, args: HistoryArgs, json: bool) -> Result<Code> {
    let (events, warning) = setup.store.history()?;
    if let Some(w) = warning {
        crate::output::err_line(&format!("cutover: warning: {w}"));
    }
    let shown = &events[events.len().saturating_sub(args.limit)..];
    if json {
        print_json(&serde_json::to_value(shown)?)?;
        return Ok(Code::Ok);
    }
    if shown.is_empty() {
        say!("no deploys yet for {}", setup.config.app.name);
        return Ok(Code::Ok);
    }
    say!("{:<24}  {:<10}  {:<12}  {:<12}  {:<14}  {:>8}  steps", "at", "kind", "release", "from", "outcome", "total");
    for e in shown {
        let steps: Vec<String> = e.steps.iter().map(|s| format!("{} {}", s.name, s.ms)).collect();
        say!(
            "{:<24}  {:<10}  {:<12}  {:<12}  {:<14}  {:>5} ms  {}",
            e.at,
            e.kind.as_str(),
            e.release,
            e.from.as_deref().unwrap_or("-"),
            e.outcome.as_str(),
            e.total_ms,
            steps.join(", ")
        );
        if let Some(d) = e.downtime_ms {
            say!(
                "{:<24}  downtime {d} ms: nothing served ({} is not zero-downtime)",
                "",
                e.strategy.map(|s| s.to_string()).unwrap_or_default()
            );
        }
        if let Some(m) = &e.message {
            say!("{:<24}  {m}", "");
        }
    }
    Ok(Code::Ok)
}

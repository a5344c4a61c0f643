//! `cutover history`: past deploys and rollbacks, newest last.

use anyhow::Result;

use crate::cli::HistoryArgs;
use crate::exit;
use crate::transaction::Ctx;

pub fn run(ctx: &Ctx, args: HistoryArgs, json: bool) -> Result<i32> {
    let events = ctx.store.history()?;
    let shown = &events[events.len().saturating_sub(args.limit)..];
    if json {
        super::print_json(&serde_json::to_value(shown)?)?;
        return Ok(exit::OK);
    }
    if shown.is_empty() {
        say!("no deploys yet for {}", ctx.config.app.name);
        return Ok(exit::OK);
    }
    say!("{:<24}  {:<10}  {:<12}  {:<12}  {:<14}  {:>8}  steps", "at", "kind", "release", "from", "outcome", "total");
    for e in shown {
        let steps: Vec<String> = e.steps.iter().map(|s| format!("{} {}", s.name, s.ms)).collect();
        say!(
            "{:<24}  {:<10}  {:<12}  {:<12}  {:<14}  {:>5} ms  {}",
            e.at,
            e.kind,
            e.release,
            e.from.as_deref().unwrap_or("-"),
            e.outcome,
            e.total_ms,
            steps.join(", ")
        );
        if let Some(m) = &e.message {
            say!("{:<24}  {m}", "");
        }
    }
    Ok(exit::OK)
}

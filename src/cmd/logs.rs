//! `cutover logs [-f] [--release R] [-n N]`: the app's output, from whichever runtime runs it (spawn: its log
//! files; systemd: the journal). Without `--release`, the releases that serve now (live, canary, rolling); each
//! line says which release and port wrote it. `--json` prints one JSON object per line (`release`, `port`,
//! `text`), so `-f --json` streams.

use anyhow::Result;

use super::Setup;
use crate::cli::LogsArgs;
use crate::config::Release;
use crate::exit::{self, Code};
use crate::host::{Host, LogLine, LogQuery};

pub fn run(setup: &Setup, args: LogsArgs, json: bool) -> Result<Code> {
    let releases = match &args.release {
        Some(r) => {
            let r: Release = r.parse().map_err(exit::usage)?;
            vec![r.to_string()]
        }
        None => {
            let s = setup.state()?;
            let serving = s
                .live
                .iter()
                .chain(s.canary.iter().map(|c| &c.deployment))
                .chain(s.rolling.iter().map(|r| &r.deployment));
            serving.map(|d| d.release.clone()).collect()
        }
    };
    let query = LogQuery { releases, lines: args.lines, follow: args.follow };
    let mut emit = |l: &LogLine| -> bool {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written = if json {
            serde_json::to_writer(&mut out, l).map_err(std::io::Error::from).and_then(|()| writeln!(out))
        } else {
            let at = l.port.map(|p| format!("{}:{p}", l.release)).unwrap_or_else(|| l.release.clone());
            writeln!(out, "[{at}] {}", l.text)
        };
        // A reader that went away (`| head`) ends the command; `-f` needs every line out at once.
        written.and_then(|()| out.flush()).is_ok()
    };
    setup.host.runtime().logs(&query, &mut emit)?;
    Ok(Code::Ok)
}

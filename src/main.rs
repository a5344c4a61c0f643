//! cutover: zero-downtime deploys on one Linux host behind nginx.
//!
//! `main` only parses, runs and maps the outcome to an exit code; everything else lives in `cmd/`.

/// `println!` for command output that a reader may stop reading (`cutover history | head -1`): a closed pipe
/// is not an error and the command still ends with its own exit code; any other write failure panics as
/// `println!` does.
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

mod analysis;
mod canary;
mod cli;
mod cmd;
mod config;
mod config_path;
mod exit;
mod health;
mod history;
mod lock;
mod nginx;
mod plan;
mod proc;
mod progress;
mod release_ref;
mod render;
mod state;
mod transaction;
mod util;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::code_of(&err)
        }
    };
    std::process::exit(code);
}

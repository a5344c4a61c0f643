//! cutover: zero-downtime deploys on one Linux host behind nginx.
//!
//! `main` only parses, runs and maps the outcome to an exit code; everything else lives in `cmd/`.

mod analysis;
mod canary;
mod cli;
mod cmd;
mod config;
mod exit;
mod health;
mod history;
mod lock;
mod nginx;
mod plan;
mod proc;
mod progress;
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

//! cutover: zero-downtime deploys on one Linux host behind nginx.
//!
//! `main` only parses, runs and maps the outcome to an exit code; everything else lives in the library.

use clap::Parser;

fn main() {
    let cli = cutover::cli::Cli::parse();
    let code = match cutover::cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            cutover::output::err_line(&format!("error: {err:#}"));
            cutover::exit::code_of(&err)
        }
    };
    std::process::exit(code.number());
}

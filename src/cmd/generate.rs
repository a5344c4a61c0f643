//! `cutover generate man DIR` / `cutover generate completions DIR` (hidden): the files a package installs,
//! made by the binary that is packaged, so the man pages and completions always describe the real flags.
//!
//! A hidden command rather than build.rs: the build stays free of generated side files, the packaging
//! script is three plain commands (build, generate, cargo deb), and a user who installed with
//! `cargo install` can make the same files from the binary they have.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};

use crate::cli::{Cli, GenerateCommand};
use crate::exit::Code;

pub fn run(what: GenerateCommand) -> Result<Code> {
    let written = match what {
        GenerateCommand::Man { dir } => man_pages(&dir)?,
        GenerateCommand::Completions { dir } => completions(&dir)?,
    };
    for p in written {
        say!("{}", p.display());
    }
    Ok(Code::Ok)
}

/// The shells cutover's package carries completions for, and where each file is installed on Debian.
pub const PACKAGED_SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// `cutover completions SHELL`: the completion script on stdout.
pub fn print_completions(shell: Shell) {
    clap_complete::generate(shell, &mut visible(&Cli::command()), "cutover", &mut std::io::stdout());
}

fn completions(dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    PACKAGED_SHELLS
        .iter()
        .map(|shell| {
            clap_complete::generate_to(*shell, &mut visible(&Cli::command()), "cutover", dir)
                .with_context(|| format!("could not write the {shell} completions into {}", dir.display()))
        })
        .collect()
}

/// The command tree without its hidden subcommands, for completions: clap_complete (4.6) offers hidden
/// subcommands too, and a packaging helper has no place in a user's tab completion. clap cannot remove a
/// subcommand, so the top level is rebuilt from its parts.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut top = clap::Command::new("cutover")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        top = top.about(about.clone());
    }
    top
}

/// One page per visible command, named by its path: cutover.1, cutover-deploy.1, cutover-canary-set.1.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    write_pages(&root, true, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, top: bool, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("cutover manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    let extra = if top { top_sections(cmd) } else { see_also() };
    page.extend_from_slice(extra.render().as_bytes());
    let mut f = std::fs::File::create(&path).with_context(|| format!("could not create {}", path.display()))?;
    f.write_all(&page).with_context(|| format!("could not write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, false, dir, written)?;
    }
    Ok(())
}

/// EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO for cutover(1): what scripts rely on and where things live.
fn top_sections(cmd: &clap::Command) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for code in Code::ALL {
        r.control("TP", []).text([bold(code.number().to_string())]).text([roman(code.meaning())]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []).text([bold("CUTOVER_CONFIG")]).text([roman("The config file, when -c is not given.")]);
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "./cutover.toml",
            "The config, when neither -c nor CUTOVER_CONFIG names one. With --app, only if its app.name is that app.",
        ),
        ("/etc/cutover/APP.toml", "The config of app APP, found with --app APP from any directory."),
        ("/etc/cutover/cutover.toml", "The config of a host's only app."),
        (
            "/usr/share/doc/cutover/examples/",
            "An example cutover.toml and nginx site file, as cutover init writes them.",
        ),
        (
            "/usr/lib/systemd/system/cutover-up@.service",
            "Runs cutover --app APP up at boot: systemctl enable cutover-up@APP.",
        ),
    ] {
        r.control("TP", []).text([italic(path)]).text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    let pages: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("{}(1)", s.get_display_name().unwrap_or(s.get_name())))
        .collect();
    r.text([roman(format!("{}, nginx(8)", pages.join(", ")))]);
    r
}

fn see_also() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]).text([roman("cutover(1)")]);
    r
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))
}

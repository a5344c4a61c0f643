//! cutover: zero-downtime deploys on one Linux host behind nginx.
//!
//! The map (DESIGN.md, "Architecture"): `cmd/` parses, calls and reports; `plan/` turns a request, the config,
//! the state and a snapshot of the host into one plan, without side effects; `engine/` holds the steps every
//! strategy shares, each with its undo; `strategy/` sequences them; `journal/` is the only code that changes
//! `state.json`; `host/` is the seam to the outside world (runtime, nginx, probes, clock), with the real machine
//! and a fake one for tests; `upstream/` decides and renders the upstream file, purely.

#[macro_use]
pub mod output;

pub mod cli;
pub mod cmd;
pub mod config;
pub mod config_path;
pub mod engine;
pub mod exit;
pub mod host;
pub mod journal;
pub mod lock;
pub mod nginx;
pub mod plan;
pub mod release_ref;
pub mod strategy;
pub mod trust;
pub mod upstream;
pub mod util;

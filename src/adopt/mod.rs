//! `cutover init --adopt`: take over an app that nginx already proxies to, as the widely copied blue/green
//! setup runs it (`service-url.inc` holding `set $service_url http://127.0.0.1:8081;`, a site with
//! `proxy_pass $service_url;`, two copies of the app on 8081 and 8082, and a `switch.sh` that rewrites the
//! include and reloads), or an `upstream` block the site proxies to, or a `proxy_pass` straight to a loopback
//! port.
//!
//! - [`find`] reads nginx's config (`nginx -T`, as a tree) and lists what could be adopted;
//! - [`process`] finds which process listens on the live port (and idle copies of it) in /proc, and derives
//!   the start command;
//! - [`edit`] computes the changes to nginx's files: cutover's upstream file included in the http context, and
//!   the site pointed at it (the `set` line, the `proxy_pass`, or the `upstream` block replaced by the include);
//! - [`config_text`] writes the cutover.toml.
//!
//! `cmd/adopt.rs` runs them: validate with `nginx -t`, reload and confirm, restore every file on failure, and
//! record the running process as the live release through the journal ([`crate::journal::Change::Adopt`]).

pub mod config_text;
pub mod edit;
pub mod find;
pub mod process;

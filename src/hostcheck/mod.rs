//! What `cutover check` looks at beyond the config file: the ways a host lets a deploy "succeed" while no user
//! reaches the new release, or makes the next deploy fail for a reason nobody would guess. Each function returns
//! [`Finding`]s with their fix; `cmd/check.rs` prints them with the rest.
//!
//! - [`site`]: a server block proxies to the app's upstream and gets its requests (no other block takes its
//!   `listen` + `server_name`, or is the default server a nameless site depends on);
//! - [`running`]: the running nginx runs the config on disk (no file changed after its newest workers started;
//!   with `nginx.confirm_url`, it answers the generation of the upstream file on disk);
//! - [`ports`]: pool ports outside the kernel's ephemeral range, and TIME-WAIT sockets on them, which do not
//!   stop a bind;
//! - [`state_dirs`]: whether another user's default state directory holds state for this app.

pub mod ports;
pub mod running;
pub mod site;
pub mod state_dirs;

/// One check item: what was found and, when it is a problem, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: String,
}

impl Finding {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Finding {
        Finding { name, ok: true, detail: detail.into(), fix: String::new() }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { name, ok: false, detail: detail.into(), fix: fix.into() }
    }
}

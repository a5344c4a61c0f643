//! Rendering the nginx upstream file: a pure function from a view to text.
//!
//! The built-in template is compiled in; `nginx.template` overrides it. Every value handed to the template is a
//! validated type (app name, release, IP address, port, integer weight), so no input can add a directive.

use anyhow::{Context, Result};
use serde::Serialize;

pub const BUILTIN_TEMPLATE: &str = include_str!("../../templates/upstream.conf.tera");

/// One `server` line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Server {
    /// `127.0.0.1:8081` or `[::1]:8081`.
    pub address: String,
    pub port: u16,
    pub release: String,
    pub weight: u32,
    /// Kept in the file but sent no traffic.
    pub down: bool,
    /// Sent traffic only when every primary server failed.
    pub backup: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CanaryView {
    pub release: String,
    /// Percent of traffic.
    pub weight: u8,
}

/// One line of a `split_clients` block: a share (`10%`, or `*` for the rest) and the upstream it goes to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Split {
    pub share: String,
    pub upstream: String,
}

/// Routing by a variable, for a sticky canary (`canary.sticky`) or the tester header (`canary.header`). The
/// site proxies to `http://$<var>`; nginx resolves the value to one of the upstreams defined here.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Routing {
    /// The variable the site proxies to, without `$`: `cutover_shop_upstream`.
    pub var: String,
    /// Set while a canary runs: the two sides as upstreams of their own.
    pub stable: Option<String>,
    pub canary: Option<String>,
    pub stable_servers: Vec<Server>,
    pub canary_servers: Vec<Server>,
    /// `split_clients` key (`$cookie_NAME`, `$remote_addr`) when sticky.
    pub key: Option<String>,
    /// The cookie's name when the key is a cookie: requests without it get a per-request random key.
    pub key_cookie: Option<String>,
    /// The `split_clients` lines when sticky and a canary runs.
    pub split: Vec<Split>,
    /// `$http_x_canary` when `canary.header` is set: any non-empty value goes to the canary.
    pub header_var: Option<String>,
}

/// The maintenance answer while an all-at-once deploy runs: nginx listens on `address` and answers 503 with
/// `Retry-After: retry_after` (seconds).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MaintenanceView {
    pub address: String,
    pub port: u16,
    pub retry_after: u64,
}

/// Everything the template sees.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub app: String,
    /// The upstream's name: the app name.
    pub upstream: String,
    /// The prefix of the nginx variables cutover defines: `cutover_shop` (`-` in the app name becomes `_`).
    pub vars: String,
    /// The name of the JSON access-log format the site writes for canary analysis: `cutover_<app>`.
    pub log_format: String,
    pub generation: u64,
    pub live_release: Option<String>,
    pub canary: Option<CanaryView>,
    /// `v2 2/4` while a rolling deploy is between batches.
    pub rolling: Option<String>,
    pub servers: Vec<Server>,
    pub routing: Option<Routing>,
    /// Set during an all-at-once deploy: the listener of the maintenance answer.
    pub maintenance: Option<MaintenanceView>,
}

pub fn render(template: Option<&str>, view: &View) -> Result<String> {
    render_with(&compile(template)?, view)
}

/// Parse the template (the built-in one when `None`) once, for [`render_with`]. A template that does not parse
/// is a config error (exit 2): nothing has started yet.
pub fn compile(template: Option<&str>) -> Result<tera::Tera> {
    let mut tera = tera::Tera::default();
    tera.add_raw_template("upstream.conf", template.unwrap_or(BUILTIN_TEMPLATE))
        .map_err(|e| crate::exit::usage(format!("invalid upstream template (nginx.template): {}", chain(&e))))?;
    Ok(tera)
}

/// Render a compiled template. One that does not render is a config error (exit 2) too.
pub fn render_with(tera: &tera::Tera, view: &View) -> Result<String> {
    let ctx = tera::Context::from_serialize(view).context("could not build template context")?;
    let mut out = tera
        .render("upstream.conf", &ctx)
        .map_err(|e| crate::exit::usage(format!("could not render the upstream template: {}", chain(&e))))?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A tera error with its sources: tera keeps the useful part in the chain.
fn chain(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// The unified diff from `old` to `new`, labelled with the file's path.
pub fn diff(old: &str, new: &str, path: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (on disk)"), &format!("{path} (cutover)"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(port: u16, release: &str, weight: u32) -> Server {
        Server {
            address: format!("127.0.0.1:{port}"),
            port,
            release: release.into(),
            weight,
            down: false,
            backup: false,
        }
    }

    #[test]
    fn builtin_template_renders_whole_file() {
        let view = View {
            app: "shop".into(),
            upstream: "shop".into(),
            log_format: "cutover_shop".into(),
            vars: "cutover_shop".into(),
            generation: 7,
            live_release: Some("v2".into()),
            canary: None,
            rolling: None,
            servers: vec![server(8082, "v2", 1), server(8083, "v2", 1)],
            routing: None,
            maintenance: None,
        };
        assert_eq!(
            render(None, &view).unwrap(),
            "# Managed by cutover: rewritten on every deploy and rollback; edits here are reported as drift.\n\
             # app shop | generation 7 | live v2\n\
             \n\
             # One JSON line per request, read by cutover's canary analysis. The site writes it with\n\
             # `access_log PATH cutover_shop;` (the path is canary.access_log).\n\
             log_format cutover_shop escape=json '{\"msec\":\"$msec\",\"upstream\":\"$upstream_addr\",\
             \"status\":\"$status\",\"upstream_status\":\"$upstream_status\",\
             \"upstream_time\":\"$upstream_response_time\",\"request_time\":\"$request_time\"}';\n\
             \n\
             # The generation marker: a site that exposes it (loopback only, as in the site file `cutover init` writes)\n\
             # and sets nginx.confirm_url lets cutover confirm that nginx answers with this file after a reload.\n\
             map $host $cutover_shop_generation {\n    \
             default  \"7\";\n\
             }\n\
             \n\
             upstream shop {\n    \
             # A shared zone keeps one balancer state (and so exact weights) across all nginx workers.\n    \
             zone shop 64k;\n    \
             server 127.0.0.1:8082;  # v2\n    \
             server 127.0.0.1:8083;  # v2\n\
             }\n"
        );
    }

    #[test]
    fn weights_and_down_are_written() {
        let mut view = View {
            app: "shop".into(),
            upstream: "shop".into(),
            log_format: "cutover_shop".into(),
            vars: "cutover_shop".into(),
            generation: 1,
            live_release: Some("v1".into()),
            canary: Some(CanaryView { release: "v2".into(), weight: 10 }),
            rolling: None,
            servers: vec![server(8081, "v1", 9), server(8082, "v2", 1), server(8080, "v0", 1)],
            routing: None,
            maintenance: None,
        };
        view.servers[1].down = true;
        view.servers[2].backup = true;
        let text = render(None, &view).unwrap();
        assert!(text.contains("server 127.0.0.1:8081 weight=9;  # v1\n"), "{text}");
        assert!(text.contains("server 127.0.0.1:8082 down;  # v2\n"), "{text}");
        assert!(text.contains("server 127.0.0.1:8080 backup;  # v0 (backup until it is stopped)\n"), "{text}");
        assert!(text.contains("| canary v2 at 10%"), "{text}");
    }

    #[test]
    fn template_errors_are_reported() {
        let view = View {
            app: "a".into(),
            upstream: "a".into(),
            log_format: "cutover_a".into(),
            vars: "cutover_a".into(),
            generation: 0,
            live_release: None,
            canary: None,
            rolling: None,
            servers: vec![],
            routing: None,
            maintenance: None,
        };
        let e = render(Some("{{ nope }}"), &view).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}

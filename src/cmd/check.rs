//! `cutover check`: is the config valid and the host ready to deploy? Each item says how to fix it.
//! Reads only; creates nothing. Exit 0 ready, 8 not ready, 2 invalid config.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::Setup;
use crate::exit::Code;
use crate::nginx::{dump, RealNginx};
use crate::plan::ports::PortUse;
use crate::plan::Snapshot;
use crate::strategy::Strategy;

#[derive(Serialize)]
struct Item {
    name: &'static str,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

fn item(name: &'static str, ok: bool, detail: impl Into<String>, fix: impl Into<String>) -> Item {
    Item { name, ok, detail: detail.into(), fix: if ok { None } else { Some(fix.into()) } }
}

/// The nearest existing ancestor of `p` (itself included).
fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => cur = parent.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
    cur
}

fn finding(f: crate::hostcheck::Finding) -> Item {
    item(f.name, f.ok, f.detail, f.fix)
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

pub fn run(path: &Path, json: bool, insecure: bool) -> Result<Code> {
    // Trust is its own item below: load without refusing, then report.
    let setup = match Setup::load(path, true) {
        Ok(s) => s,
        Err(e) => {
            let items = vec![item("config", false, format!("{e:#}"), "fix the config file at the line shown")];
            print(&items, json)?;
            return Ok(Code::Usage);
        }
    };
    let mut items = vec![item("config", true, format!("{} is valid", path.display()), "")];
    let c = &setup.config;
    if trust(c, insecure, &mut items) {
        // The checks below run nginx as the config says; as root, not with files others can change.
        print(&items, json)?;
        return Ok(Code::Usage);
    }
    let nginx = setup.host.real_nginx();

    match RealNginx::find(&c.nginx) {
        Ok(bin) => items.push(item("nginx binary", true, bin.display().to_string(), "")),
        Err(e) => {
            items.push(item("nginx binary", false, format!("{e:#}"), "apt-get install nginx, or set nginx.binary"))
        }
    }
    match nginx.test() {
        Ok(()) => items.push(item("nginx -t", true, "nginx accepts its current config", "")),
        Err(e) => items.push(item(
            "nginx -t",
            false,
            format!("{e:#}"),
            crate::sudoers::nginx_t_fix(c).unwrap_or_else(|| "fix nginx's config until `nginx -t` passes".into()),
        )),
    }
    // Finding the master needs its pid file, which comes from nginx's config: with a broken config that is
    // the thing to fix, not a stopped nginx.
    let config_ok = nginx.dump().is_ok();
    match nginx.find_master() {
        Ok(m) => items.push(item("nginx running", true, format!("master pid {}", m.pid), "")),
        Err(e) => {
            let fix = if config_ok {
                "start nginx (systemctl start nginx), or set nginx.pid_file to the running master's pid file"
            } else {
                "fix nginx's config first (see the nginx -t item)"
            };
            items.push(item("nginx running", false, format!("{e:#}"), fix))
        }
    }
    let up = &c.nginx.upstream_file;
    let dir = up.parent().unwrap_or(Path::new("."));
    items.push(item(
        "upstream dir",
        dir.is_dir() && writable(dir),
        if !dir.is_dir() {
            format!("{} does not exist", dir.display())
        } else if writable(dir) {
            format!("{} exists and is writable", dir.display())
        } else {
            format!("{} is not writable by this user", dir.display())
        },
        format!("create {} and make it writable by the user running cutover", dir.display()),
    ));
    match nginx.dump() {
        Ok(text) => {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let included = dump::included_files(&text).iter().any(|f| canon(f) == canon(up));
            items.push(item(
                "upstream included",
                included,
                format!("{} {} included by nginx's config", up.display(), if included { "is" } else { "is not" }),
                format!(
                    "add `include {};` inside nginx's http block (cutover init writes a site file that does), \
                     and create the file with `cutover render > {}` before the first reload",
                    up.display(),
                    up.display()
                ),
            ));
            items.push(finding(crate::hostcheck::site::site(&text, c)));
            items.extend(crate::hostcheck::running::freshness(&setup.host, &text, c).map(finding));
        }
        Err(e) => items.push(item("upstream included", false, format!("{e:#}"), "fix nginx's config first")),
    }
    // Canary analysis and sticky routing need the site's cooperation; only a default strategy that analyses
    // (canary, rolling with rolling.pause) makes it a FAIL.
    let strategy = c.deploy.strategy;
    let rolling_analysis = strategy == Strategy::Rolling && !c.rolling.pause.0.is_zero();
    let canary_default = strategy == Strategy::Canary || rolling_analysis;
    let prefix = nginx.prefix().unwrap_or_default();
    let analysis = if rolling_analysis {
        crate::strategy::canary::preflight_for(c, &setup.host, &prefix, false, true, "or set rolling.pause = \"0s\"")
    } else {
        crate::strategy::canary::preflight(c, &setup.host, &prefix)
    };
    match analysis {
        Ok(()) => items.push(item(
            "canary setup",
            true,
            format!("nginx writes {} for canary analysis", c.access_log().display()),
            "",
        )),
        Err(e) if canary_default => items.push(item(
            "canary setup",
            false,
            format!("{e:#}"),
            format!(
                "see the detail; needed by deploy.strategy = \"{strategy}\"{}",
                if rolling_analysis { " with rolling.pause" } else { "" }
            ),
        )),
        Err(e) => items.push(item(
            "canary setup",
            true,
            format!("only needed for `deploy --strategy canary` (and rolling.pause), and not in place yet: {e:#}"),
            "",
        )),
    }
    let sd = c.state_dir();
    let anc = existing_ancestor(&sd);
    let sym = std::fs::symlink_metadata(&sd).map(|m| m.file_type().is_symlink()).unwrap_or(false);
    items.push(item(
        "state dir",
        writable(&anc) && !sym,
        if sym {
            format!("{} is a symlink", sd.display())
        } else {
            format!("{} (writable: {})", sd.display(), anc.display())
        },
        format!("make {} writable by the user running cutover, or set deploy.state_dir", anc.display()),
    ));
    runtime_items(c, &mut items);
    let state = setup.state().unwrap_or_default();
    let snap = Snapshot::take(&setup.host, c, &state, None)?;
    let mut busy = Vec::new();
    let mut notes = Vec::new();
    let mut free = 0;
    for (port, u) in &snap.pool {
        match u {
            PortUse::Free => free += 1,
            PortUse::Ours(what) => notes.push(format!("{port} {what}")),
            other => busy.push(format!("{port} {other}")),
        }
    }
    let needed = strategy.ports_needed(c);
    items.push(item("strategy", true, strategy_detail(c), ""));
    let usable = free + notes.len();
    notes.extend(crate::hostcheck::ports::time_wait_note(&c.pool()));
    items.push(item(
        "ports",
        usable >= needed,
        format!(
            "{free} of {} pool port(s) free on {}{}{}; deploy.strategy = \"{strategy}\" needs {needed} ({})",
            snap.pool.len(),
            c.ports.bind,
            if notes.is_empty() { String::new() } else { format!("; {}", notes.join(", ")) },
            if busy.is_empty() { String::new() } else { format!("; {}", busy.join(", ")) },
            strategy.why_ports(c),
        ),
        "stop what holds those ports or take them out of ports.pool",
    ));
    items.push(finding(crate::hostcheck::ports::ephemeral_item(c)));
    items.push(finding(crate::hostcheck::state_dirs::item(c)));
    // Each of these can run to its limit in one deploy; the reload confirm twice (the reload, and the reload of
    // the restored file when it fails).
    let worst = c.health.deadline.0
        + c.nginx.confirm_timeout.0 * 3
        + c.deploy.drain_timeout.0 * 2
        + c.deploy.verify.0
        + c.app.stop_timeout.0;
    items.push(item(
        "time budget",
        worst.as_secs() < 3600,
        format!(
            "a blue-green deploy takes at most about {} (health.deadline + 3 x nginx.confirm_timeout + \
             2 x deploy.drain_timeout + deploy.verify + app.stop_timeout); a CodeDeploy hook's timeout must exceed \
             it (appspec `timeout`, at most 3600 s)",
            humantime::format_duration(worst)
        ),
        "lower health.deadline or deploy.drain_timeout",
    ));
    print(&items, json)?;
    Ok(if items.iter().all(|i| i.ok) { Code::Ok } else { Code::Refused })
}

/// What the default strategy does to traffic, in one line: `check` says when it is not zero-downtime.
fn strategy_detail(c: &crate::config::Config) -> String {
    let n = c.deploy.instances.0;
    match c.deploy.strategy {
        Strategy::AllAtOnce => format!(
            "deploy.strategy = \"all-at-once\" is NOT zero-downtime: nothing serves between stopping the old release \
             and the new one passing its health check; nginx answers 503 (Retry-After {} s) meanwhile, and the \
             downtime is measured into `history`",
            c.maintenance.retry_after_secs()
        ),
        Strategy::Rolling if c.rolling.surge => format!(
            "deploy.strategy = \"rolling\": zero-downtime, {n} instance(s) replaced {} at a time, each batch's \
             replacements start beside them (capacity never drops)",
            c.rolling.batch.0
        ),
        Strategy::Rolling => format!(
            "deploy.strategy = \"rolling\": zero-downtime, {n} instance(s) replaced {} at a time in place (capacity \
             drops to {} during a batch)",
            c.rolling.batch.0,
            n.saturating_sub(c.rolling.batch.0)
        ),
        s => format!("deploy.strategy = \"{s}\": zero-downtime, the new release starts beside the live one"),
    }
}

/// One "trust" item per file cutover takes commands or nginx syntax from, and one for the upstream file root's
/// nginx includes (a warning only). True when cutover runs as root and refuses to go on.
fn trust(c: &crate::config::Config, insecure: bool, items: &mut Vec<Item>) -> bool {
    let euid = nix::unistd::geteuid().as_raw();
    let owner = crate::trust::owner_for_fix(euid);
    let mut unsafe_files = false;
    for r in crate::trust::inspect_all(c, euid) {
        unsafe_files |= !r.ok();
        items.push(item("trust", r.ok(), r.detail(), r.fix(&owner)));
    }
    let (up, warning) = crate::trust::upstream(c, euid);
    let detail = match warning {
        Some(w) => format!("warning: {w}"),
        None => up.detail(),
    };
    items.push(item("trust", up.ok(), detail, up.fix(&owner)));
    unsafe_files && euid == 0 && !insecure
}

/// Which runtime and why; what it needs (systemctl, a writable unit_dir); the app's account and env file; free
/// space where state and logs are written (a warning under 10 % or 100 MiB: a full state filesystem fails
/// deploys, a full log filesystem loses the app's output).
fn runtime_items(c: &crate::config::Config, items: &mut Vec<Item>) {
    use crate::config::RuntimeKind;
    let (kind, why) = crate::host::select::choose(c);
    items.push(item("runtime", true, format!("{kind} ({why})"), ""));
    if kind == RuntimeKind::Systemd {
        let sd = crate::host::systemd::Systemd::new(c);
        match sd.systemctl(&["--version"]) {
            Ok(v) => items.push(item("systemctl", true, v.lines().next().unwrap_or("").to_string(), "")),
            Err(e) => items.push(item(
                "systemctl",
                false,
                format!("{e:#}"),
                "install systemd, or set runtime.systemctl (e.g. [\"sudo\", \"systemctl\"]), or runtime.kind = \"spawn\"",
            )),
        }
        let dir = &c.runtime.unit_dir;
        let anc = existing_ancestor(dir);
        items.push(item(
            "unit dir",
            writable(&anc),
            format!("{} (writable: {})", dir.display(), anc.display()),
            format!("make {} writable by the user running cutover, or set runtime.unit_dir", anc.display()),
        ));
    }
    match crate::host::appenv::account(c) {
        Ok(a) => items.push(item(
            "app account",
            true,
            format!(
                "instances run as uid {} gid {}{}",
                a.uid,
                a.gid,
                a.user.as_ref().map(|u| format!(" (app.user {u})")).unwrap_or_default()
            ),
            "",
        )),
        Err(e) => items.push(item("app account", false, format!("{e:#}"), "see the detail")),
    }
    if let Some(p) = &c.app.env_file {
        match crate::host::appenv::read_env_file(p) {
            Ok(v) => items.push(item("app env_file", true, format!("{} ({} variable(s))", p.display(), v.len()), "")),
            Err(e) => items.push(item("app env_file", false, format!("{e:#}"), "see the detail")),
        }
    }
    let mut places = vec![("state", c.state_dir())];
    if kind == RuntimeKind::Spawn {
        places.push(("logs", c.log_dir()));
    }
    for (what, dir) in places {
        let at = existing_ancestor(&dir);
        match nix::sys::statvfs::statvfs(&at) {
            Ok(v) => {
                let unit = v.fragment_size().max(1);
                let free = v.blocks_available() * unit;
                let total = v.blocks() * unit;
                let pct = if total == 0 { 100.0 } else { free as f64 * 100.0 / total as f64 };
                let detail = format!(
                    "{what}: {} MiB free of {} MiB ({pct:.0} %) on the filesystem of {}",
                    free >> 20,
                    total >> 20,
                    at.display()
                );
                if low_space(free, total) {
                    items.push(item(
                        "disk",
                        true,
                        format!(
                            "warning: {detail}: under 10 % or 100 MiB; a full {what} filesystem {}",
                            if what == "state" {
                                "makes deploys fail"
                            } else {
                                "loses the app's output (the app keeps running)"
                            }
                        ),
                        "",
                    ));
                } else {
                    items.push(item("disk", true, detail, ""));
                }
            }
            Err(e) => items.push(item(
                "disk",
                true,
                format!("warning: could not read free space of {}: {e}", at.display()),
                "",
            )),
        }
    }
}

/// Under 10 % or under 100 MiB free.
pub fn low_space(free: u64, total: u64) -> bool {
    free < 100 << 20 || (total > 0 && free * 10 < total)
}

fn print(items: &[Item], json: bool) -> Result<()> {
    let ready = items.iter().all(|i| i.ok);
    if json {
        return crate::output::print_json(&json!({ "ready": ready, "items": items }));
    }
    for i in items {
        say!("{} {:<18} {}", if i.ok { "ok  " } else { "FAIL" }, i.name, i.detail);
        if let Some(f) = &i.fix {
            say!("     {:<18} fix: {f}", "");
        }
    }
    say!("{}", if ready { "ready to deploy" } else { "not ready: fix the items marked FAIL" });
    Ok(())
}

//! Pure decisions: which servers the upstream lists with which weights, and which ports are idle.

use std::net::SocketAddr;

use crate::config::Config;
use crate::config::Sticky;
use crate::render::{CanaryView, Routing, Server, Split, View};
use crate::state::{Deployment, State};

/// Per-server weights that give the canary's `n_canary` servers together `pct` percent of requests and the
/// stable release's `n_stable` servers the rest, reduced to the smallest integers.
pub fn split_weights(n_stable: u32, n_canary: u32, pct: u8) -> (u32, u32) {
    let pct = u32::from(pct);
    let stable = (100 - pct) * n_canary;
    let canary = pct * n_stable;
    let g = gcd(stable, canary).max(1);
    (stable / g, canary / g)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn server(config: &Config, release: &str, port: u16, weight: u32) -> Server {
    Server { address: config.ports.bind.with_port(port), port, release: release.into(), weight, down: false }
}

/// The upstream view for a live deployment and, optionally, a canary at `pct` percent.
///
/// A side with weight 0 is left out of the upstream rather than written as `weight=0` (which nginx rejects)
/// or `down` (which some balancers still count). With nothing deployed, the first pool port is listed `down`,
/// because nginx refuses an upstream without servers.
pub fn view(config: &Config, generation: u64, live: Option<&Deployment>, canary: Option<(&Deployment, u8)>) -> View {
    let mut servers = Vec::new();
    match (live, canary) {
        (Some(live), Some((c, pct))) => {
            let (ws, wc) = split_weights(live.instances.len() as u32, c.instances.len() as u32, pct);
            if pct < 100 {
                servers.extend(live.instances.iter().map(|i| server(config, &live.release, i.port, ws)));
            }
            if pct > 0 {
                servers.extend(c.instances.iter().map(|i| server(config, &c.release, i.port, wc)));
            }
        }
        (Some(live), None) => servers.extend(live.instances.iter().map(|i| server(config, &live.release, i.port, 1))),
        (None, Some((c, _))) => servers.extend(c.instances.iter().map(|i| server(config, &c.release, i.port, 1))),
        (None, None) => {}
    }
    if servers.is_empty() {
        let port = config.pool()[0];
        servers.push(Server { down: true, ..server(config, "nothing deployed", port, 1) });
    }
    let app = config.app.name.to_string();
    View {
        log_format: format!("cutover_{app}"),
        vars: var_prefix(config),
        routing: routing(config, live, canary),
        app: app.clone(),
        upstream: app,
        generation,
        live_release: live.map(|d| d.release.clone()),
        canary: canary.map(|(c, pct)| CanaryView { release: c.release.clone(), weight: pct }),
        servers,
    }
}

/// The nginx variable prefix for an app: nginx variable names stop at `-`, so it becomes `_`.
pub fn var_prefix(config: &Config) -> String {
    format!("cutover_{}", config.app.name.as_str().replace('-', "_"))
}

/// The routing variable when `canary.sticky` or `canary.header` asks for it (see [`Routing`]).
///
/// Without a canary the variable names the app's upstream. With one, a sticky split hashes the key with
/// `split_clients`, whose ranges grow from the start of the hash space, so a user on the canary at 10 % stays on
/// it at 50 %; without sticky, ordinary traffic goes to the weighted upstream. The header overrides both.
fn routing(config: &Config, live: Option<&Deployment>, canary: Option<(&Deployment, u8)>) -> Option<Routing> {
    let c = &config.canary;
    if c.sticky.is_none() && c.header.is_none() {
        return None;
    }
    let app = config.app.name.as_str();
    let (key, key_cookie) = match &c.sticky {
        Some(Sticky::Ip) => (Some("$remote_addr".to_string()), None),
        Some(Sticky::Cookie(name)) => (Some(format!("${}_key", var_prefix(config))), Some(name.clone())),
        None => (None, None),
    };
    let mut r = Routing {
        var: format!("{}_upstream", var_prefix(config)),
        stable: None,
        canary: None,
        stable_servers: Vec::new(),
        canary_servers: Vec::new(),
        key,
        key_cookie,
        split: Vec::new(),
        header_var: c.header.as_ref().map(|h| h.nginx_var()),
    };
    if let (Some(live), Some((cd, pct))) = (live, canary) {
        let stable = format!("{app}_stable");
        let canary_up = format!("{app}_canary");
        r.stable_servers = live.instances.iter().map(|i| server(config, &live.release, i.port, 1)).collect();
        r.canary_servers = cd.instances.iter().map(|i| server(config, &cd.release, i.port, 1)).collect();
        if r.key.is_some() {
            let split = |share: &str, upstream: &str| Split { share: share.into(), upstream: upstream.into() };
            r.split = match pct {
                0 => vec![split("*", &stable)],
                100.. => vec![split("*", &canary_up)],
                p => vec![split(&format!("{p}%"), &canary_up), split("*", &stable)],
            };
        }
        r.stable = Some(stable);
        r.canary = Some(canary_up);
    }
    Some(r)
}

/// The view for what `state` says is live.
pub fn view_of(config: &Config, state: &State) -> View {
    view(config, state.generation, state.live.as_ref(), state.canary.as_ref().map(|c| (&c.deployment, c.weight)))
}

/// A port of the pool and why it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub port: u16,
    pub why: String,
}

/// Pick `n` ports from the pool, skipping `taken` (ports of this app's instances) and any port that cannot be
/// bound on the exact address the app will use. Returns the picks and the reasons the others were skipped.
pub fn pick_ports(config: &Config, n: usize, taken: &[(u16, String)]) -> (Vec<u16>, Vec<Busy>) {
    let mut picked = Vec::new();
    let mut busy = Vec::new();
    for port in config.pool() {
        if picked.len() == n {
            break;
        }
        if let Some((_, who)) = taken.iter().find(|(p, _)| *p == port) {
            busy.push(Busy { port, why: who.clone() });
            continue;
        }
        let addr = SocketAddr::new(config.ports.bind.0, port);
        if crate::proc::port_free(addr) {
            picked.push(port);
        } else {
            busy.push(Busy { port, why: in_use_by(port) });
        }
    }
    (picked, busy)
}

/// "in use by pid 4121 (java)" when /proc tells, else "in use".
pub fn in_use_by(port: u16) -> String {
    match who_listens(port) {
        Some((pid, comm)) => format!("in use by pid {pid} ({comm})"),
        None => "in use by another process".into(),
    }
}

/// The process listening on a TCP port, found through /proc/net/tcp{,6} and the sockets in /proc/*/fd.
pub fn who_listens(port: u16) -> Option<(i32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                    return Some((pid, comm.trim().to_string()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_traffic_by_percent_per_side() {
        assert_eq!(split_weights(1, 1, 10), (9, 1));
        assert_eq!(split_weights(1, 1, 50), (1, 1));
        assert_eq!(split_weights(2, 1, 10), (9, 2));
        assert_eq!(split_weights(1, 2, 25), (6, 1));
        assert_eq!(split_weights(1, 1, 100), (0, 1));
    }
}

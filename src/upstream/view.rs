//! What the upstream file lists, decided from state alone: which servers, with which weights, which are
//! `backup` or `down`, and the routing for a sticky canary. Pure; the one place these rules live.

use super::render::{CanaryView, MaintenanceView, Routing, Server, Split, View};
use crate::config::{Config, Sticky};
use crate::journal::{Deployment, Instance, State};

/// The nginx names cutover defines for an app, in one place: the upstream, the variables (`-` in the app name
/// becomes `_`: nginx variable names stop at `-`), the access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub upstream: String,
    /// `cutover_shop`: the prefix of every variable.
    pub vars: String,
    /// `$cutover_shop_generation`.
    pub generation_var: String,
    /// `$cutover_shop_upstream`: what a site with a sticky canary proxies to.
    pub routing_var: String,
    /// `cutover_shop`: the JSON access-log format canary analysis reads.
    pub log_format: String,
    pub stable_upstream: String,
    pub canary_upstream: String,
}

impl Names {
    pub fn of(config: &Config) -> Names {
        Names::for_app(config.app.name.as_str())
    }

    pub fn for_app(app: &str) -> Names {
        let vars = format!("cutover_{}", app.replace('-', "_"));
        Names {
            upstream: app.to_string(),
            generation_var: format!("${vars}_generation"),
            routing_var: format!("${vars}_upstream"),
            log_format: format!("cutover_{app}"),
            stable_upstream: format!("{app}_stable"),
            canary_upstream: format!("{app}_canary"),
            vars,
        }
    }
}

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

fn server(config: &Config, i: &Instance, weight: u32) -> Server {
    Server {
        address: config.ports.bind.with_port(i.port),
        port: i.port,
        release: i.release.clone(),
        weight,
        down: false,
        backup: false,
    }
}

/// The upstream view for `state`.
///
/// Live instances (with a canary, weighted by its share; during a rolling deploy, both releases' instances at
/// equal weight) are the primary servers. Instances in `state.backup` (an older release still running) are
/// listed `backup`: nginx sends them a request only when every primary failed, so a live instance that dies
/// costs a retry, not a 502. Instances a rolling deploy took out are listed `down`. A side with weight 0 is left
/// out rather than written `weight=0` (which nginx rejects). With nothing deployed the first pool port is listed
/// `down`, because nginx refuses an upstream without servers.
///
/// All at once (`rolling.maintenance`): nginx listens on the maintenance port itself for the whole operation and
/// answers 503 with `Retry-After` there; while no instance serves, the upstream's only primary server is that
/// port, so clients get the maintenance answer instead of a 502. The listener outlives the moment the new
/// instances serve by one upstream change, so that a request an old nginx worker still routes there finds it.
pub fn view(config: &Config, state: &State) -> View {
    let names = Names::of(config);
    let live = state.live.as_ref();
    let canary = state.canary.as_ref().map(|c| (&c.deployment, c.weight));
    let mut servers = Vec::new();
    match (live, canary) {
        (Some(live), Some((c, pct))) => {
            let (ws, wc) = split_weights(live.instances.len() as u32, c.instances.len() as u32, pct);
            if pct < 100 {
                servers.extend(live.instances.iter().map(|i| server(config, i, ws)));
            }
            if pct > 0 {
                servers.extend(c.instances.iter().map(|i| server(config, i, wc)));
            }
        }
        (Some(live), None) => servers.extend(live.instances.iter().map(|i| server(config, i, 1))),
        (None, Some((c, _))) => servers.extend(c.instances.iter().map(|i| server(config, i, 1))),
        (None, None) => {}
    }
    if let Some(r) = &state.rolling {
        servers.extend(r.deployment.instances.iter().map(|i| server(config, i, 1)));
        servers.extend(r.down.iter().map(|i| Server { down: true, ..server(config, i, 1) }));
    }
    if state.offline {
        for s in &mut servers {
            s.down = true;
        }
    }
    let maintenance = state.rolling.as_ref().and_then(|r| r.maintenance).map(|port| MaintenanceView {
        address: config.ports.bind.with_port(port),
        port,
        retry_after: config.maintenance.retry_after_secs(),
    });
    if let Some(m) = &maintenance {
        if servers.iter().all(|s| s.down) {
            servers.push(Server {
                address: m.address.clone(),
                port: m.port,
                release: "maintenance: nginx answers 503 here while no instance runs".into(),
                weight: 1,
                down: false,
                backup: false,
            });
        }
    }
    let primary: Vec<u16> = servers.iter().map(|s| s.port).collect();
    if !servers.iter().all(|s| s.down) {
        servers.extend(
            state
                .backup
                .iter()
                .filter(|b| !primary.contains(&b.port))
                .map(|b| Server { backup: true, ..server(config, b, 1) }),
        );
    }
    if servers.is_empty() {
        let port = config.pool()[0];
        servers.push(Server { down: true, ..server(config, &Instance::planned("nothing deployed", port), 1) });
    }
    View {
        app: config.app.name.to_string(),
        upstream: names.upstream.clone(),
        vars: names.vars.clone(),
        log_format: names.log_format.clone(),
        routing: routing(config, &names, live, canary),
        generation: state.generation,
        live_release: live.map(|d| d.release.clone()),
        canary: canary.map(|(c, pct)| CanaryView { release: c.release.clone(), weight: pct }),
        rolling: state.rolling.as_ref().map(|r| format!("{} {}/{}", r.deployment.release, r.batch, r.batches)),
        servers,
        maintenance,
    }
}

/// The routing variable when `canary.sticky` or `canary.header` asks for it (see [`Routing`]).
///
/// Without a canary the variable names the app's upstream. With one, a sticky split hashes the key with
/// `split_clients`, whose ranges grow from the start of the hash space, so a user on the canary at 10 % stays on
/// it at 50 %; without sticky, ordinary traffic goes to the weighted upstream. The header overrides both.
fn routing(
    config: &Config,
    names: &Names,
    live: Option<&Deployment>,
    canary: Option<(&Deployment, u8)>,
) -> Option<Routing> {
    let c = &config.canary;
    if c.sticky.is_none() && c.header.is_none() {
        return None;
    }
    let (key, key_cookie) = match &c.sticky {
        Some(Sticky::Ip) => (Some("$remote_addr".to_string()), None),
        Some(Sticky::Cookie(name)) => (Some(format!("${}_key", names.vars)), Some(name.clone())),
        None => (None, None),
    };
    let mut r = Routing {
        var: names.routing_var.trim_start_matches('$').to_string(),
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
        r.stable_servers = live.instances.iter().map(|i| server(config, i, 1)).collect();
        r.canary_servers = cd.instances.iter().map(|i| server(config, i, 1)).collect();
        if r.key.is_some() {
            let split = |share: &str, upstream: &str| Split { share: share.into(), upstream: upstream.into() };
            r.split = match pct {
                0 => vec![split("*", &names.stable_upstream)],
                100.. => vec![split("*", &names.canary_upstream)],
                p => vec![split(&format!("{p}%"), &names.canary_upstream), split("*", &names.stable_upstream)],
            };
        }
        r.stable = Some(names.stable_upstream.clone());
        r.canary = Some(names.canary_upstream.clone());
    }
    Some(r)
}

/// What the first lines of an upstream file cutover wrote say: `# app shop | generation 7 | live v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub app: String,
    pub generation: u64,
    /// `None` for `live none`.
    pub live: Option<String>,
}

/// Read the header line of an upstream file written with the built-in template (`None` for any other file).
pub fn parse_header(text: &str) -> Option<Header> {
    let line = text.lines().take(5).find(|l| l.starts_with("# app "))?;
    let mut app = None;
    let mut generation = None;
    let mut live = None;
    for part in line.trim_start_matches("# ").split(" | ") {
        let mut w = part.split_whitespace();
        match (w.next(), w.next()) {
            (Some("app"), Some(a)) => app = Some(a.to_string()),
            (Some("generation"), Some(g)) => generation = g.parse().ok(),
            (Some("live"), Some(l)) => live = Some((l != "none").then(|| l.to_string())),
            _ => {}
        }
    }
    Some(Header { app: app?, generation: generation?, live: live? })
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

    #[test]
    fn the_header_says_what_is_live() {
        let h = parse_header("# Managed by cutover\n# app shop | generation 7 | live v2 | canary v3 at 10%\n").unwrap();
        assert_eq!(h, Header { app: "shop".into(), generation: 7, live: Some("v2".into()) });
        let none = parse_header("# Managed by cutover\n# app shop | generation 0 | live none\n").unwrap();
        assert_eq!(none.live, None);
        assert_eq!(parse_header("upstream shop { server 127.0.0.1:1; }"), None);
    }
}

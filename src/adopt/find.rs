//! What nginx proxies to, read from its config tree: the candidates for adoption. Pure.
//!
//! A candidate is one way the site reaches the app: a variable set to a loopback URL (`set $service_url
//! http://127.0.0.1:8081;` read by `proxy_pass $service_url;`), an `upstream` block of loopback servers the
//! site proxies to, or a `proxy_pass` straight to a loopback port. Anything that proxies elsewhere (another
//! host, a unix socket) is not this host's app and is reported as skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Result;

use crate::exit;
use crate::nginx::dump::conf::{Conf, Directive};
use crate::nginx::dump::servers::{proxy_targets, sites};

/// Where a directive is, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
    pub start: usize,
    pub end: usize,
    pub name: String,
    pub args: Vec<String>,
}

impl Loc {
    pub fn of(d: &Directive) -> Loc {
        Loc {
            file: d.file.clone(),
            line: d.line,
            start: d.start,
            end: d.end,
            name: d.name.clone(),
            args: d.args.clone(),
        }
    }

    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// How the site reaches the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `set $var URL;`, read by `proxy_pass $var;` (the service-url.inc pattern).
    Variable { var: String, set: Loc },
    /// `proxy_pass http://NAME;` to `upstream NAME { server ...; }`.
    Upstream { name: String, block: Loc },
    /// `proxy_pass http://127.0.0.1:PORT[/path];`.
    Direct { proxy_passes: Vec<Loc> },
}

/// One server the site sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// Marked `backup` or `down` in an upstream block: not where requests go now.
    pub idle: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub via: Via,
    /// The server blocks that proxy this way (their `server` directives), in nginx's order.
    pub sites: Vec<Loc>,
    pub backends: Vec<Backend>,
}

impl Candidate {
    /// What `--proxy` names it by: the variable (`$service_url`), the upstream's name, or the address.
    pub fn key(&self) -> String {
        match &self.via {
            Via::Variable { var, .. } => var.clone(),
            Via::Upstream { name, .. } => name.clone(),
            Via::Direct { .. } => self.backends.first().map(|b| addr_port(b.addr, b.port)).unwrap_or_default(),
        }
    }

    pub fn describe(&self) -> String {
        let to: Vec<String> = self.backends.iter().map(|b| addr_port(b.addr, b.port)).collect();
        match &self.via {
            Via::Variable { var, set } => {
                format!("proxy_pass {var}, with `set {var} http://{};` at {}", to.join(", "), set.place())
            }
            Via::Upstream { name, block } => {
                format!("proxy_pass http://{name}, upstream {name} at {} ({})", block.place(), to.join(", "))
            }
            Via::Direct { proxy_passes } => format!(
                "proxy_pass http://{} at {}",
                to.join(", "),
                proxy_passes.iter().map(Loc::place).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The ports requests go to now.
    pub fn live_ports(&self) -> Vec<u16> {
        self.backends.iter().filter(|b| !b.idle).map(|b| b.port).collect()
    }
}

pub fn addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// `127.0.0.1:8081`, `localhost:8081`, `[::1]:8081`, `127.0.0.1` (port 80): a loopback address and port.
pub fn loopback(hostport: &str) -> Option<(IpAddr, u16)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':').map(str::parse).unwrap_or(Ok(80)).ok()?)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, 80),
        }
    };
    let addr: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h.parse().ok()?,
    };
    (addr.is_loopback() || addr == IpAddr::V6(Ipv6Addr::LOCALHOST)).then_some((addr, port))
}

/// The path after a URL's host (`/api` of `http://127.0.0.1:8081/api`), empty when there is none.
pub fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| &rest[i..]).unwrap_or("")
}

/// The upstream blocks' servers: `None` for a block with a server that is not on loopback.
fn upstream_backends(block: &Directive) -> Option<Vec<Backend>> {
    let mut out = Vec::new();
    for s in block.children().into_iter().filter(|d| d.name == "server") {
        let (addr, port) = loopback(s.arg(0)?)?;
        let idle = s.args[1..].iter().any(|a| a == "backup" || a == "down");
        out.push(Backend { addr, port, idle });
    }
    (!out.is_empty()).then_some(out)
}

/// Every adoptable way the http server blocks reach an app on this host, and why others were skipped.
pub fn candidates(conf: &Conf) -> (Vec<Candidate>, Vec<String>) {
    let upstreams = conf.upstreams();
    let mut found: Vec<Candidate> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let add = |found: &mut Vec<Candidate>, c: Candidate| match found
        .iter_mut()
        .find(|f| f.via == c.via || same_direct(f, &c))
    {
        Some(f) => {
            for s in c.sites {
                if !f.sites.contains(&s) {
                    f.sites.push(s);
                }
            }
            if let (Via::Direct { proxy_passes: mine }, Via::Direct { proxy_passes: more }) = (&mut f.via, c.via) {
                for p in more {
                    if !mine.contains(&p) {
                        mine.push(p);
                    }
                }
            }
        }
        None => found.push(c),
    };
    for site in sites(conf) {
        let here = Loc::of(site.block);
        for t in proxy_targets(site.block) {
            let Some(host) = t.host() else {
                skipped.push(format!("proxy_pass {} at {}: not an http:// URL", t.url, t.proxy_pass.place()));
                continue;
            };
            if let Some(up) = upstreams.iter().find(|u| u.arg(0) == Some(host)) {
                let managed = conf.files.get(&up.file).and_then(|t| crate::upstream::parse_header(t));
                if let Some(h) = managed {
                    skipped.push(format!(
                        "upstream {host} at {} is cutover's own (app {}): this app was set up or adopted already; \
                         `cutover status` says what is recorded",
                        up.place(),
                        h.app
                    ));
                    continue;
                }
                match upstream_backends(up) {
                    Some(backends) => add(
                        &mut found,
                        Candidate {
                            via: Via::Upstream { name: host.to_string(), block: Loc::of(up) },
                            sites: vec![here.clone()],
                            backends,
                        },
                    ),
                    None => {
                        skipped.push(format!("upstream {host} at {}: a server not on this host's loopback", up.place()))
                    }
                }
                continue;
            }
            let Some((addr, port)) = loopback(host) else {
                skipped.push(format!("proxy_pass to {host} at {}: not on this host's loopback", t.proxy_pass.place()));
                continue;
            };
            let backends = vec![Backend { addr, port, idle: false }];
            let via = match (&t.var, t.set) {
                (Some(var), Some(set)) => Via::Variable { var: var.clone(), set: Loc::of(set) },
                (Some(var), None) => {
                    skipped.push(format!(
                        "proxy_pass {var} at {}: the variable is not set with `set`",
                        t.proxy_pass.place()
                    ));
                    continue;
                }
                (None, _) => Via::Direct { proxy_passes: vec![Loc::of(t.proxy_pass)] },
            };
            add(&mut found, Candidate { via, sites: vec![here.clone()], backends });
        }
    }
    (found, skipped)
}

fn same_direct(a: &Candidate, b: &Candidate) -> bool {
    matches!((&a.via, &b.via), (Via::Direct { .. }, Via::Direct { .. })) && a.backends == b.backends
}

/// The one candidate to adopt: the only one, or the one `--proxy` names. Refused (exit 8) when there is none,
/// a usage error (exit 2) when several qualify and none is named.
pub fn pick(found: Vec<Candidate>, skipped: &[String], proxy: Option<&str>) -> Result<Candidate> {
    let list = |v: &[Candidate]| v.iter().map(|c| format!("\n  {}: {}", c.key(), c.describe())).collect::<String>();
    if let Some(p) = proxy {
        let key = |c: &Candidate| c.key();
        return match found.iter().find(|c| key(c) == p || key(c).trim_start_matches('$') == p.trim_start_matches('$')) {
            Some(c) => Ok(c.clone()),
            None => Err(exit::usage(format!("--proxy {p} names none of what nginx proxies to:{}", list(&found)))),
        };
    }
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
        0 => {
            let why =
                if skipped.is_empty() { String::new() } else { format!("; skipped:\n  {}", skipped.join("\n  ")) };
            Err(exit::refused(format!(
                "nothing to adopt: no server block in nginx's config proxies to an app on this host's loopback (a \
                 `set $var http://127.0.0.1:PORT;` read by proxy_pass, an upstream block, or proxy_pass \
                 http://127.0.0.1:PORT){why}"
            )))
        }
        _ => Err(exit::usage(format!(
            "nginx proxies to more than one app here; name the one to adopt with --proxy:{}",
            list(&found)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_URL: &str = "# configuration file /etc/nginx/nginx.conf:\nhttp {\n    include /etc/nginx/conf.d/*.conf;\n\
        \x20   server {\n        listen 80;\n        include /etc/nginx/conf.d/service-url.inc;\n\
        \x20       location / {\n            proxy_pass $service_url;\n        }\n    }\n\
        \x20   server {\n        listen 443 ssl;\n        include /etc/nginx/conf.d/service-url.inc;\n\
        \x20       location / { proxy_pass $service_url; }\n        location /old { proxy_pass http://10.0.0.9:8080; }\n    }\n}\n\n\
        # configuration file /etc/nginx/conf.d/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n\n";

    #[test]
    fn the_service_url_pattern_is_one_candidate_for_both_server_blocks() {
        let conf = Conf::parse(SERVICE_URL);
        let (found, skipped) = candidates(&conf);
        assert_eq!(found.len(), 1, "{found:?}");
        let c = &found[0];
        assert_eq!(c.key(), "$service_url");
        assert_eq!(c.sites.len(), 2);
        assert_eq!(c.live_ports(), [8081]);
        let Via::Variable { set, .. } = &c.via else { panic!("{c:?}") };
        assert_eq!(set.place(), "/etc/nginx/conf.d/service-url.inc:1");
        assert_eq!(skipped, ["proxy_pass to 10.0.0.9:8080 at /etc/nginx/nginx.conf:14: not on this host's loopback"]);
        assert_eq!(pick(found, &skipped, None).unwrap().key(), "$service_url");
    }

    #[test]
    fn upstream_blocks_and_direct_proxies_are_candidates_too() {
        let dump = "# configuration file /p/nginx.conf:\nhttp {\n upstream backend {\n  server 127.0.0.1:8081;\n\
                    \x20 server localhost:8082 backup;\n }\n server { listen 80; location / { proxy_pass http://backend; } }\n\
                    \x20server { listen 81; location / { proxy_pass http://[::1]:9000/app/; } }\n}\n";
        let (found, _) = candidates(&Conf::parse(dump));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].key(), "backend");
        assert_eq!(found[0].live_ports(), [8081]);
        assert_eq!(found[0].backends[1], Backend { addr: "127.0.0.1".parse().unwrap(), port: 8082, idle: true });
        assert_eq!(found[1].key(), "[::1]:9000");
        let e = pick(found.clone(), &[], None).unwrap_err();
        assert!(
            format!("{e}").contains("name the one to adopt with --proxy:\n  backend: proxy_pass http://backend"),
            "{e}"
        );
        assert_eq!(pick(found, &[], Some("[::1]:9000")).unwrap().live_ports(), [9000]);
        assert_eq!(url_path("http://[::1]:9000/app/"), "/app/");
        assert_eq!(url_path("http://127.0.0.1:8081"), "");
    }

    #[test]
    fn an_upstream_cutover_writes_is_never_adopted_again() {
        let dump = "# configuration file /p/nginx.conf:\nhttp {\n include /p/cutover/shop.upstream.conf;\n\
                    \x20server { listen 80; set $service_url http://shop; location / { proxy_pass $service_url; } }\n}\n\n\
                    # configuration file /p/cutover/shop.upstream.conf:\n# Managed by cutover\n\
                    # app shop | generation 1 | live v1\nupstream shop {\n    server 127.0.0.1:8081;  # v1\n}\n\n";
        let (found, skipped) = candidates(&Conf::parse(dump));
        assert!(found.is_empty(), "{found:?}");
        let e = pick(found, &skipped, None).unwrap_err();
        assert!(
            format!("{e}").contains("upstream shop at /p/cutover/shop.upstream.conf:3 is cutover's own (app shop)"),
            "{e}"
        );
    }

    #[test]
    fn nothing_to_adopt_says_what_was_looked_for() {
        let dump = "# configuration file /p/nginx.conf:\nhttp { server { listen 80; location / { root /srv; } } }\n";
        let (found, skipped) = candidates(&Conf::parse(dump));
        let e = pick(found, &skipped, None).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::Code::Refused);
        assert!(format!("{e}").starts_with("nothing to adopt: no server block"), "{e}");
    }
}

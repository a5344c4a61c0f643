//! Which server block nginx picks for a request, read from the config tree: each block's `listen` addresses and
//! `server_name`s, the default server of each address, where a block proxies to, and the conflicts that make a
//! site lose its requests to another block. Pure.
//!
//! nginx groups server blocks by the address and port they listen on. For a request on one of them it takes the
//! block whose `server_name` matches the Host header; with none, the address's default server: the block marked
//! `default_server`, else the first block listening there. Two blocks with the same name on the same address:
//! the first wins, the second is ignored for that name ("conflicting server name ... ignored", a warning only).
//! So a site whose only name is `_` (which matches no Host) gets requests only as the default server, and on a
//! stock Debian nginx `sites-enabled/default` already is that (`listen 80 default_server`).

use std::fmt;

use super::conf::{Conf, Directive};

/// One `listen`, normalized: `80` and `0.0.0.0:80` are `*:80`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `*`, an IPv4 address, `[v6]`, a host name, or `unix:PATH`.
    pub addr: String,
    pub port: u16,
    pub default_server: bool,
}

impl Listen {
    /// From `listen`'s arguments; `None` for what is not an address (never in a config nginx accepted).
    pub fn parse(args: &[String]) -> Option<Listen> {
        let first = args.first()?;
        let default_server = args[1..].iter().any(|a| a == "default_server" || a == "default");
        let (addr, port) = if first.starts_with("unix:") {
            (first.clone(), 0)
        } else if let Some(rest) = first.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None => 80,
            };
            (format!("[{v6}]"), port)
        } else if first.chars().all(|c| c.is_ascii_digit()) {
            ("*".to_string(), first.parse().ok()?)
        } else if let Some((a, p)) = first.rsplit_once(':') {
            (a.to_string(), p.parse().ok()?)
        } else {
            (first.clone(), 80)
        };
        let addr = if addr == "0.0.0.0" { "*".to_string() } else { addr };
        Some(Listen { addr, port, default_server })
    }

    /// `*:80`, `127.0.0.1:8080`, `[::]:80`: the socket server blocks are grouped by.
    pub fn key(&self) -> String {
        if self.port == 0 {
            self.addr.clone()
        } else {
            format!("{}:{}", self.addr, self.port)
        }
    }
}

/// A server block of the http context and what decides which requests it gets.
#[derive(Debug, Clone)]
pub struct Site<'a> {
    pub block: &'a Directive,
    /// Its position among the http server blocks, in nginx's order.
    pub index: usize,
    pub listens: Vec<Listen>,
    /// `server_name`s, lowercased; `[""]` when it has none (nginx's default).
    pub names: Vec<String>,
}

impl Site<'_> {
    /// Whether some request Host can select it by name (it has a name other than `_` and "").
    pub fn has_real_name(&self) -> bool {
        self.names.iter().any(|n| !n.is_empty() && n != "_")
    }

    pub fn describe(&self) -> String {
        let listens: Vec<String> = self.listens.iter().map(Listen::key).collect();
        let names: Vec<&str> = self.names.iter().map(|n| if n.is_empty() { "\"\"" } else { n.as_str() }).collect();
        format!(
            "the server block at {} (listen {}; server_name {})",
            self.block.place(),
            listens.join(", "),
            names.join(" ")
        )
    }
}

/// Every http server block, in nginx's order.
pub fn sites(conf: &Conf) -> Vec<Site<'_>> {
    conf.http_servers()
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            let children = block.children();
            let mut listens: Vec<Listen> =
                children.iter().filter(|d| d.name == "listen").filter_map(|d| Listen::parse(&d.args)).collect();
            if listens.is_empty() {
                listens.push(Listen { addr: "*".into(), port: 80, default_server: false });
            }
            let mut names: Vec<String> = children
                .iter()
                .filter(|d| d.name == "server_name")
                .flat_map(|d| d.args.iter().map(|a| a.to_lowercase()))
                .collect();
            if names.is_empty() {
                names.push(String::new());
            }
            Site { block, index, listens, names }
        })
        .collect()
}

/// Where a `proxy_pass` sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget<'a> {
    pub proxy_pass: &'a Directive,
    /// The `set $var URL;` the target comes from, when `proxy_pass` names a variable.
    pub set: Option<&'a Directive>,
    /// The variable, with its `$`, when there is one.
    pub var: Option<String>,
    /// The URL nginx proxies to (the variable's value when it is set in the block), e.g. `http://127.0.0.1:8081`.
    pub url: String,
}

impl ProxyTarget<'_> {
    /// `127.0.0.1:8081` or `shop`: the URL's host (and port), which nginx looks up among the upstream blocks.
    pub fn host(&self) -> Option<&str> {
        url_host(&self.url)
    }
}

/// The host part of `http://HOST[:PORT][/path]`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split('/').next()?;
    (!host.is_empty()).then_some(host)
}

/// Every `proxy_pass` in a server block (in its locations too), with variables resolved through the block's
/// `set` directives (a variable set in an included file, as the `service-url.inc` pattern does, included).
pub fn proxy_targets(block: &Directive) -> Vec<ProxyTarget<'_>> {
    let all = block.descendants();
    let sets: Vec<&Directive> = all.iter().copied().filter(|d| d.name == "set" && d.args.len() >= 2).collect();
    all.iter()
        .copied()
        .filter(|d| d.name == "proxy_pass")
        .filter_map(|pp| {
            let arg = pp.arg(0)?;
            if let Some(var) = arg.strip_prefix('$').map(|v| format!("${v}")) {
                let set = sets.iter().rev().find(|s| s.args[0] == var).copied();
                let url = set.map(|s| s.args[1].clone()).unwrap_or_else(|| arg.to_string());
                return Some(ProxyTarget { proxy_pass: pp, set, var: Some(var), url });
            }
            Some(ProxyTarget { proxy_pass: pp, set: None, var: None, url: arg.to_string() })
        })
        .collect()
}

/// Whether a server block sends its requests to the upstream `upstream` (directly, through a variable set to
/// it, or through cutover's routing variable `routing_var`, with its `$`).
pub fn proxies_to_upstream(block: &Directive, upstream: &str, routing_var: &str) -> bool {
    proxy_targets(block).iter().any(|t| {
        t.host().is_some_and(|h| h.eq_ignore_ascii_case(upstream))
            || t.url.contains(routing_var)
            || t.var.as_deref() == Some(routing_var)
    })
}

/// Why a site does not get the requests meant for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A block earlier in nginx's order has the same `server_name` on the same address: nginx ignores the site
    /// for that name.
    NameTaken { name: String, listen: String, by: String },
    /// The site has no name a request can match, so it only gets requests as its address's default server, and
    /// another block is that default.
    NotDefault { listen: String, by: String, explicit: bool },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::NameTaken { name, listen, by } => write!(
                f,
                "server_name {name} on {listen} is taken by {by}, which comes first: nginx ignores this site for that \
                 name (\"conflicting server name\" in its error log)"
            ),
            Conflict::NotDefault { listen, by, explicit } => write!(
                f,
                "the site has no server_name a request can match (only `_` or none), so it gets requests on {listen} \
                 only as the default server, and the default server there is {by}{}",
                if *explicit { " (default_server)" } else { " (the first block listening there)" }
            ),
        }
    }
}

/// The conflicts that keep `ours` (an index into `all`) from getting its requests.
pub fn conflicts(all: &[Site], ours: usize) -> Vec<Conflict> {
    let Some(site) = all.iter().find(|s| s.index == ours) else { return Vec::new() };
    let mut out = Vec::new();
    for l in &site.listens {
        let key = l.key();
        let same: Vec<&Site> = all.iter().filter(|s| s.listens.iter().any(|x| x.key() == key)).collect();
        for name in site.names.iter().filter(|n| !n.is_empty() && *n != "_") {
            if let Some(other) = same.iter().find(|o| o.index < site.index && o.names.contains(name)) {
                out.push(Conflict::NameTaken { name: name.clone(), listen: key.clone(), by: other.describe() });
            }
        }
        if !site.has_real_name() {
            let explicit = same.iter().find(|s| s.listens.iter().any(|x| x.key() == key && x.default_server));
            let default = explicit.or_else(|| same.iter().min_by_key(|s| s.index));
            if let Some(d) = default.filter(|d| d.index != site.index) {
                out.push(Conflict::NotDefault { listen: key.clone(), by: d.describe(), explicit: explicit.is_some() });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> Listen {
        let args: Vec<String> = s.split_whitespace().map(String::from).collect();
        Listen::parse(&args).unwrap()
    }

    #[test]
    fn listens_are_normalized_to_the_socket_they_share() {
        assert_eq!(listen("80").key(), "*:80");
        assert_eq!(listen("0.0.0.0:80").key(), "*:80");
        assert_eq!(listen("127.0.0.1").key(), "127.0.0.1:80");
        assert_eq!(listen("[::]:80 ipv6only=on").key(), "[::]:80");
        assert_eq!(listen("[::1]").key(), "[::1]:80");
        assert_eq!(listen("unix:/run/app.sock").key(), "unix:/run/app.sock");
        assert!(listen("80 default_server").default_server);
        assert!(listen("443 ssl default").default_server);
        assert!(!listen("443 ssl").default_server);
    }

    /// Debian's stock default site, and the site `cutover init` used to write (`server_name _`).
    const DEBIAN: &str = "# configuration file /etc/nginx/nginx.conf:\n\
        http {\n    include /etc/nginx/conf.d/*.conf;\n    include /etc/nginx/sites-enabled/*;\n}\n\n\
        # configuration file /etc/nginx/sites-enabled/default:\n\
        server {\n\tlisten 80 default_server;\n\tlisten [::]:80 default_server;\n\troot /var/www/html;\n\
        \tserver_name _;\n\tlocation / {\n\t\ttry_files $uri $uri/ =404;\n\t}\n}\n\n\
        # configuration file /etc/nginx/sites-enabled/shop:\n\
        include /etc/nginx/cutover/shop.upstream.conf;\n\
        server {\n    listen 80;\n    server_name _;\n    location / { proxy_pass http://shop; }\n}\n\n\
        # configuration file /etc/nginx/cutover/shop.upstream.conf:\n\
        upstream shop {\n    server 127.0.0.1:8081;\n}\n\n";

    fn ours(conf: &Conf) -> usize {
        sites(conf).iter().find(|s| proxies_to_upstream(s.block, "shop", "$cutover_shop_upstream")).unwrap().index
    }

    #[test]
    fn a_nameless_site_loses_to_debians_default_server() {
        let conf = Conf::parse(DEBIAN);
        let all = sites(&conf);
        assert_eq!(all.len(), 2);
        let c = conflicts(&all, ours(&conf));
        assert_eq!(
            c.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["the site has no server_name a request can match (only `_` or none), so it gets requests on *:80 only \
              as the default server, and the default server there is the server block at \
              /etc/nginx/sites-enabled/default:1 (listen *:80, [::]:80; server_name _) (default_server)"]
        );
    }

    #[test]
    fn a_named_site_wins_its_name_and_loses_it_to_an_earlier_block() {
        let named = DEBIAN.replace(
            "    server_name _;\n    location / { proxy_pass",
            "    server_name Shop.example.com;\n    location / { proxy_pass",
        );
        let conf = Conf::parse(&named);
        assert!(conflicts(&sites(&conf), ours(&conf)).is_empty(), "a real name wins over the default server");
        // The same name in the default site, which nginx reads first.
        let taken = named.replace("\tserver_name _;", "\tserver_name _ shop.example.com;");
        let conf = Conf::parse(&taken);
        let c = conflicts(&sites(&conf), ours(&conf));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            matches!(&c[0], Conflict::NameTaken { name, listen, .. } if name == "shop.example.com" && listen == "*:80")
        );
    }

    #[test]
    fn the_first_block_on_an_address_is_its_default_without_default_server() {
        let dump = "# configuration file /p/nginx.conf:\nhttp {\n\
            server { listen 127.0.0.1:8080; return 200; }\n\
            server { listen 127.0.0.1:8080; location / { proxy_pass http://shop/; } }\n\
            server { listen 127.0.0.1:9090; location / { proxy_pass http://shop; } }\n}\n";
        let conf = Conf::parse(dump);
        let all = sites(&conf);
        let c = conflicts(&all, 1);
        assert!(matches!(&c[..], [Conflict::NotDefault { explicit: false, listen, .. }] if listen == "127.0.0.1:8080"));
        assert!(conflicts(&all, 2).is_empty(), "alone on its address, it is the default");
    }

    #[test]
    fn proxy_targets_resolve_variables_set_in_included_files() {
        let dump = "# configuration file /p/nginx.conf:\nhttp {\n server {\n  listen 80;\n  include /p/service-url.inc;\n\
                    \x20 location / { proxy_pass $service_url; }\n  location /x { proxy_pass http://$cutover_shop_upstream; }\n }\n}\n\n\
                    # configuration file /p/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n\n";
        let conf = Conf::parse(dump);
        let t = proxy_targets(conf.http_servers()[0]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].url, "http://127.0.0.1:8081");
        assert_eq!(t[0].host(), Some("127.0.0.1:8081"));
        assert_eq!(t[0].var.as_deref(), Some("$service_url"));
        assert_eq!(t[0].set.unwrap().place(), "/p/service-url.inc:1");
        assert!(proxies_to_upstream(conf.http_servers()[0], "shop", "$cutover_shop_upstream"));
        assert_eq!(url_host("http://shop/api"), Some("shop"));
        assert_eq!(url_host("unix:/x"), None);
    }
}

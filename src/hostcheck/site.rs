//! The site: some server block must proxy to the app's upstream and get the requests meant for it. A block
//! that loses its `server_name` to an earlier one, or that has no name a request can match while another block
//! is its address's default server (Debian's `sites-enabled/default`), never sees a request: nginx -t passes,
//! reloads work, deploys "succeed", and users get "Welcome to nginx!".

use super::Finding;
use crate::config::Config;
use crate::nginx::dump::conf::Conf;
use crate::nginx::dump::servers::{conflicts, proxies_to_upstream, sites, Conflict};
use crate::upstream::Names;

/// The "site" item, from `nginx -T` output.
pub fn site(dump: &str, cfg: &Config) -> Finding {
    let names = Names::of(cfg);
    let conf = Conf::parse(dump);
    let all = sites(&conf);
    let ours: Vec<_> =
        all.iter().filter(|s| proxies_to_upstream(s.block, &names.upstream, &names.routing_var)).collect();
    if ours.is_empty() {
        return Finding::fail(
            "site",
            format!(
                "no server block in nginx's config proxies to the upstream {u} (proxy_pass http://{u};), so no \
                 request reaches what cutover deploys",
                u = names.upstream
            ),
            format!(
                "enable the site file `cutover init` writes, or point the site's proxy_pass at http://{}, then \
                 nginx -t and reload nginx",
                names.upstream
            ),
        );
    }
    let mut found: Vec<Conflict> = Vec::new();
    for s in &ours {
        for c in conflicts(&all, s.index) {
            if !found.contains(&c) {
                found.push(c);
            }
        }
    }
    if found.is_empty() {
        let more = if ours.len() > 1 { format!(" (and {} more)", ours.len() - 1) } else { String::new() };
        return Finding::ok(
            "site",
            format!("{}{more} proxies to {} and gets its requests", ours[0].describe(), names.upstream),
        );
    }
    let nameless = found.iter().any(|c| matches!(c, Conflict::NotDefault { .. }));
    let fix = if nameless {
        "give the site the name users reach it by (`server_name shop.example.com;`; `cutover init --server-name` \
         writes it), or take the default away from the other block (Debian: rm /etc/nginx/sites-enabled/default); \
         then nginx -t and reload nginx"
    } else {
        "remove the name from one of the two server blocks, then nginx -t and reload nginx"
    };
    let detail: Vec<String> = found.iter().map(|c| c.to_string()).collect();
    Finding::fail("site", format!("{}: {}", ours[0].describe(), detail.join("; ")), fix)
}

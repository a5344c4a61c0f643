//! The `server_name` of the site `cutover init` writes. A site named only `_` gets requests only as the default
//! server of its port, and on a stock Debian nginx `sites-enabled/default` is that (`listen 80 default_server`):
//! nginx -t passes, every deploy "succeeds", and users get "Welcome to nginx!". So the site gets a real name:
//! `--server-name`, else the host's fully qualified name (`hostname --fqdn`), else init refuses and says how.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::exit;

/// Where the name came from, for what init says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Fqdn,
}

/// A name nginx takes as one `server_name` token and that a Host header can match: letters, digits, `-` and
/// `.`, with an optional leading `*.` (a wildcard); not `_`, not `localhost`.
pub fn valid(name: &str) -> bool {
    let core = name.strip_prefix("*.").unwrap_or(name);
    !core.is_empty()
        && core.len() <= 253
        && core.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !core.starts_with(['.', '-'])
        && !core.ends_with('.')
        && !core.contains("..")
        && core != "localhost"
}

/// A fully qualified name worth serving a site under: it has a dot, and is not a loopback or placeholder name.
pub fn usable_fqdn(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    valid(&n)
        && n.contains('.')
        && !n.starts_with("*.")
        && !["localhost", ".localdomain", ".local", ".localhost"].iter().any(|s| n.ends_with(s))
}

/// `hostname --fqdn`, when it says something usable.
pub fn fqdn() -> Option<String> {
    let out = Command::new("hostname").arg("--fqdn").output().ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_ascii_lowercase();
    (out.status.success() && usable_fqdn(&name)).then_some(name)
}

/// The site's names: the flags, else the host's FQDN; refused (exit 2) with a hint when there is neither.
pub fn server_names(given: &[String]) -> Result<(Vec<String>, Source)> {
    if !given.is_empty() {
        if let Some(bad) = given.iter().find(|n| !valid(n)) {
            return Err(exit::usage(format!(
                "--server-name {bad:?} is not a name a request's Host header can match: give the name users reach \
                 the app by, e.g. --server-name shop.example.com"
            )));
        }
        return Ok((given.iter().map(|n| n.to_ascii_lowercase()).collect(), Source::Flag));
    }
    match fqdn() {
        Some(n) => Ok((vec![n], Source::Fqdn)),
        None => Err(exit::usage(
            "the site needs the name users reach the app by, and this host has no fully qualified name to use \
             (`hostname --fqdn` gives none): pass --server-name shop.example.com. A site without a name gets \
             requests only as the default server of its port, which nginx's own default site already is on Debian",
        )),
    }
}

/// What to say about Debian's default site, when this host has one enabled.
pub fn default_site_note(sites_enabled: &Path) -> Option<String> {
    let default = sites_enabled.join("default");
    default.exists().then(|| {
        format!(
            "{} is enabled: it is the default server of port 80 and answers every request whose Host is not one of \
             this site's names (\"Welcome to nginx!\"). This site gets its own names anyway; if the host serves \
             only this app, remove it: rm {}",
            default.display(),
            default.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_host_header_can_match() {
        for ok in ["shop.example.com", "*.example.com", "app1", "a-b.c"] {
            assert!(valid(ok), "{ok}");
        }
        for bad in ["_", "", "localhost", "a b", "a;b", "-x", "x..y", "x.", "shop.example.com;"] {
            assert!(!valid(bad), "{bad}");
        }
        assert!(usable_fqdn("ip-172-31-5-10.ec2.internal"));
        assert!(!usable_fqdn("buildbox"));
        assert!(!usable_fqdn("debian.localdomain"));
        assert!(!usable_fqdn("localhost"));
    }
}

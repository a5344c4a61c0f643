//! Reading nginx's configuration as `nginx -T` prints it: pure functions over the dump text. Every file nginx
//! loaded is introduced by `# configuration file PATH:`. [`conf`] reads it into a tree with includes expanded;
//! [`servers`] says which server block gets which requests.

pub mod conf;
pub mod servers;

use std::path::{Path, PathBuf};

/// The files nginx's config includes, as `nginx -T` lists them.
pub fn included_files(dump: &str) -> Vec<PathBuf> {
    dump.lines()
        .filter_map(|l| l.strip_prefix("# configuration file "))
        .map(|l| PathBuf::from(l.trim_end_matches(':')))
        .collect()
}

/// A line without its comment.
fn code(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// The value of a main-context directive (`pid`, `error_log`) in the first file of the dump.
pub fn main_directive(dump: &str, name: &str) -> Option<String> {
    let mut depth = 0i32;
    let mut seen_first = false;
    for line in dump.lines() {
        if line.starts_with("# configuration file ") {
            if seen_first {
                break;
            }
            seen_first = true;
            continue;
        }
        let code = code(line);
        if depth == 0 {
            let mut words = code.split_whitespace();
            if words.next() == Some(name) {
                if let Some(v) = words.next() {
                    return Some(v.trim_end_matches(';').to_string());
                }
            }
        }
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
    }
    None
}

/// Whether some `proxy_pass` in the config uses the nginx variable `var` (with its `$`).
pub fn proxies_to(dump: &str, var: &str) -> bool {
    dump.lines().any(|l| {
        let c = code(l);
        c.find("proxy_pass").is_some_and(|at| c[at..].contains(var))
    })
}

/// The paths of every `access_log PATH FORMAT` that writes `format`, relative paths joined to `prefix` as nginx
/// does.
pub fn access_logs(dump: &str, format: &str, prefix: &Path) -> Vec<PathBuf> {
    dump.lines()
        .filter_map(|l| {
            let mut w = code(l).split_whitespace();
            if w.next() != Some("access_log") {
                return None;
            }
            let file = w.next()?.trim_end_matches(';');
            w.any(|x| x.trim_end_matches(';') == format).then(|| prefix.join(file))
        })
        .collect()
}

/// `nginx version: nginx/1.22.1` → (1, 22, 1).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// nginx 1.27.4 added `keepalive_min_timeout`, which keeps a reload from resetting idle keep-alive clients.
pub fn has_keepalive_min_timeout(version: (u32, u32, u32)) -> bool {
    version >= (1, 27, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("nginx version: nginx/1.22.1\n"), Some((1, 22, 1)));
        assert_eq!(parse_version("nginx version: nginx/1.27.4 (Ubuntu)"), Some((1, 27, 4)));
        assert_eq!(parse_version("nginx version: openresty/1.2"), None);
        assert!(!has_keepalive_min_timeout((1, 22, 1)));
        assert!(!has_keepalive_min_timeout((1, 27, 3)));
        assert!(has_keepalive_min_timeout((1, 27, 4)));
        assert!(has_keepalive_min_timeout((1, 28, 0)));
    }

    #[test]
    fn main_directive_ignores_blocks_and_included_files() {
        let dump = "# configuration file /p/nginx.conf:\nworker_processes 2;\nerror_log logs/error.log;\n\
                    pid   logs/nginx.pid; # here\nhttp {\n  pid nope;\n}\n# configuration file /p/x.conf:\npid later;\n";
        assert_eq!(main_directive(dump, "pid").as_deref(), Some("logs/nginx.pid"));
        assert_eq!(main_directive(dump, "error_log").as_deref(), Some("logs/error.log"));
        assert_eq!(main_directive(dump, "user"), None);
        assert_eq!(included_files(dump), vec![PathBuf::from("/p/nginx.conf"), PathBuf::from("/p/x.conf")]);
    }

    #[test]
    fn access_logs_and_proxy_passes_are_found_outside_comments() {
        let dump = "# configuration file /p/site.conf:\nserver {\n  access_log logs/a.log cutover_shop;\n\
                    # access_log /x.log cutover_shop;\n  access_log /b.log combined;\n\
                    location / { proxy_pass http://$cutover_shop_upstream; }\n}\n";
        assert_eq!(access_logs(dump, "cutover_shop", Path::new("/p")), vec![PathBuf::from("/p/logs/a.log")]);
        assert!(proxies_to(dump, "$cutover_shop_upstream"));
        assert!(!proxies_to("# proxy_pass http://$cutover_shop_upstream;", "$cutover_shop_upstream"));
    }
}

//! The changes adoption makes to nginx's files, computed as new file texts before anything is written. Pure.
//!
//! What is rewritten, and nothing else:
//! - a variable (`set $service_url http://127.0.0.1:8081;`): that one `set` line now names cutover's upstream
//!   (`set $service_url http://shop;`: nginx looks a proxied host up among the upstream blocks first), with the
//!   old value in a comment on the line; and `include <upstream file>;` goes in the http context, on its own line
//!   just before the first server block that proxies this way;
//! - a `proxy_pass http://127.0.0.1:8081/path;`: each such line names the upstream instead (the path kept),
//!   and the include goes in before the first of those server blocks;
//! - an `upstream NAME { ... }` block: it is replaced by the include of cutover's file, which defines the same
//!   upstream; the old block stays in the file, commented out. (The app takes the upstream's name.)
//!
//! Each edit is checked against the file as it is on disk now: the directive must be where `nginx -T` saw it,
//! unchanged, or adoption stops before writing anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::find::{url_path, Candidate, Loc, Via};
use crate::nginx::dump::conf::{parse_text, Directive};

/// One file's text before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    pub file: PathBuf,
    pub before: String,
    pub after: String,
}

/// A change to one byte range of one file.
struct Splice {
    file: PathBuf,
    start: usize,
    end: usize,
    text: String,
}

const MARK: &str = "cutover init --adopt";

/// Whether `text` (a file as it is on disk) has `loc`'s directive exactly where nginx -T saw it.
pub fn still_there(text: &str, loc: &Loc) -> bool {
    fn walk(list: &[Directive], loc: &Loc) -> bool {
        list.iter().any(|d| {
            (d.start == loc.start && d.end == loc.end && d.name == loc.name && d.args == loc.args)
                || d.block.as_deref().is_some_and(|b| walk(b, loc))
        })
    }
    walk(&parse_text(text, &loc.file), loc)
}

/// The start of `at`'s line and its indentation, when only whitespace precedes it on the line.
fn line_of(text: &str, at: usize) -> (usize, Option<&str>) {
    let start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let indent = &text[start..at];
    (start, indent.chars().all(|c| c == ' ' || c == '\t').then_some(indent))
}

/// `include FILE;` before the server block at `site`.
fn include_before(text: &str, site: &Loc, upstream: &str, upstream_file: &Path) -> Splice {
    let line = format!("include {};  # {MARK}: upstream {upstream}, which cutover writes", upstream_file.display());
    match line_of(text, site.start) {
        (start, Some(indent)) => {
            Splice { file: site.file.clone(), start, end: start, text: format!("{indent}{line}\n") }
        }
        (_, None) => Splice { file: site.file.clone(), start: site.start, end: site.start, text: format!("{line} ") },
    }
}

/// The splices for adopting `c` as upstream `upstream` written to `upstream_file`.
fn splices(
    c: &Candidate,
    texts: &BTreeMap<PathBuf, String>,
    upstream: &str,
    upstream_file: &Path,
) -> Result<Vec<Splice>> {
    let text =
        |f: &Path| -> Result<&String> { texts.get(f).ok_or_else(|| anyhow::anyhow!("{} was not read", f.display())) };
    let first_site = c.sites.first().ok_or_else(|| anyhow::anyhow!("no server block proxies this way"))?;
    let mut out = Vec::new();
    match &c.via {
        Via::Variable { var, set } => {
            out.push(Splice {
                file: set.file.clone(),
                start: set.start,
                end: set.end,
                text: format!("set {var} http://{upstream};  # {MARK}: was {}", set.args[1]),
            });
            out.push(include_before(text(&first_site.file)?, first_site, upstream, upstream_file));
        }
        Via::Direct { proxy_passes } => {
            for p in proxy_passes {
                let url = &p.args[0];
                out.push(Splice {
                    file: p.file.clone(),
                    start: p.start,
                    end: p.end,
                    text: format!("proxy_pass http://{upstream}{};  # {MARK}: was {url}", url_path(url)),
                });
            }
            out.push(include_before(text(&first_site.file)?, first_site, upstream, upstream_file));
        }
        Via::Upstream { name, block } => {
            if name != upstream {
                bail!("upstream {name} is adopted as app {name}, not {upstream}");
            }
            let t = text(&block.file)?;
            let (_, indent) = line_of(t, block.start);
            let indent = indent.unwrap_or("");
            let old: Vec<String> =
                t[block.start..block.end].lines().map(|l| format!("{indent}# {}", l.trim_end())).collect();
            out.push(Splice {
                file: block.file.clone(),
                start: block.start,
                end: block.end,
                text: format!(
                    "# {MARK}: upstream {name} is defined in {} now; it was:\n{}\n{indent}include {};",
                    upstream_file.display(),
                    old.join("\n"),
                    upstream_file.display()
                ),
            });
        }
    }
    Ok(out)
}

/// Every file adoption changes, with its text before and after. `texts` holds the files as they are on disk;
/// a directive that is not where nginx -T saw it stops everything.
pub fn plan(
    c: &Candidate,
    texts: &BTreeMap<PathBuf, String>,
    upstream: &str,
    upstream_file: &Path,
) -> Result<Vec<FileEdit>> {
    let mut locs: Vec<&Loc> = c.sites.iter().take(1).collect();
    match &c.via {
        Via::Variable { set, .. } => locs.push(set),
        Via::Upstream { block, .. } => locs.push(block),
        Via::Direct { proxy_passes } => locs.extend(proxy_passes),
    }
    for l in locs {
        let on_disk = texts.get(&l.file).map(String::as_str).unwrap_or_default();
        if !still_there(on_disk, l) {
            bail!(
                "`{} {}` is no longer at {} as nginx -T showed it: the file changed meanwhile; run again",
                l.name,
                l.args.join(" "),
                l.place()
            );
        }
    }
    let mut by_file: BTreeMap<PathBuf, Vec<Splice>> = BTreeMap::new();
    for s in splices(c, texts, upstream, upstream_file)? {
        by_file.entry(s.file.clone()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (file, mut list) in by_file {
        let before = texts[&file].clone();
        let mut after = before.clone();
        // From the end, so that earlier offsets stay true.
        list.sort_by_key(|s| std::cmp::Reverse((s.start, s.end)));
        for s in list {
            after.replace_range(s.start..s.end, &s.text);
        }
        out.push(FileEdit { file, before, after });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adopt::find::{candidates, pick};
    use crate::nginx::dump::conf::Conf;

    fn texts(dump: &str) -> BTreeMap<PathBuf, String> {
        Conf::parse(dump).files
    }

    const DUMP: &str = "# configuration file /etc/nginx/nginx.conf:\nhttp {\n    server {\n        listen 80;\n\
        \x20       include /etc/nginx/conf.d/service-url.inc;\n        location / {\n            proxy_pass $service_url;\n\
        \x20       }\n    }\n}\n\n# configuration file /etc/nginx/conf.d/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n\n";

    #[test]
    fn the_set_line_names_the_upstream_and_the_include_goes_before_the_server_block() {
        let conf = Conf::parse(DUMP);
        let (found, skipped) = candidates(&conf);
        let c = pick(found, &skipped, None).unwrap();
        let edits = plan(&c, &texts(DUMP), "shop", Path::new("/etc/nginx/cutover/shop.upstream.conf")).unwrap();
        assert_eq!(edits.len(), 2);
        assert_eq!(edits[0].file, PathBuf::from("/etc/nginx/conf.d/service-url.inc"));
        assert_eq!(
            edits[0].after,
            "set $service_url http://shop;  # cutover init --adopt: was http://127.0.0.1:8081\n"
        );
        assert_eq!(
            edits[1].after,
            "http {\n    include /etc/nginx/cutover/shop.upstream.conf;  # cutover init --adopt: upstream shop, which \
             cutover writes\n    server {\n        listen 80;\n        include /etc/nginx/conf.d/service-url.inc;\n        \
             location / {\n            proxy_pass $service_url;\n        }\n    }\n}\n"
        );
        // The edited files still parse, and the site now proxies to the upstream.
        let mut dump = String::new();
        for e in edits.iter().rev() {
            dump.push_str(&format!("# configuration file {}:\n{}\n", e.file.display(), e.after));
        }
        let after = Conf::parse(&dump);
        let site = after.http_servers()[0];
        assert!(crate::nginx::dump::servers::proxies_to_upstream(site, "shop", "$cutover_shop_upstream"));
    }

    #[test]
    fn an_upstream_block_is_replaced_by_the_include_and_kept_as_a_comment() {
        let dump = "# configuration file /p/nginx.conf:\nhttp {\n    upstream backend {\n        server 127.0.0.1:8081;\n    }\n\
                    \x20   server { listen 80; location / { proxy_pass http://backend; } }\n}\n";
        let (found, _) = candidates(&Conf::parse(dump));
        let c = pick(found, &[], None).unwrap();
        let edits = plan(&c, &texts(dump), "backend", Path::new("/p/cutover/backend.upstream.conf")).unwrap();
        assert_eq!(
            edits[0].after,
            "http {\n    # cutover init --adopt: upstream backend is defined in /p/cutover/backend.upstream.conf now; it \
             was:\n    # upstream backend {\n    #         server 127.0.0.1:8081;\n    #     }\n    include \
             /p/cutover/backend.upstream.conf;\n    server { listen 80; location / { proxy_pass http://backend; } }\n}\n"
        );
    }

    #[test]
    fn a_file_changed_since_the_dump_stops_adoption() {
        let (found, skipped) = candidates(&Conf::parse(DUMP));
        let c = pick(found, &skipped, None).unwrap();
        let mut t = texts(DUMP);
        t.insert(
            PathBuf::from("/etc/nginx/conf.d/service-url.inc"),
            "set $service_url http://127.0.0.1:8082;\n".into(),
        );
        let e = plan(&c, &t, "shop", Path::new("/u.conf")).unwrap_err();
        assert!(format!("{e}").contains("is no longer at /etc/nginx/conf.d/service-url.inc:1"), "{e}");
    }
}

//! Which config a running nginx master was started with, read from its command line (nginx rewrites its argv to
//! `nginx: master process /usr/sbin/nginx -p /srv/nginx/ -c conf/nginx.conf`). A pid file can name a live nginx
//! master that is not the one that loads this app's upstream file (a second nginx on the host); reloading that
//! one confirms nothing about the nginx that routes the app. Pure functions over the text.

use std::path::{Path, PathBuf};

/// The `-p` prefix and `-c` config file on an nginx master's command line, each `None` when not given. A
/// relative `-c` is resolved against `-p`, as nginx does; without `-p` it stays relative.
pub fn started_with(cmdline: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let args: Vec<&str> = cmdline.strip_prefix("nginx: master process").unwrap_or(cmdline).split_whitespace().collect();
    let value = |flag: &str| -> Option<String> {
        let mut it = args.iter();
        let mut found = None;
        while let Some(a) = it.next() {
            if *a == flag {
                found = it.next().map(|v| v.to_string());
            } else if let Some(v) = a.strip_prefix(flag).filter(|v| !v.is_empty() && a.len() > 2) {
                found = Some(v.to_string());
            }
        }
        found
    };
    let prefix = value("-p").map(PathBuf::from);
    let conf = value("-c").map(|c| match &prefix {
        Some(p) if Path::new(&c).is_relative() => p.join(c),
        _ => PathBuf::from(c),
    });
    (prefix, conf)
}

/// Why a master started with `cmdline` runs another nginx than the one `prefix` / `conf` (this config's, both
/// absolute) describe; `None` when nothing on its command line says so.
pub fn runs_another_config(cmdline: &str, prefix: Option<&Path>, conf: Option<&Path>) -> Option<String> {
    let (their_prefix, their_conf) = started_with(cmdline);
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.components().eq(b.components()),
    };
    if let (Some(theirs), Some(ours)) = (&their_conf, conf) {
        if theirs.is_absolute() && !same(theirs, ours) {
            return Some(format!("it runs {}, not {}", theirs.display(), ours.display()));
        }
    }
    if let (Some(theirs), Some(ours)) = (&their_prefix, prefix) {
        // A relative `-p` is relative to where that nginx was started: nothing to compare with here.
        if theirs.is_absolute() && !same(theirs, ours) {
            return Some(format!("its prefix is {}, not {}", theirs.display(), ours.display()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_conf_are_read_from_the_master_command_line() {
        let (p, c) = started_with("nginx: master process /usr/sbin/nginx -p /srv/nginx/ -c conf/nginx.conf");
        assert_eq!(p.unwrap(), Path::new("/srv/nginx/"));
        assert_eq!(c.unwrap(), Path::new("/srv/nginx/conf/nginx.conf"));
        let (p, c) = started_with("nginx: master process /usr/sbin/nginx -c/etc/nginx/other.conf");
        assert_eq!((p, c.unwrap()), (None, PathBuf::from("/etc/nginx/other.conf")));
        assert_eq!(
            started_with("nginx: master process /usr/sbin/nginx -g daemon on; master_process on;"),
            (None, None)
        );
    }

    #[test]
    fn another_prefix_or_config_is_named_and_the_same_one_passes() {
        let cmd = "nginx: master process /usr/sbin/nginx -p /srv/a/ -c conf/nginx.conf";
        assert_eq!(
            runs_another_config(cmd, Some(Path::new("/srv/a")), Some(Path::new("/srv/a/conf/nginx.conf"))),
            None
        );
        assert_eq!(
            runs_another_config(cmd, Some(Path::new("/srv/b")), Some(Path::new("/srv/b/conf/nginx.conf"))).unwrap(),
            "it runs /srv/a/conf/nginx.conf, not /srv/b/conf/nginx.conf"
        );
        assert_eq!(
            runs_another_config(cmd, Some(Path::new("/srv/b")), None).unwrap(),
            "its prefix is /srv/a/, not /srv/b"
        );
        // Relative to where that nginx was started: not comparable, not refused.
        let rel = "nginx: master process nginx -p nginx/ -c conf/nginx.conf";
        assert_eq!(
            runs_another_config(rel, Some(Path::new("/srv/b")), Some(Path::new("/srv/b/conf/nginx.conf"))),
            None
        );
        // Nothing on the command line to compare: not refused.
        assert_eq!(runs_another_config("nginx: master process /usr/sbin/nginx", None, Some(Path::new("/x"))), None);
    }
}

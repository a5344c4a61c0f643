//! What an instance runs with, the same on both runtimes: its command, working directory, account and a clean
//! environment.
//!
//! The environment is built, never inherited: `PATH`, `LANG` and `HOME` (the app user's home when `app.user` is
//! set), then the variables `app.inherit_env` names, then `app.env`, then `app.env_file`, then `PORT`,
//! `CUTOVER_APP`, `CUTOVER_RELEASE` and `CUTOVER_INSTANCE` (the marker that proves a process is the instance
//! cutover started). A CI job's tokens and settings never reach the app unless the config names them.
//!
//! `app.env_file` holds secrets, so it is refused unless it belongs to root or to the user cutover runs as and
//! other users can neither read nor write it. Its lines are read the way systemd's `EnvironmentFile=` reads
//! them, restricted to the part both agree on: `KEY=VALUE`, `#` and `;` comments, blank lines, a value in single
//! quotes (literal) or double quotes (`\"` and `\\` escaped). Anything else (a line continuation, a key that is
//! not a variable name, one of the names cutover sets) is an error naming the file and line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::unistd::{Gid, Group, Uid, User};

use super::StartSpec;
use crate::config::runtime::RESERVED_ENV;
use crate::config::Config;
use crate::exit;

pub const MARKER_VAR: &str = "CUTOVER_INSTANCE";
/// PATH when cutover's own environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The account an instance runs as, resolved from `app.user` / `app.group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `app.user` as written (`None`: cutover's own user).
    pub user: Option<String>,
    pub group: Option<String>,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, as initgroups(3) would set them.
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

impl Account {
    /// Whether starting as this account needs a change of user or group.
    pub fn switches(&self) -> bool {
        self.uid != nix::unistd::geteuid() || self.gid != nix::unistd::getegid()
    }
}

/// Everything an instance is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The shell command (`/bin/sh -c`), `{{port}}` and `{{release}}` substituted.
    pub command: String,
    /// `app.workdir` with `{{release}}` substituted, else the directory cutover runs from; absolute.
    pub workdir: PathBuf,
    /// The environment without `app.env_file`, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// `app.env_file`, checked and parsed: spawn adds these; systemd reads the file itself (`EnvironmentFile=`).
    pub env_file: Option<(PathBuf, Vec<(String, String)>)>,
    /// The variables cutover sets last, so nothing overrides them.
    pub fixed: Vec<(String, String)>,
    pub account: Account,
}

impl Launch {
    /// The whole environment as the app sees it, later entries winning.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let file = self.env_file.iter().flat_map(|(_, v)| v.iter());
        for (k, v) in self.env.iter().chain(file).chain(self.fixed.iter()) {
            out.retain(|(x, _)| x != k);
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// The shell command for an instance: `{{port}}` and `{{release}}` substituted (both are validated to be inert).
pub fn start_command(template: &str, release: &str, port: u16) -> String {
    template.replace("{{port}}", &port.to_string()).replace("{{release}}", release)
}

/// Resolve what an instance of `spec` runs with. Fails (exit 2) on a user that does not exist, an unsafe or
/// malformed env file, or `app.user` while cutover cannot switch users.
pub fn prepare(cfg: &Config, spec: &StartSpec) -> Result<Launch> {
    let app = &cfg.app;
    let account = account(cfg)?;
    let workdir = match &app.workdir {
        Some(w) => PathBuf::from(w.display().to_string().replace("{{release}}", &spec.release)),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    env.push(("PATH".into(), std::env::var("PATH").ok().filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH.into())));
    if let Ok(lang) = std::env::var("LANG") {
        env.push(("LANG".into(), lang));
    }
    let home = if app.user.is_some() {
        Some(account.home.display().to_string())
    } else {
        std::env::var("HOME").ok().or_else(|| Some(account.home.display().to_string()))
    };
    if let Some(h) = home.filter(|h| !h.is_empty()) {
        env.push(("HOME".into(), h));
    }
    for name in &app.inherit_env {
        if let Ok(v) = std::env::var(&name.0) {
            env.retain(|(k, _)| k != &name.0);
            env.push((name.0.clone(), v));
        }
    }
    for (k, v) in &app.env {
        env.retain(|(x, _)| x != &k.0);
        env.push((k.0.clone(), v.clone()));
    }
    let env_file = match &app.env_file {
        Some(p) => Some((p.clone(), read_env_file(p)?)),
        None => None,
    };
    let fixed = vec![
        ("PORT".to_string(), spec.port.to_string()),
        ("CUTOVER_APP".to_string(), app.name.to_string()),
        ("CUTOVER_RELEASE".to_string(), spec.release.clone()),
        (MARKER_VAR.to_string(), spec.marker.clone()),
    ];
    Ok(Launch {
        command: start_command(&app.start.0, &spec.release, spec.port),
        workdir,
        env,
        env_file,
        fixed,
        account,
    })
}

/// `app.user` / `app.group` resolved on this host; without them, cutover's own account.
pub fn account(cfg: &Config) -> Result<Account> {
    let user = match &cfg.app.user {
        None => None,
        Some(u) => Some(find_user(&u.0).ok_or_else(|| {
            exit::usage(format!(
                "app.user {u:?} does not exist on this host; create it (useradd --system --no-create-home {u}) or \
                 change app.user"
            ))
        })?),
    };
    let me = nix::unistd::geteuid();
    let (uid, mut gid, home, name) = match &user {
        Some(u) => (u.uid, u.gid, u.dir.clone(), Some(u.name.clone())),
        None => {
            let u = User::from_uid(me).ok().flatten();
            let home = u.as_ref().map(|u| u.dir.clone()).unwrap_or_else(|| PathBuf::from("/"));
            (me, nix::unistd::getegid(), home, u.map(|u| u.name))
        }
    };
    if let Some(g) = &cfg.app.group {
        gid = find_group(&g.0).ok_or_else(|| {
            exit::usage(format!("app.group {g:?} does not exist on this host; create it (groupadd --system {g})"))
        })?;
    }
    let groups = match (&user, &name) {
        (Some(_), Some(n)) => {
            let c = std::ffi::CString::new(n.as_str()).map_err(|_| exit::usage("app.user holds a NUL byte"))?;
            nix::unistd::getgrouplist(&c, gid).unwrap_or_else(|_| vec![gid])
        }
        _ => Vec::new(),
    };
    let acc = Account {
        user: cfg.app.user.as_ref().map(|u| u.0.clone()),
        group: cfg.app.group.as_ref().map(|g| g.0.clone()),
        uid,
        gid,
        groups,
        home,
    };
    if acc.switches() && !me.is_root() {
        return Err(exit::usage(format!(
            "app.user/app.group ask for uid {} gid {}, but cutover runs as uid {me}, which cannot switch users; \
             run cutover as root, or use runtime.kind = \"systemd\" with runtime.systemctl = [\"sudo\", \
             \"systemctl\"]",
            acc.uid, acc.gid
        )));
    }
    Ok(acc)
}

fn find_user(s: &str) -> Option<User> {
    match s.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
        Err(_) => User::from_name(s).ok().flatten(),
    }
}

fn find_group(s: &str) -> Option<Gid> {
    match s.parse::<u32>() {
        Ok(n) => Some(Gid::from_raw(n)),
        Err(_) => Group::from_name(s).ok().flatten().map(|g| g.gid),
    }
}

/// Read `app.env_file`, refusing one that another user could read or change (exit 2).
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| exit::usage(format!("could not read app.env_file {}: {e}", path.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != me {
        return Err(exit::usage(format!(
            "refusing app.env_file {}: it is owned by uid {}, not by root or uid {me} who runs cutover; it holds the \
             app's secrets. Fix: chown root {}",
            path.display(),
            meta.uid(),
            path.display()
        )));
    }
    if mode & 0o007 != 0 || mode & 0o020 != 0 {
        return Err(exit::usage(format!(
            "refusing app.env_file {}: mode {mode:04o} lets other users read or change it; it holds the app's \
             secrets. Fix: chmod 0600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| exit::usage(format!("could not read app.env_file {}: {e}", path.display())))?;
    parse_env_file(&text).map_err(|(line, why)| exit::usage(format!("app.env_file {}:{line}: {why}", path.display())))
}

/// Parse `KEY=VALUE` lines; an error is (line number, reason).
pub fn parse_env_file(text: &str) -> std::result::Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Err((
                line_no,
                "a line continuation (trailing \\) is not supported; put the value on one line".into(),
            ));
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err((line_no, format!("expected KEY=VALUE, got {line:?}")));
        };
        let key = k.trim();
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((line_no, format!("{key:?} is not a variable name")));
        }
        if RESERVED_ENV.contains(&key) {
            return Err((line_no, format!("{key} is set by cutover for each instance and cannot be set here")));
        }
        let value = unquote(v.trim()).map_err(|why| (line_no, why))?;
        out.retain(|(x, _)| x != key);
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn unquote(v: &str) -> std::result::Result<String, String> {
    let quoted = |q: char| v.len() >= 2 && v.starts_with(q) && v.ends_with(q);
    if quoted('\'') {
        return Ok(v[1..v.len() - 1].to_string());
    }
    if quoted('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\')) => out.push(e),
                    Some(e) => return Err(format!("escape \\{e} is not supported in a double-quoted value")),
                    None => return Err("a double-quoted value ends with a lone \\".into()),
                },
                '"' => return Err("an unescaped \" inside a double-quoted value".into()),
                c => out.push(c),
            }
        }
        return Ok(out);
    }
    if v.starts_with('"') || v.starts_with('\'') {
        return Err("a quote that is not closed at the end of the line".into());
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_systemd_reads_them() {
        let text = "# secrets\n\nDB_URL=postgres://x\n; old\nNAME = 'a b $c'\nQ=\"say \\\"hi\\\"\"\nDB_URL=again\n";
        let v = parse_env_file(text).unwrap();
        assert_eq!(
            v,
            vec![
                ("NAME".to_string(), "a b $c".to_string()),
                ("Q".to_string(), "say \"hi\"".to_string()),
                ("DB_URL".to_string(), "again".to_string()),
            ]
        );
        assert_eq!(
            parse_env_file("A=1\nnot a line\n").unwrap_err(),
            (2, "expected KEY=VALUE, got \"not a line\"".into())
        );
        assert_eq!(parse_env_file("PORT=1\n").unwrap_err().0, 1);
        assert!(parse_env_file("A=x\\\n").unwrap_err().1.contains("continuation"));
        assert!(parse_env_file("A=\"open\n").unwrap_err().1.contains("not closed"));
        assert!(parse_env_file("1A=x\n").unwrap_err().1.contains("not a variable name"));
    }

    #[test]
    fn an_env_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "A=1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", read_env_file(&p).unwrap_err());
        assert!(e.contains("mode 0644 lets other users read or change it"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_env_file(&p).unwrap(), vec![("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn later_sources_win_and_cutover_sets_its_own_last() {
        let l = Launch {
            command: String::new(),
            workdir: PathBuf::from("/"),
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "env".into())],
            env_file: Some((PathBuf::from("/e"), vec![("A".into(), "file".into())])),
            fixed: vec![("PORT".into(), "8081".into())],
            account: Account {
                user: None,
                group: None,
                uid: Uid::from_raw(0),
                gid: Gid::from_raw(0),
                groups: vec![],
                home: PathBuf::from("/root"),
            },
        };
        assert_eq!(
            l.environment(),
            vec![("PATH".into(), "/bin".into()), ("A".into(), "file".into()), ("PORT".into(), "8081".into())]
        );
    }
}

//! The file-safety rule, and the walk that gathers what it needs.
//!
//! A file is safe to take commands from when nobody but the trusted users (root and the user cutover runs as)
//! can change it, or change which file the path leads to. So the rule looks at the file and at every directory
//! the kernel searches to reach it, through symlinks too:
//! - the file must be owned by a trusted user and not writable by group or others;
//! - each directory must be owned by a trusted user and not writable by group or others, unless it has the
//!   sticky bit (`/tmp`): there only an entry's owner (or the directory's, or root) can rename or remove it, so
//!   an entry owned by a trusted user is safe in it. This is OpenSSH's `StrictModes` rule. A symlink in such a
//!   directory must then be owned by a trusted user too, or its owner can point it elsewhere.
//!
//! Group write counts as unsafe even when the group is root's: who is in a group can change without the file
//! changing, and `chmod go-w` costs nothing. POSIX ACLs that grant write show up in the group bits (as the ACL
//! mask), so they are caught too.
//!
//! [`resolve`] does the walking; [`judge`] is the rule, pure, so it is tested on made-up metadata as well.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;
/// As the kernel's limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

/// What the rule needs to know about one file, directory or symlink: its owner and `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub mode: u32,
}

impl Meta {
    pub fn of(m: &fs::Metadata) -> Meta {
        Meta { uid: m.uid(), mode: m.mode() }
    }

    pub fn is_dir(self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub fn is_link(self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    /// The permission bits, as `ls -l` and `chmod` show them.
    pub fn perm(self) -> u32 {
        self.mode & 0o7777
    }

    fn shared_sticky(self) -> bool {
        self.mode & STICKY != 0 && self.mode & GROUP_OTHER_WRITE != 0
    }
}

/// One lookup on the way to the file: `entry` was looked up in the directory `dir`.
#[derive(Debug, Clone)]
pub struct Hop {
    pub dir: PathBuf,
    pub dir_meta: Meta,
    pub entry: PathBuf,
    pub entry_meta: Meta,
}

/// How a path resolved: every lookup in order (those through symlinks included) and where it ended.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file the path leads to, with no symlink left in it.
    pub target: PathBuf,
    pub meta: Meta,
    pub hops: Vec<Hop>,
}

/// Walk `path` as the kernel does, one component at a time, following symlinks (each one's own directory is
/// searched first, so it is judged too). `path` should be absolute; a relative one is taken from the current
/// directory.
pub fn resolve(path: &Path) -> std::io::Result<Resolved> {
    let path = std::path::absolute(path)?;
    let root = Meta::of(&fs::symlink_metadata("/")?);
    // Components still to walk, last first.
    let mut todo: Vec<PathBuf> = components_rev(&path);
    let (mut cur, mut cur_meta) = (PathBuf::from("/"), root);
    let mut hops = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.components().next() {
            Some(Component::RootDir) => (cur, cur_meta) = (PathBuf::from("/"), root),
            Some(Component::CurDir) | None => {}
            Some(Component::ParentDir) => {
                // `cur` has no symlink in it, so its lexical parent is where `..` leads.
                cur.pop();
                cur_meta = Meta::of(&fs::symlink_metadata(&cur)?);
            }
            Some(Component::Normal(name)) => {
                let entry = cur.join(name);
                let meta = Meta::of(&fs::symlink_metadata(&entry)?);
                hops.push(Hop { dir: cur.clone(), dir_meta: cur_meta, entry: entry.clone(), entry_meta: meta });
                if meta.is_link() {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(std::io::Error::other(format!(
                            "more than {MAX_LINKS} symlinks in {}",
                            path.display()
                        )));
                    }
                    // The target's components are walked next, from `cur` (or from `/` when absolute).
                    todo.extend(components_rev(&fs::read_link(&entry)?));
                } else {
                    (cur, cur_meta) = (entry, meta);
                }
            }
            Some(Component::Prefix(_)) => unreachable!("no path prefixes on Unix"),
        }
    }
    Ok(Resolved { target: cur, meta: cur_meta, hops })
}

fn components_rev(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = p.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    v.reverse();
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
}

/// One thing on a path that someone untrusted could change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub kind: Kind,
    pub meta: Meta,
    /// Owned by a user who is not trusted.
    pub foreign_owner: bool,
    /// The group (0o020) and other (0o002) write bits that count: for a directory, only without the sticky bit.
    pub writable: u32,
}

/// The rule (see the module docs): what on the way to `r.target`, and `r.target` itself, someone other than
/// the `trusted` users could change. Empty means safe.
pub fn judge(trusted: &[u32], r: &Resolved) -> Vec<Finding> {
    let trusts = |uid: u32| trusted.contains(&uid);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dir = |path: &Path, meta: Meta, out: &mut Vec<Finding>| {
        if !seen.insert(path.to_path_buf()) {
            return;
        }
        let writable = if meta.mode & STICKY != 0 { 0 } else { meta.mode & GROUP_OTHER_WRITE };
        if !trusts(meta.uid) || writable != 0 {
            out.push(Finding { path: path.into(), kind: Kind::Dir, meta, foreign_owner: !trusts(meta.uid), writable });
        }
    };
    for h in &r.hops {
        dir(&h.dir, h.dir_meta, &mut out);
        // In a shared sticky directory the owner of a symlink can replace it; a directory or the file reached
        // through it is judged by its own owner below.
        if h.entry_meta.is_link() && h.dir_meta.shared_sticky() && !trusts(h.entry_meta.uid) {
            let f = Finding {
                path: h.entry.clone(),
                kind: Kind::Link,
                meta: h.entry_meta,
                foreign_owner: true,
                writable: 0,
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if r.meta.is_dir() {
        dir(&r.target, r.meta, &mut out);
    } else {
        let writable = r.meta.mode & GROUP_OTHER_WRITE;
        if !trusts(r.meta.uid) || writable != 0 {
            out.push(Finding {
                path: r.target.clone(),
                kind: Kind::File,
                meta: r.meta,
                foreign_owner: !trusts(r.meta.uid),
                writable,
            });
        }
    }
    out
}

impl Finding {
    /// `is writable by group and others (owner root, mode 0666)`, with `name` turning a uid into a user name.
    pub fn problem(&self, name: &dyn Fn(u32) -> String) -> String {
        let owner = name(self.meta.uid);
        let mut why = Vec::new();
        if self.foreign_owner {
            why.push(match self.kind {
                Kind::Link => format!("owned by {owner}, who can point it elsewhere"),
                _ => format!("owned by {owner}"),
            });
        }
        if self.writable != 0 {
            let who = match self.writable {
                0o020 => "its group",
                0o002 => "others",
                _ => "group and others",
            };
            why.push(match self.kind {
                Kind::Dir => format!("writable by {who} without the sticky bit"),
                _ => format!("writable by {who}"),
            });
        }
        // The owner is named once: in the reason when it is the problem, else beside the mode.
        if self.foreign_owner {
            format!("is {} (mode {:04o})", why.join(" and "), self.meta.perm())
        } else {
            format!("is {} (owner {owner}, mode {:04o})", why.join(" and "), self.meta.perm())
        }
    }

    /// The commands that make it safe: `chown root P`, `chmod go-w P`, joined by `&&`.
    pub fn fix(&self, owner: &str) -> String {
        let p = shell_quote(&self.path);
        let mut cmds = Vec::new();
        if self.foreign_owner {
            cmds.push(if self.kind == Kind::Link {
                format!("chown -h {owner} {p}")
            } else {
                format!("chown {owner} {p}")
            });
        }
        if self.writable != 0 {
            cmds.push(format!("chmod go-w {p}"));
        }
        cmds.join(" && ")
    }
}

/// A path as one shell word, quoted only when it needs to be.
pub fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: u32 = 0o100_000;
    const DIR: u32 = S_IFDIR;
    const LINK: u32 = S_IFLNK;
    const NOBODY: u32 = 65534;

    fn m(uid: u32, mode: u32) -> Meta {
        Meta { uid, mode }
    }

    /// `/` (root 0755) → `/d` (dir) → `/d/f` (file).
    fn chain(dir: Meta, file: Meta) -> Resolved {
        Resolved {
            target: "/d/f".into(),
            meta: file,
            hops: vec![
                Hop { dir: "/".into(), dir_meta: m(0, DIR | 0o755), entry: "/d".into(), entry_meta: dir },
                Hop { dir: "/d".into(), dir_meta: dir, entry: "/d/f".into(), entry_meta: file },
            ],
        }
    }

    fn kinds(f: &[Finding]) -> Vec<(String, Kind, bool, u32)> {
        f.iter().map(|f| (f.path.display().to_string(), f.kind, f.foreign_owner, f.writable)).collect()
    }

    #[test]
    fn a_root_file_in_root_directories_is_safe() {
        assert!(judge(&[0], &chain(m(0, DIR | 0o755), m(0, FILE | 0o644))).is_empty());
        assert!(judge(&[0], &chain(m(0, DIR | 0o700), m(0, FILE | 0o600))).is_empty());
    }

    #[test]
    fn group_or_other_write_on_the_file_is_unsafe() {
        for (mode, bits) in [(0o664, 0o020), (0o646, 0o002), (0o666, 0o022), (0o620, 0o020)] {
            let f = judge(&[0], &chain(m(0, DIR | 0o755), m(0, FILE | mode)));
            assert_eq!(kinds(&f), [("/d/f".into(), Kind::File, false, bits)], "{mode:o}");
        }
    }

    #[test]
    fn only_root_and_the_running_user_may_own_the_file() {
        let f = judge(&[0], &chain(m(0, DIR | 0o755), m(NOBODY, FILE | 0o644)));
        assert_eq!(kinds(&f), [("/d/f".into(), Kind::File, true, 0)]);
        // Running as uid 1000: its own file is fine, root's too, another user's is not.
        assert!(judge(&[0, 1000], &chain(m(1000, DIR | 0o755), m(1000, FILE | 0o644))).is_empty());
        assert!(judge(&[0, 1000], &chain(m(0, DIR | 0o755), m(0, FILE | 0o644))).is_empty());
        assert_eq!(judge(&[0, 1000], &chain(m(1000, DIR | 0o755), m(1001, FILE | 0o644))).len(), 1);
    }

    #[test]
    fn a_directory_others_can_write_is_unsafe_unless_sticky_with_a_trusted_entry() {
        let f = judge(&[0], &chain(m(0, DIR | 0o777), m(0, FILE | 0o644)));
        assert_eq!(kinds(&f), [("/d".into(), Kind::Dir, false, 0o022)]);
        let f = judge(&[0], &chain(m(0, DIR | 0o775), m(0, FILE | 0o644)));
        assert_eq!(kinds(&f), [("/d".into(), Kind::Dir, false, 0o020)]);
        // /tmp: sticky, so only an entry's owner can replace it; root's file there is safe, nobody's is not.
        assert!(judge(&[0], &chain(m(0, DIR | 0o1777), m(0, FILE | 0o644))).is_empty());
        let f = judge(&[0], &chain(m(0, DIR | 0o1777), m(NOBODY, FILE | 0o644)));
        assert_eq!(kinds(&f), [("/d/f".into(), Kind::File, true, 0)]);
    }

    #[test]
    fn a_directory_owned_by_someone_else_is_unsafe_whatever_its_mode() {
        let f = judge(&[0], &chain(m(NOBODY, DIR | 0o755), m(0, FILE | 0o644)));
        assert_eq!(kinds(&f), [("/d".into(), Kind::Dir, true, 0)]);
        // And the root directory is judged like any other.
        let mut r = chain(m(0, DIR | 0o755), m(0, FILE | 0o644));
        r.hops[0].dir_meta = m(0, DIR | 0o777);
        assert_eq!(kinds(&judge(&[0], &r)), [("/".into(), Kind::Dir, false, 0o022)]);
    }

    #[test]
    fn a_symlink_in_a_shared_sticky_directory_must_be_owned_by_a_trusted_user() {
        // /tmp/l -> /etc/f, the link owned by nobody: nobody can point it elsewhere.
        let tmp = m(0, DIR | 0o1777);
        let r = Resolved {
            target: "/etc/f".into(),
            meta: m(0, FILE | 0o644),
            hops: vec![
                Hop { dir: "/".into(), dir_meta: m(0, DIR | 0o755), entry: "/tmp".into(), entry_meta: tmp },
                Hop { dir: "/tmp".into(), dir_meta: tmp, entry: "/tmp/l".into(), entry_meta: m(NOBODY, LINK | 0o777) },
                Hop {
                    dir: "/".into(),
                    dir_meta: m(0, DIR | 0o755),
                    entry: "/etc".into(),
                    entry_meta: m(0, DIR | 0o755),
                },
                Hop {
                    dir: "/etc".into(),
                    dir_meta: m(0, DIR | 0o755),
                    entry: "/etc/f".into(),
                    entry_meta: m(0, FILE | 0o644),
                },
            ],
        };
        assert_eq!(kinds(&judge(&[0], &r)), [("/tmp/l".into(), Kind::Link, true, 0)]);
        let mut root_link = r.clone();
        root_link.hops[1].entry_meta = m(0, LINK | 0o777);
        assert!(judge(&[0], &root_link).is_empty());
    }

    #[test]
    fn messages_name_owner_and_mode_and_the_fix() {
        let name = |uid: u32| if uid == 0 { "root".to_string() } else { "nobody".to_string() };
        let f = &judge(&[0], &chain(m(0, DIR | 0o755), m(NOBODY, FILE | 0o666)))[0];
        assert_eq!(f.problem(&name), "is owned by nobody and writable by group and others (mode 0666)");
        assert_eq!(f.fix("root"), "chown root /d/f && chmod go-w /d/f");
        let f = &judge(&[0], &chain(m(0, DIR | 0o777), m(0, FILE | 0o644)))[0];
        assert_eq!(f.problem(&name), "is writable by group and others without the sticky bit (owner root, mode 0777)");
        assert_eq!(f.fix("root"), "chmod go-w /d");
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }

    fn require_root() {
        assert!(nix::unistd::geteuid().is_root(), "this test changes file owners: run it as root (CI does)");
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
    }

    #[test]
    fn real_files_under_tmp() {
        require_root();
        // tempdir(): root's 0700 dir inside the sticky, world-writable /tmp.
        let d = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(d.path()).unwrap();
        let f = dir.join("cutover.toml");
        fs::write(&f, "x").unwrap();
        chmod(&f, 0o644);
        let r = resolve(&f).unwrap();
        assert_eq!(r.target, f);
        assert!(judge(&[0], &r).is_empty(), "{:?}", judge(&[0], &r));

        chmod(&f, 0o666);
        assert_eq!(kinds(&judge(&[0], &resolve(&f).unwrap())), [(f.display().to_string(), Kind::File, false, 0o022)]);
        chmod(&f, 0o644);
        chown(&f, NOBODY);
        assert_eq!(kinds(&judge(&[0], &resolve(&f).unwrap())), [(f.display().to_string(), Kind::File, true, 0)]);
        // The same file is fine for nobody, the user it belongs to.
        assert!(judge(&[0, NOBODY], &resolve(&f).unwrap()).is_empty());
        chown(&f, 0);

        // Its directory made world-writable without the sticky bit; then with it.
        chmod(&dir, 0o777);
        assert_eq!(kinds(&judge(&[0], &resolve(&f).unwrap())), [(dir.display().to_string(), Kind::Dir, false, 0o022)]);
        chmod(&dir, 0o1777);
        assert!(judge(&[0], &resolve(&f).unwrap()).is_empty());
        chmod(&dir, 0o700);
    }

    #[test]
    fn real_symlinks_are_judged_where_they_lead_and_where_they_sit() {
        require_root();
        let d = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(d.path()).unwrap();
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let target = open.join("real.toml");
        fs::write(&target, "x").unwrap();
        chmod(&target, 0o644);
        // A safe-looking link in a safe dir, to a file in a world-writable one: the target's dir is found.
        let link = dir.join("cutover.toml");
        std::os::unix::fs::symlink("open/real.toml", &link).unwrap();
        let r = resolve(&link).unwrap();
        assert_eq!(r.target, target);
        assert_eq!(kinds(&judge(&[0], &r)), [(open.display().to_string(), Kind::Dir, false, 0o022)]);
        // A link that sits in the world-writable dir, to a safe file: the link's dir is found.
        let safe = dir.join("safe.toml");
        fs::write(&safe, "x").unwrap();
        chmod(&safe, 0o644);
        let link2 = open.join("link.toml");
        std::os::unix::fs::symlink(&safe, &link2).unwrap();
        let r = resolve(&link2).unwrap();
        assert_eq!(r.target, safe);
        assert_eq!(kinds(&judge(&[0], &r)), [(open.display().to_string(), Kind::Dir, false, 0o022)]);
        // `..` after a symlinked directory goes up from where the link leads, as in the kernel.
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&open, sub.join("o")).unwrap();
        let r = resolve(&sub.join("o/../safe.toml")).unwrap();
        assert_eq!(r.target, safe);
        // A loop is an error, not a hang.
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        assert!(resolve(&dir.join("loop")).unwrap_err().to_string().contains("more than 40 symlinks"));
    }
}

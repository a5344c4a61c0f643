//! Files cutover writes: atomically, never through a symlink, in directories that belong to the user cutover
//! runs as.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

/// Replace `path` with `bytes` so that a reader sees the old file or the new one, never a mix.
///
/// The temp file sits in the same directory under a name no nginx include glob (`*.conf`) matches, is fsynced,
/// given the mode and owner of the file it replaces (or `new_mode`), and renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8], new_mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let existing = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("refusing to write {}: it is a symlink; replace it with a regular file", path.display())
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("could not inspect {}", path.display())),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".cutover-tmp")
        .tempfile_in(dir)
        .with_context(|| format!("could not create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("could not write temp file for {}", path.display()))?;
    let file = tmp.as_file();
    match &existing {
        Some(m) => {
            file.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))
                .with_context(|| format!("could not set mode on temp file for {}", path.display()))?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::fchown(file, Some(m.uid()), Some(m.gid()))
                    .with_context(|| format!("could not set owner on temp file for {}", path.display()))?;
            }
        }
        None => file
            .set_permissions(fs::Permissions::from_mode(new_mode))
            .with_context(|| format!("could not set mode on temp file for {}", path.display()))?,
    }
    file.sync_all().with_context(|| format!("could not fsync temp file for {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("could not rename temp file onto {}", path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuse a path that is a symlink: state must not be redirected elsewhere.
pub fn refuse_symlink(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("refusing to use {}: it is a symlink; state paths must be real files and directories", path.display())
        }
        _ => Ok(()),
    }
}

/// Create `dir` (and parents) with mode 0700 for the last component, refusing a symlink there and a directory
/// that belongs to another user: whoever owns it could plant a symlink inside and make cutover write where they
/// choose. A directory that already exists keeps its mode (it may be one other services use, such as
/// `/var/log`); one that group or others can write is refused for the same reason as another user's.
pub fn private_dir(dir: &Path) -> Result<()> {
    refuse_symlink(dir)?;
    let created = !dir.exists();
    if created {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let meta = fs::metadata(dir).with_context(|| format!("could not inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    owned_by_me(dir, &meta)?;
    if created {
        if meta.mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("could not set mode 0700 on {}", dir.display()))?;
        }
    } else if meta.mode() & 0o022 != 0 {
        return Err(crate::exit::refused(format!(
            "refusing to use {}: group or other users can write it (mode {:04o}), so they could plant files there \
             that cutover would then write through. Fix: `chmod go-w {}` (or point deploy.state_dir / \
             runtime.log_dir elsewhere)",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// Refuse a directory that is not owned by the effective user (exit 8, with the fix).
pub fn owned_by_me(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        let who = |uid: u32| {
            nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| format!("uid {uid} ({})", u.name))
                .unwrap_or_else(|| format!("uid {uid}"))
        };
        return Err(crate::exit::refused(format!(
            "refusing to use {}: it is owned by {}, not by {} who runs cutover; another user could plant files \
             there that cutover would then write through. Fix: `chown -R {me} {}` (or point deploy.state_dir / \
             runtime.log_dir elsewhere)",
            dir.display(),
            who(meta.uid()),
            who(me),
            dir.display()
        )));
    }
    Ok(())
}

/// Open `path` for appending, created 0600 if missing, never through a symlink (O_NOFOLLOW).
pub fn open_append(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("could not open {} (a symlink there is refused)", path.display()))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.conf");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.conf")]);
    }

    #[test]
    fn atomic_write_refuses_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "t").unwrap();
        let link = dir.path().join("state.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_atomic(&link, b"x", 0o600).unwrap_err();
        assert!(format!("{e:#}").contains("it is a symlink"));
        assert_eq!(fs::read_to_string(&target).unwrap(), "t");
    }
}

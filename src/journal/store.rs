//! The state directory of one app on disk: `state.json`, `history.jsonl`, `lock`.
//!
//! Directories 0700 and owned by the user cutover runs as (refused otherwise), files 0600, written atomically
//! or appended with one write; a symlink at any state path is refused, and files are opened without following
//! symlinks.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::history::Event;
use super::state::State;
use crate::util;

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn history_path(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Create the directory (0700), refusing symlinks and a directory owned by someone else.
    pub fn ensure(&self) -> Result<()> {
        if let Some(parent) = self.dir.parent() {
            util::refuse_symlink(parent)?;
            if !parent.exists() {
                fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
            }
        }
        util::private_dir(&self.dir)?;
        for p in [self.state_path(), self.history_path(), self.lock_path()] {
            util::refuse_symlink(&p)?;
        }
        Ok(())
    }

    /// The saved state, or an empty one when nothing was ever deployed.
    pub fn load(&self, app: &str) -> Result<State> {
        let path = self.state_path();
        util::refuse_symlink(&path)?;
        match fs::read_to_string(&path) {
            Ok(text) => {
                refuse_newer(&text, &path)?;
                // Refused (exit 8), not unexpected: with no readable record of what runs, no command may act.
                serde_json::from_str(&text).map_err(|e| {
                    crate::exit::refused(format!(
                        "could not parse {}; fix or move it away (history.jsonl beside it says what was deployed): \
                         {e}; nothing was changed",
                        path.display()
                    ))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::empty(app)),
            Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let mut text = serde_json::to_string_pretty(state).context("could not serialize state")?;
        text.push('\n');
        util::write_atomic(&self.state_path(), text.as_bytes(), 0o600)
    }

    /// Append one event. A line is written with one `write` on an O_APPEND file, so concurrent readers never
    /// see half a line from a live writer (a crash or a full disk can still leave one: [`Store::history`]
    /// skips it).
    pub fn append_history(&self, event: &Event) -> Result<()> {
        let path = self.history_path();
        util::refuse_symlink(&path)?;
        let mut line = serde_json::to_string(event).context("could not serialize history event")?;
        line.push('\n');
        // A line torn by a crash or a full disk has no newline: end it first, so that only the torn fragment is
        // lost and not this event too.
        if ends_torn(&path) {
            line.insert(0, '\n');
        }
        let mut f = util::open_append(&path)?;
        f.write_all(line.as_bytes()).with_context(|| format!("could not append to {}", path.display()))?;
        f.sync_all().with_context(|| format!("could not fsync {}", path.display()))?;
        Ok(())
    }

    /// The events, oldest first, and a warning for lines that could not be read (a line torn by a crash or a
    /// full disk): those are skipped, never fatal, so `status` and `rollback` keep working.
    pub fn history(&self) -> Result<(Vec<Event>, Option<String>)> {
        let path = self.history_path();
        util::refuse_symlink(&path)?;
        let text = match fs::read(&path) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
        };
        let mut events = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(line) {
                Ok(e) => events.push(e),
                Err(_) => bad.push((i + 1).to_string()),
            }
        }
        let warning = (!bad.is_empty()).then(|| {
            format!(
                "skipped {} unreadable line(s) of {} (line {}): torn by a crash or a full disk; the other events are shown",
                bad.len(),
                path.display(),
                bad.join(", ")
            )
        });
        Ok((events, warning))
    }
}

/// Whether a file is non-empty and does not end with a newline.
/// A state written by a newer cutover is refused: read as this version's, the fields only the newer one knows
/// would be dropped at the next write.
fn refuse_newer(text: &str, path: &std::path::Path) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: Option<u32>,
    }
    let Ok(Version { version: Some(v) }) = serde_json::from_str::<Version>(text) else { return Ok(()) };
    if v > super::STATE_VERSION {
        return Err(crate::exit::refused(format!(
            "{} was written by a newer cutover (state version {v}; this one reads up to {}): run that version \
             or a later one; nothing was changed",
            path.display(),
            super::STATE_VERSION
        )));
    }
    Ok(())
}

fn ends_torn(path: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else { return false };
    if f.seek(SeekFrom::End(-1)).is_err() {
        return false;
    }
    let mut last = [0u8; 1];
    f.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    #[test]
    fn state_round_trips_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("cutover/shop"));
        store.ensure().unwrap();
        let mut s = store.load("shop").unwrap();
        assert_eq!(s.live, None);
        s.generation = 3;
        store.save(&s).unwrap();
        assert_eq!(store.load("shop").unwrap(), s);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.dir), 0o700);
        assert_eq!(mode(&store.state_path()), 0o600);
    }

    #[test]
    fn symlinked_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("shop")).unwrap();
        let e = Store::new(dir.path().join("shop")).ensure().unwrap_err();
        assert!(format!("{e:#}").contains("it is a symlink"), "{e:#}");
    }

    #[test]
    fn a_torn_history_line_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("shop"));
        store.ensure().unwrap();
        let ev =
            Event::of(crate::journal::OpKind::Deploy, "v1", super::super::Outcome::Ok, &Ok::<(), anyhow::Error>(()));
        store.append_history(&ev).unwrap();
        let mut f = util::open_append(&store.history_path()).unwrap();
        f.write_all(b"{\"at\":\"2026-11-30T1").unwrap();
        drop(f);
        store.append_history(&ev).unwrap();
        let (events, warning) = store.history().unwrap();
        assert_eq!(events.len(), 2, "only the torn fragment is lost");
        assert!(warning.unwrap().contains("skipped 1 unreadable line(s)"));
    }
}

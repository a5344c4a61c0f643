//! Which config file a command reads. A CI job or an SSH session starts in some directory that holds no
//! `cutover.toml`, so besides `-c` and `./cutover.toml` cutover looks in `/etc/cutover/`, where a host keeps
//! one file per app (`/etc/cutover/<app>.toml`, picked with `--app`) or its only app's `cutover.toml`.
//!
//! Order (README.md, "Where the config comes from"):
//! 1. `-c PATH`, else `$CUTOVER_CONFIG`: used as given. With `--app`, its `app.name` must be that app.
//! 2. `./cutover.toml`. With `--app`, only when its `app.name` is that app; another app's file is skipped
//!    (with a note on stderr), so `cutover --app shop status` means shop in any directory.
//! 3. With `--app NAME`: `/etc/cutover/NAME.toml`.
//! 4. `/etc/cutover/cutover.toml` (with `--app`, only when its `app.name` is that app).
//!
//! A file whose `app.name` cannot be read (a syntax error) is taken, so that loading it reports the error with
//! its line and column instead of cutover silently going on to another file. When nothing is found, the error
//! lists every path tried and why each was passed over.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::Name;
use crate::exit;

/// Where a host keeps its cutover configs.
pub const ETC_DIR: &str = "/etc/cutover";

/// The file name looked for in the working directory and in [`ETC_DIR`].
pub const FILE_NAME: &str = "cutover.toml";

/// The config file this command reads, with a note on stderr when a `./cutover.toml` was passed over.
pub fn find(explicit: Option<&Path>, app: Option<&str>) -> Result<PathBuf> {
    let found = resolve(explicit, app, Path::new(FILE_NAME), Path::new(ETC_DIR))?;
    if let Some(note) = found.note {
        eprintln!("cutover: {note}");
    }
    Ok(found.path)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// Said on stderr: which nearer file was skipped, and why.
    pub note: Option<String>,
}

/// The lookup itself, with the working-directory file and the /etc directory passed in so that tests never
/// touch the real /etc/cutover.
pub fn resolve(explicit: Option<&Path>, app: Option<&str>, local: &Path, etc: &Path) -> Result<Found> {
    let app: Option<Name> = app.map(|a| a.parse().map_err(|e| exit::usage(format!("--app: {e}")))).transpose()?;
    let app = app.as_ref().map(Name::as_str);
    if let Some(path) = explicit {
        if let (Some(want), AppName::Named(have)) = (app, app_name(path)) {
            if have != want {
                return Err(exit::usage(format!(
                    "{} (from -c or $CUTOVER_CONFIG) is the config of app {have:?}, not {want:?} (--app); \
                     drop one of the two",
                    path.display()
                )));
            }
        }
        return Ok(Found { path: path.to_path_buf(), note: None });
    }

    let mut candidates = vec![local.to_path_buf()];
    if let Some(a) = app {
        candidates.push(etc.join(format!("{a}.toml")));
    }
    candidates.push(etc.join(FILE_NAME));

    let mut tried = Vec::new();
    let mut note = None;
    for path in candidates {
        if !path.exists() {
            tried.push(format!("{}: not found", shown(&path)));
            continue;
        }
        // /etc/cutover/<app>.toml is named by the app already; the shared names must say which app they are.
        let per_app = app.is_some_and(|a| path == etc.join(format!("{a}.toml")));
        match (app, app_name(&path)) {
            (Some(want), AppName::Named(have)) if have != want && !per_app => {
                let why = format!("{} is the config of app {have:?}, not {want:?}", shown(&path));
                if path == local {
                    note = Some(format!("{why}: not using it"));
                }
                tried.push(why);
            }
            _ => return Ok(Found { path, note }),
        }
    }

    let mut msg = String::from("no config found. Tried, in order:\n");
    for t in &tried {
        msg.push_str(&format!("  {t}\n"));
    }
    let apps = apps_in(etc);
    if app.is_none() && !apps.is_empty() {
        msg.push_str(&format!(
            "{} holds the config of app(s) {}: pick one with --app NAME.\n",
            etc.display(),
            apps.join(", ")
        ));
    }
    msg.push_str(&format!(
        "Write one with `cutover init`, put it in {}, or name it with -c PATH or $CUTOVER_CONFIG.",
        match app {
            Some(a) => etc.join(format!("{a}.toml")).display().to_string(),
            None => etc.join(FILE_NAME).display().to_string(),
        }
    ));
    Err(exit::usage(msg))
}

enum AppName {
    Named(String),
    /// Unreadable, not TOML, or no `app.name` string: loading the file will say what is wrong.
    Unknown,
}

fn app_name(path: &Path) -> AppName {
    let Ok(text) = std::fs::read_to_string(path) else { return AppName::Unknown };
    let Ok(table) = text.parse::<toml::Table>() else { return AppName::Unknown };
    match table.get("app").and_then(|a| a.get("name")).and_then(|n| n.as_str()) {
        Some(n) => AppName::Named(n.to_string()),
        None => AppName::Unknown,
    }
}

/// A relative path is shown with the directory it was looked for in, which is the useful part when a CI job
/// or an SSH session starts somewhere unexpected.
fn shown(path: &Path) -> String {
    if path.is_relative() {
        match std::env::current_dir() {
            Ok(cwd) => format!("{} (./{})", cwd.join(path).display(), path.display()),
            Err(_) => format!("./{}", path.display()),
        }
    } else {
        path.display().to_string()
    }
}

/// The apps with a `<app>.toml` in the /etc directory, sorted.
fn apps_in(etc: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(etc) else { return Vec::new() };
    let mut apps: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_string))
        .filter(|n| n != "cutover" && n.parse::<Name>().is_ok())
        .collect();
    apps.sort();
    apps
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            let h = Host { dir: tempfile::tempdir().unwrap() };
            std::fs::create_dir_all(h.etc()).unwrap();
            std::fs::create_dir_all(h.dir.path().join("cwd")).unwrap();
            h
        }
        fn etc(&self) -> PathBuf {
            self.dir.path().join("etc/cutover")
        }
        fn local(&self) -> PathBuf {
            self.dir.path().join("cwd/cutover.toml")
        }
        fn write(&self, path: &Path, app: &str) -> PathBuf {
            std::fs::write(path, format!("[app]\nname = \"{app}\"\n")).unwrap();
            path.to_path_buf()
        }
        fn resolve(&self, explicit: Option<&Path>, app: Option<&str>) -> Result<Found> {
            resolve(explicit, app, &self.local(), &self.etc())
        }
        fn path(&self, explicit: Option<&Path>, app: Option<&str>) -> PathBuf {
            self.resolve(explicit, app).unwrap().path
        }
        fn err(&self, explicit: Option<&Path>, app: Option<&str>) -> String {
            let e = self.resolve(explicit, app).unwrap_err();
            assert_eq!(exit::code_of(&e), exit::Code::Usage);
            format!("{e:#}").replace(&self.dir.path().display().to_string(), "T")
        }
    }

    #[test]
    fn explicit_path_wins_over_everything() {
        let h = Host::new();
        h.write(&h.local(), "shop");
        h.write(&h.etc().join("cutover.toml"), "shop");
        let c = h.write(&h.dir.path().join("elsewhere.toml"), "shop");
        assert_eq!(h.path(Some(&c), None), c);
        assert_eq!(h.path(Some(&c), Some("shop")), c);
        // Not checked for existence here: loading it says it is missing, naming the path.
        let missing = h.dir.path().join("missing.toml");
        assert_eq!(h.path(Some(&missing), Some("shop")), missing);
    }

    #[test]
    fn explicit_path_of_another_app_is_refused_with_app() {
        let h = Host::new();
        let c = h.write(&h.dir.path().join("blog.toml"), "blog");
        assert_eq!(
            h.err(Some(&c), Some("shop")),
            "T/blog.toml (from -c or $CUTOVER_CONFIG) is the config of app \"blog\", not \"shop\" (--app); drop one \
             of the two"
        );
    }

    #[test]
    fn without_app_local_file_then_etc_cutover_toml() {
        let h = Host::new();
        let etc = h.write(&h.etc().join("cutover.toml"), "shop");
        assert_eq!(h.path(None, None), etc);
        h.write(&h.local(), "blog");
        assert_eq!(h.resolve(None, None).unwrap(), Found { path: h.local(), note: None });
    }

    #[test]
    fn with_app_the_per_app_file_is_found_from_any_directory() {
        let h = Host::new();
        h.write(&h.etc().join("cutover.toml"), "shop");
        let blog = h.write(&h.etc().join("blog.toml"), "blog");
        assert_eq!(h.path(None, Some("blog")), blog);
        assert_eq!(h.path(None, Some("shop")), h.etc().join("cutover.toml"));
    }

    #[test]
    fn with_app_the_local_file_is_used_only_for_that_app() {
        let h = Host::new();
        let blog = h.write(&h.etc().join("blog.toml"), "blog");
        h.write(&h.local(), "blog");
        assert_eq!(h.path(None, Some("blog")), h.local(), "a local file of the same app comes first");
        h.write(&h.local(), "shop");
        let found = h.resolve(None, Some("blog")).unwrap();
        assert_eq!(found.path, blog);
        let note = found.note.unwrap().replace(&h.dir.path().display().to_string(), "T");
        assert_eq!(note, "T/cwd/cutover.toml is the config of app \"shop\", not \"blog\": not using it");
    }

    #[test]
    fn with_app_the_shared_etc_file_must_name_that_app() {
        let h = Host::new();
        h.write(&h.etc().join("cutover.toml"), "shop");
        assert_eq!(
            h.err(None, Some("blog")),
            "no config found. Tried, in order:\n  T/cwd/cutover.toml: not found\n  T/etc/cutover/blog.toml: not found\n  \
             T/etc/cutover/cutover.toml is the config of app \"shop\", not \"blog\"\n\
             Write one with `cutover init`, put it in T/etc/cutover/blog.toml, or name it with -c PATH or \
             $CUTOVER_CONFIG."
        );
    }

    #[test]
    fn a_per_app_file_is_taken_by_its_name() {
        // /etc/cutover/blog.toml is blog's file by its name; a wrong app.name inside is for `check` and
        // loading to report, not a reason to look elsewhere.
        let h = Host::new();
        let blog = h.write(&h.etc().join("blog.toml"), "shop");
        assert_eq!(h.path(None, Some("blog")), blog);
    }

    #[test]
    fn a_file_with_a_syntax_error_is_taken_so_that_loading_shows_the_line() {
        let h = Host::new();
        std::fs::write(h.local(), "[app\nname = \"x\"\n").unwrap();
        h.write(&h.etc().join("shop.toml"), "shop");
        assert_eq!(h.path(None, Some("shop")), h.local());
    }

    #[test]
    fn nothing_found_lists_every_path_tried() {
        let h = Host::new();
        assert_eq!(
            h.err(None, None),
            "no config found. Tried, in order:\n  T/cwd/cutover.toml: not found\n  T/etc/cutover/cutover.toml: not \
             found\nWrite one with `cutover init`, put it in T/etc/cutover/cutover.toml, or name it with -c PATH or \
             $CUTOVER_CONFIG."
        );
        assert_eq!(
            h.err(None, Some("shop")),
            "no config found. Tried, in order:\n  T/cwd/cutover.toml: not found\n  T/etc/cutover/shop.toml: not \
             found\n  T/etc/cutover/cutover.toml: not found\nWrite one with `cutover init`, put it in \
             T/etc/cutover/shop.toml, or name it with -c PATH or $CUTOVER_CONFIG."
        );
    }

    #[test]
    fn nothing_found_without_app_names_the_per_app_files() {
        let h = Host::new();
        h.write(&h.etc().join("shop.toml"), "shop");
        h.write(&h.etc().join("blog.toml"), "blog");
        std::fs::write(h.etc().join("notes.txt"), "").unwrap();
        let err = h.err(None, None);
        assert!(
            err.contains("\nT/etc/cutover holds the config of app(s) blog, shop: pick one with --app NAME.\n"),
            "{err}"
        );
    }

    #[test]
    fn app_must_be_a_valid_name() {
        let h = Host::new();
        assert_eq!(
            h.err(None, Some("../../etc/passwd")),
            "--app: invalid app name \"../../etc/passwd\": use 1 to 64 of a-z 0-9 _ -, starting with a letter or digit"
        );
    }

    #[test]
    fn a_relative_local_path_is_shown_with_its_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            shown(Path::new("cutover.toml")),
            format!("{} (./cutover.toml)", cwd.join("cutover.toml").display())
        );
    }
}

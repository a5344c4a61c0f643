//! The text of the unit files: the template and an instance's drop-in, with every value quoted the way systemd
//! reads it (`%` specifiers, `$` expansion, control characters refused).

use std::path::Path;

use anyhow::Result;

use super::{Systemd, DROPIN, RESTART_SEC};
use crate::host::appenv::Launch;
use crate::host::StartSpec;
use crate::util;

impl Systemd {
    /// The template's text. Nothing in it comes from the config beyond the app's name.
    pub fn template_text(&self) -> String {
        let app = self.app();
        format!(
            "# {name}: how cutover runs an instance of {app} (runtime.kind = \"systemd\"). Written by cutover;\n\
             # it is rewritten at the next deploy. Each instance's release, command, account and environment are\n\
             # in cutover-{app}@PORT.service.d/{DROPIN} beside it.\n\
             [Unit]\n\
             Description=cutover app {app} on port %i\n\
             After=network.target\n\
             StartLimitIntervalSec=60s\n\
             StartLimitBurst=20\n\
             \n\
             [Service]\n\
             Type=simple\n\
             Restart=on-failure\n\
             RestartSec={RESTART_SEC}\n\
             KillMode=mixed\n\
             KillSignal=SIGTERM\n\
             StandardInput=null\n\
             StandardOutput=journal\n\
             StandardError=journal\n\
             SyslogIdentifier=cutover-{app}\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            name = self.template_name()
        )
    }

    /// The drop-in of one instance.
    pub fn dropin_text(&self, spec: &StartSpec, l: &Launch) -> Result<String> {
        let app = self.app();
        let mut s = format!(
            "# {app} {} on port {}, started by cutover at {}.\n[Unit]\nDescription=cutover {} {} on port {}\n\n\
             [Service]\n",
            spec.release,
            spec.port,
            util::now_rfc3339(),
            escape_specifiers(app),
            escape_specifiers(&spec.release),
            spec.port
        );
        if let Some(u) = &l.account.user {
            s.push_str(&format!("User={u}\n"));
        }
        if let Some(g) = &l.account.group {
            s.push_str(&format!("Group={g}\n"));
        }
        s.push_str(&format!("WorkingDirectory={}\n", unit_path(&l.workdir)?));
        for (k, v) in &l.env {
            s.push_str(&format!("Environment={}\n", quote_assignment(k, v)?));
        }
        if let Some((path, _)) = &l.env_file {
            s.push_str(&format!("EnvironmentFile={}\n", unit_path(path)?));
        }
        for (k, v) in &l.fixed {
            s.push_str(&format!("Environment={}\n", quote_assignment(k, v)?));
        }
        s.push_str(&format!("TimeoutStopSec={}ms\n", self.config.app.stop_timeout.0.as_millis().max(1)));
        s.push_str(&format!("ExecStart=/bin/sh -c {}\n", quote_exec(&l.command)?));
        for (k, v) in [("CUTOVER_APP", app.to_string()), ("CUTOVER_RELEASE", spec.release.clone())] {
            s.push_str(&format!("LogExtraFields={k}={}\n", escape_specifiers(&v)));
        }
        s.push_str(&format!("LogExtraFields=CUTOVER_PORT={}\n", spec.port));
        Ok(s)
    }
}

/// `%` starts a specifier in unit files; `%%` is a literal one.
fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// A value the config gave that a unit cannot carry is a config error (exit 2).
fn no_control(what: &str, s: &str) -> Result<()> {
    if s.chars().any(|c| c.is_control()) {
        return Err(crate::exit::usage(format!(
            "{what} holds a newline or control character, which a systemd unit cannot carry: {s:?}"
        )));
    }
    Ok(())
}

/// `"KEY=VALUE"` for `Environment=`: quoted, `\` and `"` escaped, `%` doubled.
fn quote_assignment(k: &str, v: &str) -> Result<String> {
    no_control(&format!("the value of {k}"), v)?;
    Ok(format!("\"{k}={}\"", escape_specifiers(&v.replace('\\', "\\\\").replace('"', "\\\""))))
}

/// One argument of `ExecStart=`: quoted, `\` and `"` escaped, `%` doubled, `$` doubled (systemd would expand
/// `$NAME` itself; the shell must see it instead).
fn quote_exec(s: &str) -> Result<String> {
    no_control("app.start", s)?;
    Ok(format!("\"{}\"", escape_specifiers(&s.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$"))))
}

/// A path for `WorkingDirectory=` / `EnvironmentFile=`.
fn unit_path(p: &Path) -> Result<String> {
    let s = p.display().to_string();
    no_control("a path", &s)?;
    if !p.is_absolute() {
        return Err(crate::exit::usage(format!("{s} is not an absolute path")));
    }
    Ok(escape_specifiers(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_unit_files() {
        assert_eq!(quote_assignment("A", "x \"y\" 100% \\").unwrap(), r#""A=x \"y\" 100%% \\""#);
        assert_eq!(
            quote_exec("exec app --port 8081 $(cat f) \"$HOME\"").unwrap(),
            r#""exec app --port 8081 $$(cat f) \"$$HOME\"""#
        );
        assert!(quote_assignment("A", "two\nlines").is_err());
        assert!(unit_path(Path::new("rel")).is_err());
    }
}

//! What systemd says: `systemctl show` about a unit, `journalctl -o json` lines.

use crate::host::appenv::MARKER_VAR;
use crate::host::LogLine;

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    pub load: String,
    pub active: String,
    pub sub: String,
    pub main_pid: Option<i32>,
    pub restarts: Option<u32>,
    pub result: String,
    /// `exit status 1`, `killed by SIGKILL`, or empty when it never exited.
    pub last_exit: String,
    pub environment: String,
}

impl Shown {
    /// Parse `systemctl show -p ...` output (`Key=Value` lines).
    pub fn parse(text: &str) -> Shown {
        let mut s = Shown::default();
        let (mut code, mut status) = (String::new(), String::new());
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            match k {
                "LoadState" => s.load = v.into(),
                "ActiveState" => s.active = v.into(),
                "SubState" => s.sub = v.into(),
                "MainPID" => s.main_pid = v.parse().ok().filter(|p| *p > 0),
                "NRestarts" => s.restarts = v.parse().ok(),
                "Result" => s.result = v.into(),
                "ExecMainCode" => code = v.into(),
                "ExecMainStatus" => status = v.into(),
                "Environment" => s.environment = v.into(),
                _ => {}
            }
        }
        s.last_exit = match code.as_str() {
            "1" => format!("exit status {status}"),
            "2" | "3" => {
                let sig = status
                    .parse::<i32>()
                    .ok()
                    .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| format!("signal {status}"));
                format!("killed by {sig}")
            }
            _ => String::new(),
        };
        s
    }

    /// Whether the loaded unit runs the instance with this marker.
    pub fn has_marker(&self, marker: &str) -> bool {
        let entry = format!("{MARKER_VAR}={marker}");
        self.environment.split_whitespace().any(|w| w.trim_matches('"') == entry)
    }

    pub fn state(&self) -> String {
        format!("{} ({})", self.active, self.sub)
    }
}

/// One journal entry from `journalctl -o json`.
pub fn journal_line(json: &str) -> Option<LogLine> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let text = match &v["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        // journald stores a message that is not UTF-8 as an array of bytes.
        serde_json::Value::Array(bytes) => {
            let b: Vec<u8> = bytes.iter().filter_map(|x| x.as_u64().map(|n| n as u8)).collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return None,
    };
    Some(LogLine {
        release: v["CUTOVER_RELEASE"].as_str().unwrap_or("?").to_string(),
        port: v["CUTOVER_PORT"].as_str().and_then(|p| p.parse().ok()),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_output_parses_into_state_and_last_exit() {
        let s = Shown::parse(
            "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\nNRestarts=2\n\
             Result=signal\nExecMainCode=2\nExecMainStatus=9\n\
             Environment=PATH=/bin \"A=b c\" CUTOVER_INSTANCE=shop@8081#1-2\n",
        );
        assert_eq!(s.main_pid, None);
        assert_eq!(s.restarts, Some(2));
        assert_eq!(s.last_exit, "killed by SIGKILL");
        assert!(s.has_marker("shop@8081#1-2"));
        assert!(!s.has_marker("shop@8081#1"));
    }

    #[test]
    fn journal_entries_become_lines() {
        let l = journal_line(r#"{"MESSAGE":"hello","CUTOVER_RELEASE":"v2","CUTOVER_PORT":"8082"}"#).unwrap();
        assert_eq!(l, LogLine { release: "v2".into(), port: Some(8082), text: "hello".into() });
        let l = journal_line(r#"{"MESSAGE":[104,105,255]}"#).unwrap();
        assert_eq!(l.text, "hi\u{fffd}");
    }
}

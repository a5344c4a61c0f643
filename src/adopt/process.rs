//! What runs on a port, from /proc: the process that holds the listening socket (the outermost one: a forking
//! server's master rather than a worker that inherited the socket), its command line, working directory and
//! start time (its identity from now on, so that cutover never signals a reused pid), and idle copies of the
//! same app on other ports (the switch.sh pattern leaves the previous copy running).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::host::proc;

/// A process that listens on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub port: u16,
    pub comm: String,
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub argv: Vec<String>,
    pub uid: Option<u32>,
    pub start_ticks: u64,
}

impl Proc {
    /// `python3 app.py --port 8081`: the command line as one string, quoted for a shell where needed.
    pub fn command(&self) -> String {
        self.argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
    }

    /// The same app as `other`: the same executable, run from the same directory.
    pub fn same_app(&self, other: &Proc) -> bool {
        self.exe.is_some() && self.exe == other.exe && self.cwd == other.cwd
    }
}

/// Quote a word for /bin/sh when it needs it.
pub fn shell_quote(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+{}".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

fn describe(pid: i32, port: u16) -> Option<Proc> {
    let st = proc::stat(pid)?;
    let argv = proc::argv(pid)?;
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next()?.parse().ok()))
    });
    Some(Proc {
        pid,
        port,
        comm: proc::comm(pid).unwrap_or_default(),
        exe: proc::exe(pid),
        cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
        argv,
        uid,
        start_ticks: st.start_ticks,
    })
}

/// Every process listening on a TCP port, by port: the outermost holder of each socket (a holder whose parent
/// holds the same socket is a worker of that parent).
pub fn listeners() -> BTreeMap<u16, Proc> {
    let owners = proc::socket_owners();
    let mut out = BTreeMap::new();
    for (inode, port) in proc::tcp_listeners() {
        let Some(holders) = owners.get(&inode) else { continue };
        let outer = holders
            .iter()
            .copied()
            .find(|p| proc::stat(*p).is_none_or(|s| !holders.contains(&s.ppid)))
            .or_else(|| holders.first().copied());
        if let Some(p) = outer.and_then(|pid| describe(pid, port)) {
            out.entry(port).or_insert(p);
        }
    }
    out
}

/// The start command an adopted process suggests: its command line with the port replaced by `{{port}}` (as a
/// word, or after `=` or `:`) and the release name, where it appears as a word or path component, by
/// `{{release}}`. Returns the command and whether the port was found in it. Pure.
pub fn start_command(argv: &[String], port: u16, release: Option<&str>) -> (String, bool) {
    let p = port.to_string();
    let mut found = false;
    let words: Vec<String> = argv
        .iter()
        .map(|w| {
            let mut w = w.clone();
            if w == p {
                found = true;
                w = "{{port}}".into();
            } else {
                for sep in ['=', ':'] {
                    let tail = format!("{sep}{p}");
                    if w.ends_with(&tail) {
                        found = true;
                        w = format!("{}{sep}{{{{port}}}}", &w[..w.len() - tail.len()]);
                    }
                }
            }
            if let Some(r) = release.filter(|r| r.len() > 1) {
                let parts: Vec<String> =
                    w.split('/').map(|c| if c == r { "{{release}}".into() } else { c.to_string() }).collect();
                w = parts.join("/");
            }
            w
        })
        .collect();
    (words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "), found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_port_and_release_become_placeholders() {
        assert_eq!(
            start_command(&argv("/usr/bin/python3 /srv/app/v1/app.py --port 8081 --release v1"), 8081, Some("v1")),
            ("/usr/bin/python3 /srv/app/{{release}}/app.py --port {{port}} --release {{release}}".into(), true)
        );
        assert_eq!(
            start_command(&argv("java -jar app.jar --server.port=8081 -b 127.0.0.1:8081"), 8081, None),
            ("java -jar app.jar --server.port={{port}} -b 127.0.0.1:{{port}}".into(), true)
        );
        // The switch.sh pattern's Spring profile names the port in a properties file: not on the command line.
        assert!(
            !start_command(&argv("java -jar -Dspring.profiles.active=real1 /home/ec2-user/app/app.jar"), 8081, None).1
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}

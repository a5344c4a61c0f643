//! The seam around nginx: validate (`nginx -t`), find the running master, reload, and confirm that the
//! master really runs the new config.
//!
//! `nginx -s reload` (or a SIGHUP) exits 0 even when the master then keeps its old config, for instance when the
//! new config adds a `listen` on a busy port. A reload therefore counts only when new worker processes appear
//! under the master; the old workers are remembered so that the drain can wait until they have exited.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::{self, Reload};
use crate::exit::{Failure, NGINX};
use crate::proc;

pub struct Nginx {
    cfg: config::Nginx,
    binary: PathBuf,
}

impl Nginx {
    /// Resolve the nginx binary. Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    pub fn new(cfg: &config::Nginx) -> Nginx {
        let binary = Self::find(cfg).unwrap_or_else(|_| PathBuf::from(&cfg.binary));
        Nginx { cfg: cfg.clone(), binary }
    }

    /// Where the nginx binary is, or why it cannot be found.
    pub fn find(cfg: &config::Nginx) -> Result<PathBuf> {
        which::which(&cfg.binary)
            .or_else(|e| {
                let sbin = Path::new("/usr/sbin").join(&cfg.binary);
                if !cfg.binary.contains('/') && sbin.is_file() {
                    Ok(sbin)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                anyhow!(
                    "could not find nginx binary {:?}: {e}; install nginx (apt-get install nginx) or set nginx.binary",
                    cfg.binary
                )
            })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(p) = &self.cfg.prefix {
            // nginx joins the prefix and relative paths without a separator; give it one.
            let mut s = p.as_os_str().to_owned();
            if !s.to_string_lossy().ends_with('/') {
                s.push("/");
            }
            c.arg("-p").arg(s);
        }
        if let Some(conf) = &self.cfg.conf {
            c.arg("-c").arg(conf);
        }
        c
    }

    fn describe(&self, args: &str) -> String {
        let mut s = self.binary.display().to_string();
        if let Some(p) = &self.cfg.prefix {
            s.push_str(&format!(" -p {}", p.display()));
        }
        if let Some(c) = &self.cfg.conf {
            s.push_str(&format!(" -c {}", c.display()));
        }
        format!("{s} {args}")
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        self.command().args(args).output().with_context(|| format!("could not run {}", self.describe(&args.join(" "))))
    }

    /// `nginx -t`. A rejection is a [`Failure`] with exit code 4 carrying nginx's own message.
    pub fn test(&self) -> Result<()> {
        let out = self.run(&["-t", "-q"])?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Failure::error(
            NGINX,
            format!("nginx rejected the config ({} exited {}):\n{msg}", self.describe("-t"), status_text(&out)),
        ))
    }

    /// `nginx -T`: the whole config, every included file introduced by `# configuration file PATH:`.
    pub fn dump(&self) -> Result<String> {
        let out = self.run(&["-T", "-q"])?;
        if !out.status.success() {
            bail!(
                "{} exited {}: {}",
                self.describe("-T"),
                status_text(&out),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The files nginx's config includes, as `nginx -T` lists them.
    pub fn included_files(dump: &str) -> Vec<PathBuf> {
        dump.lines()
            .filter_map(|l| l.strip_prefix("# configuration file "))
            .map(|l| PathBuf::from(l.trim_end_matches(':')))
            .collect()
    }

    /// nginx's prefix: `nginx.prefix`, else the compiled-in one; relative paths in its config start here.
    pub fn prefix(&self) -> Result<PathBuf> {
        if let Some(p) = &self.cfg.prefix {
            return Ok(p.clone());
        }
        Ok(self.compiled("--prefix=")?.map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/share/nginx")))
    }

    /// The version `nginx -v` reports, e.g. (1, 22, 1).
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        let out = self.run(&["-v"])?;
        let text = String::from_utf8_lossy(&out.stderr);
        parse_version(&text).with_context(|| format!("could not read a version from `nginx -v`: {}", text.trim()))
    }

    /// A value from `nginx -V`'s configure arguments.
    fn compiled(&self, key: &str) -> Result<Option<String>> {
        let out = self.run(&["-V"])?;
        let text = String::from_utf8_lossy(&out.stderr);
        Ok(text.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string))
    }

    /// The master's pid file: `nginx.pid_file`, else the main-context `pid` directive, else nginx's built-in one.
    pub fn pid_file(&self) -> Result<PathBuf> {
        if let Some(p) = &self.cfg.pid_file {
            return Ok(p.clone());
        }
        let dump = self.dump().context("could not read nginx's config to find its pid file (or set nginx.pid_file)")?;
        let from_conf = main_directive(&dump, "pid");
        let path = match from_conf {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(self.compiled("--pid-path=")?.unwrap_or_else(|| "logs/nginx.pid".into())),
        };
        Ok(if path.is_relative() { self.prefix()?.join(path) } else { path })
    }

    /// The running master's pid, checked to be alive.
    pub fn master(&self) -> Result<Master> {
        let pid_file = self.pid_file()?;
        let text = std::fs::read_to_string(&pid_file).map_err(|e| {
            anyhow!(
                "nginx is not running: could not read its pid file {}: {e}; start nginx, or set nginx.pid_file",
                pid_file.display()
            )
        })?;
        let pid: i32 = text.trim().parse().with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
        if !proc::pid_alive(pid) {
            bail!("nginx is not running: pid {pid} from {} is gone; start nginx", pid_file.display());
        }
        Ok(Master { pid, pid_file })
    }

    /// Ask the master to reload, the configured way.
    pub fn reload(&self, master: &Master) -> Result<()> {
        match &self.cfg.reload {
            Reload::Signal => kill(Pid::from_raw(master.pid), Signal::SIGHUP)
                .with_context(|| format!("could not send SIGHUP to nginx master {}", master.pid)),
            Reload::Systemctl => run_ok(Command::new("systemctl").args(["reload", "nginx"]), "systemctl reload nginx"),
            Reload::Command(argv) => run_ok(Command::new(&argv[0]).args(&argv[1..]), &argv.join(" ")),
        }
    }

    /// Wait until the master runs workers that were not in `old`: only then is the new config live.
    pub fn confirm(&self, master: &Master, old: &[i32]) -> Result<Duration> {
        let started = Instant::now();
        let timeout = self.cfg.confirm_timeout.0;
        loop {
            if !proc::pid_alive(master.pid) {
                bail!("nginx master {} exited during the reload", master.pid);
            }
            if master.workers().iter().any(|w| !old.contains(w)) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(Failure::error(
                    NGINX,
                    format!(
                        "nginx did not apply the reload: after {} master {} still runs only its old workers \
                         (nginx -t passed, so it is something only the running master sees, such as a listen \
                         port already in use){}",
                        humantime::format_duration(timeout),
                        master.pid,
                        self.error_log_tail()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// With `nginx.confirm_url`: wait until nginx answers it with `generation`, i.e. until requests are served
    /// by the file just written. Old workers keep accepting for a moment after a reload, so early answers may
    /// still carry the previous generation.
    pub fn confirm_generation(&self, generation: u64) -> Result<()> {
        let Some(url) = &self.cfg.confirm_url else { return Ok(()) };
        let started = Instant::now();
        let timeout = self.cfg.confirm_timeout.0;
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(1)).max_idle_connections(0).build();
        let want = generation.to_string();
        let mut last;
        loop {
            last = match agent.get(&url.0).call() {
                Ok(r) => match r.into_string() {
                    Ok(body) if body.trim() == want => return Ok(()),
                    Ok(body) => format!("it answered {:?}", body.trim().chars().take(40).collect::<String>()),
                    Err(e) => format!("could not read its answer: {e}"),
                },
                Err(ureq::Error::Status(code, _)) => format!("it answered status {code}"),
                Err(e) => format!("GET failed: {e}"),
            };
            if started.elapsed() >= timeout {
                return Err(Failure::error(
                    NGINX,
                    format!(
                        "nginx did not serve the new upstream: after {} {url} should answer generation {want}, but {last} \
                         (the site behind nginx.confirm_url must return $cutover_<app>_generation from the file cutover writes)",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of nginx's error log, when the config names one cutover can read.
    fn error_log_tail(&self) -> String {
        let Ok(dump) = self.dump() else { return String::new() };
        let Some(path) = main_directive(&dump, "error_log") else { return String::new() };
        let mut path = PathBuf::from(path);
        if path.is_relative() {
            match self.prefix() {
                Ok(p) => path = p.join(path),
                Err(_) => return String::new(),
            }
        }
        let tail = proc::tail(&path, 3);
        if tail.is_empty() {
            String::new()
        } else {
            format!("; nginx's error log {} says:\n{tail}", path.display())
        }
    }
}

/// The running nginx master.
#[derive(Debug, Clone)]
pub struct Master {
    pub pid: i32,
    #[allow(dead_code)]
    pub pid_file: PathBuf,
}

impl Master {
    /// The master's worker processes, from /proc. Cache manager and loader are left out: they do not serve
    /// requests, and the loader may outlive a reload by minutes.
    pub fn workers(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| proc::parent_of(pid) == Some(self.pid) && proc::pid_alive(pid))
            .filter(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("worker process"))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Wait until none of `old` is still a worker of this master. False when `timeout` passed first.
    pub fn wait_gone(&self, old: &[i32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = old.iter().any(|&p| proc::pid_alive(p) && proc::parent_of(p) == Some(self.pid));
            if !left {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The value of a main-context directive (`pid`, `error_log`) in the first file of an `nginx -T` dump.
fn main_directive(dump: &str, name: &str) -> Option<String> {
    let mut depth = 0i32;
    let mut seen_first = false;
    for line in dump.lines() {
        if line.starts_with("# configuration file ") {
            if seen_first {
                break;
            }
            seen_first = true;
            continue;
        }
        let code = line.split('#').next().unwrap_or("");
        if depth == 0 {
            let mut words = code.split_whitespace();
            if words.next() == Some(name) {
                if let Some(v) = words.next() {
                    return Some(v.trim_end_matches(';').to_string());
                }
            }
        }
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
    }
    None
}

/// `nginx version: nginx/1.22.1` → (1, 22, 1).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// nginx 1.27.4 added `keepalive_min_timeout`, which keeps a reload from resetting idle keep-alive clients.
pub fn has_keepalive_min_timeout(version: (u32, u32, u32)) -> bool {
    version >= (1, 27, 4)
}

fn status_text(out: &Output) -> String {
    match out.status.code() {
        Some(c) => c.to_string(),
        None => "on a signal".into(),
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("could not run {what}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failure::error(
            NGINX,
            format!("{what} exited {}: {}", status_text(&out), String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("nginx version: nginx/1.22.1\n"), Some((1, 22, 1)));
        assert_eq!(parse_version("nginx version: nginx/1.27.4 (Ubuntu)"), Some((1, 27, 4)));
        assert_eq!(parse_version("nginx version: openresty/1.2"), None);
        assert!(!has_keepalive_min_timeout((1, 22, 1)));
        assert!(!has_keepalive_min_timeout((1, 27, 3)));
        assert!(has_keepalive_min_timeout((1, 27, 4)));
        assert!(has_keepalive_min_timeout((1, 28, 0)));
    }

    #[test]
    fn main_directive_ignores_blocks_and_included_files() {
        let dump = "# configuration file /p/nginx.conf:\nworker_processes 2;\nerror_log logs/error.log;\n\
                    pid   logs/nginx.pid; # here\nhttp {\n  pid nope;\n}\n# configuration file /p/x.conf:\npid later;\n";
        assert_eq!(main_directive(dump, "pid").as_deref(), Some("logs/nginx.pid"));
        assert_eq!(main_directive(dump, "error_log").as_deref(), Some("logs/error.log"));
        assert_eq!(main_directive(dump, "user"), None);
        assert_eq!(Nginx::included_files(dump), vec![PathBuf::from("/p/nginx.conf"), PathBuf::from("/p/x.conf")]);
    }
}

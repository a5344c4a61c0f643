//! The real nginx: validate (`nginx -t`), find and verify the running master, reload, and confirm that the
//! master really runs the new config; and the upstream file cutover manages.
//!
//! `nginx -s reload` (or a SIGHUP) exits 0 even when the master then keeps its old config, for instance when the
//! new config adds a `listen` on a busy port. A reload therefore counts only when new worker processes appear
//! under the master; the old workers are remembered so that the drain can wait until they have exited.

pub mod cmdline;
pub mod dump;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::{self, Reload};
use crate::exit::{Code, Failure};
use crate::host::{proc, Master};
use crate::util;

pub use dump::has_keepalive_min_timeout;

/// nginx is not running (or cannot be found running): exit 4, with what to do.
fn not_running(message: String) -> anyhow::Error {
    Failure::error(Code::Nginx, format!("nginx is not running: {message}"))
}

pub struct RealNginx {
    cfg: config::Nginx,
    binary: PathBuf,
    /// The host-wide `nginx.lock`: `nginx -T` reads every app's upstream file, so it waits (shared) while another
    /// app has a candidate on disk (held exclusively from its write to its confirmed reload).
    lock: Option<PathBuf>,
}

impl RealNginx {
    /// Resolve the nginx binary. Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    pub fn new(cfg: &config::Nginx, lock: Option<PathBuf>) -> RealNginx {
        let binary = Self::find(cfg).unwrap_or_else(|_| PathBuf::from(&cfg.binary));
        RealNginx { cfg: cfg.clone(), binary, lock }
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
        self.command_as(false)
    }

    /// The nginx command line; with `as_root`, behind `nginx.run_as_root` when it is set (a non-root deploy user
    /// runs `nginx -t`, `-T` and the reload as root through sudo).
    fn command_as(&self, as_root: bool) -> Command {
        let mut c = match self.cfg.run_as_root.as_deref().filter(|_| as_root) {
            Some(prefix) => {
                let mut c = Command::new(&prefix[0]);
                c.args(&prefix[1..]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
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
        if let Some(prefix) = &self.cfg.run_as_root {
            if args != "-v" && args != "-V" {
                s = format!("{} {s}", prefix.join(" "));
            }
        }
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

    /// The commands cutover runs as root through `nginx.run_as_root` (without the prefix), as a sudoers rule
    /// must list them: `nginx -t -q`, `nginx -T -q`, and the reload.
    pub fn root_commands(&self) -> Vec<Vec<String>> {
        let argv = |extra: &[&str]| {
            let c = self.command_as(false);
            let mut v: Vec<String> = vec![c.get_program().to_string_lossy().into_owned()];
            v.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let mut out = vec![argv(&["-t", "-q"]), argv(&["-T", "-q"])];
        match &self.cfg.reload {
            Reload::Signal => out.push(argv(&["-s", "reload"])),
            Reload::Systemctl => {
                let bin = which::which("systemctl").unwrap_or_else(|_| PathBuf::from("/usr/bin/systemctl"));
                out.push(vec![bin.display().to_string(), "reload".into(), "nginx".into()]);
            }
            Reload::Command(v) if v.first().is_some_and(|c| c == "sudo") => {
                out.push(v.iter().skip(1).skip_while(|a| a.starts_with('-')).cloned().collect())
            }
            Reload::Command(_) => {}
        }
        out
    }

    /// [`RealNginx::run`] as root when `nginx.run_as_root` says how.
    fn run_as_root(&self, args: &[&str]) -> Result<Output> {
        self.command_as(true)
            .args(args)
            .output()
            .with_context(|| format!("could not run {}", self.describe(&args.join(" "))))
    }

    /// `nginx -t`. A rejection is a [`Failure`] with exit code 4 carrying nginx's own message.
    pub fn test(&self) -> Result<()> {
        let out = self.run_as_root(&["-t", "-q"])?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Failure::error(
            Code::Nginx,
            format!("nginx rejected the config ({} exited {}):\n{msg}", self.describe("-t"), status_text(&out)),
        ))
    }

    /// `nginx -T`: the whole config, every included file introduced by `# configuration file PATH:`.
    pub fn dump(&self) -> Result<String> {
        let _reading = match &self.lock {
            Some(path) if path.parent().is_some_and(Path::is_dir) => {
                Some(crate::lock::shared(path, Duration::from_secs(60))?)
            }
            _ => None,
        };
        let out = self.run_as_root(&["-T", "-q"])?;
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
        dump::parse_version(&text).with_context(|| format!("could not read a version from `nginx -v`: {}", text.trim()))
    }

    /// A value from `nginx -V`'s configure arguments.
    fn compiled(&self, key: &str) -> Result<Option<String>> {
        let out = self.run(&["-V"])?;
        let text = String::from_utf8_lossy(&out.stderr);
        Ok(text.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string))
    }

    /// nginx's main config file: `nginx.conf`, else the compiled-in path.
    fn main_conf(&self) -> Result<PathBuf> {
        if let Some(c) = &self.cfg.conf {
            return Ok(c.clone());
        }
        let path = PathBuf::from(self.compiled("--conf-path=")?.unwrap_or_else(|| "conf/nginx.conf".into()));
        Ok(if path.is_relative() { self.prefix()?.join(path) } else { path })
    }

    /// A main-context directive of the main config file itself (`pid`, `error_log` live there). Read from the
    /// file rather than `nginx -T`, which would also parse every app's upstream file, another app's half-done
    /// candidate included.
    fn main_directive(&self, name: &str) -> Result<Option<String>> {
        let path = self.main_conf()?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("could not read nginx's config {}", path.display()))?;
        Ok(dump::main_directive(&format!("# configuration file {}:\n{text}", path.display()), name))
    }

    /// The master's pid file: `nginx.pid_file`, else the main-context `pid` directive, else nginx's built-in one.
    pub fn pid_file(&self) -> Result<PathBuf> {
        if let Some(p) = &self.cfg.pid_file {
            return Ok(p.clone());
        }
        let from_conf = self
            .main_directive("pid")
            .context("could not read nginx's config to find its pid file (or set nginx.pid_file)")?;
        let path = match from_conf {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(self.compiled("--pid-path=")?.unwrap_or_else(|| "logs/nginx.pid".into())),
        };
        Ok(if path.is_relative() { self.prefix()?.join(path) } else { path })
    }

    /// The running master: the pid in the pid file, checked to be alive and to be an nginx master (its
    /// command line is `nginx: master process …` or its executable is the nginx binary), so that a stale pid
    /// file naming some other process never gets that process signalled.
    pub fn find_master(&self) -> Result<Master> {
        // Without its binary nginx can be neither validated nor reloaded: a plan must not go ahead.
        Self::find(&self.cfg).map_err(|e| Failure::error(Code::Nginx, format!("{e:#}")))?;
        let pid_file = self.pid_file()?;
        let text = std::fs::read_to_string(&pid_file).map_err(|e| {
            not_running(format!(
                "could not read its pid file {}: {e}; start nginx, or set nginx.pid_file",
                pid_file.display()
            ))
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(not_running(format!("its pid file {} is empty; start nginx", pid_file.display())));
        }
        let pid: i32 = text.parse().map_err(|_| {
            not_running(format!("its pid file {} does not hold a pid ({text:?}); start nginx", pid_file.display()))
        })?;
        if !proc::pid_alive(pid) {
            return Err(not_running(format!("pid {pid} from {} is gone; start nginx", pid_file.display())));
        }
        let cmdline = proc::cmdline(pid).unwrap_or_default();
        let exe = proc::exe(pid);
        let ours = std::fs::canonicalize(&self.binary).ok();
        let is_master = cmdline.starts_with("nginx: master process")
            || (exe.is_some() && exe == ours && !cmdline.starts_with("nginx: worker process"));
        if !is_master {
            return Err(Failure::error(
                Code::Nginx,
                format!(
                    "the nginx pid file {} names pid {pid}, which is not an nginx master but `{}`{}: the pid file is \
                     stale (nginx is probably not running); cutover signals nothing it cannot prove is nginx. Start \
                     nginx, or point nginx.pid_file at the running master's pid file",
                    pid_file.display(),
                    if cmdline.is_empty() { proc::comm(pid).unwrap_or_default() } else { cmdline },
                    exe.map(|e| format!(" ({})", e.display())).unwrap_or_default()
                ),
            ));
        }
        if let Some(why) = cmdline::runs_another_config(&cmdline, self.cfg.prefix.as_deref(), self.cfg.conf.as_deref())
        {
            return Err(Failure::error(
                Code::Nginx,
                format!(
                    "the nginx pid file {} names pid {pid}, an nginx master of another nginx: {why} (`{cmdline}`). \
                     Reloading it would not reach the nginx that routes this app; point nginx.pid_file at that \
                     nginx's master (or fix nginx.prefix / nginx.conf)",
                    pid_file.display()
                ),
            ));
        }
        Ok(Master { pid })
    }

    /// Wait until the master runs workers that were not in `old`: only then is the new config live.
    fn confirm_workers(&self, master: &Master, old: &[i32]) -> Result<Duration> {
        let started = Instant::now();
        let timeout = self.cfg.confirm_timeout.0;
        loop {
            if !proc::pid_alive(master.pid) {
                return Err(not_running(format!("master {} exited during the reload", master.pid)));
            }
            if workers_of(master).iter().any(|w| !old.contains(w)) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(Failure::error(
                    Code::Nginx,
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
    fn confirm_generation(&self, generation: u64) -> Result<()> {
        let Some(url) = &self.cfg.confirm_url else { return Ok(()) };
        let started = Instant::now();
        let timeout = self.cfg.confirm_timeout.0;
        let agent = crate::host::real::agent(Duration::from_secs(1));
        let want = generation.to_string();
        let mut last;
        loop {
            last = match agent.get(&url.0).call() {
                Ok(mut r) if r.status().is_success() => match r.body_mut().read_to_string() {
                    Ok(body) if body.trim() == want => return Ok(()),
                    Ok(body) => format!("it answered {:?}", body.trim().chars().take(40).collect::<String>()),
                    Err(e) => format!("could not read its answer: {e}"),
                },
                Ok(r) => format!("it answered status {}", r.status().as_u16()),
                Err(e) => format!("GET failed: {e}"),
            };
            if started.elapsed() >= timeout {
                return Err(Failure::error(
                    Code::Nginx,
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
        let Ok(Some(path)) = self.main_directive("error_log") else { return String::new() };
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

/// The master's worker processes, from /proc. Cache manager and loader are left out: they do not serve requests,
/// and the loader may outlive a reload by minutes.
fn workers_of(master: &Master) -> Vec<i32> {
    proc::pids()
        .into_iter()
        .filter(|&pid| proc::stat(pid).is_some_and(|s| s.ppid == master.pid && !s.zombie()))
        .filter(|&pid| proc::cmdline(pid).is_some_and(|c| c.contains("worker process")))
        .collect()
}

impl crate::host::Nginx for RealNginx {
    fn read_upstream(&self) -> Result<Option<String>> {
        let path = &self.cfg.upstream_file;
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not read upstream file {}", path.display())),
        }
    }

    fn upstream_dir_problem(&self) -> Option<String> {
        let path = &self.cfg.upstream_file;
        let dir = path.parent().unwrap_or(Path::new("."));
        (!dir.is_dir()).then(|| {
            format!(
                "nginx.upstream_file {} is in a directory that does not exist: create {} (and include the file from \
                 nginx's config), or fix nginx.upstream_file",
                path.display(),
                dir.display()
            )
        })
    }

    fn write_upstream(&self, text: &str) -> Result<()> {
        if let Some(problem) = self.upstream_dir_problem() {
            return Err(crate::exit::usage(problem));
        }
        util::write_atomic(&self.cfg.upstream_file, text.as_bytes(), 0o644)
    }

    fn restore_upstream(&self, before: Option<&str>) -> Result<()> {
        let path = &self.cfg.upstream_file;
        match before {
            Some(text) => util::write_atomic(path, text.as_bytes(), 0o644)
                .with_context(|| format!("could not restore {}", path.display())),
            None => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("could not remove {}", path.display())),
            },
        }
    }

    fn test(&self) -> Result<()> {
        RealNginx::test(self)
    }

    fn master(&self) -> Result<Master> {
        self.find_master()
    }

    fn workers(&self, m: &Master) -> Vec<i32> {
        workers_of(m)
    }

    /// Ask the master to reload, the configured way.
    fn reload(&self, master: &Master) -> Result<()> {
        let prefix = self.cfg.run_as_root.as_deref();
        match &self.cfg.reload {
            Reload::Signal if prefix.is_some() => {
                run_ok(self.command_as(true).args(["-s", "reload"]), &self.describe("-s reload"))
            }
            Reload::Signal => kill(Pid::from_raw(master.pid), Signal::SIGHUP)
                .with_context(|| format!("could not send SIGHUP to nginx master {}", master.pid)),
            Reload::Systemctl if prefix.is_some() => {
                let p = prefix.unwrap_or_default();
                let what = format!("{} systemctl reload nginx", p.join(" "));
                run_ok(Command::new(&p[0]).args(&p[1..]).args(["systemctl", "reload", "nginx"]), &what)
            }
            Reload::Systemctl => run_ok(Command::new("systemctl").args(["reload", "nginx"]), "systemctl reload nginx"),
            Reload::Command(argv) => run_ok(Command::new(&argv[0]).args(&argv[1..]), &argv.join(" ")),
        }
    }

    fn confirm(&self, m: &Master, old: &[i32], generation: Option<u64>) -> Result<Duration> {
        let took = self.confirm_workers(m, old)?;
        if let Some(g) = generation {
            self.confirm_generation(g)?;
        }
        Ok(took)
    }

    fn wait_gone(&self, m: &Master, old: &[i32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = old.iter().any(|&p| proc::stat(p).is_some_and(|s| s.ppid == m.pid && !s.zombie()));
            if !left {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn dump(&self) -> Result<String> {
        RealNginx::dump(self)
    }
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
            Code::Nginx,
            format!("{what} exited {}: {}", status_text(&out), String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

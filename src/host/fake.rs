//! A simulated host for tests of the engine: app instances, nginx (the file on disk, the config each worker
//! generation serves) and a virtual clock, all in memory.
//!
//! It counts every side effect (a start, a stop, a write of the upstream file, a reload, a journal write, a
//! history line) and can end the run at the N-th, as a `kill -9` would: the run unwinds with a [`Crash`] panic,
//! nothing of it runs after that point, and the test then runs the next command against the same world. While a
//! run goes on it checks the safety rule every step must keep: cutover never stops an instance that a running
//! nginx worker still routes to (as a primary server).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Host, Master, Nginx, Probe, Runtime, StartSpec, Status, StopHow, Stopped};
use crate::config::Health;
use crate::exit::{Code, Failure};
use crate::journal::Instance;

/// The payload of the panic that ends a run at a crash point.
#[derive(Debug)]
pub struct Crash(pub String);

#[derive(Debug, Clone)]
pub struct FakeProc {
    pub release: String,
    pub port: u16,
    pub marker: String,
    pub alive: bool,
}

/// One nginx worker generation: its worker pid and the upstream file it serves.
#[derive(Debug, Clone)]
pub struct Workers {
    pub pid: i32,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct World {
    pub clock: Duration,
    pub procs: BTreeMap<i32, FakeProc>,
    next_pid: i32,
    /// The upstream file on disk.
    pub disk: Option<String>,
    /// The workers of the current config, and old ones still running.
    pub current: Option<Workers>,
    pub old: Vec<Workers>,
    pub master_alive: bool,
    /// `nginx -t` rejects a file containing this.
    pub reject_containing: Option<String>,
    /// Reloads are signalled but nginx keeps its config.
    pub ignore_reloads: bool,
    /// Releases whose instances never pass their health check.
    pub unhealthy: Vec<String>,
    /// Releases whose instances die once they have served this many probes.
    pub dies_after_probes: BTreeMap<String, u32>,
    probes: BTreeMap<i32, u32>,
    /// Ports some other program listens on.
    pub foreign: Vec<u16>,
    /// Side effects so far, and the one to crash at.
    pub effects: usize,
    pub crash_at: Option<usize>,
    pub effect_log: Vec<String>,
    /// Safety rules broken during the run.
    pub violations: Vec<String>,
    /// An access log the simulated traffic is written to while the clock runs (canary analysis reads it).
    pub access_log: Option<PathBuf>,
}

pub struct FakeHost {
    pub world: RefCell<World>,
    base: Instant,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        let world = World { master_alive: true, next_pid: 1000, ..World::default() };
        FakeHost { world: RefCell::new(world), base: Instant::now() }
    }

    /// Count a side effect; at the chosen one, end the run here.
    fn effect(&self, what: String) {
        let mut w = self.world.borrow_mut();
        w.effects += 1;
        w.effect_log.push(what.clone());
        if w.crash_at == Some(w.effects) {
            drop(w);
            std::panic::panic_any(Crash(what));
        }
    }

    /// The ports nginx routes to as primary servers, in any worker generation still running.
    pub fn routed_ports(&self) -> Vec<u16> {
        let w = self.world.borrow();
        let mut v: Vec<u16> = w.current.iter().chain(w.old.iter()).flat_map(|g| primary_ports(&g.text)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The ports nginx's current workers route to as primary servers.
    pub fn serving_ports(&self) -> Vec<u16> {
        let w = self.world.borrow();
        w.current.as_ref().map(|g| primary_ports(&g.text)).unwrap_or_default()
    }

    /// Instances alive now, by pid.
    pub fn alive(&self) -> Vec<(i32, FakeProc)> {
        self.world.borrow().procs.iter().filter(|(_, p)| p.alive).map(|(k, p)| (*k, p.clone())).collect()
    }

    /// Kill an instance from outside cutover (a crash of the app).
    pub fn kill(&self, pid: i32) {
        if let Some(p) = self.world.borrow_mut().procs.get_mut(&pid) {
            p.alive = false;
        }
    }

    fn proc_on(&self, port: u16) -> Option<(i32, FakeProc)> {
        self.world.borrow().procs.iter().find(|(_, p)| p.alive && p.port == port).map(|(k, p)| (*k, p.clone()))
    }

    /// Write `n` requests' worth of access-log lines, spread over the current workers' primary servers.
    fn traffic(&self, n: usize) {
        let (path, servers) = {
            let w = self.world.borrow();
            let Some(path) = w.access_log.clone() else { return };
            let servers = w.current.as_ref().map(|g| weighted_servers(&g.text)).unwrap_or_default();
            (path, servers)
        };
        if servers.is_empty() {
            return;
        }
        let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) else { return };
        for i in 0..n {
            let addr = &servers[i % servers.len()];
            let _ = writeln!(
                f,
                r#"{{"msec":"1.0","upstream":"{addr}","status":"200","upstream_status":"200","upstream_time":"0.002","request_time":"0.002"}}"#
            );
        }
    }
}

/// `server ADDR:PORT ...;` lines of an upstream file that may take traffic (all but `down` ones).
pub fn listed_ports(text: &str) -> Vec<u16> {
    servers(text).into_iter().filter(|(_, _, flags)| !flags.contains("down")).map(|(p, _, _)| p).collect()
}

/// `server ADDR:PORT ...;` lines of an upstream file that take traffic (neither `backup` nor `down`).
pub fn primary_ports(text: &str) -> Vec<u16> {
    servers(text)
        .into_iter()
        .filter(|(_, _, flags)| !flags.contains("backup") && !flags.contains("down"))
        .map(|(p, _, _)| p)
        .collect()
}

/// (port, address, flags) of every server line.
fn servers(text: &str) -> Vec<(u16, String, String)> {
    text.lines()
        .filter_map(|l| {
            let code = l.split('#').next()?.trim();
            let rest = code.strip_prefix("server ")?;
            let mut words = rest.trim_end_matches(';').split_whitespace();
            let addr = words.next()?.to_string();
            let port = addr.rsplit(':').next()?.parse().ok()?;
            Some((port, addr, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Primary server addresses, each repeated by its weight.
fn weighted_servers(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (_, addr, flags) in servers(text) {
        if flags.contains("backup") || flags.contains("down") {
            continue;
        }
        let weight = flags.split_whitespace().find_map(|f| f.strip_prefix("weight=")?.parse().ok()).unwrap_or(1);
        v.extend(std::iter::repeat_n(addr, weight));
    }
    v
}

impl Host for FakeHost {
    fn runtime(&self) -> &dyn Runtime {
        self
    }

    fn nginx(&self) -> &dyn Nginx {
        self
    }

    fn probe(&self, url: &str, _health: &Health) -> Probe {
        let port: u16 = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let Some((pid, p)) = self.proc_on(port) else {
            return Probe::Refused(format!("GET {url}: connection refused"));
        };
        let mut w = self.world.borrow_mut();
        let n = {
            let c = w.probes.entry(pid).or_default();
            *c += 1;
            *c
        };
        if w.dies_after_probes.get(&p.release).is_some_and(|&limit| n > limit) {
            if let Some(pp) = w.procs.get_mut(&pid) {
                pp.alive = false;
            }
            return Probe::Refused(format!("GET {url}: connection refused"));
        }
        if w.unhealthy.contains(&p.release) {
            return Probe::Wrong(format!("GET {url}: status 503, expected 200"));
        }
        Probe::Pass
    }

    fn now(&self) -> Instant {
        self.base + self.world.borrow().clock
    }

    fn sleep(&self, d: Duration) {
        self.world.borrow_mut().clock += d;
        let n = (d.as_millis() / 10).clamp(1, 200) as usize;
        self.traffic(n);
    }

    fn port_free(&self, addr: SocketAddr) -> bool {
        self.proc_on(addr.port()).is_none() && !self.world.borrow().foreign.contains(&addr.port())
    }

    fn who_listens(&self, port: u16) -> Option<(i32, String)> {
        if self.world.borrow().foreign.contains(&port) {
            return Some((4242, "other".into()));
        }
        self.proc_on(port).map(|(pid, _)| (pid, "app".into()))
    }

    fn checkpoint(&self, what: &str) {
        self.effect(what.to_string());
    }
}

impl Runtime for FakeHost {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn start(&self, spec: &StartSpec) -> Result<Instance> {
        self.effect(format!("start {} on {}", spec.release, spec.port));
        let mut w = self.world.borrow_mut();
        let pid = w.next_pid;
        w.next_pid += 1;
        w.procs.insert(
            pid,
            FakeProc { release: spec.release.clone(), port: spec.port, marker: spec.marker.clone(), alive: true },
        );
        let mut inst = Instance::planned(&spec.release, spec.port);
        inst.pid = Some(pid);
        inst.start_ticks = Some(pid as u64);
        inst.marker = Some(spec.marker.clone());
        inst.started_at = "fake".into();
        Ok(inst)
    }

    fn status(&self, inst: &Instance) -> Status {
        let Some(pid) = inst.pid else { return Status::Gone };
        match self.world.borrow().procs.get(&pid) {
            Some(p) if p.alive => Status::Running,
            Some(_) => Status::Exited("exit status 1".into()),
            None => Status::Gone,
        }
    }

    fn stop(&self, inst: &Instance, _timeout: Duration) -> Stopped {
        let pids: Vec<i32> = {
            let w = self.world.borrow();
            w.procs
                .iter()
                .filter(|(pid, p)| {
                    p.alive && (Some(**pid) == inst.pid || inst.marker.as_deref() == Some(p.marker.as_str()))
                })
                .map(|(k, _)| *k)
                .collect()
        };
        if pids.is_empty() {
            return Stopped { how: StopHow::Gone, strays: Vec::new(), survivors: Vec::new() };
        }
        self.effect(format!("stop {} on {}", inst.release, inst.port));
        let routed = self.routed_ports();
        let mut w = self.world.borrow_mut();
        if routed.contains(&inst.port) {
            let msg = format!("stopped {} on port {} while nginx still routes to it", inst.release, inst.port);
            w.violations.push(msg);
        }
        for pid in pids {
            if let Some(p) = w.procs.get_mut(&pid) {
                p.alive = false;
            }
        }
        Stopped { how: StopHow::Terminated, strays: Vec::new(), survivors: Vec::new() }
    }

    fn find(&self, marker: &str) -> Vec<i32> {
        self.world.borrow().procs.iter().filter(|(_, p)| p.alive && p.marker == marker).map(|(k, _)| *k).collect()
    }

    fn log_excerpt(&self, inst: &Instance) -> String {
        format!("output of {}: (fake host)", inst.describe())
    }
}

impl Nginx for FakeHost {
    fn read_upstream(&self) -> Result<Option<String>> {
        Ok(self.world.borrow().disk.clone())
    }

    fn write_upstream(&self, text: &str) -> Result<()> {
        self.effect("write upstream".into());
        self.world.borrow_mut().disk = Some(text.to_string());
        Ok(())
    }

    fn restore_upstream(&self, before: Option<&str>) -> Result<()> {
        self.effect("restore upstream".into());
        self.world.borrow_mut().disk = before.map(str::to_string);
        Ok(())
    }

    fn test(&self) -> Result<()> {
        let w = self.world.borrow();
        match (&w.reject_containing, &w.disk) {
            (Some(bad), Some(text)) if text.contains(bad.as_str()) => {
                Err(Failure::error(Code::Nginx, "nginx rejected the config (fake)"))
            }
            _ => Ok(()),
        }
    }

    fn master(&self) -> Result<Master> {
        if self.world.borrow().master_alive {
            Ok(Master { pid: 1 })
        } else {
            Err(Failure::error(Code::Nginx, "nginx is not running (fake)"))
        }
    }

    /// Like the real master: every worker, the current generation's and old ones still shutting down.
    fn workers(&self, _m: &Master) -> Vec<i32> {
        let w = self.world.borrow();
        w.current.iter().chain(w.old.iter()).map(|g| g.pid).collect()
    }

    fn reload(&self, _m: &Master) -> Result<()> {
        self.effect("reload".into());
        let mut w = self.world.borrow_mut();
        if w.ignore_reloads {
            return Ok(());
        }
        let text = w.disk.clone().unwrap_or_default();
        let pid = w.next_pid;
        w.next_pid += 1;
        if let Some(old) = w.current.replace(Workers { pid, text }) {
            w.old.push(old);
        }
        Ok(())
    }

    fn confirm(&self, _m: &Master, old: &[i32], _generation: Option<u64>) -> Result<Duration> {
        let w = self.world.borrow();
        match &w.current {
            Some(g) if !old.contains(&g.pid) => Ok(Duration::from_millis(20)),
            _ => Err(Failure::error(Code::Nginx, "nginx did not apply the reload (fake)")),
        }
    }

    fn wait_gone(&self, _m: &Master, old: &[i32], _timeout: Duration) -> bool {
        let mut w = self.world.borrow_mut();
        w.clock += Duration::from_millis(120);
        w.old.retain(|g| !old.contains(&g.pid));
        true
    }

    fn dump(&self) -> Result<String> {
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_servers_that_are_neither_backup_nor_down() {
        let text = "upstream shop {\n    zone shop 64k;\n    server 127.0.0.1:8082 weight=9;  # v2\n    \
                    server 127.0.0.1:8081 backup;  # v1\n    server 127.0.0.1:8083 down;  # v3\n}\n";
        assert_eq!(primary_ports(text), vec![8082]);
        assert_eq!(weighted_servers(text).len(), 9);
    }
}

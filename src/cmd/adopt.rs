//! `cutover init --adopt`: take over an app nginx already proxies to (see [`crate::adopt`]).
//!
//! Resolve, then act. Everything that can be refused is refused before a file is written: nothing or several
//! things to adopt, nothing listening on the live port, a live app that fails the health check, a config that
//! does not load, state that already records a release, a site file that changed since `nginx -T`. Then:
//! cutover.toml is written; under the host-wide nginx lock the upstream file (rendered from the adopted state)
//! and the edited site files are written, `nginx -t` judges them, nginx is reloaded and the reload confirmed
//! (new workers); any failure puts every file back byte for byte (and reloads again if the reload was sent) and
//! removes the config, exit 4. Only then is the running process recorded as the live release, through the
//! journal, with an `adopt` event in the history; the originals of the edited files are kept in the app's state
//! directory (`before-adopt/`). `--dry-run` prints the edits and the config and changes nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::adopt::config_text::{self, Adopted};
use crate::adopt::edit::{self, FileEdit};
use crate::adopt::find::{self, addr_port, Candidate, Via};
use crate::adopt::process::{self, Proc};
use crate::cli::InitArgs;
use crate::config::{self, Config, Name, Release};
use crate::engine::{Done, Engine, Moved, OpMeta};
use crate::exit::{self, Code};
use crate::host::proc as hproc;
use crate::host::real::RealHost;
use crate::journal::{Change, Deployment, Instance, OpKind, Outcome, Store};
use crate::lock::{self, Scope};
use crate::nginx::dump::conf::Conf;
use crate::nginx::RealNginx;
use crate::output::Progress;
use crate::upstream;

/// What adoption found and will do, decided before anything is written.
struct Resolved {
    cand: Candidate,
    name: Name,
    live: Deployment,
    previous: Option<Deployment>,
    config_text: String,
    config: Config,
    notes: Vec<String>,
}

pub fn run(config_path: &Path, args: InitArgs) -> Result<Code> {
    let o = &args.adopt_opts;
    if config_path.exists() && !args.force && !o.dry_run {
        return Err(exit::usage(format!("{} exists; pass --force to overwrite it", config_path.display())));
    }
    let r = resolve(config_path, &args)?;
    let cfg = &r.config;
    let upstream_file = cfg.nginx.upstream_file.clone();
    let texts = read_files(&r.cand)?;
    let edits = edit::plan(&r.cand, &texts, r.name.as_str(), &upstream_file)?;
    for n in &r.notes {
        crate::output::err_line(&format!("cutover: note: {n}"));
    }
    if o.dry_run {
        say!("adopt: {}", r.cand.describe());
        say!("live:     {}", describe(&r.live));
        if let Some(p) = &r.previous {
            say!("previous: {} (idle; the first deploy stops it to use its port)", describe(p));
        }
        say!("would write {} (the upstream {}, included in nginx's http context)", upstream_file.display(), r.name);
        for e in &edits {
            put!("{}", upstream::diff(&e.before, &e.after, &e.file.display().to_string()));
        }
        say!("would write {}:\n{}", config_path.display(), r.config_text);
        crate::output::err_line("cutover: dry run: nothing was written or reloaded");
        return Ok(Code::Ok);
    }
    let previous_config = std::fs::read(config_path).ok();
    crate::trust::write_with_mode(config_path, r.config_text.as_bytes(), 0o640)?;
    let outcome = switch(&r, &edits);
    if outcome.is_err() {
        let _ = match &previous_config {
            Some(bytes) => crate::trust::write_with_mode(config_path, bytes, 0o640),
            None => std::fs::remove_file(config_path).map_err(Into::into),
        };
    }
    let (store, kept) = outcome?;
    say!("adopted {} for app {}: nginx proxies to cutover's upstream now", r.live.release, r.name);
    say!("live:     {}", describe(&r.live));
    if let Some(p) = &r.previous {
        say!("previous: {} (idle; the first deploy stops it to use its port, as switch.sh would)", describe(p));
    }
    say!("wrote {} and {}", config_path.display(), upstream_file.display());
    for e in &edits {
        say!("changed {} (the original is kept in {})", e.file.display(), kept.display());
    }
    say!("state:    {}", store.dir.display());
    say!("next: read app.start in {} (it came from the running process's command line),", config_path.display());
    say!("      retire switch.sh and health.sh (they would rewrite nginx's files behind cutover's back),");
    say!("      cutover check, then cutover deploy --release NAME");
    Ok(Code::Ok)
}

fn describe(d: &Deployment) -> String {
    let i: Vec<String> = d.instances.iter().map(|i| format!("port {} (pid {})", i.port, i.pid.unwrap_or(0))).collect();
    format!("{} on {}", d.release, i.join(", "))
}

/// The nginx the operator pointed at (`--nginx-prefix`, `--nginx-conf`), as a config section.
fn nginx_section(args: &InitArgs, upstream_file: PathBuf) -> config::Nginx {
    let o = &args.adopt_opts;
    let prefix = o.nginx_prefix.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let conf = o.nginx_conf.as_ref().map(|c| match &prefix {
        Some(pr) if c.is_relative() => pr.join(c),
        _ => std::path::absolute(c).unwrap_or_else(|_| c.clone()),
    });
    config::Nginx {
        upstream_file,
        binary: "nginx".into(),
        prefix,
        conf,
        pid_file: None,
        reload: config::Reload::Signal,
        template: None,
        confirm_url: None,
        confirm_timeout: config::Positive(Duration::from_secs(5)),
        run_as_root: None,
    }
}

fn resolve(config_path: &Path, args: &InitArgs) -> Result<Resolved> {
    let o = &args.adopt_opts;
    let probe_nginx = nginx_section(args, PathBuf::new());
    let dump = RealNginx::new(&probe_nginx, None).dump().context("could not read nginx's config")?;
    let conf = Conf::parse(&dump);
    let (found, skipped) = find::candidates(&conf);
    let cand = find::pick(found, &skipped, o.proxy.as_deref())?;
    let mut notes = Vec::new();
    let name: Name = match &cand.via {
        Via::Upstream { name, .. } => {
            let n: Name = name.parse().map_err(|e| {
                exit::refused(format!(
                    "upstream {name} becomes cutover's upstream and names the app, but {e}; rename the upstream in \
                     nginx's config first"
                ))
            })?;
            if args.name != "app" && args.name != n.as_str() {
                notes
                    .push(format!("the app is named {n}, after the upstream it takes over (not --name {})", args.name));
            }
            n
        }
        _ => args.name.parse().map_err(exit::usage)?,
    };
    if let Some(u) =
        conf.upstreams().iter().find(|u| u.arg(0) == Some(name.as_str()) && !matches!(cand.via, Via::Upstream { .. }))
    {
        return Err(exit::refused(format!(
            "nginx already has an upstream named {name} (at {}): cutover's upstream for app {name} would clash with \
             it; pick another --name",
            u.place()
        )));
    }
    let addr: IpAddr = cand.backends[0].addr;
    let listeners = process::listeners();
    let nginx_pids: Vec<i32> = listeners.values().filter(|p| p.comm == "nginx").map(|p| p.pid).collect();
    let health = |port: u16| {
        let h = config::Health { path: config::HttpPath(o.health_path.clone()), ..Default::default() };
        crate::host::real::probe(&format!("http://{}{}", addr_port(addr, port), o.health_path), &h)
    };
    // The live release: what listens on each port nginx sends requests to now, and answers the health check.
    let mut live_procs: Vec<Proc> = Vec::new();
    for port in cand.live_ports() {
        let Some(p) = listeners.get(&port) else {
            return Err(exit::refused(format!(
                "nginx proxies to {} ({}), but nothing listens there: start the app, then adopt it",
                addr_port(addr, port),
                cand.describe()
            )));
        };
        let probe = health(port);
        if !probe.passed() {
            return Err(exit::refused(format!(
                "the app on {} (pid {}, {}) does not pass the health check: {}; pass the path it answers 200 on \
                 with --health-path (the switch.sh pattern's health.sh uses /profile)",
                addr_port(addr, port),
                p.pid,
                p.comm,
                probe.reason()
            )));
        }
        live_procs.push(p.clone());
    }
    let live_ports = cand.live_ports();
    let release: Release =
        o.release.clone().unwrap_or_else(|| format!("adopted-{}", live_ports[0])).parse().map_err(exit::usage)?;
    // Idle copies of the app: the upstream's backup/down servers, and processes of the same executable run from
    // the same directory, listening on other ports (the switch.sh pattern leaves the previous copy running).
    let mut idle: Vec<Proc> = Vec::new();
    let same = |p: &Proc| live_procs.iter().any(|l| l.same_app(p));
    for p in listeners.values() {
        let backend_idle = cand.backends.iter().any(|b| b.idle && b.port == p.port);
        if live_ports.contains(&p.port) || nginx_pids.contains(&p.pid) || !(backend_idle || same(p)) {
            continue;
        }
        if o.pool.is_empty() || o.pool.contains(&p.port) {
            idle.push(p.clone());
        }
    }
    let mut pool: Vec<u16> = if o.pool.is_empty() {
        let mut v = live_ports.clone();
        v.extend(idle.iter().map(|p| p.port));
        v.extend(cand.backends.iter().filter(|b| b.idle).map(|b| b.port));
        v
    } else {
        for p in &live_ports {
            if !o.pool.contains(p) {
                return Err(exit::usage(format!("--pool must include the live port {p}")));
            }
        }
        o.pool.clone()
    };
    pool.dedup();
    let mut next = pool.iter().copied().max().unwrap_or(8080);
    while pool.len() < 2 * live_ports.len() {
        next = next.checked_add(1).ok_or_else(|| exit::usage("no port above the pool to add; pass --pool"))?;
        if hproc::port_free(SocketAddr::new(addr, next)) {
            notes.push(format!("added port {next} to the pool: a deploy starts the new release beside the live one"));
            pool.push(next);
        }
    }
    let healthy_idle: Vec<Proc> = idle.iter().filter(|p| health(p.port).passed()).cloned().collect();
    for p in idle.iter().filter(|p| !healthy_idle.contains(p)) {
        notes.push(format!(
            "port {} is held by pid {} ({}), which does not pass the health check: not recorded; a deploy cannot use \
             that port until it is free",
            p.port, p.pid, p.comm
        ));
    }
    let instance = |r: &str, p: &Proc| Instance {
        release: r.to_string(),
        port: p.port,
        pid: Some(p.pid),
        start_ticks: Some(p.start_ticks),
        marker: None,
        unit: None,
        started_at: started_at(p.start_ticks),
        log: None,
    };
    let since = crate::util::now_rfc3339();
    let live = Deployment {
        release: release.to_string(),
        instances: live_procs.iter().map(|p| instance(release.as_str(), p)).collect(),
        since: since.clone(),
    };
    let previous = healthy_idle.first().map(|first| {
        let r = format!("adopted-{}", first.port);
        Deployment { release: r.clone(), instances: healthy_idle.iter().map(|p| instance(&r, p)).collect(), since }
    });
    let main_conf = conf.main_file.clone().unwrap_or_else(|| PathBuf::from("/etc/nginx/nginx.conf"));
    let upstream_file = match &o.upstream_file {
        Some(f) => std::path::absolute(f).unwrap_or_else(|_| f.clone()),
        None => {
            main_conf.parent().unwrap_or(Path::new("/etc/nginx")).join("cutover").join(format!("{name}.upstream.conf"))
        }
    };
    let up_text = upstream_file.display().to_string();
    if up_text.chars().any(|c| c.is_whitespace() || matches!(c, ';' | '"' | '\'' | '{' | '}' | '#')) {
        return Err(exit::usage(format!(
            "--upstream-file {up_text}: nginx include paths here cannot hold spaces or ;\"'{{}}#"
        )));
    }
    let first = &live_procs[0];
    let (start, port_in_command) = process::start_command(&first.argv, first.port, o.release.as_deref());
    let me = nix::unistd::geteuid().as_raw();
    let nginx = nginx_section(args, upstream_file.clone());
    let adopted = Adopted {
        name: name.to_string(),
        start,
        port_in_command,
        from_pid: first.pid,
        from_command: first.command(),
        workdir: first.cwd.clone(),
        runs_as: first.uid.filter(|u| *u != me).map(crate::trust::user_name),
        pool,
        bind: addr.to_string(),
        health_path: o.health_path.clone(),
        upstream_file,
        nginx_prefix: nginx.prefix.clone(),
        nginx_conf: nginx.conf.clone(),
        state_dir: o
            .state_dir
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
            .unwrap_or_else(|| PathBuf::from("/var/lib/cutover")),
        via: cand.describe(),
        release: release.to_string(),
        at: crate::util::now_rfc3339(),
    };
    let config_text = config_text::render(&adopted);
    let config = Config::parse(&config_text, config_path)?;
    if !port_in_command {
        notes.push(format!(
            "the live process's command line does not name its port {}: app.start must make a release listen on \
             {{{{port}}}} before the first deploy (see the CHECK THIS comment in {})",
            first.port,
            config_path.display()
        ));
    }
    Ok(Resolved { cand, name, live, previous, config_text, config, notes })
}

/// The wall-clock time a process started (RFC 3339), from its start in clock ticks since boot.
fn started_at(ticks: u64) -> String {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100);
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let ago = (up - ticks as f64 / hz as f64).max(0.0);
    let at = std::time::SystemTime::now() - Duration::from_secs_f64(ago);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The files the edits touch, as they are on disk now.
fn read_files(c: &Candidate) -> Result<BTreeMap<PathBuf, String>> {
    let mut files: Vec<&Path> = c.sites.iter().map(|s| s.file.as_path()).collect();
    match &c.via {
        Via::Variable { set, .. } => files.push(&set.file),
        Via::Upstream { block, .. } => files.push(&block.file),
        Via::Direct { proxy_passes } => files.extend(proxy_passes.iter().map(|p| p.file.as_path())),
    }
    let mut out = BTreeMap::new();
    for f in files {
        if !out.contains_key(f) {
            let text = std::fs::read_to_string(f).with_context(|| format!("could not read {}", f.display()))?;
            out.insert(f.to_path_buf(), text);
        }
    }
    Ok(out)
}

/// Make nginx proxy to cutover's upstream and record the adoption. Returns the app's store and where the
/// original files are kept.
fn switch(r: &Resolved, edits: &[FileEdit]) -> Result<(Store, PathBuf)> {
    let cfg = &r.config;
    let host = RealHost::new(cfg);
    let store = Store::new(cfg.state_dir());
    store.ensure()?;
    let (_lock, _) = lock::acquire(&store.lock_path(), Scope::App, None)?;
    let mut eng = Engine::new(cfg, &host, store.clone(), Progress::new())?;
    let s = eng.state();
    if s.live.is_some() || s.in_progress.is_some() {
        return Err(exit::refused(format!(
            "{} already records {} for app {}: adoption starts a record, it never rewrites one (see `cutover status`)",
            store.state_path().display(),
            s.live.as_ref().map(|d| format!("release {} as live", d.release)).unwrap_or_else(|| "an operation".into()),
            r.name
        )));
    }
    let change = Change::Adopt { live: r.live.clone(), previous: r.previous.clone() };
    let (_, text) = eng.candidate(&change)?;
    let kept = store.dir.join("before-adopt");
    let meta = OpMeta { kind: OpKind::Adopt, release: r.live.release.clone(), strategy: None };
    eng.run(&meta, |e| {
        rewrite(e, edits, &text)?;
        e.journal.adopt(&change, text.clone())?;
        Ok(Done::with((), Moved::Nothing, Outcome::Ok))
    })?;
    if let Err(err) = keep_originals(&kept, edits) {
        crate::output::err_line(&format!("cutover: warning: could not keep the original files: {err:#}"));
    }
    Ok((store, kept))
}

/// Write the upstream file and the edited files, nginx -t, reload, confirm; on any failure put every file back
/// (reloading again when the reload had been sent).
fn rewrite(eng: &mut Engine, edits: &[FileEdit], upstream_text: &str) -> Result<()> {
    let cfg = eng.cfg;
    let nginx = eng.host.nginx();
    let master = nginx.master()?;
    let (_nginx_lock, _) = lock::acquire(&cfg.state_base().join("nginx.lock"), Scope::Nginx, None)?;
    let up = &cfg.nginx.upstream_file;
    let up_dir = up.parent().unwrap_or(Path::new("/"));
    if !up_dir.is_dir() {
        std::fs::create_dir_all(up_dir).with_context(|| format!("could not create {}", up_dir.display()))?;
    }
    let upstream_before = nginx.read_upstream()?;
    let restore = |eng: &Engine| {
        let mut problems = Vec::new();
        for e in edits {
            if let Err(err) = crate::util::write_atomic(&e.file, e.before.as_bytes(), 0o644) {
                problems.push(format!("{}: {err:#}", e.file.display()));
            }
        }
        if let Err(err) = eng.host.nginx().restore_upstream(upstream_before.as_deref()) {
            problems.push(format!("{err:#}"));
        }
        if problems.is_empty() {
            eng.progress.note("restored every file byte for byte");
        } else {
            eng.progress.warn(format!("could not restore: {}", problems.join("; ")));
        }
    };
    let t = Instant::now();
    let written = nginx
        .write_upstream(upstream_text)
        .and_then(|()| edits.iter().try_for_each(|e| crate::util::write_atomic(&e.file, e.after.as_bytes(), 0o644)));
    if let Err(err) = written {
        restore(eng);
        return Err(err);
    }
    let files: Vec<String> = edits.iter().map(|e| e.file.display().to_string()).collect();
    eng.progress.step("write", t.elapsed(), format!("{} and {}", up.display(), files.join(", ")));
    let t = Instant::now();
    if let Err(err) = nginx.test() {
        eng.progress.step("validate", t.elapsed(), "nginx -t rejected it");
        restore(eng);
        return Err(err);
    }
    eng.progress.step("validate", t.elapsed(), "nginx -t ok");
    let t = Instant::now();
    let old = nginx.workers(&master);
    let reloaded = nginx.reload(&master).and_then(|()| nginx.confirm(&master, &old, None));
    if let Err(err) = reloaded {
        eng.progress.step("reload", t.elapsed(), "not confirmed");
        restore(eng);
        let again = nginx.workers(&master);
        if let Err(e2) =
            nginx.test().and_then(|()| nginx.reload(&master)).and_then(|()| nginx.confirm(&master, &again, None))
        {
            eng.progress.warn(format!("the reload that restores the previous files failed too: {e2:#}"));
        }
        return Err(err);
    }
    eng.progress.step("reload", t.elapsed(), format!("nginx master {} reloaded (new workers up)", master.pid));
    let drained = nginx.wait_gone(&master, &old, cfg.deploy.drain_timeout.0);
    if !drained {
        eng.progress.warn("nginx's old workers still run after deploy.drain_timeout");
    }
    Ok(())
}

/// Copies of the files as they were, in the app's state directory: `before-adopt/<path with / as %>`.
fn keep_originals(dir: &Path, edits: &[FileEdit]) -> Result<()> {
    crate::util::private_dir(dir)?;
    for e in edits {
        let name = e.file.display().to_string().replace('/', "%");
        crate::util::write_atomic(&dir.join(name), e.before.as_bytes(), 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_is_put_on_the_wall_clock() {
        let me = hproc::stat(std::process::id() as i32).unwrap();
        let at = humantime::parse_rfc3339_weak(&started_at(me.start_ticks)).unwrap();
        let age = std::time::SystemTime::now().duration_since(at).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
}

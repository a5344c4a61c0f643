//! `cutover up` and `cutover stop`: make the recorded state true on the host, or take the app offline.
//!
//! `up` is what runs at boot (or after a crash): every instance state says serves (live, canary, rolling) that
//! does not run is started again on its own port (on another idle pool port when something else took it),
//! health-checked, and swapped in with [`Change::Replace`]; the upstream is rendered and nginx reloaded (also
//! when the ports stayed the same: nginx remembers the dead servers as failed for `fail_timeout`, 10 s by
//! default, and answers 502 for all of them meanwhile; new workers start with a clean slate). Instances
//! state keeps idle (a previous release, backups) that died are recorded as stopped: `rollback` starts them
//! again when it needs them. When everything already runs and the file is right, nothing happens at all: no
//! operation, no reload, no history event.

use std::net::SocketAddr;

use anyhow::Result;
use serde::Serialize;

use crate::engine::hooks::HookEnv;
use crate::engine::Engine;
use crate::journal::{Change, Instance, OpKind};

/// What `up` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Revived {
    /// The dead instances found, and the fresh ones that replaced them.
    pub dead: Vec<Instance>,
    pub started: Vec<Instance>,
    /// Idle instances (previous, backup) that died, now recorded as stopped.
    pub forgotten: Vec<Instance>,
    /// Whether nginx was reloaded (the upstream file changed).
    pub reloaded: bool,
}

impl Revived {
    pub fn nothing(&self) -> bool {
        self.dead.is_empty() && self.forgotten.is_empty() && !self.reloaded
    }
}

/// What `up` would have to do: serving instances that do not run, idle ones that died, and whether the upstream
/// file must be written.
pub struct Needed {
    pub dead: Vec<Instance>,
    pub idle_dead: Vec<Instance>,
    pub rewrite: bool,
}

/// Look, without changing anything.
pub fn needed(eng: &Engine) -> Result<Needed> {
    let s = eng.state();
    let rt = eng.host.runtime();
    let serving =
        s.live.iter().chain(s.canary.iter().map(|c| &c.deployment)).chain(s.rolling.iter().map(|r| &r.deployment));
    let mut dead = Vec::new();
    for d in serving {
        for i in &d.instances {
            let runs = i.recorded_running() && matches!(rt.status(i), crate::host::Status::Running);
            if !runs {
                dead.push(i.clone());
            }
        }
    }
    let idle_dead = s
        .owned()
        .into_iter()
        .filter(|(what, _)| *what == "previous" || *what == "backup")
        .map(|(_, i)| i.clone())
        .filter(|i| !dead.iter().any(|d| d.same(i)) && !rt.status(i).running())
        .collect();
    let text = eng.renderer.render(eng.cfg, s)?;
    let disk = eng.host.nginx().read_upstream()?;
    let rewrite = disk.as_deref() != Some(text.as_str()) || s.upstream.as_deref() != Some(text.as_str());
    Ok(Needed { dead, idle_dead, rewrite })
}

/// Bring what state says serves back. `Ok` with [`Revived::nothing`] when all was well.
pub fn up(eng: &mut Engine) -> Result<Revived> {
    let need = needed(eng)?;
    let mut out = Revived::default();
    if !need.idle_dead.is_empty() {
        eng.journal.stopped(&need.idle_dead)?;
        out.forgotten = need.idle_dead.clone();
    }
    if need.dead.is_empty() && !need.rewrite {
        return Ok(out);
    }
    let release = eng.live_release().unwrap_or_default();
    eng.begin(OpKind::Up, &release, None)?;
    let result = revive(eng, &need, &mut out);
    if let Err(e) = &result {
        crate::strategy::blue_green::end_failed(eng, e)?;
    }
    result.map(|()| out)
}

fn revive(eng: &mut Engine, need: &Needed, out: &mut Revived) -> Result<()> {
    // Clear what is left of the dead instances (a unit in its restart loop, a child that outlived its group).
    let leftovers: Vec<Instance> = need.dead.iter().filter(|i| i.recorded_running()).cloned().collect();
    for i in &leftovers {
        eng.host.runtime().stop(i, eng.cfg.app.stop_timeout.0);
    }
    let mut started = Vec::new();
    let mut releases: Vec<String> = Vec::new();
    for i in &need.dead {
        if !releases.contains(&i.release) {
            releases.push(i.release.clone());
        }
    }
    for release in &releases {
        let ports = ports_for(eng, need, release);
        let env = HookEnv {
            release: release.clone(),
            previous: eng.live_release().unwrap_or_default(),
            kind: OpKind::Up,
            strategy: None,
            ports: ports.clone(),
            error: None,
        };
        match eng.launch(release, &ports, &env) {
            Ok(l) => started.extend(l.instances),
            Err(e) => {
                eng.undo_launch(&started);
                return Err(e);
            }
        }
    }
    let change = Change::Replace { old: need.dead.clone(), new: started.clone() };
    if eng.host.nginx().master().is_err() {
        // At boot nginx may have failed, or start after us: bring the app back anyway, so that nginx serves it
        // the moment it runs. The upstream file is what nginx will read then.
        return match without_nginx(eng, change) {
            Ok(()) => {
                out.dead = need.dead.clone();
                out.started = started;
                eng.journal.done()
            }
            Err(e) => {
                eng.undo_launch(&started);
                Err(e)
            }
        };
    }
    let applied = match eng.apply(change) {
        Ok(a) => a,
        Err(e) => {
            if !crate::engine::flip::is_unsettled(&e) {
                eng.undo_launch(&started);
            }
            return Err(e);
        }
    };
    // Requests the old workers still hold would meet the servers they remember as failed.
    eng.drain(&applied, "drain", "");
    out.reloaded = applied.reloaded;
    out.dead = need.dead.clone();
    out.started = started;
    eng.journal.done()?;
    Ok(())
}

/// Record `change` while nginx is not running: the upstream file is written (validated with `nginx -t`, put back
/// when rejected) only when it must change, and nginx reads it when it starts.
fn without_nginx(eng: &mut Engine, change: Change) -> Result<()> {
    let (_, text) = eng.candidate(&change)?;
    let nginx = eng.host.nginx();
    let before = nginx.read_upstream()?;
    eng.progress.warn(
        "nginx is not running: the app is back on its ports and nginx will serve it when it starts (start nginx; \
         `cutover status` shows it)",
    );
    if before.as_deref() == Some(text.as_str()) {
        return eng.journal.commit(&change, None);
    }
    eng.journal.touch_upstream()?;
    nginx.write_upstream(&text)?;
    if let Err(e) = nginx.test() {
        nginx.restore_upstream(before.as_deref())?;
        return Err(e);
    }
    eng.journal.commit(&change, Some(text))
}

/// Ports for `release`'s dead instances: each its own when it is free, else another idle pool port.
fn ports_for(eng: &Engine, need: &Needed, release: &str) -> Vec<u16> {
    let bind = eng.cfg.ports.bind.0;
    let owned: Vec<u16> = eng.state().owned().iter().map(|(_, i)| i.port).collect();
    let mut ports: Vec<u16> = Vec::new();
    for i in need.dead.iter().filter(|i| i.release == release) {
        let port = if eng.host.port_free(SocketAddr::new(bind, i.port)) && !ports.contains(&i.port) {
            Some(i.port)
        } else {
            let alt = eng.cfg.pool().into_iter().find(|p| {
                !ports.contains(p)
                    && !owned.contains(p)
                    && !need.dead.iter().any(|d| d.port == *p)
                    && eng.host.port_free(SocketAddr::new(bind, *p))
            });
            if let Some(p) = alt {
                let who = eng
                    .host
                    .who_listens(i.port)
                    .map(|(pid, c)| format!("pid {pid} ({c})"))
                    .unwrap_or("another program".into());
                eng.progress.warn(format!("port {} is taken by {who}; starting {release} on port {p} instead", i.port));
            }
            alt
        };
        ports.extend(port.or(Some(i.port)));
    }
    ports
}

/// `cutover stop`: the live servers listed `down`, nginx reloaded, its old workers waited for, then every
/// instance stopped. Returns what was stopped.
pub fn stop(eng: &mut Engine) -> Result<Vec<Instance>> {
    let release = eng.live_release().unwrap_or_default();
    eng.begin(OpKind::Stop, &release, None)?;
    let r = (|| {
        let applied = eng.apply(Change::Offline)?;
        eng.drain(&applied, "drain", "; stopping the app anyway");
        let to_stop = eng.to_stop();
        let stopped = eng.stop(&to_stop, "stop")?;
        eng.journal.done()?;
        Ok(stopped)
    })();
    if let Err(e) = &r {
        crate::strategy::blue_green::end_failed(eng, e)?;
    }
    r
}

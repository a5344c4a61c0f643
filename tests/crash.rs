//! Crash points, with the fake host: every strategy is run once to count its side effects (starts, stops, writes
//! of the upstream file, reloads, journal writes, history lines), then once more for each of them with the run
//! killed right there, as `kill -9` would. The next command (`recover`, which every command runs first) must
//! leave the host in a state that is true and safe:
//!
//! - nothing was ever stopped while a running nginx worker still routed to it (checked at every stop);
//! - nginx serves exactly the upstream state records, and routes only to instances that run;
//! - nothing cutover started runs unrecorded, and no operation is left open;
//! - a previous release kept running (`deploy.keep_previous`) still runs;
//! - a rolling deploy left between batches has lost no slot and is recorded paused; resolved by a rollback or by
//!   deploying its release again, the whole fleet runs one release;
//! - a second recovery changes nothing, and the next deploy works.
//!
//! End-to-end kill tests on a real nginx stay for the few points that matter most (tests/blue_green.rs).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use anyhow::Result;
use cutover::config::Config;
use cutover::engine::{Done, Engine, OpMeta};
use cutover::host::fake::{listed_ports, Crash, FakeHost};
use cutover::journal::{OpKind, State, Store};
use cutover::lock::Lock;
use cutover::output::Progress;
use cutover::plan::Request;
use cutover::strategy::{self, canary, rolling, Strategy};

/// A fake host and the config of one app on it.
struct Rig {
    _dir: tempfile::TempDir,
    cfg: Config,
    host: FakeHost,
}

fn quiet_crashes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Crash>().is_none() {
                default(info);
            }
        }));
    });
}

impl Rig {
    fn new(pool: usize, keep_previous: bool, extra: &str) -> Rig {
        Rig::with(pool, keep_previous, 1, "blue-green", extra)
    }

    fn with(pool: usize, keep_previous: bool, instances: u32, strategy: &str, extra: &str) -> Rig {
        quiet_crashes();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<String> = (0..pool).map(|k| (9001 + k).to_string()).collect();
        let text = format!(
            r#"[app]
name = "shop"
start = "app --port {{{{port}}}}"
stop_timeout = "1s"

[ports]
pool = [{ports}]

[health]
interval = "100ms"
deadline = "5s"

[nginx]
upstream_file = "shop.upstream.conf"

[deploy]
strategy = "{strategy}"
instances = {instances}
keep_previous = {keep_previous}
state_dir = "state"
verify = "1s"

[runtime]
log_dir = "logs"
{extra}"#,
            ports = ports.join(", ")
        );
        let cfg = Config::parse(&text, &dir.path().join("cutover.toml")).unwrap();
        let host = FakeHost::new();
        host.world.borrow_mut().access_log = Some(dir.path().join("access.log"));
        Rig { _dir: dir, cfg, host }
    }

    fn store(&self) -> Store {
        Store::new(self.cfg.state_dir())
    }

    /// What every command starts with: the app's lock (a real flock in the temp dir) and recovery.
    fn open(&self, by: &str) -> Result<(Lock, Engine<'_>)> {
        Engine::open(&self.cfg, &self.host, self.store(), None, false, by, Progress::quiet())
    }

    fn deploy(&self, release: &str, strategy: Strategy) -> Result<()> {
        let (_lock, mut eng) = self.open("deploy")?;
        let req = Request { kind: OpKind::Deploy, release: release.parse().unwrap(), strategy, force: false };
        let plan = strategy::plan_for(&eng, &req)?;
        strategy::execute(&mut eng, &plan).map(|_| ())
    }

    fn rollback(&self) -> Result<()> {
        let (_lock, mut eng) = self.open("rollback")?;
        if eng.state().canary.is_some() {
            return canary::abort_op(&mut eng, OpKind::Rollback).map(|_| ());
        }
        let req = strategy::rollback_request(&eng, None, false)?;
        let plan = strategy::plan_for(&eng, &req)?;
        strategy::execute(&mut eng, &plan).map(|_| ())
    }

    fn promote(&self) -> Result<()> {
        let (_lock, mut eng) = self.open("promote")?;
        canary::promote(&mut eng).map(|_| ())
    }

    fn abort(&self) -> Result<()> {
        let (_lock, mut eng) = self.open("abort")?;
        canary::abort_op(&mut eng, OpKind::Abort).map(|_| ())
    }

    /// `cutover rollback` (and `cutover recover`) while a rolling deploy is stopped part-way.
    fn roll_back(&self) -> Result<()> {
        let (_lock, mut eng) = self.open("rollback")?;
        let meta = OpMeta { kind: OpKind::Rollback, release: "v1".into(), strategy: Some(Strategy::Rolling) };
        eng.run(&meta, |e| rolling::roll_back(e).map(Done::back)).map(|_| ())
    }

    fn recover(&self) -> bool {
        self.open("recover").expect("recovery failed").1.recovered
    }

    fn state(&self) -> State {
        self.store().load("shop").unwrap()
    }

    fn effects(&self) -> usize {
        self.host.world.borrow().effects
    }

    /// The safety rules and the truth of state, after a recovery. `reclaimed`: the killed run had already stopped
    /// the kept previous release itself (to free its port), so it cannot be running.
    fn check(&self, what: &str, reclaimed: bool) {
        let w = self.host.world.borrow();
        assert!(w.violations.is_empty(), "{what}: {:?}", w.violations);
        drop(w);
        let s = self.state();
        assert!(s.in_progress.is_none(), "{what}: an operation is still recorded: {:?}", s.in_progress);
        let w = self.host.world.borrow();
        let serving = w.current.as_ref().map(|g| g.text.clone());
        assert_eq!(serving, w.disk, "{what}: nginx serves what is on disk");
        assert_eq!(s.upstream, w.disk, "{what}: state records what nginx serves");
        let alive: Vec<(u16, String)> =
            w.procs.values().filter(|p| p.alive).map(|p| (p.port, p.release.clone())).collect();
        // All at once: nginx itself answers the maintenance page on its port while no instance runs.
        let maintenance = s.rolling.as_ref().and_then(|r| r.maintenance);
        for port in serving.as_deref().map(listed_ports).unwrap_or_default() {
            if Some(port) == maintenance {
                continue;
            }
            assert!(alive.iter().any(|(p, _)| *p == port), "{what}: nginx lists port {port}, where nothing runs");
        }
        let owned: Vec<(u16, String)> = s.owned().into_iter().map(|(_, i)| (i.port, i.release.clone())).collect();
        for a in &alive {
            assert!(owned.contains(a), "{what}: {a:?} runs but state does not record it: {owned:?}");
        }
        for o in &owned {
            assert!(alive.contains(o), "{what}: state records {o:?} as running, but it does not run");
        }
        // A rolling deploy left between batches: no slot lost (each of the N is live, rolled out, or taken out
        // and recorded to be refilled), and recorded as paused for `deploy`, `rollback` or `recover` to resolve.
        if let Some(r) = &s.rolling {
            let live = s.live.as_ref().map(|l| l.instances.len()).unwrap_or(0);
            let n = live + r.deployment.instances.len() + r.down.len();
            assert_eq!(n, self.cfg.deploy.instances.0 as usize, "{what}: the fleet lost a slot: {r:?}");
            assert!(r.paused.is_some(), "{what}: a rolling deploy nobody drives is not recorded paused");
        }
        if self.cfg.deploy.keep_previous && !reclaimed {
            if let (Some(p), Some(l)) = (&s.previous, &s.live) {
                if p.release != l.release {
                    assert!(!p.running().is_empty(), "{what}: the kept previous release {} was stopped", p.release);
                }
            }
        }
    }
}

/// Run `op` once to count its side effects, then once per side effect with a crash there; recover, check.
/// Returns how many crash points there were.
fn every_crash_point(
    name: &str,
    rig: impl Fn() -> Rig,
    setup: impl Fn(&Rig),
    op: impl Fn(&Rig) -> Result<()>,
    ok: bool,
) -> usize {
    let r = rig();
    setup(&r);
    let before = r.effects();
    let result = op(&r);
    assert_eq!(result.is_ok(), ok, "{name}: uninterrupted run: {result:?}");
    let n = r.effects() - before;
    r.check(&format!("{name}, uninterrupted"), false);
    assert!(n > 3, "{name}: only {n} side effects?");
    for k in 1..=n {
        let r = rig();
        setup(&r);
        let at = r.effects() + k;
        r.host.world.borrow_mut().crash_at = Some(at);
        let what = {
            let out = catch_unwind(AssertUnwindSafe(|| op(&r)));
            let crashed = match &out {
                Err(p) => p.downcast_ref::<Crash>().map(|c| c.0.clone()),
                Ok(_) => None,
            };
            if let (Err(p), None) = (&out, &crashed) {
                std::panic::resume_unwind(Box::new(format!("{name}: a real panic: {:?}", p.downcast_ref::<String>())));
            }
            crashed.unwrap_or_else(|| panic!("{name}: crash point {k} of {n} was never reached"))
        };
        r.host.world.borrow_mut().crash_at = None;
        let label = format!("{name}, killed at side effect {k} of {n} ({what})");
        let prev = r.state().previous.map(|p| format!("stop {} on ", p.release));
        let logged = r.host.world.borrow().effect_log.len();
        // The crash happens before the side effect it is named for: a stop logged earlier did happen.
        let reclaimed = prev.as_ref().is_some_and(|p| {
            r.host.world.borrow().effect_log[..logged - 1].iter().rev().take(k - 1).any(|e| e.starts_with(p.as_str()))
        });
        r.recover();
        let recovery = r.host.world.borrow().effect_log[logged..].to_vec();
        if let (true, Some(p)) = (r.cfg.deploy.keep_previous, &prev) {
            assert!(
                !recovery.iter().any(|e| e.starts_with(p.as_str())),
                "{label}: recovery stopped the kept release: {recovery:?}"
            );
        }
        r.check(&label, reclaimed);
        let again = r.state();
        assert!(!r.recover(), "{label}: a second recovery found something to do");
        assert_eq!(r.state(), again, "{label}: a second recovery changed state");
        // The host is usable: a deploy of a new release goes through.
        r.host.world.borrow_mut().unhealthy.clear();
        r.host.world.borrow_mut().reject_containing = None;
        r.host.world.borrow_mut().dies_after_probes.clear();
        if r.state().canary.is_some() {
            r.abort().unwrap_or_else(|e| panic!("{label}: abort after recovery: {e:#}"));
        }
        if let Some(rolled) = r.state().rolling {
            // A rolling deploy left between batches is resolved first: every other crash point by a rollback
            // (what `recover` does), the others by deploying the same release again (a resume). Either way the
            // whole fleet runs one release after.
            let (how, release) = if k % 2 == 1 {
                (r.roll_back(), r.state().live.map(|l| l.release).unwrap_or_default())
            } else {
                (r.deploy(&rolled.deployment.release, rolled.strategy), rolled.deployment.release.clone())
            };
            how.unwrap_or_else(|e| panic!("{label}: resolving the rolling deploy: {e:#}"));
            r.check(&format!("{label}, then resolved"), true);
            let s = r.state();
            let live = s.live.expect("live after a rolling deploy");
            assert!(s.rolling.is_none(), "{label}: still rolling after it was resolved");
            assert_eq!(live.release, release, "{label}");
            assert_eq!(live.running().len(), r.cfg.deploy.instances.0 as usize, "{label}: not a whole fleet");
        }
        let strategy = r.cfg.deploy.strategy;
        r.deploy("v9", strategy).unwrap_or_else(|e| panic!("{label}: deploy after recovery: {e:#}"));
        r.check(&format!("{label}, then a deploy"), true);
    }
    println!("crash points: {name}: {n}, all recovered");
    n
}

fn bg(keep: bool) -> impl Fn() -> Rig {
    move || Rig::new(4, keep, "")
}

#[test]
fn blue_green_first_deploy() {
    every_crash_point("blue-green, first deploy", bg(false), |_| {}, |r| r.deploy("v1", Strategy::BlueGreen), true);
}

#[test]
fn blue_green_deploy_over_a_live_release() {
    let setup = |r: &Rig| r.deploy("v1", Strategy::BlueGreen).unwrap();
    every_crash_point("blue-green", bg(false), setup, |r| r.deploy("v2", Strategy::BlueGreen), true);
}

#[test]
fn blue_green_with_keep_previous_and_a_full_pool() {
    // Two ports: v1 kept idle holds the only free one, so deploying v3 reclaims it first.
    let rig = || Rig::new(2, true, "");
    let setup = |r: &Rig| {
        r.deploy("v1", Strategy::BlueGreen).unwrap();
        r.deploy("v2", Strategy::BlueGreen).unwrap();
    };
    every_crash_point("blue-green, keep_previous, reclaim", rig, setup, |r| r.deploy("v3", Strategy::BlueGreen), true);
}

#[test]
fn redeploy_of_the_live_release() {
    let setup = |r: &Rig| r.deploy("v1", Strategy::BlueGreen).unwrap();
    every_crash_point("redeploy (restart)", bg(true), setup, |r| r.deploy("v1", Strategy::BlueGreen), true);
}

#[test]
fn rollback_to_a_kept_previous_release_and_by_restart() {
    let setup = |r: &Rig| {
        r.deploy("v1", Strategy::BlueGreen).unwrap();
        r.deploy("v2", Strategy::BlueGreen).unwrap();
    };
    every_crash_point("rollback, flip to the kept release", bg(true), setup, |r| r.rollback(), true);
    every_crash_point("rollback, restart", bg(false), setup, |r| r.rollback(), true);
}

#[test]
fn failed_deploys_undo_at_every_point() {
    let setup = |r: &Rig| r.deploy("v1", Strategy::BlueGreen).unwrap();
    let unhealthy = |r: &Rig| {
        r.host.world.borrow_mut().unhealthy.push("v2".into());
        r.deploy("v2", Strategy::BlueGreen)
    };
    every_crash_point("unhealthy release", bg(false), setup, unhealthy, false);
    let rejected = |r: &Rig| {
        r.host.world.borrow_mut().reject_containing = Some("# v2".into());
        r.deploy("v2", Strategy::BlueGreen)
    };
    every_crash_point("nginx rejects", bg(false), setup, rejected, false);
    let dies = |r: &Rig| {
        // Healthy for its launch probes, then dead in the verify window: a flip back.
        r.host.world.borrow_mut().dies_after_probes.insert("v2".into(), 4);
        r.deploy("v2", Strategy::BlueGreen)
    };
    every_crash_point("dies after the switch", bg(false), setup, dies, false);
}

#[test]
fn manual_canary_start_promote_and_abort() {
    let rig = || Rig::new(4, false, "[canary]\nsteps = [10, 50, 100]\ninterval = \"manual\"\n");
    let live = |r: &Rig| r.deploy("v1", Strategy::BlueGreen).unwrap();
    every_crash_point("canary, first step", rig, live, |r| r.deploy("v2", Strategy::Canary), true);
    let at10 = |r: &Rig| {
        live(r);
        r.deploy("v2", Strategy::Canary).unwrap();
    };
    every_crash_point("canary, promote 10 -> 50", rig, at10, |r| r.promote(), true);
    every_crash_point("canary, abort", rig, at10, |r| r.abort(), true);
    let at50 = |r: &Rig| {
        at10(r);
        r.promote().unwrap();
    };
    every_crash_point("canary, promote to live", rig, at50, |r| r.promote(), true);
}

#[test]
fn automatic_canary_to_live() {
    let rig = || {
        Rig::new(
            4,
            true,
            "[canary]\nsteps = [10, 50, 100]\ninterval = \"1s\"\nmin_requests = 5\naccess_log = \"access.log\"\n",
        )
    };
    let live = |r: &Rig| r.deploy("v1", Strategy::BlueGreen).unwrap();
    every_crash_point("automatic canary", rig, live, |r| r.deploy("v2", Strategy::Canary), true);
}

/// Four instances: rolling with surge (5 ports) and without (4), all at once (5: one for the maintenance answer).
fn fleet<'a>(pool: usize, strategy: &'a str, rolling: &'a str) -> impl Fn() -> Rig + 'a {
    move || Rig::with(pool, false, 4, strategy, &format!("\n[rolling]\n{rolling}\n"))
}

#[test]
fn rolling_deploys_with_and_without_surge_and_all_at_once() {
    let live = |r: &Rig| r.deploy("v1", Strategy::Rolling).unwrap();
    every_crash_point(
        "rolling, surge",
        fleet(5, "rolling", "surge = true"),
        live,
        |r| r.deploy("v2", Strategy::Rolling),
        true,
    );
    every_crash_point(
        "rolling, no surge",
        fleet(4, "rolling", "surge = false"),
        live,
        |r| r.deploy("v2", Strategy::Rolling),
        true,
    );
    every_crash_point("all at once", fleet(5, "all-at-once", ""), live, |r| r.deploy("v2", Strategy::AllAtOnce), true);
}

#[test]
fn failed_rolling_batches_roll_back_or_pause_at_every_point() {
    let live = |r: &Rig| r.deploy("v1", Strategy::Rolling).unwrap();
    // nginx rejects the third batch (surge batches start on 9005, 9001, 9002): batches 1 and 2 roll back.
    let third = |r: &Rig| {
        r.host.world.borrow_mut().reject_containing = Some("127.0.0.1:9002;  # v2".into());
        r.deploy("v2", Strategy::Rolling)
    };
    every_crash_point(
        "rolling, batch 3 rejected, rolled back",
        fleet(5, "rolling", "surge = true"),
        live,
        third,
        false,
    );
    let pause = "surge = true\non_failure = \"pause\"";
    every_crash_point("rolling, batch 3 rejected, paused", fleet(5, "rolling", pause), live, third, false);
    let unhealthy = |r: &Rig| {
        r.host.world.borrow_mut().unhealthy.push("v2".into());
        r.deploy("v2", Strategy::AllAtOnce)
    };
    every_crash_point(
        "all at once, unhealthy: the old release restarted",
        fleet(5, "all-at-once", ""),
        live,
        unhealthy,
        false,
    );
    // Paused with three batches in (the fourth rejected), then rolled back.
    let at_pause = |r: &Rig| {
        live(r);
        r.host.world.borrow_mut().reject_containing = Some("127.0.0.1:9003;  # v2".into());
        assert!(r.deploy("v2", Strategy::Rolling).is_err());
        r.host.world.borrow_mut().reject_containing = None;
    };
    every_crash_point(
        "rollback of a paused rolling deploy",
        fleet(5, "rolling", pause),
        at_pause,
        |r| r.roll_back(),
        true,
    );
}

//! Every crash point of a rolling (surge and not), all-at-once and rolling-back run, on the fake host: the run is
//! ended at its N-th side effect as a `kill -9` would, the next command's recovery runs, and the fleet must be
//! consistent (nothing stray, nothing the upstream routes to stopped, no slot lost, nginx serving what state
//! says); then `recover` (a rollback) or a new `deploy` of the same release resolves it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use cutover::config::Config;
use cutover::engine::{Done, Engine, OpMeta};
use cutover::host::fake::{primary_ports, Crash, FakeHost};
use cutover::host::Host;
use cutover::journal::{OpKind, Store};
use cutover::output::Progress;
use cutover::plan::{self, Request, Snapshot};
use cutover::strategy::{blue_green, rolling, Strategy};

const N: usize = 4;

/// A temp dir for one world's state: on tmpfs when there is one, since every journal write is fsynced and a
/// test here makes thousands.
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        _ => tempfile::tempdir().unwrap(),
    }
}

fn config(dir: &Path, pool: usize, strategy: &str, rolling: &str) -> Config {
    let ports: Vec<String> = (0..pool).map(|k| (8081 + k).to_string()).collect();
    let text = format!(
        "[app]\nname = \"shop\"\nstart = \"app --port {{{{port}}}}\"\n\n[ports]\npool = [{}]\n\n[nginx]\n\
         upstream_file = \"shop.upstream.conf\"\n\n[deploy]\nstrategy = \"{strategy}\"\ninstances = {N}\n\
         state_dir = \"state\"\nverify = \"100ms\"\n\n[rolling]\n{rolling}\n",
        ports.join(", ")
    );
    let path = dir.join("cutover.toml");
    Config::parse(&text, &path).unwrap()
}

fn engine<'h>(cfg: &'h Config, host: &'h FakeHost) -> Engine<'h> {
    let mut eng = Engine::new(cfg, host, Store::new(cfg.state_dir()), Progress::quiet()).unwrap();
    eng.recover("test").unwrap();
    eng
}

/// `cutover deploy` as the command runs it: recover, resolve, run the strategy inside one operation.
fn deploy(cfg: &Config, host: &FakeHost, release: &str, strategy: Strategy) -> anyhow::Result<()> {
    let mut eng = engine(cfg, host);
    let req = Request { kind: OpKind::Deploy, release: release.parse().unwrap(), strategy, force: false };
    let snap = Snapshot::take(host, cfg, eng.state(), None)?;
    let plan = plan::resolve(&req, cfg, eng.state(), &snap, &eng.renderer)?;
    if let Some(r) = &plan.refusal {
        return Err(r.error());
    }
    let meta = OpMeta { kind: OpKind::Deploy, release: release.into(), strategy: Some(plan.strategy) };
    eng.run(&meta, |e| match plan.strategy {
        Strategy::BlueGreen => blue_green::run(e, &plan).map(Done::forward),
        _ => rolling::run(e, &plan).map(Done::forward),
    })
    .map(|_| ())
}

/// `cutover rollback` / `cutover recover` while a rolling deploy is stopped part-way.
fn roll_back(cfg: &Config, host: &FakeHost) -> anyhow::Result<()> {
    let mut eng = engine(cfg, host);
    if eng.state().rolling.is_none() {
        return Ok(());
    }
    let meta = OpMeta { kind: OpKind::Rollback, release: "v1".into(), strategy: Some(Strategy::Rolling) };
    eng.run(&meta, |e| rolling::roll_back(e).map(Done::back)).map(|_| ())
}

/// Run `f`; true when the fake host ended it at a crash point.
fn crashed(f: impl FnOnce()) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(p) if p.is::<Crash>() => true,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The fleet after a recovery: consistent, whatever the crash point.
fn check(cfg: &Config, host: &FakeHost, at: &str) {
    let eng = engine(cfg, host);
    let s = eng.state().clone();
    let w = host.world.borrow();
    assert!(w.violations.is_empty(), "{at}: {:?}", w.violations);
    assert!(s.in_progress.is_none(), "{at}: the operation is still recorded");
    // Nothing stray, nothing recorded that does not run.
    let owned: Vec<i32> = s.owned().iter().filter_map(|(_, i)| i.pid).collect();
    for (pid, p) in w.procs.iter().filter(|(_, p)| p.alive) {
        assert!(owned.contains(pid), "{at}: stray {} on {} (pid {pid})", p.release, p.port);
    }
    for pid in &owned {
        assert!(w.procs.get(pid).is_some_and(|p| p.alive), "{at}: pid {pid} recorded but not running");
    }
    // No slot lost: every one of the N is live, rolled out, or taken out and recorded.
    let live = s.live.as_ref().map(|l| l.instances.len()).unwrap_or(0);
    let (new, down) = s.rolling.as_ref().map(|r| (r.deployment.instances.len(), r.down.len())).unwrap_or((0, 0));
    assert_eq!(live + new + down, N, "{at}: {s:?}");
    // nginx serves what state says.
    let text = eng.renderer.render(cfg, &s).unwrap();
    assert_eq!(w.disk.as_deref(), Some(text.as_str()), "{at}: the file on disk is not state's");
    assert_eq!(w.current.as_ref().map(|g| g.text.as_str()), Some(text.as_str()), "{at}: nginx runs another file");
    assert!(w.old.is_empty(), "{at}: old nginx workers still run");
    let mut expected: Vec<u16> =
        s.live.iter().flat_map(|d| d.ports()).chain(s.rolling.iter().flat_map(|r| r.deployment.ports())).collect();
    if expected.is_empty() {
        expected.extend(s.rolling.as_ref().and_then(|r| r.maintenance));
    }
    expected.sort_unstable();
    let mut routes = primary_ports(&text);
    routes.sort_unstable();
    assert_eq!(routes, expected, "{at}: routes");
    drop(w);
    if let Some(r) = &s.rolling {
        assert!(r.paused.is_some(), "{at}: a rolling deploy left between batches is recorded paused");
    }
}

/// The whole fleet runs `release` and nothing else runs.
fn all_on(cfg: &Config, host: &FakeHost, release: &str, at: &str) {
    check(cfg, host, at);
    let s = engine(cfg, host).state().clone();
    assert!(s.rolling.is_none(), "{at}: {:?}", s.rolling);
    let live = s.live.unwrap();
    assert_eq!(live.release, release, "{at}");
    assert_eq!(live.running().len(), N, "{at}");
}

/// What resolves a fleet left between batches, and the release the whole fleet must then run.
type Resolve = dyn Fn(&Config, &FakeHost) -> (anyhow::Result<()>, &'static str);

/// Crash `run` at each of its side effects in turn (a fresh world each time), recover, check, resolve with
/// `resolve` and check that the fleet ends on `expect`. Returns how many crash points there were.
fn every_crash_point(
    pool: usize,
    strategy: &str,
    rolling: &str,
    setup: &dyn Fn(&Config, &FakeHost),
    run: &dyn Fn(&Config, &FakeHost),
    resolve: &Resolve,
) -> usize {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Crash>() {
                default(info)
            }
        }));
    });
    for k in 1.. {
        let dir = scratch();
        let cfg = config(dir.path(), pool, strategy, rolling);
        let host = FakeHost::new();
        setup(&cfg, &host);
        let base = host.world.borrow().effects;
        host.world.borrow_mut().crash_at = Some(base + k);
        let what = host.world.borrow().effect_log.len();
        if !crashed(|| run(&cfg, &host)) {
            return k - 1;
        }
        let at = format!("crash {k} at {:?}", host.world.borrow().effect_log[what..].last());
        host.world.borrow_mut().crash_at = None;
        check(&cfg, &host, &at);
        let (result, expect) = resolve(&cfg, &host);
        result.unwrap_or_else(|e| panic!("{at}: resolving failed: {e:#}"));
        all_on(&cfg, &host, expect, &format!("{at}, resolved"));
    }
    unreachable!()
}

/// The first deploy: nothing is live, so it runs as blue-green.
fn v1(cfg: &Config, host: &FakeHost) {
    deploy(cfg, host, "v1", cfg.deploy.strategy).unwrap();
}

fn v2(strategy: Strategy) -> impl Fn(&Config, &FakeHost) {
    move |cfg, host| {
        let _ = deploy(cfg, host, "v2", strategy);
    }
}

/// Odd crash points are resolved by a rollback (`recover`), even ones by deploying v2 again.
fn recover_or_resume(strategy: Strategy) -> impl Fn(&Config, &FakeHost) -> (anyhow::Result<()>, &'static str) {
    move |cfg, host| {
        let paused = engine(cfg, host).state().rolling.is_some();
        let n = host.world.borrow().effects;
        if !paused {
            // Recovery already ended it one way or the other: the fleet is whole; finish the deploy.
            return (deploy(cfg, host, "v2", strategy), "v2");
        }
        if n % 2 == 1 {
            (roll_back(cfg, host), "v1")
        } else {
            (deploy(cfg, host, "v2", strategy), "v2")
        }
    }
}

#[test]
fn a_surge_rolling_deploy_killed_anywhere_recovers_to_a_whole_fleet() {
    let n = every_crash_point(
        5,
        "rolling",
        "batch = 1\nsurge = true",
        &v1,
        &v2(Strategy::Rolling),
        &recover_or_resume(Strategy::Rolling),
    );
    assert!(n > 40, "only {n} crash points");
    println!("surge: {n} crash points");
}

#[test]
fn a_rolling_deploy_without_surge_killed_anywhere_recovers_to_a_whole_fleet() {
    let n = every_crash_point(
        4,
        "rolling",
        "batch = 1\nsurge = false",
        &v1,
        &v2(Strategy::Rolling),
        &recover_or_resume(Strategy::Rolling),
    );
    assert!(n > 40, "only {n} crash points");
    println!("no surge: {n} crash points");
}

#[test]
fn an_all_at_once_deploy_killed_anywhere_recovers_to_a_whole_fleet() {
    let n =
        every_crash_point(5, "all-at-once", "", &v1, &v2(Strategy::AllAtOnce), &recover_or_resume(Strategy::AllAtOnce));
    assert!(n > 20, "only {n} crash points");
    println!("all at once: {n} crash points");
}

#[test]
fn a_failing_batch_rolled_back_and_killed_anywhere_recovers_to_a_whole_fleet() {
    // nginx rejects the upstream that would put v2 on the third batch's port: batches 1 and 2 roll back.
    let setup = |cfg: &Config, host: &FakeHost| {
        v1(cfg, host);
        host.world.borrow_mut().reject_containing = Some("127.0.0.1:8082;  # v2".into());
    };
    let resolve = |cfg: &Config, host: &FakeHost| {
        host.world.borrow_mut().reject_containing = None;
        (roll_back(cfg, host), "v1")
    };
    let n = every_crash_point(5, "rolling", "batch = 1\nsurge = true", &setup, &v2(Strategy::Rolling), &resolve);
    assert!(n > 40, "only {n} crash points");
    println!("failing batch rolled back: {n} crash points");
}

#[test]
fn a_rollback_of_a_paused_fleet_killed_anywhere_recovers_to_a_whole_fleet() {
    let setup = |cfg: &Config, host: &FakeHost| {
        v1(cfg, host);
        let paused = config_with(cfg, "batch = 1\nsurge = false\non_failure = \"pause\"");
        host.world.borrow_mut().reject_containing = Some("127.0.0.1:8083;  # v2".into());
        assert!(deploy(&paused, host, "v2", Strategy::Rolling).is_err());
        host.world.borrow_mut().reject_containing = None;
        assert!(engine(cfg, host).state().rolling.as_ref().is_some_and(|r| r.paused.is_some()));
    };
    let run = |cfg: &Config, host: &FakeHost| {
        let _ = roll_back(cfg, host);
    };
    let resolve = |cfg: &Config, host: &FakeHost| (roll_back(cfg, host), "v1");
    let n = every_crash_point(4, "rolling", "batch = 1\nsurge = false", &setup, &run, &resolve);
    assert!(n > 20, "only {n} crash points");
    println!("rollback of a paused fleet: {n} crash points");
}

/// The same config with another `[rolling]` section.
fn config_with(cfg: &Config, rolling: &str) -> Config {
    let dir = cfg.path.parent().unwrap();
    config(dir, cfg.pool().len(), "rolling", rolling)
}

#[test]
fn the_fake_host_routes_to_what_the_rolling_state_lists() {
    // A sanity check of the harness itself: after a whole surge deploy, nginx routes to v2's four ports only.
    let dir = scratch();
    let cfg = config(dir.path(), 5, "rolling", "batch = 1\nsurge = true");
    let host = FakeHost::new();
    v1(&cfg, &host);
    deploy(&cfg, &host, "v2", Strategy::Rolling).unwrap();
    all_on(&cfg, &host, "v2", "whole deploy");
    let mut routes = host.serving_ports();
    routes.sort_unstable();
    assert_eq!(routes, [8081, 8082, 8083, 8085]);
    assert!(host.runtime().kind() == "fake");
}

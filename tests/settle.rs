//! Through the engine on the fake host: after every operation, what the runtime keeps for boot (`settle`) is
//! exactly what state owns, so a reboot brings back what state says and nothing else.

use cutover::config::{Config, Release};
use cutover::engine::Engine;
use cutover::host::fake::FakeHost;
use cutover::journal::{OpKind, State, Store};
use cutover::output::Progress;
use cutover::plan::{self, Request, Snapshot};
use cutover::strategy::{blue_green, up, Strategy};

fn config(dir: &std::path::Path, keep_previous: bool) -> Config {
    let text = format!(
        "[app]\nname = \"shop\"\nstart = \"app {{{{port}}}}\"\n[ports]\npool = [8081, 8082, 8083]\n\
         [nginx]\nupstream_file = \"u.conf\"\n[deploy]\nstate_dir = \"state\"\nkeep_previous = {keep_previous}\n\
         verify = \"0s\"\n[runtime]\nkind = \"spawn\"\nlog_dir = \"logs\"\n"
    );
    Config::parse(&text, &dir.join("cutover.toml")).unwrap()
}

fn deploy(cfg: &Config, host: &FakeHost, release: &str, kind: OpKind) {
    let mut eng = Engine::new(cfg, host, Store::new(cfg.state_dir()), Progress::new()).unwrap();
    let snap = Snapshot::take(host, cfg, eng.state(), None).unwrap();
    let req =
        Request { kind, release: release.parse::<Release>().unwrap(), strategy: Strategy::BlueGreen, force: false };
    let plan = plan::resolve(&req, cfg, eng.state(), &snap, &eng.renderer).unwrap();
    assert!(plan.refusal.is_none(), "{:?}", plan.refusal);
    blue_green::run(&mut eng, &plan).unwrap();
}

fn owned_markers(cfg: &Config) -> Vec<String> {
    let s: State = Store::new(cfg.state_dir()).load("shop").unwrap();
    let mut v: Vec<String> = s.owned().iter().filter_map(|(_, i)| i.marker.clone()).collect();
    v.sort();
    v
}

fn at_boot(host: &FakeHost) -> Vec<String> {
    let mut v = host.world.borrow().at_boot.clone();
    v.sort();
    v
}

#[test]
fn what_comes_back_at_boot_is_what_state_owns_after_every_operation() {
    for keep in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), keep);
        let host = FakeHost::new();
        for (release, kind) in
            [("v1", OpKind::Deploy), ("v2", OpKind::Deploy), ("v1", OpKind::Rollback), ("v3", OpKind::Deploy)]
        {
            deploy(&cfg, &host, release, kind);
            let owned = owned_markers(&cfg);
            assert!(!owned.is_empty());
            assert_eq!(at_boot(&host), owned, "after {kind} {release} (keep_previous = {keep})");
        }
        // Offline: nothing comes back at boot; up brings the live release back and enables it.
        let mut eng = Engine::new(&cfg, &host, Store::new(cfg.state_dir()), Progress::new()).unwrap();
        up::stop(&mut eng).unwrap();
        assert!(at_boot(&host).is_empty(), "a stopped app does not come back at boot");
        let revived = up::up(&mut eng).unwrap();
        assert_eq!(revived.started.len(), 1);
        assert_eq!(at_boot(&host), owned_markers(&cfg));
        assert!(up::up(&mut eng).unwrap().nothing(), "a second up does nothing");
    }
}

//! The rules of each change, on hand-built states.

use super::*;

fn inst(release: &str, port: u16, pid: i32) -> Instance {
    let mut i = Instance::planned(release, port);
    i.pid = Some(pid);
    i.start_ticks = Some(pid as u64);
    i
}

fn dep(release: &str, insts: Vec<Instance>) -> Deployment {
    Deployment { release: release.into(), instances: insts, since: "t".into() }
}

/// v1 live on 8081, v0 previous still running on 8080 (kept), an operation begun.
fn state() -> State {
    let mut s = State::empty("shop");
    s.live = Some(dep("v1", vec![inst("v1", 8081, 11)]));
    s.previous = Some(dep("v0", vec![inst("v0", 8080, 10)]));
    s.backup = vec![inst("v0", 8080, 10)];
    s.in_progress = Some(crate::plan::scratch_op());
    s.in_progress.as_mut().unwrap().before =
        Some(Serving { live: s.live.clone(), previous: s.previous.clone(), backup: s.backup.clone() });
    s
}

fn to_stop(s: &State) -> Vec<(String, u16)> {
    s.in_progress.as_ref().unwrap().to_stop.iter().map(|i| (i.release.clone(), i.port)).collect()
}

#[test]
fn a_flip_makes_the_live_release_the_backup_and_schedules_what_goes() {
    let mut s = state();
    Change::Flip { to: dep("v2", vec![inst("v2", 8082, 12)]), keep_previous: false }.apply(&mut s);
    assert_eq!(s.live.as_ref().unwrap().release, "v2");
    assert_eq!(s.previous.as_ref().unwrap().release, "v1");
    assert_eq!(s.backup, vec![inst("v1", 8081, 11)], "v1 serves as backup until it is stopped");
    assert_eq!(to_stop(&s), [("v0".to_string(), 8080), ("v1".to_string(), 8081)]);
    // Unlisting takes what is scheduled out of the backup list.
    Change::Unlist.apply(&mut s);
    assert!(s.backup.is_empty());
}

#[test]
fn with_keep_previous_the_old_release_stays_as_backup() {
    let mut s = state();
    Change::Flip { to: dep("v2", vec![inst("v2", 8082, 12)]), keep_previous: true }.apply(&mut s);
    assert_eq!(to_stop(&s), [("v0".to_string(), 8080)], "only the older previous release goes");
    Change::Unlist.apply(&mut s);
    assert_eq!(s.backup, vec![inst("v1", 8081, 11)]);
}

#[test]
fn a_rollback_to_the_kept_previous_release_reuses_it() {
    let mut s = state();
    Change::Flip { to: s.previous.clone().unwrap(), keep_previous: true }.apply(&mut s);
    assert_eq!(s.live.as_ref().unwrap().release, "v0");
    assert_eq!(s.previous.as_ref().unwrap().release, "v1");
    assert!(to_stop(&s).is_empty(), "nothing is stopped: v0 is live, v1 kept");
}

#[test]
fn a_redeploy_keeps_the_previous_release_and_retires_the_replaced_instances() {
    let mut s = state();
    Change::Flip { to: dep("v1", vec![inst("v1", 8082, 12)]), keep_previous: true }.apply(&mut s);
    assert_eq!(s.previous.as_ref().unwrap().release, "v0");
    assert_eq!(to_stop(&s), [("v1".to_string(), 8081)]);
    assert!(s.backup.iter().any(|b| b.port == 8081) && s.backup.iter().any(|b| b.port == 8080));
}

#[test]
fn a_flip_back_restores_what_served_and_schedules_the_failed_release() {
    let mut s = state();
    Change::Flip { to: dep("v2", vec![inst("v2", 8082, 12)]), keep_previous: false }.apply(&mut s);
    Change::FlipBack.apply(&mut s);
    assert_eq!(s.live.as_ref().unwrap().release, "v1");
    assert_eq!(s.previous.as_ref().unwrap().release, "v0");
    assert_eq!(s.backup, vec![inst("v0", 8080, 10)]);
    assert_eq!(to_stop(&s), [("v2".to_string(), 8082)], "v0 and v1 are kept again");
}

#[test]
fn recovery_schedules_what_never_served_and_what_was_scheduled() {
    let mut s = state();
    let op = s.in_progress.as_mut().unwrap();
    op.started.push(inst("v2", 8082, 12));
    let mut intent = Instance::planned("v2", 8083);
    intent.marker = Some("shop@8083#x".into());
    op.started.push(intent);
    op.to_stop.push(inst("v0", 8080, 10));
    Change::Recover { keep_previous: false }.apply(&mut s);
    assert_eq!(to_stop(&s), [("v0".to_string(), 8080), ("v2".to_string(), 8082), ("v2".to_string(), 8083)]);
    assert!(s.backup.is_empty(), "what is to stop leaves the upstream");
    assert_eq!(s.live.as_ref().unwrap().release, "v1");
}

#[test]
fn a_canary_abort_schedules_its_instances() {
    let mut s = state();
    let canary = CanaryState {
        deployment: dep("v2", vec![inst("v2", 8082, 12)]),
        weight: 10,
        steps: vec![10, 100],
        step: Some(0),
        automatic: false,
    };
    Change::Canary(canary).apply(&mut s);
    assert_eq!(s.canary.as_ref().unwrap().weight, 10);
    Change::CanaryEnd.apply(&mut s);
    assert!(s.canary.is_none());
    assert_eq!(to_stop(&s), [("v2".to_string(), 8082)]);
}

#[test]
fn owned_lists_each_running_instance_once() {
    let s = state();
    let owned: Vec<(&str, u16)> = s.owned().into_iter().map(|(w, i)| (w, i.port)).collect();
    assert_eq!(owned, [("live", 8081), ("backup", 8080)]);
}

#[test]
fn recovery_keeps_what_the_operator_keeps() {
    // A killed reclaim had scheduled the kept previous release to free its port: recovery keeps it, listed again.
    let mut s = state();
    Change::Reclaim(vec![inst("v0", 8080, 10)]).apply(&mut s);
    assert!(s.backup.is_empty());
    Change::Recover { keep_previous: true }.apply(&mut s);
    assert!(to_stop(&s).is_empty(), "{:?}", to_stop(&s));
    assert_eq!(s.backup, vec![inst("v0", 8080, 10)]);
}

#[test]
fn adoption_records_the_running_release_and_its_idle_copy_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = crate::host::fake::FakeHost::new();
    let store = Store::new(dir.path().join("shop"));
    let mut j = Journal::open(store.clone(), "shop", &host).unwrap();
    let live = dep("adopted-8081", vec![inst("adopted-8081", 8081, 41)]);
    let idle = dep("adopted-8082", vec![inst("adopted-8082", 8082, 42)]);
    let change = Change::Adopt { live: live.clone(), previous: Some(idle.clone()) };
    let preview = j.preview(&change);
    assert_eq!((preview.generation, preview.live.as_ref()), (1, Some(&live)));
    j.adopt(&change, "upstream text\n".into()).unwrap();
    let saved = store.load("shop").unwrap();
    assert_eq!(saved.live, Some(live.clone()));
    assert_eq!(saved.previous, Some(idle.clone()));
    assert!(saved.backup.is_empty(), "the idle copy is not listed in the upstream");
    assert_eq!((saved.generation, saved.upstream.as_deref()), (1, Some("upstream text\n")));
    assert!(saved.in_progress.is_none());
    // The idle copy is a previous release kept running: the next flip stops it unless keep_previous.
    assert!(saved.keeps(&idle.instances[0]));
    // A second adoption over a record is refused and changes nothing.
    let e = j.adopt(&change, "other\n".into()).unwrap_err();
    assert!(format!("{e}").contains("already records a release"), "{e}");
    assert_eq!(store.load("shop").unwrap(), saved);
    assert!(j.adopt(&Change::Rerender, "x".into()).is_err());
}

#[test]
fn offline_stops_everything_and_keeps_the_live_release_recorded() {
    let mut s = state();
    Change::Offline.apply(&mut s);
    assert!(s.offline);
    assert_eq!(s.live.as_ref().unwrap().release, "v1", "the live release stays recorded for `up`");
    assert!(s.backup.is_empty());
    assert_eq!(to_stop(&s), [("v1".to_string(), 8081), ("v0".to_string(), 8080)]);
    let cfg = crate::config::Config::parse(
        "[app]\nname = \"shop\"\nstart = \"x {{port}}\"\n[ports]\npool = [8080, 8081, 8082]\n\
         [nginx]\nupstream_file = \"u.conf\"\n",
        std::path::Path::new("/srv/cutover.toml"),
    )
    .unwrap();
    let servers = crate::upstream::view(&cfg, &s).servers;
    assert_eq!(servers.len(), 1, "no backup while offline: {servers:?}");
    assert!(servers[0].down && servers[0].port == 8081, "{servers:?}");
}

#[test]
fn replace_swaps_dead_instances_where_they_were_and_brings_the_app_online() {
    let mut s = state();
    s.offline = true;
    let mut c = dep("v2", vec![inst("v2", 8083, 13)]);
    c.release = "v2".into();
    s.canary = Some(CanaryState { deployment: c, weight: 10, steps: vec![10, 100], step: Some(0), automatic: false });
    Change::Replace {
        old: vec![inst("v1", 8081, 11), inst("v2", 8083, 13)],
        new: vec![inst("v1", 8081, 21), inst("v2", 8083, 23)],
    }
    .apply(&mut s);
    assert!(!s.offline);
    assert_eq!(s.live.as_ref().unwrap().instances, vec![inst("v1", 8081, 21)]);
    assert_eq!(s.canary.as_ref().unwrap().deployment.instances, vec![inst("v2", 8083, 23)]);
    assert!(to_stop(&s).is_empty(), "dead instances need no stop");
}

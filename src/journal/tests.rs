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
        Some(Serving { live: s.live.clone(), previous: s.previous.clone(), backup: s.backup.clone(), rolling: None });
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

/// v1 live on four ports, nothing previous, a deploy begun.
fn fleet() -> State {
    let mut s = State::empty("shop");
    s.live = Some(dep("v1", (0..4).map(|k| inst("v1", 8081 + k, 11 + k as i32)).collect()));
    s.in_progress = Some(crate::plan::scratch_op());
    s.in_progress.as_mut().unwrap().before =
        Some(Serving { live: s.live.clone(), previous: None, backup: Vec::new(), rolling: None });
    s
}

fn step(join: Vec<Instance>, leave: Vec<Instance>, leave_as: Leave, batch: usize) -> Change {
    Change::Roll(RollStep {
        release: "v2".into(),
        strategy: Strategy::Rolling,
        maintenance: None,
        since: "t0".into(),
        batch,
        batches: 4,
        join,
        leave,
        leave_as,
    })
}

fn ports(d: Option<&Deployment>) -> Vec<u16> {
    d.map(|d| d.ports()).unwrap_or_default()
}

#[test]
fn a_surge_batch_serves_the_new_instances_beside_the_old_and_keeps_the_replaced_one_as_backup() {
    let mut s = fleet();
    step(vec![inst("v2", 8085, 21)], vec![inst("v1", 8081, 11)], Leave::Backup, 1).apply(&mut s);
    assert_eq!(ports(s.live.as_ref()), [8082, 8083, 8084]);
    let r = s.rolling.as_ref().unwrap();
    assert_eq!((r.deployment.release.as_str(), r.deployment.ports(), r.batch, r.batches), ("v2", vec![8085], 1, 4));
    assert_eq!(s.backup, vec![inst("v1", 8081, 11)], "the replaced instance is the backup until verified");
    assert_eq!(to_stop(&s), [("v1".to_string(), 8081)]);
    // Verified: it leaves the upstream, and the next batch starts on its port.
    Change::Unlist.apply(&mut s);
    assert!(s.backup.is_empty());
    step(vec![inst("v2", 8081, 22)], vec![inst("v1", 8082, 12)], Leave::Backup, 2).apply(&mut s);
    assert_eq!(s.rolling.as_ref().unwrap().deployment.ports(), [8085, 8081]);
    assert_eq!(ports(s.live.as_ref()), [8083, 8084]);
}

#[test]
fn a_batch_that_fails_its_verification_goes_back_to_the_instances_it_replaced() {
    let mut s = fleet();
    step(vec![inst("v2", 8085, 21)], vec![inst("v1", 8081, 11)], Leave::Backup, 1).apply(&mut s);
    // The v1 instance rejoins (off the backup list, no longer to stop); the v2 one leaves at once.
    step(vec![inst("v1", 8081, 11)], vec![inst("v2", 8085, 21)], Leave::Out, 0).apply(&mut s);
    assert_eq!(ports(s.live.as_ref()), [8082, 8083, 8084, 8081]);
    assert!(s.backup.is_empty());
    assert_eq!(to_stop(&s), [("v2".to_string(), 8085)]);
    assert!(s.rolling.as_ref().unwrap().deployment.instances.is_empty());
    Change::RollEnd { since: "t1".into() }.apply(&mut s);
    assert!(s.rolling.is_none(), "nothing of v2 serves: the rolling deploy is over");
    assert_eq!(s.live.as_ref().unwrap().release, "v1");
}

#[test]
fn without_surge_the_slot_is_down_until_its_replacement_fills_it() {
    let mut s = fleet();
    step(vec![], vec![inst("v1", 8081, 11)], Leave::Down, 0).apply(&mut s);
    let r = s.rolling.as_ref().unwrap();
    assert_eq!(r.down, vec![inst("v1", 8081, 11)]);
    assert!(s.backup.is_empty(), "taken out, not a backup");
    assert_eq!(to_stop(&s), [("v1".to_string(), 8081)]);
    // Stopped: the slot stays recorded, without its process.
    s.in_progress.as_mut().unwrap().to_stop.clear();
    s.rolling.as_mut().unwrap().down[0] = inst("v1", 8081, 11).stopped();
    assert!(s.owned().iter().all(|(_, i)| i.port != 8081), "a stopped slot is not an instance this app runs");
    step(vec![inst("v2", 8081, 21)], vec![], Leave::Down, 1).apply(&mut s);
    let r = s.rolling.as_ref().unwrap();
    assert!(r.down.is_empty(), "the replacement fills the slot");
    assert_eq!(r.deployment.ports(), [8081]);
}

#[test]
fn a_finished_rolling_deploy_makes_the_new_release_live_and_the_old_one_previous_and_stopped() {
    let mut s = fleet();
    let old: Vec<Instance> = s.live.as_ref().unwrap().instances.clone();
    let new: Vec<Instance> = (0..4).map(|k| inst("v2", 8085 + k, 21 + k as i32)).collect();
    step(new[..2].to_vec(), old[..2].to_vec(), Leave::Backup, 2).apply(&mut s);
    Change::RollEnd { since: "t1".into() }.apply(&mut s);
    assert!(s.rolling.is_some(), "a mixed fleet does not end");
    assert_eq!(s.live.as_ref().unwrap().release, "v1");
    step(new[2..].to_vec(), old[2..].to_vec(), Leave::Backup, 4).apply(&mut s);
    Change::RollEnd { since: "t1".into() }.apply(&mut s);
    assert!(s.rolling.is_none());
    let live = s.live.as_ref().unwrap();
    assert_eq!((live.release.as_str(), live.ports(), live.since.as_str()), ("v2", vec![8085, 8086, 8087, 8088], "t1"));
    let prev = s.previous.as_ref().unwrap();
    assert_eq!((prev.release.as_str(), prev.ports()), ("v1", vec![8081, 8082, 8083, 8084]));
    assert!(prev.running().is_empty(), "the old release is recorded stopped: a rollback restarts it");
}

#[test]
fn slots_taken_out_and_not_refilled_keep_a_rolling_deploy_from_ending() {
    let mut s = fleet();
    let old = s.live.as_ref().unwrap().instances.clone();
    step(vec![], old.clone(), Leave::Down, 0).apply(&mut s);
    Change::RollEnd { since: "t1".into() }.apply(&mut s);
    assert_eq!(s.rolling.as_ref().unwrap().down.len(), 4, "all four slots are still to fill");
    assert_eq!(s.live.as_ref().unwrap().release, "v1");
}

#[test]
fn a_pause_is_recorded_and_the_next_step_clears_it() {
    let mut s = fleet();
    step(vec![inst("v2", 8085, 21)], vec![inst("v1", 8081, 11)], Leave::Backup, 1).apply(&mut s);
    Change::RollPause("batch 2 of 4 failed".into()).apply(&mut s);
    assert_eq!(s.rolling.as_ref().unwrap().paused.as_deref(), Some("batch 2 of 4 failed"));
    step(vec![inst("v2", 8081, 22)], vec![inst("v1", 8082, 12)], Leave::Backup, 2).apply(&mut s);
    assert_eq!(s.rolling.as_ref().unwrap().paused, None);
}

#[test]
fn recovery_of_a_rolling_deploy_stops_its_leftovers_keeps_its_slots_and_records_it_interrupted() {
    let mut s = fleet();
    // Batch 1 done (v2 on 8081 serves), batch 2 under way: 8082 taken out, its replacement started.
    step(vec![], vec![inst("v1", 8081, 11)], Leave::Down, 0).apply(&mut s);
    s.rolling.as_mut().unwrap().down[0] = inst("v1", 8081, 11).stopped();
    s.in_progress.as_mut().unwrap().to_stop.clear();
    step(vec![inst("v2", 8081, 21)], vec![], Leave::Down, 1).apply(&mut s);
    step(vec![], vec![inst("v1", 8082, 12)], Leave::Down, 1).apply(&mut s);
    s.in_progress.as_mut().unwrap().started.push(inst("v2", 8082, 22));
    Change::Recover { keep_previous: false }.apply(&mut s);
    assert_eq!(to_stop(&s), [("v1".to_string(), 8082), ("v2".to_string(), 8082)]);
    let r = s.rolling.as_ref().unwrap();
    assert_eq!(r.deployment.ports(), [8081], "what served stays");
    assert_eq!(r.down.iter().map(|d| d.port).collect::<Vec<_>>(), [8082], "the slot stays, to refill");
    assert_eq!(r.paused.as_deref(), Some("interrupted: the `deploy` that drove it did not finish"));
}

#[test]
fn a_flip_back_restores_a_rolling_deploy_that_was_stopped_when_the_operation_began() {
    let mut s = fleet();
    step(vec![inst("v2", 8085, 21)], vec![inst("v1", 8081, 11)], Leave::Out, 1).apply(&mut s);
    let rolling = s.rolling.clone();
    s.in_progress = Some(crate::plan::scratch_op());
    s.in_progress.as_mut().unwrap().before =
        Some(Serving { live: s.live.clone(), previous: None, backup: Vec::new(), rolling: rolling.clone() });
    Change::Flip { to: dep("v3", vec![inst("v3", 8090, 31)]), keep_previous: false }.apply(&mut s);
    Change::FlipBack.apply(&mut s);
    assert_eq!(s.rolling, rolling, "the v2 instances are recorded again, not orphaned");
    assert!(!to_stop(&s).contains(&("v2".to_string(), 8085)));
    assert!(to_stop(&s).contains(&("v3".to_string(), 8090)));
}

#[test]
fn a_rolling_restart_swaps_instances_within_the_live_release() {
    let mut s = fleet();
    let st = RollStep {
        release: "v1".into(),
        strategy: Strategy::Rolling,
        maintenance: None,
        since: "t0".into(),
        batch: 1,
        batches: 4,
        join: vec![inst("v1", 8085, 21)],
        leave: vec![inst("v1", 8081, 11)],
        leave_as: Leave::Backup,
    };
    Change::Roll(st).apply(&mut s);
    assert_eq!(ports(s.live.as_ref()), [8082, 8083, 8084, 8085]);
    Change::RollEnd { since: "t1".into() }.apply(&mut s);
    assert!(s.rolling.is_none());
    assert!(s.previous.is_none(), "a restart keeps the previous release");
}

//! The plan of a rolling or all-at-once deploy: its batches (which ports start, which leave, in what order),
//! computed without side effects from the config, the state and a snapshot of the host.

use anyhow::Result;
use serde::Serialize;

use super::batch::fleet_on;
use crate::config::Config;
use crate::exit::Code;
use crate::journal::{Change, Deployment, Instance, Leave, RollStep, State};
use crate::plan::ports::PortUse;
use crate::plan::{no_port_message, scratch_op, Plan, Refusal, Snapshot};
use crate::strategy::Strategy;
use crate::upstream::Renderer;

/// One batch of a rolling deploy: the ports of the instances that leave, the ports their replacements start on
/// (the same ones without surge), and, all at once, where nginx answers the maintenance page meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// Empty for a batch that refills slots an interrupted run left empty.
    pub retire: Vec<u16>,
    pub start: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<u16>,
}

impl Batch {
    /// The replacements start where the instances they replace were (no surge), so those go first.
    pub fn in_place(&self) -> bool {
        self.retire.iter().all(|p| self.start.contains(p))
    }
}

/// How batches run: their size and whether replacements start beside the old instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub size: usize,
    pub surge: bool,
}

impl Shape {
    pub fn of(cfg: &Config, strategy: Strategy) -> Shape {
        match strategy {
            Strategy::AllAtOnce => Shape { size: usize::MAX, surge: false },
            _ => Shape { size: cfg.rolling.batch.0 as usize, surge: cfg.rolling.surge },
        }
    }
}

/// The batches that refill `slots` (first, in one batch) and replace the instances on `old` (in that order,
/// `shape.size` at a time). With surge each batch starts on the first idle ports in pool order, `free`, and
/// the ports it empties become idle for the next. `Err(n)` when the idle ports are `n` short. Pure.
pub(super) fn layout(
    shape: Shape,
    slots: &[u16],
    old: &[u16],
    free: &[u16],
    pool: &[u16],
    maintenance: Option<u16>,
) -> std::result::Result<Vec<Batch>, usize> {
    let mut batches = Vec::new();
    if maintenance.is_some() {
        // All at once: everything in one batch, slots included.
        let start = slots.iter().chain(old).copied().collect();
        return Ok(vec![Batch { retire: old.to_vec(), start, maintenance }]);
    }
    if !slots.is_empty() {
        batches.push(Batch { retire: Vec::new(), start: slots.to_vec(), maintenance: None });
    }
    let rank = |p: &u16| pool.iter().position(|x| x == p).unwrap_or(usize::MAX);
    let mut idle: Vec<u16> = free.to_vec();
    for chunk in old.chunks(shape.size.max(1)) {
        if !shape.surge {
            batches.push(Batch { retire: chunk.to_vec(), start: chunk.to_vec(), maintenance: None });
            continue;
        }
        idle.sort_by_key(rank);
        if idle.len() < chunk.len() {
            return Err(chunk.len() - idle.len());
        }
        let start: Vec<u16> = idle.drain(..chunk.len()).collect();
        batches.push(Batch { retire: chunk.to_vec(), start, maintenance: None });
        idle.extend_from_slice(chunk);
    }
    Ok(batches)
}

/// Plan a rolling or all-at-once deploy (or the resume of one stopped part-way): idle previous instances to
/// stop first (in-place strategies keep no previous release running), the batches, the instances stopped on
/// the way, and the upstream after the first batch (all at once: while nothing runs). Refusals go to `refuse`.
pub fn plan(
    cfg: &Config,
    state: &State,
    snap: &Snapshot,
    renderer: &Renderer,
    plan: &mut Plan,
    refuse: &mut dyn FnMut(Refusal),
) -> Result<()> {
    let Some(live) = state.live.as_ref() else { return Ok(()) };
    if plan.strategy == Strategy::Rolling {
        if let Some(why) = cfg.rolling_takes_everything_out() {
            refuse(Refusal::new(Code::Usage, why));
        }
    }
    let shape = Shape::of(cfg, plan.strategy);
    let resuming = state.rolling.as_ref();
    // Idle previous or backup instances: stopped first, which also frees their ports.
    plan.reclaim = state
        .owned()
        .into_iter()
        .filter(|(what, _)| matches!(*what, "previous" | "backup"))
        .map(|(_, i)| i.clone())
        .filter(|i| snap.running(i) && !live.instances.iter().any(|l| l.same(i)))
        .collect();
    let slots: Vec<u16> = resuming.map(|r| r.down.iter().map(|d| d.port).collect()).unwrap_or_default();
    // A rolling restart that was interrupted cannot tell its fresh instances from the old ones: refill only.
    let restart_resumed = resuming.is_some_and(|r| r.deployment.release == live.release);
    let old: Vec<Instance> = if restart_resumed { Vec::new() } else { live.instances.clone() };
    let old_ports: Vec<u16> = old.iter().map(|i| i.port).collect();
    let fleet: Vec<u16> = state
        .owned()
        .into_iter()
        .filter(|(what, i)| !matches!(*what, "previous" | "backup") || !plan.reclaim.iter().any(|r| r.same(i)))
        .map(|(_, i)| i.port)
        .chain(slots.iter().copied())
        .collect();
    let reclaimed = |p: u16| plan.reclaim.iter().any(|r| r.port == p);
    let free: Vec<u16> = snap
        .pool
        .iter()
        .filter(|(p, u)| !fleet.contains(p) && (*u == PortUse::Free || reclaimed(*p)))
        .map(|(p, _)| *p)
        .collect();
    let maintenance = match (plan.strategy, resuming.and_then(|r| r.maintenance)) {
        (Strategy::AllAtOnce, Some(p)) => Some(p),
        (Strategy::AllAtOnce, None) => match free.first() {
            Some(&p) => Some(p),
            None => {
                let busy: Vec<String> = snap.pool.iter().map(|(p, u)| format!("{p} {u}")).collect();
                refuse(Refusal::new(
                    Code::Refused,
                    format!(
                        "no idle port in ports.pool for the maintenance answer nginx gives while nothing runs \
                         (--strategy all-at-once needs one beside the app's): {}; free one or widen ports.pool",
                        busy.join(", ")
                    ),
                ));
                None
            }
        },
        _ => None,
    };
    let free_for_surge: Vec<u16> = free.iter().copied().filter(|p| Some(*p) != maintenance).collect();
    plan.batches = match layout(shape, &slots, &old_ports, &free_for_surge, &cfg.pool(), maintenance) {
        Ok(b) => b,
        Err(short) => {
            let busy: Vec<crate::plan::ports::Busy> = snap
                .pool
                .iter()
                .filter(|(p, _)| !free_for_surge.contains(p))
                .map(|(p, u)| crate::plan::ports::Busy { port: *p, why: u.to_string() })
                .collect();
            refuse(Refusal::new(
                Code::Refused,
                format!("{} ({short} short for rolling.surge)", no_port_message(shape.size, &busy)),
            ));
            Vec::new()
        }
    };
    let mut new_ports: Vec<u16> = Vec::new();
    for b in &plan.batches {
        new_ports.extend(b.start.iter().filter(|p| !new_ports.contains(p)).copied().collect::<Vec<_>>());
    }
    plan.new_ports = new_ports;
    plan.stop_after = old;
    if restart_resumed {
        plan.notes.push(format!(
            "the interrupted rolling restart of {} refills its empty slots only: run it again to restart the \
             instances it had not reached",
            live.release
        ));
    }
    let n = cfg.deploy.instances.0 as usize;
    if resuming.is_none() && live.instances.len() != n {
        plan.notes.push(format!(
            "deploy.instances is {n} but {} instance(s) of {} are live: a {} deploy replaces the ones that run, one \
             for one; a blue-green deploy changes the count",
            live.instances.len(),
            live.release,
            plan.strategy
        ));
    }
    if cfg.deploy.keep_previous {
        plan.notes.push(format!(
            "deploy.keep_previous does not apply to --strategy {}: the old release is replaced where it runs",
            plan.strategy
        ));
    }

    // The upstream after the first batch (all at once: while nothing runs).
    let mut after = state.clone();
    after.in_progress = Some(scratch_op());
    if !plan.reclaim.is_empty() {
        Change::Reclaim(plan.reclaim.clone()).apply(&mut after);
        Change::Unlist.apply(&mut after);
    }
    if let Some(first) = plan.batches.first() {
        let total = plan.batches.len() + resuming.map(|r| r.batch).unwrap_or(0);
        let retire = fleet_on(&after, &first.retire);
        let join: Vec<Instance> = first.start.iter().map(|&p| Instance::planned(&plan.release, p)).collect();
        let mut step = RollStep {
            release: resuming.map(|r| r.deployment.release.clone()).unwrap_or_else(|| plan.release.clone()),
            strategy: plan.strategy,
            maintenance: first.maintenance,
            since: String::new(),
            batch: total - plan.batches.len() + 1,
            batches: total,
            join,
            leave: retire,
            leave_as: Leave::Out,
        };
        if first.maintenance.is_some() {
            step.join.clear();
            step.leave_as = Leave::Down;
        }
        Change::Roll(step).apply(&mut after);
    }
    after.generation += 1;
    after.in_progress = None;
    plan.upstream_after = renderer.render(cfg, &after)?;
    Ok(())
}

/// Instances `Deployment` lists on `ports`, for the dry run's descriptions.
pub fn describe_ports(d: Option<&Deployment>, ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| match d.and_then(|d| d.instances.iter().find(|i| i.port == *p)) {
            Some(i) => format!("{} on {p}", i.release),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: [u16; 6] = [1, 2, 3, 4, 5, 6];

    fn b(retire: &[u16], start: &[u16]) -> Batch {
        Batch { retire: retire.to_vec(), start: start.to_vec(), maintenance: None }
    }

    #[test]
    fn surge_starts_each_batch_on_the_ports_the_last_one_emptied() {
        let one = Shape { size: 1, surge: true };
        assert_eq!(
            layout(one, &[], &[1, 2, 3, 4], &[5, 6], &POOL, None).unwrap(),
            [b(&[1], &[5]), b(&[2], &[1]), b(&[3], &[2]), b(&[4], &[3])]
        );
        let two = Shape { size: 2, surge: true };
        assert_eq!(
            layout(two, &[], &[1, 2, 3, 4], &[5, 6], &POOL, None).unwrap(),
            [b(&[1, 2], &[5, 6]), b(&[3, 4], &[1, 2])]
        );
        assert_eq!(layout(two, &[], &[1, 2, 3, 4], &[5], &POOL, None), Err(1), "one idle port short");
    }

    #[test]
    fn without_surge_each_batch_replaces_in_place_and_empty_slots_are_refilled_first() {
        let one = Shape { size: 1, surge: false };
        let v = layout(one, &[2], &[3, 4], &[], &POOL, None).unwrap();
        assert_eq!(v, [b(&[], &[2]), b(&[3], &[3]), b(&[4], &[4])]);
        assert!(v.iter().all(Batch::in_place));
        assert!(!b(&[1], &[5]).in_place());
    }

    #[test]
    fn all_at_once_is_one_batch_with_the_maintenance_answer() {
        let all = Shape { size: usize::MAX, surge: false };
        let v = layout(all, &[], &[1, 2], &[3], &POOL, Some(3)).unwrap();
        assert_eq!(v, [Batch { retire: vec![1, 2], start: vec![1, 2], maintenance: Some(3) }]);
    }
}

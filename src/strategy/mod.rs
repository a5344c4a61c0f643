//! The strategies: each a short sequence of the engine's steps. [`blue_green`] (also rollbacks and restarts),
//! [`canary`], [`rolling`] (also all-at-once).

pub mod analysis;
pub mod blue_green;
pub mod canary;
pub mod rolling;
pub mod up;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::{Done, Engine, Moved, OpMeta};
use crate::journal::{Deployment, Instance, OpKind, Outcome};
use crate::plan::{self, Plan, Request, Snapshot};

/// How a deploy moves traffic to the new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start every new instance beside the live ones, then one flip (EB's "immutable" with several).
    #[default]
    BlueGreen,
    /// Weighted steps with access-log analysis between them.
    Canary,
    /// Replace `deploy.instances` instances `rolling.batch` at a time.
    Rolling,
    /// Stop the old release, start the new one on the same ports: for a host that cannot run two copies. Not
    /// zero-downtime: nginx answers a 503 maintenance page meanwhile.
    AllAtOnce,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
            Strategy::Rolling => "rolling",
            Strategy::AllAtOnce => "all-at-once",
        })
    }
}

impl Strategy {
    /// Pool ports a deploy needs.
    pub fn ports_needed(self, cfg: &Config) -> usize {
        let n = cfg.deploy.instances.0 as usize;
        match self {
            Strategy::BlueGreen | Strategy::Canary => 2 * n,
            Strategy::Rolling if cfg.rolling.surge => n + cfg.rolling.batch.0 as usize,
            Strategy::Rolling => n,
            Strategy::AllAtOnce => n + 1,
        }
    }

    /// Why it needs that many, for messages.
    pub fn why_ports(self, cfg: &Config) -> String {
        match self {
            Strategy::BlueGreen | Strategy::Canary => "the new release starts beside the live one".into(),
            Strategy::Rolling if cfg.rolling.surge => format!(
                "each batch's {} replacement(s) start beside the live instances (rolling.surge)",
                cfg.rolling.batch.0
            ),
            Strategy::Rolling => {
                "without rolling.surge each replacement starts on the port of the instance it replaces".into()
            }
            Strategy::AllAtOnce => "the new release starts on the ports of the old one, and nginx answers the \
                                    maintenance page on one more port while neither runs"
                .into(),
        }
    }

    /// A strategy that works against a live release (compares with it, or replaces it in place): with nothing
    /// live it deploys as blue-green.
    pub fn needs_live(self) -> bool {
        !matches!(self, Strategy::BlueGreen)
    }

    /// Replaces live instances on their own ports (planned by [`rolling::plan`]).
    pub fn in_place(self) -> bool {
        matches!(self, Strategy::Rolling | Strategy::AllAtOnce)
    }

    /// Whether traffic stays up throughout.
    pub fn zero_downtime(self) -> bool {
        self != Strategy::AllAtOnce
    }
}

/// What a switch left: reported by `deploy`, `rollback`, `promote`.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub live: Deployment,
    pub previous: Option<Deployment>,
    pub stopped: Vec<Instance>,
    /// Whether nginx's old workers exited within `deploy.drain_timeout` after the switch.
    pub drained: bool,
    /// When cutover saw the last new instance pass its health check (Unix ms), for measuring detection lag.
    pub healthy_unix_ms: Option<u64>,
    /// From that moment until traffic was fully on the new release and the old nginx workers were gone.
    pub switch_ms: u64,
    /// All at once: how long nothing served (nginx answered the maintenance page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
}

/// How a deploy, rollback or restart ended without an error.
pub enum Ended {
    /// Traffic moved: what is live now.
    Switched(Box<Switched>),
    /// A canary runs at its first step and waits for `promote`, `abort` or `canary set`.
    CanaryPaused,
}

/// Resolve a request into a plan against the host as it is now; a refusal is returned as its error.
pub fn plan_for(eng: &Engine, req: &Request) -> Result<Plan> {
    let snap = Snapshot::take(eng.host, eng.cfg, eng.state(), None)?.with_release(eng.cfg, req.release.as_str());
    let plan = plan::resolve(req, eng.cfg, eng.state(), &snap, &eng.renderer)?;
    for n in &plan.notes {
        eng.progress.note(n);
    }
    if let Some(r) = &plan.refusal {
        return Err(r.error());
    }
    Ok(plan)
}

/// Run a resolved deploy, rollback or restart plan as one operation (history, hooks).
pub fn execute(eng: &mut Engine, plan: &Plan) -> Result<Ended> {
    let from = eng.live_release();
    let verb = match plan.kind {
        OpKind::Rollback => "rolling back to",
        OpKind::Restart => "restarting",
        _ => "deploying",
    };
    eng.progress.note(format!(
        "{verb} {} ({}) for {}{}",
        plan.release,
        plan.strategy,
        eng.cfg.app.name,
        from.as_ref().map(|f| format!(", replacing {f}")).unwrap_or_default()
    ));
    if !plan.strategy.zero_downtime() {
        eng.progress.warn(format!(
            "--strategy {} is not zero-downtime: nothing serves between stopping {} and the new release passing its \
             health check (nginx answers the maintenance page)",
            plan.strategy,
            from.as_deref().unwrap_or("the old release")
        ));
    }
    let meta = OpMeta { kind: plan.kind, release: plan.release.clone(), strategy: Some(plan.strategy) };
    let forward = plan.kind != OpKind::Rollback;
    let done = |s: Switched| {
        let e = Ended::Switched(Box::new(s));
        if forward {
            Done::forward(e)
        } else {
            Done::back(e)
        }
    };
    match plan.strategy {
        Strategy::Canary => eng.run(&meta, |e| {
            canary::deploy(e, plan).map(|end| match end {
                canary::End::Paused => Done::with(Ended::CanaryPaused, Moved::Nothing, Outcome::CanaryStarted),
                canary::End::Promoted(s) => Done::forward(Ended::Switched(s)),
            })
        }),
        Strategy::Rolling | Strategy::AllAtOnce => eng.run(&meta, |e| rolling::run(e, plan).map(done)),
        Strategy::BlueGreen => eng.run(&meta, |e| blue_green::run(e, plan).map(done)),
    }
}

/// What `cutover rollback` goes back to: `to` (a release that was live here before, from history), else the
/// previous release. Refused (exit 8) when there is nothing to go back to.
pub fn rollback_request(eng: &Engine, to: Option<crate::config::Release>, force: bool) -> Result<Request> {
    let state = eng.state();
    let Some(live) = state.live.clone() else {
        return Err(crate::exit::refused("nothing is deployed, so there is nothing to roll back"));
    };
    let release = match (to, &state.previous) {
        (Some(r), _) => {
            let (events, _) = eng.journal.store().history()?;
            if !events.iter().any(|e| e.release == r.as_str() && e.made_live()) {
                return Err(crate::exit::usage(format!(
                    "release {r} was never live here; `cutover history` lists the releases you can roll back to"
                )));
            }
            r
        }
        (None, Some(prev)) => prev.release.parse().map_err(crate::exit::usage)?,
        (None, None) => {
            return Err(crate::exit::refused(format!(
                "no previous release is recorded for {}; pass --to RELEASE",
                eng.cfg.app.name
            )))
        }
    };
    if release.as_str() == live.release {
        return Err(crate::exit::refused(format!("{release} is already live")));
    }
    Ok(Request { kind: OpKind::Rollback, release, strategy: Strategy::BlueGreen, force })
}

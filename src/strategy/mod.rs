//! The strategies: each a short sequence of the engine's steps. [`blue_green`] (also rollbacks and restarts),
//! [`canary`], [`rolling`] (also all-at-once).

pub mod analysis;
pub mod blue_green;
pub mod canary;
pub mod rolling;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::journal::{Deployment, Instance};

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

//! Rolling and all-at-once: replace the live instances in place, batch by batch.

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::exit::Code;
use crate::journal::State;
use crate::plan::{Plan, Refusal, Snapshot};
use crate::upstream::Renderer;

/// One batch of a rolling deploy: the live ports that leave and the ports their replacements start on.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    pub retire: Vec<u16>,
    pub start: Vec<u16>,
}

pub fn plan(
    _cfg: &Config,
    _state: &State,
    _snap: &Snapshot,
    _renderer: &Renderer,
    plan: &mut Plan,
    refuse: &mut dyn FnMut(Refusal),
) -> Result<()> {
    refuse(Refusal { code: Code::Usage, message: format!("strategy {} is not available yet", plan.strategy) });
    Ok(())
}

pub fn run(_eng: &mut crate::engine::Engine, plan: &Plan) -> Result<super::Switched> {
    anyhow::bail!("strategy {} is not available yet", plan.strategy)
}

pub fn roll_back(_eng: &mut crate::engine::Engine) -> Result<super::Switched> {
    anyhow::bail!("rolling is not available yet")
}

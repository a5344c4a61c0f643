//! The upstream file: what it lists ([`view`], decided from state) and its text ([`render`]), both pure.

pub mod render;
pub mod view;

pub use render::{diff, render, View, BUILTIN_TEMPLATE};
pub use view::{parse_header, split_weights, view, Header, Names};

use anyhow::Result;

use crate::config::Config;
use crate::journal::State;

/// Renders the upstream file with the configured template (or the built-in one).
pub struct Renderer {
    template: Option<String>,
}

impl Renderer {
    /// Read `nginx.template` (a template that cannot be read is a config error, exit 2).
    pub fn new(cfg: &Config) -> Result<Renderer> {
        Ok(Renderer { template: cfg.template_text()? })
    }

    /// The upstream file for `state`.
    pub fn render(&self, cfg: &Config, state: &State) -> Result<String> {
        render(self.template.as_deref(), &view(cfg, state))
    }
}

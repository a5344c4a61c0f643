//! The upstream file: what it lists ([`view`], decided from state) and its text ([`render`]), both pure.

pub mod render;
pub mod view;

pub use render::{diff, render, View, BUILTIN_TEMPLATE};
pub use view::{parse_header, split_weights, view, Header, Names};

use anyhow::Result;

use crate::config::Config;
use crate::journal::State;

/// Renders the upstream file with the configured template (or the built-in one), parsed once: a deploy renders
/// a candidate for every change it applies.
pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    /// Read and parse `nginx.template` (a template that cannot be read or parsed is a config error, exit 2).
    pub fn new(cfg: &Config) -> Result<Renderer> {
        Ok(Renderer { tera: render::compile(cfg.template_text()?.as_deref())? })
    }

    /// The upstream file for `state`.
    pub fn render(&self, cfg: &Config, state: &State) -> Result<String> {
        render::render_with(&self.tera, &view(cfg, state))
    }
}

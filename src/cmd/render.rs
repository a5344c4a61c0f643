//! `cutover render`: the upstream file for the current state, or its diff against the file on disk.

use anyhow::Result;
use serde_json::json;

use crate::cli::RenderArgs;
use crate::exit;
use crate::plan;
use crate::render;
use crate::transaction::Ctx;

pub fn run(ctx: &Ctx, args: RenderArgs, json: bool) -> Result<i32> {
    let state = ctx.store.load(ctx.config.app.name.as_str())?;
    let text = ctx.render(&plan::view_of(&ctx.config, &state))?;
    let path = ctx.config.nginx.upstream_file.display().to_string();
    if args.diff {
        let disk = ctx.read_upstream()?.unwrap_or_default();
        let diff = render::diff(&disk, &text, &path);
        if json {
            super::print_json(&json!({ "path": path, "differs": !diff.is_empty(), "diff": diff }))?;
        } else {
            put!("{diff}");
        }
    } else if json {
        super::print_json(&json!({ "path": path, "upstream": text }))?;
    } else {
        put!("{text}");
    }
    Ok(exit::OK)
}

//! `cutover render`: the upstream file for the current state, or its diff against the file on disk.

use anyhow::Result;
use serde_json::json;

use super::Setup;
use crate::cli::RenderArgs;
use crate::exit::Code;
use crate::host::Host;
use crate::output::print_json;
use crate::upstream::{self, Renderer};

pub fn run(setup: &Setup, args: RenderArgs, json: bool) -> Result<Code> {
    let state = setup.state()?;
    let text = Renderer::new(&setup.config)?.render(&setup.config, &state)?;
    let path = setup.config.nginx.upstream_file.display().to_string();
    if args.diff {
        let disk = setup.host.nginx().read_upstream()?.unwrap_or_default();
        let diff = upstream::diff(&disk, &text, &path);
        if json {
            print_json(&json!({ "path": path, "differs": !diff.is_empty(), "diff": diff }))?;
        } else {
            put!("{diff}");
        }
    } else if json {
        print_json(&json!({ "path": path, "upstream": text }))?;
    } else {
        put!("{text}");
    }
    Ok(Code::Ok)
}

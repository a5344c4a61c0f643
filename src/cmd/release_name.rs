//! `cutover release-name REF`: the name `deploy --release-from-ref REF` would deploy, for a pipeline that
//! stages a release directory before it deploys. Needs no config.

use anyhow::Result;

use crate::exit::{self, Code};

pub fn run(reference: &str, json: bool) -> Result<Code> {
    let release = crate::release_ref::from_ref(reference).map_err(exit::usage)?;
    if json {
        crate::output::print_json(&serde_json::json!({ "ref": reference, "release": release.as_str() }))?;
    } else {
        say!("{release}");
    }
    Ok(Code::Ok)
}

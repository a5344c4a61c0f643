//! Completion of `rollback --to` with the app's release names. clap_complete writes static scripts: it can
//! complete flags and fixed values, not names that only the host's history knows. So the scripts it writes are
//! completed here with one small hook per shell that runs `cutover releases --names` (the releases `rollback
//! --to` accepts, newest first), passing along the `-c/--config` and `--app` already typed, so that the names
//! come from the app being rolled back. Each hook replaces one exact anchor in clap_complete's output; an anchor
//! that is not found is an error, so a clap_complete that writes its scripts differently fails the build's
//! tests instead of shipping completions that silently lost the hook.

use anyhow::{bail, Result};
use clap_complete::Shell;

const BASH_ANCHOR: &str = "                --to)\n                    COMPREPLY=($(compgen -f \"${cur}\"))\n";
const BASH_HOOK: &str =
    "                --to)\n                    COMPREPLY=($(compgen -W \"$(_cutover_releases)\" -- \"${cur}\"))\n";
const BASH_FN: &str = r#"# The releases `cutover rollback --to` accepts, from the history of the app named by the -c/--config or
# --app already on the command line.
_cutover_releases() {
    local i args=()
    for (( i=1; i < COMP_CWORD; i++ )); do
        case "${COMP_WORDS[i]}" in
            -c|--config|--app) args+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}") ;;
        esac
    done
    "${COMP_WORDS[0]}" "${args[@]}" releases --names 2>/dev/null
}

"#;

const ZSH_ANCHOR: &str = "'--to=[Roll back to this release from history instead of the previous one]:RELEASE:_default'";
const ZSH_HOOK: &str =
    "'--to=[Roll back to this release from history instead of the previous one]:RELEASE:_cutover_releases'";
const ZSH_FN: &str = r#"(( $+functions[_cutover_releases] )) ||
_cutover_releases() {
    local -a args releases
    local i
    for (( i = 2; i < CURRENT; i++ )); do
        case ${words[i]} in
            (-c|--config|--app) args+=(${words[i]} ${words[i+1]}) ;;
        esac
    done
    releases=(${(f)"$(_call_program releases ${words[1]} ${args} releases --names 2>/dev/null)"})
    _describe -t releases 'release' releases
}

"#;
const ZSH_END: &str = "if [ \"$funcstack[1]\" = \"_cutover\" ]; then";

const FISH_ANCHOR: &str = "-l to -d 'Roll back to this release from history instead of the previous one' -r";
const FISH_HOOK: &str =
    "-l to -d 'Roll back to this release from history instead of the previous one' -r -f -a '(__fish_cutover_releases)'";
const FISH_FN: &str = r#"
# The releases `cutover rollback --to` accepts, from the history of the app named by the -c/--config or
# --app already on the command line.
function __fish_cutover_releases
    set -l tokens (commandline -opc)
    set -l args
    for i in (seq 2 (count $tokens))
        switch $tokens[$i]
            case -c --config --app
                set -a args $tokens[$i] $tokens[(math $i + 1)]
        end
    end
    $tokens[1] $args releases --names 2>/dev/null
end
"#;

fn replace_once(script: &str, anchor: &str, with: &str, shell: Shell) -> Result<String> {
    match script.matches(anchor).count() {
        1 => Ok(script.replacen(anchor, with, 1)),
        n => bail!("the {shell} completions clap_complete wrote have {n} places for the `rollback --to` hook, not one"),
    }
}

/// `script` (clap_complete's output for `shell`) with `rollback --to` completing release names.
pub fn with_release_names(shell: Shell, script: &str) -> Result<String> {
    match shell {
        Shell::Bash => {
            let rollback = script
                .find("        cutover__subcmd__rollback)\n")
                .ok_or_else(|| anyhow::anyhow!("no rollback section in the bash completions"))?;
            let (head, tail) = script.split_at(rollback);
            let end =
                tail.find("\n            ;;\n").ok_or_else(|| anyhow::anyhow!("no end of the rollback section"))?;
            let section = replace_once(&tail[..end], BASH_ANCHOR, BASH_HOOK, shell)?;
            Ok(format!("{BASH_FN}{head}{section}{}", &tail[end..]))
        }
        Shell::Zsh => {
            let hooked = replace_once(script, ZSH_ANCHOR, ZSH_HOOK, shell)?;
            replace_once(&hooked, ZSH_END, &format!("{ZSH_FN}{ZSH_END}"), shell)
        }
        Shell::Fish => Ok(format!("{}{FISH_FN}", replace_once(script, FISH_ANCHOR, FISH_HOOK, shell)?)),
        _ => Ok(script.to_string()),
    }
}

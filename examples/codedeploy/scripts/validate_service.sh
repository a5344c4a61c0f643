#!/usr/bin/env bash
# ValidateService: `cutover status --check` exits 7 when the upstream file drifted from what cutover wrote, a
# live instance is down or unhealthy, an operation was left unfinished, or nginx is not running; the --json
# document lists each reason in `problems`.
# It also checks that what is live is this deployment's release.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

release=$(release_name)
rc=0
status=$(cutover --app "$APP" status --check --json) || rc=$?
if [ "$rc" -ne 0 ]; then
    log "cutover status --check exited $rc: $(explain "$rc")"
    if [ -n "$status" ]; then
        jq -r '.problems[]? | "  " + .' <<<"$status"
    fi
    exit "$rc"
fi
live=$(jq -r '.live.release // "nothing"' <<<"$status")
if [ "$live" != "$release" ]; then
    log "live release is $live, not this deployment's $release"
    exit 1
fi
log "ok: $live is live and healthy"

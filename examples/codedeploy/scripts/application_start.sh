#!/usr/bin/env bash
# ApplicationStart: deploy this deployment's release with cutover. Progress lines go to the deployment log
# (stderr); the result is read from --json; a failure exits non-zero with cutover's own code, which fails the
# deployment in CodeDeploy, and says what that code means.
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

release=$(release_name)
rc=0
result=$(cutover --app "$APP" deploy --release "$release" --json) || rc=$?
if [ "$rc" -ne 0 ]; then
    log "cutover deploy exited $rc: $(explain "$rc")"
    exit "$rc"
fi
log "live: $(jq -r '.release' <<<"$result") on $(jq -r '[.live.instances[].port] | map(tostring) | join(", ")' <<<"$result")" \
    "(replaced: $(jq -r '.from // "nothing"' <<<"$result"); switch $(jq -r '.switch_ms' <<<"$result") ms," \
    "total $(jq -r '.total_ms' <<<"$result") ms)"

# shellcheck shell=bash disable=SC2034  # settings used by the scripts that source this file
# Settings and helpers shared by the hook scripts (sourced, not run). CodeDeploy sets DEPLOYMENT_ID,
# APPLICATION_NAME, DEPLOYMENT_GROUP_NAME, DEPLOYMENT_GROUP_ID and LIFECYCLE_EVENT for every hook.
set -euo pipefail

APP=${APP:-shop}                  # cutover's app name: its config is /etc/cutover/$APP.toml (or $CUTOVER_CONFIG)
SRV=${SRV:-/srv/$APP}
INCOMING=$SRV/incoming            # appspec.yml's files destination
RELEASES=$SRV/releases            # one directory per deployment: $RELEASES/<deployment id>

: "${DEPLOYMENT_ID:?not run by the CodeDeploy agent: DEPLOYMENT_ID is not set}"
: "${LIFECYCLE_EVENT:?not run by the CodeDeploy agent: LIFECYCLE_EVENT is not set}"

log() { echo "[$LIFECYCLE_EVENT $DEPLOYMENT_ID] $*"; }

# The release name for this deployment (deployment ids such as d-AB12CD34E are valid names as they are).
release_name() { cutover release-name "$DEPLOYMENT_ID"; }

# What cutover's exit code means (`man cutover`, EXIT STATUS), for the deployment log.
explain() {
    case $1 in
    0) echo "done" ;;
    2) echo "usage error or invalid config (the message names file, line and column)" ;;
    3) echo "the new release failed its health check (or died right after the switch); the old release serves" ;;
    4) echo "nginx rejected the config or the reload was not confirmed; previous config restored" ;;
    5) echo "another deploy holds the lock (a second pipeline?); nothing changed" ;;
    6) echo "canary aborted by analysis; rolled back" ;;
    7) echo "status --check: drift, an unhealthy live instance, an unfinished operation or nginx not running" ;;
    8) echo "refused: the host is not in a state where this can run; nothing changed" ;;
    *) echo "unexpected error (see the message above)" ;;
    esac
}

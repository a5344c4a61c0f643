#!/usr/bin/env bash
# Plays the CodeDeploy agent for the published pattern's appspec.yml (see SOURCE.md): its three hooks in order,
# each under the appspec's `timeout: 60`; a hook that fails or runs out of time fails the deployment and the hooks
# after it do not run. CodeDeploy would copy the new jar first; here the release name comes as the argument.
#
#   deploy.sh RELEASE      (everything else from the environment: see profile.sh, start.sh, switch.sh)
set -u
here=$(dirname "$(readlink -f "$0")")
export RELEASE="$1"

for hook in stop.sh start.sh health.sh; do
    timeout 60 bash "$here/$hook"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ]; then
            echo "deploy: $hook ran past the hook's 60 s timeout; deployment failed" >&2
        else
            echo "deploy: $hook exited $rc; deployment failed" >&2
        fi
        exit "$rc"
    fi
done
echo "deploy: $RELEASE deployed"

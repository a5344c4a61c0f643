#!/usr/bin/env bash
# The published blue/green pattern (see SOURCE.md), hook ApplicationStart: start the new release on the idle
# profile's port, in the background.
#
# Environment: RELEASE (the release to start; the original takes the newest jar CodeDeploy copied), FIXTURE (the
# app; the original runs `java -jar` with the profile's properties), FIXTURE_FLAGS (optional flags that make the
# fixture misbehave, for the failure cases), APP_LOG_DIR (the original sends the app's output to /dev/null).
here=$(dirname "$(readlink -f "$0")")
# shellcheck source-path=SCRIPTDIR source=profile.sh
source "$here/profile.sh"

IDLE_PROFILE=$(find_idle_profile)
IDLE_PORT=$(port_of_profile "$IDLE_PROFILE")

echo "> starting $RELEASE with profile=$IDLE_PROFILE (port $IDLE_PORT)"
# shellcheck disable=SC2086 # FIXTURE_FLAGS is a list of flags
nohup python3 "$FIXTURE" --port "$IDLE_PORT" --release "$RELEASE" ${FIXTURE_FLAGS:-} \
    >>"$APP_LOG_DIR/app-$RELEASE.log" 2>&1 </dev/null &

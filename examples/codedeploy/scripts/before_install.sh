#!/usr/bin/env bash
# BeforeInstall: empty the incoming directory, so that files dropped from the build do not linger there
# (CodeDeploy only adds and overwrites).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

mkdir -p "$INCOMING" "$RELEASES"
find "$INCOMING" -mindepth 1 -delete
log "emptied $INCOMING for $APPLICATION_NAME/$DEPLOYMENT_GROUP_NAME"

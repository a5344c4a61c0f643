#!/usr/bin/env bash
# AfterInstall: stage what CodeDeploy copied to $INCOMING as this deployment's release directory. It is copied
# to a temporary name first and renamed, so a release directory is never half there; a redeployment of the
# same deployment id keeps the directory it already has (its app may be running from it).
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

release=$(release_name)
dest=$RELEASES/$release
if [ -d "$dest" ]; then
    log "$dest is already staged; keeping it"
    exit 0
fi
tmp=$(mktemp -d "$RELEASES/.staging.XXXXXX")
cp -a "$INCOMING/." "$tmp/"
chmod 755 "$tmp"
mv -T "$tmp" "$dest"
log "staged $dest ($(find "$dest" -type f | wc -l) files)"

#!/usr/bin/env bash
# Runs on the host, streamed over SSH by deploy.yml (`ssh HOST bash -s -- REF TARBALL < remote-deploy.sh`), so
# the host needs cutover but no copy of this script.
#
#   remote-deploy.sh REF TARBALL
#
# REF is a CI ref such as refs/heads/main-1a2b3c4; cutover derives the release name from it (main-1a2b3c4).
# TARBALL is the build; it is unpacked to $SRV/releases/<release> (under a temporary name, then renamed), and
# removed afterwards. A release directory that already exists (the same commit again) is kept, since its app
# may be running from it. Exit code: cutover's (man cutover, EXIT STATUS).
set -euo pipefail

ref=${1:?usage: remote-deploy.sh REF TARBALL}
tarball=${2:?usage: remote-deploy.sh REF TARBALL}
APP=${APP:-shop}                 # cutover's app name: config /etc/cutover/$APP.toml (or $CUTOVER_CONFIG)
SRV=${SRV:-/srv/$APP}
releases=$SRV/releases

release=$(cutover release-name "$ref")
mkdir -p "$releases"
if [ -d "$releases/$release" ]; then
    echo "$releases/$release is already there; keeping it"
else
    tmp=$(mktemp -d "$releases/.staging.XXXXXX")
    tar -xzf "$tarball" -C "$tmp"
    chmod 755 "$tmp"
    mv -T "$tmp" "$releases/$release"
    echo "staged $releases/$release"
fi
rm -f "$tarball"

rc=0
result=$(cutover --app "$APP" deploy --release-from-ref "$ref" --json) || rc=$?
case $rc in
0)
    echo "live: $(jq -r .release <<<"$result") (was: $(jq -r '.from // "nothing"' <<<"$result")), switched in" \
        "$(jq -r .switch_ms <<<"$result") ms, deploy took $(jq -r .total_ms <<<"$result") ms"
    ;;
3) echo "::error::$release failed its health check; traffic untouched, the old release still serves" ;;
4) echo "::error::nginx rejected the new upstream or its reload was not confirmed; previous config restored" ;;
5) echo "::error::another deploy of $APP holds the lock; nothing changed (run again once it is done)" ;;
*) echo "::error::cutover deploy exited $rc (man cutover, EXIT STATUS)" ;;
esac
exit "$rc"

#!/usr/bin/env bash
# Jenkins post-build step on the deploy host (an agent running there): stage the build from the workspace as a
# release and deploy it with cutover. In a freestyle job, add it as an "Execute shell" build step after the
# build (`bash ci/deploy.sh`); in a pipeline, see the Jenkinsfile beside it.
#
# The release name comes from Jenkins' BUILD_TAG (jenkins-<job name>-<build number>): cutover derives it with
# --release-from-ref, so jenkins-myorg/myapp/main-42 becomes jenkins-myorg-myapp-main-42. The dry run prints
# the plan, with that name, into the build log before anything changes. Exit code: cutover's (man cutover,
# EXIT STATUS), so a failed deploy fails the build.
set -euo pipefail

: "${BUILD_TAG:?not run by Jenkins: BUILD_TAG is not set}"
: "${WORKSPACE:?not run by Jenkins: WORKSPACE is not set}"
APP=${APP:-shop}                 # cutover's app name: config /etc/cutover/$APP.toml (or $CUTOVER_CONFIG)
SRV=${SRV:-/srv/$APP}
DIST=${DIST:-dist}               # what the build produced, relative to the workspace
releases=$SRV/releases

release=$(cutover release-name "$BUILD_TAG")
mkdir -p "$releases"
if [ -d "$releases/$release" ]; then
    echo "$releases/$release is already there; keeping it"
else
    tmp=$(mktemp -d "$releases/.staging.XXXXXX")
    cp -a "$WORKSPACE/$DIST/." "$tmp/"
    chmod 755 "$tmp"
    mv -T "$tmp" "$releases/$release"
    echo "staged $releases/$release from $WORKSPACE/$DIST"
fi

# The plan first: which ports start, what nginx's upstream file becomes. Changes nothing.
cutover --app "$APP" deploy --release-from-ref "$BUILD_TAG" --dry-run

rc=0
result=$(cutover --app "$APP" deploy --release-from-ref "$BUILD_TAG" --json) || rc=$?
case $rc in
0)
    echo "deployed $(jq -r .release <<<"$result") (was: $(jq -r '.from // "nothing"' <<<"$result")) in" \
        "$(jq -r .total_ms <<<"$result") ms; live on port(s) $(jq -r '[.live.instances[].port] | map(tostring) | join(", ")' <<<"$result")"
    ;;
3) echo "DEPLOY FAILED: $release failed its health check; traffic untouched, the old release still serves" ;;
4) echo "DEPLOY FAILED: nginx rejected the new upstream or its reload was not confirmed; previous config restored" ;;
5) echo "DEPLOY FAILED: another deploy of $APP holds the lock; nothing changed" ;;
*) echo "DEPLOY FAILED: cutover deploy exited $rc (man cutover, EXIT STATUS)" ;;
esac
exit "$rc"

#!/usr/bin/env bash
# The published blue/green pattern (see SOURCE.md), hook AfterInstall: stop whatever still runs on the idle port.
# That is the release before the live one: the pattern keeps it running after a deploy and kills it here, at the
# start of the next one.
here=$(dirname "$(readlink -f "$0")")
# shellcheck source-path=SCRIPTDIR source=profile.sh
source "$here/profile.sh"

IDLE_PORT=$(find_idle_port)

echo "> looking for the app on the idle port $IDLE_PORT"
# Only the listening socket: the original's `lsof -ti tcp:PORT` also names any process with a connection to the
# port; this benchmark must never signal a process it did not start.
IDLE_PID=$(lsof -ti "tcp:$IDLE_PORT" -sTCP:LISTEN)

if [ -z "$IDLE_PID" ]; then
    echo "> nothing runs there, nothing to stop"
else
    echo "> kill -15 $IDLE_PID"
    # shellcheck disable=SC2086 # one pid per line, as lsof prints them
    kill -15 $IDLE_PID
    pattern_sleep 5
fi

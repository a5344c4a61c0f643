#!/usr/bin/env bash
# The published blue/green pattern (see SOURCE.md), hook ValidateService: wait 10 s, then check the new release up
# to 10 times, 10 s apart; on the first healthy answer switch nginx to it (switch.sh). After 10 failed checks it
# gives up with exit 1 and leaves nginx alone (and the new release running).
here=$(dirname "$(readlink -f "$0")")
# shellcheck source-path=SCRIPTDIR source=profile.sh
source "$here/profile.sh"
# shellcheck source-path=SCRIPTDIR source=switch.sh
source "$here/switch.sh"

IDLE_PORT=$(find_idle_port)

echo "> health check of port $IDLE_PORT"
pattern_sleep 10

for RETRY_COUNT in 1 2 3 4 5 6 7 8 9 10; do
    # The original asks /profile and looks for "real" (its profile names); the fixture's health endpoint says UP.
    RESPONSE=$(curl -s "http://127.0.0.1:$IDLE_PORT/health")
    UP_COUNT=$(echo "$RESPONSE" | grep -c 'UP')

    if [ "$UP_COUNT" -ge 1 ]; then
        echo "> health check passed"
        switch_proxy
        break
    else
        echo "> health check: no healthy answer: $RESPONSE"
    fi

    if [ "$RETRY_COUNT" -eq 10 ]; then
        echo "> health check failed; ending the deploy without switching nginx"
        exit 1
    fi

    echo "> retrying"
    pattern_sleep 10
done

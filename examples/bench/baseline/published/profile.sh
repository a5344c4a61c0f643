#!/usr/bin/env bash
# The published blue/green pattern (see SOURCE.md): profile.sh, shared by stop.sh, start.sh, health.sh and
# switch.sh. Two "profiles", real1 and real2, each own one app port; the idle one is whichever nginx is not
# serving, and nginx is asked which one it serves by a GET /profile through it.
#
# Environment (the original hard-codes these values):
#   NGINX_URL       the site through nginx                 (original: http://localhost)
#   PORT1, PORT2    the ports of profiles real1 and real2  (original: 8081, 8082)
#   BASELINE_SLEEP  unset for the pattern's real sleeps; S makes each `sleep N` of the pattern sleep N*S/10 s
#                   (a quick benchmark run; bench.py then says in its output that the sleeps were shortened)

# The original's Spring Boot app answers /profile with its active profile name. The fixture app answers every
# path with JSON naming its port, so the answer is mapped back to the profile that owns that port.
profile_of_answer() {
    local port
    port=$(grep -o '"port": *[0-9]*' | grep -o '[0-9]*$')
    if [ "$port" = "$PORT1" ]; then
        echo real1
    elif [ "$port" = "$PORT2" ]; then
        echo real2
    fi
}

port_of_profile() {
    if [ "$1" == real1 ]; then
        echo "$PORT1"
    else
        echo "$PORT2"
    fi
}

pattern_sleep() {
    if [ -n "${BASELINE_SLEEP:-}" ]; then
        local s
        s=$(awk -v n="$1" -v b="$BASELINE_SLEEP" 'BEGIN { printf "%.2f", n * b / 10 }')
        echo "> sleep $1 shortened to $s (BASELINE_SLEEP=$BASELINE_SLEEP)"
        sleep "$s"
    else
        sleep "$1"
    fi
}

# The idle profile: real2 when nginx serves real1, otherwise real1 (also when nginx answers 4xx/5xx, i.e. nothing
# healthy is behind it).
find_idle_profile() {
    local response_code current_profile
    response_code=$(curl -s -o /dev/null -w "%{http_code}" "$NGINX_URL/profile")

    if [ "$response_code" -ge 400 ]; then
        current_profile=real2
    else
        current_profile=$(curl -s "$NGINX_URL/profile" | profile_of_answer)
    fi

    if [ "$current_profile" == real1 ]; then
        echo real2
    else
        echo real1
    fi
}

find_idle_port() {
    port_of_profile "$(find_idle_profile)"
}

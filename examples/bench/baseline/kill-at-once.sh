#!/usr/bin/env bash
# SECOND BASELINE, NOT cutover, and not a published script: a minimal blue/green switch written for this benchmark
# that kills the old app at once. It shows what the shortcut costs; the main baseline is the published pattern in
# published/ (see published/SOURCE.md), which leaves the old app running until the next deploy.
#
# What it does, and nothing more:
#   1. start the new release on the other port in the background,
#   2. sleep a fixed time, then poll /health with curl until it answers 200,
#   3. rewrite the nginx upstream (include) file with a heredoc,
#   4. `nginx -s reload` (no `nginx -t`, no check that the reload happened),
#   5. kill the old app right away (`kill PID`), without waiting for nginx's old workers.
# The fixture app finishes the requests it already has on SIGTERM (a well-behaved app server), so what this
# script loses is what nginx's old workers still send to the old port after the kill.
#
# Usage: kill-at-once.sh RELEASE        (called by examples/bench/bench.py; everything else comes from the environment)
#   BASE_DIR       its own state: app-PORT.pid, app-PORT.log, current_port (the bench temp dir's baseline/)
#   PORTS          the two ports it alternates between, e.g. "20001 20002"
#   FIXTURE        the app (fixtures/app.py)
#   UPSTREAM_FILE  the file nginx includes (the same one cutover writes)
#   NGINX_BIN, NGINX_PREFIX, NGINX_CONF    the private nginx (-p / -c)
#   SLEEP_SECS     the fixed sleep before polling (default 2; the published pattern sleeps 10)
set -u

release="$1"
read -r port_a port_b <<<"$PORTS"
old=""
[ -f "$BASE_DIR/current_port" ] && old="$(cat "$BASE_DIR/current_port")"
new="$port_a"
[ "$old" = "$port_a" ] && new="$port_b"

# 1. start the new release in the background (its own session, so the bench can stop its process group)
setsid python3 "$FIXTURE" --port "$new" --release "$release" >>"$BASE_DIR/app-$new.log" 2>&1 </dev/null &
echo $! >"$BASE_DIR/app-$new.pid"

# 2. fixed sleep, then poll /health
sleep "${SLEEP_SECS:-2}"
tries=0
until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$new/health"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "kill-at-once.sh: $release on $new never became healthy" >&2
        kill "$(cat "$BASE_DIR/app-$new.pid")"
        exit 1
    fi
    sleep 0.5
done

# 3. rewrite the upstream file (the site's access_log uses the cutover_bench format, so it is defined here too)
cat >"$UPSTREAM_FILE" <<EOF
# written by examples/bench/baseline/kill-at-once.sh: release $release
log_format cutover_bench escape=json '{"msec":"\$msec","upstream":"\$upstream_addr","status":"\$status","upstream_status":"\$upstream_status","upstream_time":"\$upstream_response_time","request_time":"\$request_time"}';
upstream bench {
    server 127.0.0.1:$new;
}
EOF

# 4. reload nginx
"$NGINX_BIN" -p "$NGINX_PREFIX" -c "$NGINX_CONF" -s reload

# 5. kill the old app right away
if [ -n "$old" ] && [ -f "$BASE_DIR/app-$old.pid" ]; then
    kill "$(cat "$BASE_DIR/app-$old.pid")" 2>/dev/null
    rm -f "$BASE_DIR/app-$old.pid"
fi
echo "$new" >"$BASE_DIR/current_port"
echo "kill-at-once.sh: $release live on port $new"

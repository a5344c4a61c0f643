#!/usr/bin/env bash
# The README's first command: a guided tour of cutover on this machine, with nothing to set up.
#
# Installs nginx, python3 and curl if they are missing, builds cutover, then starts a private nginx under a
# temp dir on free 127.0.0.1 ports (never the system nginx, never a port outside loopback) and the fixture app
# from fixtures/app.py, and walks through: check, deploy v1, deploy v2 under traffic, status, a canary, a deploy
# that fails its health check, rollback, history. Everything it started is stopped on exit, by pid; the temp dir
# is removed unless KEEP=1.
#
#   bash examples/demo.sh            # from any directory
#   KEEP=1 bash examples/demo.sh     # keep the temp dir (config, state, logs) to look at afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
export PATH="$PATH:/usr/sbin"

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
die() {
    printf '\ndemo FAILED: %s\n' "$*" >&2
    exit 1
}

# --- What the demo needs ------------------------------------------------------------------------------------------
bash "$REPO/.ci/install-missing" nginx python3 curl
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs) and run this again"

echo "building cutover (cargo build --release --locked) ..."
cargo build --release --locked -q
CUTOVER="$REPO/target/release/cutover"
START=$SECONDS

# --- A private nginx and config under a temp dir ------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cutover-demo.XXXXXX")
CFG="$TMP/cutover.toml"
UPSTREAM="$TMP/nginx/conf/demo.upstream.conf"
ACCESS_LOG="$TMP/nginx/logs/demo.cutover.log"
NGINX_PID_FILE="$TMP/nginx/logs/nginx.pid"
LOOP_PID=""

alive() { # pid is running (a zombie does not count)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [ "${s%% *}" != Z ]
}

wait_gone() { # pid seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$1" || return 0
        sleep 0.1
    done
    return 1
}

# Every app process cutover started for this demo: from `cutover status --json` (and state.json if that fails).
app_pids() {
    local json=""
    if [ -x "$CUTOVER" ] && [ -f "$CFG" ]; then
        json=$("$CUTOVER" -c "$CFG" status --json 2>/dev/null) || json=""
    fi
    if [ -z "$json" ] && [ -f "$TMP/state/demo/state.json" ]; then
        json=$(cat "$TMP/state/demo/state.json")
    fi
    [ -n "$json" ] || return 0
    printf '%s' "$json" | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
def insts(d):
    if not isinstance(d, dict):
        return []
    out = list(d.get("instances") or [])
    out += insts(d.get("deployment"))  # state.json nests the canary one level deeper
    return out
found = []
for key in ("live", "previous", "canary"):
    found += insts(v.get(key))
found += list((v.get("in_progress") or {}).get("started") or [])
for i in found:
    pid = i.get("pid") if isinstance(i, dict) else None
    if isinstance(pid, int) and pid > 1:
        print(pid)
'
}

cleanup() {
    local rc=$? pid pids
    set +e
    trap - EXIT INT TERM
    if [ -n "$LOOP_PID" ]; then
        kill "$LOOP_PID" 2>/dev/null
        wait "$LOOP_PID" 2>/dev/null
    fi
    pids=$(app_pids | sort -u)
    for pid in $pids; do
        alive "$pid" && kill -TERM -- "-$pid" 2>/dev/null # each app leads its own process group
    done
    for pid in $pids; do
        wait_gone "$pid" 5 || kill -KILL -- "-$pid" 2>/dev/null
    done
    if [ -s "$NGINX_PID_FILE" ]; then
        pid=$(cat "$NGINX_PID_FILE")
        if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
            kill -QUIT "$pid" 2>/dev/null # graceful stop of our nginx master (and its workers)
            wait_gone "$pid" 5 || kill -TERM "$pid" 2>/dev/null
        fi
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "stopped the apps and nginx; kept $TMP (KEEP=1)"
    else
        rm -rf "$TMP"
        echo "stopped the apps and nginx; removed $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Free ports on 127.0.0.1 below the ephemeral range (so curl's own connections never take one): nginx + a pool of 3.
read -r NGINX_PORT P1 P2 P3 < <(python3 -c '
import random, socket
ports, p = [], random.randrange(20000, 30000)
while len(ports) < 4:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
    p += 1
print(*ports)
')
URL="http://127.0.0.1:$NGINX_PORT/"

mkdir -p "$TMP/nginx/conf" "$TMP/nginx/logs" "$TMP/nginx/temp" "$TMP/state" "$TMP/flags"
cat >"$TMP/nginx/conf/nginx.conf" <<EOF
# The demo's private nginx: started with nginx -p $TMP/nginx/ -c conf/nginx.conf
worker_processes 2;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 1024; }
http {
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    # written by cutover: the upstream "demo" and the log format cutover_demo
    include $UPSTREAM;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        access_log $ACCESS_LOG cutover_demo;
        location / { proxy_pass http://demo; }
    }
}
EOF

cat >"$CFG" <<EOF
# A release starts with the flags in $TMP/flags/<release>, if that file exists (e.g. --fail-health).
[app]
name = "demo"
start = "exec python3 '$REPO/fixtures/app.py' --port {{port}} --release {{release}} \$(cat '$TMP/flags/{{release}}' 2>/dev/null)"
stop_timeout = "5s"

[ports]
pool = [$P1, $P2, $P3]
bind = "127.0.0.1"

[health]
path = "/health"
interval = "100ms"
deadline = "4s"

[nginx]
upstream_file = "$UPSTREAM"
prefix = "$TMP/nginx"
conf = "conf/nginx.conf"

[deploy]
drain_timeout = "10s"
keep_previous = true
state_dir = "$TMP/state"
verify = "2s"

[runtime]
log_dir = "$TMP/logs"

[canary]
steps = [10, 50, 100]
interval = "2s"
min_requests = 20
max_error_rate = 0.05
access_log = "$ACCESS_LOG"
EOF

# nginx needs the upstream file its config includes before it can start: cutover renders the "nothing deployed" one.
"$CUTOVER" -c "$CFG" render >"$UPSTREAM"
nginx -p "$TMP/nginx/" -c conf/nginx.conf
for _ in $(seq 50); do
    [ -s "$NGINX_PID_FILE" ] && break
    sleep 0.1
done
[ -s "$NGINX_PID_FILE" ] || die "the demo nginx did not start (see $TMP/nginx/logs/error.log)"

# --- Helpers for the story ----------------------------------------------------------------------------------------
run_cutover() { # show the command, then run it; cutover's progress lines (stderr) show as they happen
    printf '$ cutover %s\n' "$*"
    "$CUTOVER" -c "$CFG" "$@"
}

expect_serving() { # release: one request through nginx must be answered 200 by that release
    local body code
    printf '$ curl %s\n' "$URL"
    body=$(curl -s --max-time 5 -w '\n@@%{http_code}' "$URL") || die "curl could not reach nginx on $URL"
    code=${body##*@@}
    body=${body%@@*}
    body=${body%$'\n'}
    body=${body%$'\n'}
    printf '%s\n' "$body"
    [ "$code" = 200 ] || die "nginx answered $code, expected 200 from $1"
    printf '%s' "$body" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["release"] != sys.argv[1])' "$1" \
        || die "expected release $1 to answer"
}

# Background traffic: batches of 20 requests (Connection: close) through nginx, at most 60 s and 4000 requests.
# Each answer is recorded as its body line and an "@@<status>" line; "@t" lines timestamp each batch.
traffic_start() {
    TRAFFIC="$TMP/traffic.$1"
    rm -f "$TMP/traffic.stop"
    : >"$TRAFFIC"
    (
        cpid=""
        trap '[ -n "$cpid" ] && kill "$cpid" 2>/dev/null; exit 0' TERM
        end=$((SECONDS + 60))
        n=0
        while [ ! -e "$TMP/traffic.stop" ] && [ "$SECONDS" -lt "$end" ] && [ "$n" -lt 4000 ]; do
            echo "@t $(date +%s.%N)" >>"$TRAFFIC"
            curl -s --max-time 5 -H 'Connection: close' -w '\n@@%{http_code}\n' "${URL}demo/[1-20]" >>"$TRAFFIC" 2>/dev/null &
            cpid=$!
            wait "$cpid" || true
            cpid=""
            n=$((n + 20))
            sleep 0.05
        done
    ) &
    LOOP_PID=$!
    sleep 1 # let some traffic reach the current release first
}

# Stop the traffic and print the tally; fail when a request failed or an expected release got no answers.
# Usage: traffic_stop [--per-second] RELEASE...
traffic_stop() {
    local per=""
    [ "$1" = --per-second ] && { per=1; shift; }
    sleep 0.5
    touch "$TMP/traffic.stop"
    wait "$LOOP_PID" 2>/dev/null || true
    LOOP_PID=""
    python3 - "$TRAFFIC" "$per" "$@" <<'PY'
import json, sys
path, per, expected = sys.argv[1], sys.argv[2], sys.argv[3:]
counts, failed, seconds = {}, 0, {}
t0 = now = None
release = None
for line in open(path, errors="replace"):
    line = line.strip()
    if line.startswith("@t "):
        now = float(line[3:])
        t0 = now if t0 is None else t0
    elif line.startswith("@@"):
        code = line[2:]
        sec = seconds.setdefault(int(now - t0), {})
        if code == "200" and release:
            counts[release] = counts.get(release, 0) + 1
            sec[release] = sec.get(release, 0) + 1
        else:
            failed += 1
            sec["failed"] = sec.get("failed", 0) + 1
        release = None
    elif line.startswith("{"):
        try:
            release = json.loads(line).get("release")
        except ValueError:
            release = None
total = sum(counts.values()) + failed
names = sorted(counts)
if per:
    for s in sorted(seconds):
        row = seconds[s]
        n = sum(row.values())
        parts = ", ".join("%s %3d%%" % (r, round(100 * row.get(r, 0) / n)) for r in names)
        extra = ", failed %d" % row["failed"] if row.get("failed") else ""
        print("    second %2d: %4d requests: %s%s" % (s + 1, n, parts, extra))
print("    %d requests: %s, failed %d" % (total, ", ".join("%s %d" % (r, counts[r]) for r in names), failed))
missing = [r for r in expected if not counts.get(r)]
if failed or missing:
    if missing:
        print("    expected answers from: %s" % ", ".join(missing))
    sys.exit(1)
PY
}

# --- The story ----------------------------------------------------------------------------------------------------
step "Setup: a private nginx on 127.0.0.1:$NGINX_PORT, app ports $P1 $P2 $P3, everything under $TMP"
say "nginx -p $TMP/nginx/ -c conf/nginx.conf (master pid $(cat "$NGINX_PID_FILE")); the config cutover uses:"
sed -e '/^#/d' -e 's/^/    | /' "$CFG"

step "1. Is this host ready? cutover checks the config, nginx and the ports"
run_cutover check || die "cutover check found the host not ready"

step "2. First deploy: start v1, health-check it, point nginx at it"
run_cutover deploy --release v1 || die "deploy v1 failed"
expect_serving v1

step "3. Deploy v2 while curl sends traffic through nginx the whole time"
traffic_start v2
run_cutover deploy --release v2 || die "deploy v2 failed"
say "traffic during the deploy (every answer counted by the release that sent it):"
traffic_stop v1 v2 || die "requests failed or were missing during the v2 deploy"
expect_serving v2

step "4. What is live now (v1 is kept running idle, for an instant rollback)"
run_cutover status || die "cutover status failed"

step "5. Canary: v3 gets 10%, then 50%, then 100% of traffic, 2 s per step, while cutover watches its error rate"
traffic_start v3
rc=0
run_cutover deploy --release v3 --strategy canary || rc=$?
[ "$rc" = 0 ] || { traffic_stop v2 v3 || true; die "the canary deploy of v3 exited $rc, expected 0"; }
say "traffic during the canary, second by second:"
traffic_stop --per-second v2 v3 || die "requests failed or a release got no traffic during the canary"
expect_serving v3

step "6. A bad release: v4 never passes its health check (started with --fail-health); nginx is not touched"
echo "--fail-health" >"$TMP/flags/v4"
rc=0
run_cutover deploy --release v4 || rc=$?
say "cutover exited $rc (3 = the new release failed its health check; traffic untouched)"
[ "$rc" = 3 ] || die "the failing deploy of v4 exited $rc, expected 3"
expect_serving v3

step "7. Roll back: v2 is still running idle, so this is a flip of the nginx upstream"
run_cutover rollback || die "rollback failed"
expect_serving v2

step "8. History: every deploy and rollback, with its outcome and timings"
run_cutover history || die "cutover history failed"

step "Done in $((SECONDS - START)) s: v1 -> v2 under traffic, canary v3, failed v4 left v3 serving, rolled back to v2; no request failed."

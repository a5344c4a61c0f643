#!/usr/bin/env bash
# The app survives: a kill -9 and a power cut, with cutover's systemd runtime.
#
# Installs nginx, python3, curl and systemd if they are missing, builds cutover, then boots a private systemd
# (tests/systemd-sandbox.sh: PID 1 of its own pid+mount namespace with every boot unit masked, so this host's
# services and /tmp are left alone), starts a private nginx under a temp dir on free 127.0.0.1 ports, and:
#   1. deploys v1 and v2 of the fixture app as units cutover-survive@PORT.service;
#   2. kill -9s v2's main process while curl counts answers: systemd restarts it (Restart=on-failure, 100 ms);
#   3. cuts the power (kills that systemd and everything it runs) and boots it again: v2 comes back by itself,
#      with no cutover command, and v1 (retired) does not.
# Needs root (namespaces and mounts). Everything it started is stopped on exit; the temp dir is removed unless
# KEEP=1.
#
#   sudo bash examples/survive.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
export PATH="$PATH:/usr/sbin"
SANDBOX="$REPO/tests/systemd-sandbox.sh"

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
die() {
    printf '\nsurvive FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: the private systemd needs its own namespaces and mounts"
bash "$REPO/.ci/install-missing" nginx python3 curl systemctl=systemd
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs) and run this again"
echo "building cutover (cargo build --release --locked) ..."
cargo build --release --locked -q
CUTOVER="$REPO/target/release/cutover"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cutover-survive.XXXXXX")
CFG="$TMP/cutover.toml"
UNITS="$TMP/units"
UPSTREAM="$TMP/nginx/conf/survive.upstream.conf"
NGINX_PID_FILE="$TMP/nginx/logs/nginx.pid"
SD=""

cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    [ -n "$SD" ] && bash "$SANDBOX" stop "$SD" # the apps are the sandbox's: they go with it
    if [ -s "$NGINX_PID_FILE" ]; then
        pid=$(cat "$NGINX_PID_FILE")
        [[ "$pid" =~ ^[0-9]+$ ]] && kill -QUIT "$pid" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "stopped the sandbox and nginx; kept $TMP (KEEP=1)"
    else
        rm -rf "$TMP"
        echo "stopped the sandbox and nginx; removed $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r NGINX_PORT P1 P2 < <(python3 -c '
import random, socket
ports, p = [], random.randrange(20000, 30000)
while len(ports) < 3:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
    p += 1
print(*ports)
')
URL="http://127.0.0.1:$NGINX_PORT/"

# The runtime's systemctl and journalctl run inside the sandbox; its pid changes with every boot.
write_config() {
    cat >"$CFG" <<EOF
[app]
name = "survive"
start = "exec python3 '$REPO/fixtures/app.py' --port {{port}} --release {{release}}"
stop_timeout = "5s"

[ports]
pool = [$P1, $P2]

[health]
interval = "100ms"
deadline = "10s"

[nginx]
upstream_file = "$UPSTREAM"
prefix = "$TMP/nginx"
conf = "conf/nginx.conf"

[deploy]
state_dir = "$TMP/state"
verify = "1s"

[runtime]
kind = "systemd"
unit_dir = "$UNITS"
systemctl = ["bash", "$SANDBOX", "exec", "$SD", "systemctl"]
journalctl = ["bash", "$SANDBOX", "exec", "$SD", "journalctl"]
EOF
}
in_sandbox() { bash "$SANDBOX" exec "$SD" "$@"; }
serving() { curl -s --max-time 2 "$URL" | python3 -c 'import json,sys; print(json.load(sys.stdin)["release"])' 2>/dev/null || echo "(no answer)"; }

# Count answers for a few seconds in the background: "200 x N, 502 x M".
count_for() { # seconds -> file
    local until=$((SECONDS + $1))
    while [ $SECONDS -lt $until ]; do curl -s -o /dev/null -w '%{http_code}\n' --max-time 2 "$URL"; done >"$2"
}

step "boot a private systemd (PID 1 of its own namespace) reading units from $UNITS"
SD=$(bash "$SANDBOX" start "$UNITS")
say "systemd pid $SD: $(in_sandbox systemctl is-system-running)"

mkdir -p "$TMP/nginx/conf" "$TMP/nginx/logs" "$TMP/nginx/temp" "$TMP/state"
cat >"$TMP/nginx/conf/nginx.conf" <<EOF
worker_processes 2;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 1024; }
http {
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    access_log off;
    include $UPSTREAM;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { proxy_pass http://survive; }
    }
}
EOF
write_config
"$CUTOVER" -c "$CFG" render >"$UPSTREAM"
nginx -p "$TMP/nginx/" -c conf/nginx.conf
say "private nginx on $URL (outside the sandbox, like the host's nginx)"

step "deploy v1, then v2 (each instance is a unit; the live one is enabled for boot)"
"$CUTOVER" -c "$CFG" deploy --release v1 2>/dev/null | sed 's/^/    /'
"$CUTOVER" -c "$CFG" deploy --release v2 2>/dev/null | sed 's/^/    /'
V2_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["live"]["instances"][0]["port"])' "$TMP/state/survive/state.json")
UNIT="cutover-survive@$V2_PORT.service"
say "nginx serves: $(serving)"
say "enabled for boot: $(ls "$UNITS/multi-user.target.wants")"

step "kill -9 the live app's main process while curl counts answers"
count_for 4 "$TMP/kill.codes" &
COUNTER=$!
sleep 1
MAIN=$(in_sandbox systemctl show -p MainPID --value "$UNIT")
in_sandbox kill -9 "$MAIN"
say "killed main pid $MAIN of $UNIT"
wait "$COUNTER"
say "answers: $(sort "$TMP/kill.codes" | uniq -c | awk '{printf "%s x %s  ", $2, $1}')"
say "systemd: $(in_sandbox systemctl show -p NRestarts,MainPID "$UNIT" | tr '\n' ' ')"
say "nginx serves: $(serving)"

step "power cut: kill that systemd and everything it runs, then boot it again"
bash "$SANDBOX" stop "$SD"
SD=""
say "after the cut nginx answers: $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL")"
SD=$(bash "$SANDBOX" start "$UNITS")
write_config
for _ in $(seq 1 100); do [ "$(serving)" = v2 ] && break; sleep 0.1; done
say "booted again (systemd pid $SD); with no cutover command nginx serves: $(serving)"
say "v1's unit: $(in_sandbox systemctl is-active "cutover-survive@$P1.service" "cutover-survive@$P2.service" | tr '\n' ' ') (v2 active, v1 retired)"
[ "$(serving)" = v2 ] || die "v2 did not come back after the power cut"

step "cutover status, and the app's output from the journal"
"$CUTOVER" -c "$CFG" status | sed 's/^/    /'
"$CUTOVER" -c "$CFG" logs -n 5 | sed 's/^/    /'
"$CUTOVER" -c "$CFG" up | sed 's/^/    /'

#!/usr/bin/env bash
# A fleet on one machine: 3 hosts behind a load balancer, a release rolled across them by Ansible
# (examples/fleet/deploy.yml), cutover as the step on each host, a load client counting every answer.
#
#   sudo bash examples/fleet/run.sh            # the full run (a few minutes); writes examples/fleet/results/
#   sudo bash examples/fleet/run.sh --small    # a few hundred requests per scenario (what the test suite runs)
#   options: --cutover PATH (use this binary instead of building one), --json PATH (write the result there),
#            KEEP=1 (keep the temp dir: configs, nginx and app logs, Ansible's output)
#
# Needs root: each host is a network namespace (ip netns). Installs what is missing (nginx, python3, iproute2,
# openssh-server and -client, python3-venv) and ansible-core from PyPI into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/cutover-fleet-venv, builds cutover (cargo build --release) unless --cutover.
#
# What it builds, all under one temp dir and names unique to this run (cofleet-<id>-web<N>, cf<id>*):
#   - a private bridge with a free /24 of 198.18.0.0/15 (the range set aside for network tests);
#   - 3 hosts web1..web3, each a network namespace on the bridge with its own loopback, running its own sshd
#     (how Ansible reaches it), its own nginx (nginx -p PREFIX -c CONF, never the system nginx) with cutover's
#     upstream file included, its own cutover config and state dir; cutover starts the fixture app
#     (fixtures/app.py) inside the namespace on 127.0.0.1;
#   - a front nginx in the root namespace on 127.0.0.1 standing in for the load balancer (examples/fleet/sim/);
#   - an Ansible inventory for those hosts; then examples/fleet/sim/scenarios.py runs the scenarios.
# On exit, also on failure or Ctrl-C, it stops every process in its namespaces, its front nginx and its Ansible
# run (by pid), deletes its namespaces, veths and bridge, and removes the temp dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd -P)
FLEET="$REPO/examples/fleet"
export PATH="$PATH:/usr/sbin:/sbin"

SMALL=0
CUTOVER=""
JSON_OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    --small) SMALL=1 ;;
    --cutover) CUTOVER=$(realpath "$2") && shift ;;
    --json) JSON_OUT=$(realpath -m "$2") && shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'fleet: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root: each simulated host is a network namespace, and only root can create one (run it with sudo)"

# --- What it needs ---------------------------------------------------------------------------------------------------
bash .ci/install-missing nginx python3 curl ip=iproute2 sshd=openssh-server ssh=openssh-client \
    ssh-keygen=openssh-client py:ensurepip=python3-venv
SSHD=$(command -v sshd)

# ansible-core from PyPI, once, into a venv of its own (the marker file says which requirement it holds).
ANSIBLE_REQ='ansible-core>=2.19,<2.20'
VENV=${CUTOVER_FLEET_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cutover-fleet-venv}
mkdir -p "$(dirname "$VENV")"
(
    flock 9
    if ! "$VENV/bin/ansible-playbook" --version >/dev/null 2>&1 || [ "$(cat "$VENV/.cutover-fleet" 2>/dev/null)" != "$ANSIBLE_REQ" ]; then
        if [ -e "$VENV" ] && [ ! -e "$VENV/.cutover-fleet" ]; then
            die "$VENV exists and is not this example's venv: move it away or set CUTOVER_FLEET_VENV"
        fi
        log "installing $ANSIBLE_REQ into $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "$ANSIBLE_REQ"
        echo "$ANSIBLE_REQ" >"$VENV/.cutover-fleet"
    fi
) 9>"$VENV.lock"

if [ -z "$CUTOVER" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs), or pass --cutover PATH"
    log "building cutover (cargo build --release --locked)"
    cargo build --release --locked -q
    CUTOVER="$REPO/target/release/cutover"
fi
[ -x "$CUTOVER" ] || die "no cutover binary at $CUTOVER"

# --- Cleanup: only what this run created, by name and pid --------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cutover-fleet.XXXXXX")
CREATED_NS=()
CREATED_LINKS=()
DRIVER_PID=""

alive() { # pid is running (a zombie does not count)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [ "${s%% *}" != Z ]
}

wait_gone() { # seconds pid...: wait until none of the pids runs
    local secs=$1 p i left
    shift
    for ((i = 0; i < secs * 10; i++)); do
        left=0
        for p in "$@"; do alive "$p" && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

stop_namespace_processes() { # ns: every process in our namespace is one this run started (sshd, nginx, apps)
    local pids p
    pids=$(ip netns pids "$1" 2>/dev/null) || return 0
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    # shellcheck disable=SC2086
    if ! wait_gone 5 $pids; then
        for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    fi
}

cleanup() {
    local rc=$? ns link pid i sock
    set +e
    trap - EXIT INT TERM
    if [ -n "$DRIVER_PID" ] && alive "$DRIVER_PID"; then
        kill -TERM "$DRIVER_PID" 2>/dev/null # it stops its Ansible run and its load clients
        wait_gone 10 "$DRIVER_PID" || kill -KILL "$DRIVER_PID" 2>/dev/null
    fi
    for sock in "$TMP"/ansible/cp/*; do # Ansible's SSH connection masters of this run
        [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit fleet-host >/dev/null 2>&1
    done
    for ns in "${CREATED_NS[@]}"; do stop_namespace_processes "$ns"; done
    if [ -s "$TMP/front/logs/nginx.pid" ]; then
        pid=$(cat "$TMP/front/logs/nginx.pid")
        if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
            kill -QUIT "$pid" 2>/dev/null
            wait_gone 5 "$pid" || kill -TERM "$pid" 2>/dev/null
        fi
    fi
    for ns in "${CREATED_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    for ((i = ${#CREATED_LINKS[@]} - 1; i >= 0; i--)); do
        link=${CREATED_LINKS[$i]}
        ip link show "$link" >/dev/null 2>&1 && ip link del "$link" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then
        log "cleaned up: stopped this run's processes, deleted its namespaces and links; kept $TMP (KEEP=1)"
    else
        rm -rf "$TMP"
        log "cleaned up: stopped this run's processes, deleted its namespaces and links, removed $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The private network: a bridge with a /24 nobody here uses -------------------------------------------------------
ID=""
for _ in $(seq 20); do
    id=$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
    if ip link add "cf${id}br" type bridge 2>/dev/null; then
        ID=$id
        CREATED_LINKS+=("cf${ID}br")
        break
    fi
done
[ -n "$ID" ] || die "could not create a bridge with a free name"
BRIDGE="cf${ID}br"

NET=""
for _ in $(seq 40); do
    n="198.$((18 + RANDOM % 2)).$((RANDOM % 256))"
    [ -z "$(ip -4 route show match "$n.0/24" | grep -v '^default')" ] || continue
    [ -z "$(ip -4 route show root "$n.0/24")" ] || continue
    ip addr add "$n.1/24" dev "$BRIDGE"
    if [ "$(ip -4 -o addr show to "$n.0/24" | wc -l)" = 1 ]; then
        NET=$n
        break
    fi
    ip addr del "$n.1/24" dev "$BRIDGE" # another run took it at the same moment
done
[ -n "$NET" ] || die "no free /24 in 198.18.0.0/15 for the private bridge"
ip link set "$BRIDGE" up
log "run $ID: bridge $BRIDGE on $NET.0/24, temp dir $TMP"

# --- SSH: one key for the control node, one host key per host, known_hosts written up front -------------------------
mkdir -p "$TMP/ssh" "$TMP/ansible/cp" "$TMP/ansible/tmp" "$TMP/logs" "$TMP/front/conf" "$TMP/front/logs" "$TMP/front/temp"
ssh-keygen -q -t ed25519 -N '' -C "cutover-fleet-$ID" -f "$TMP/ssh/id_ed25519"
cp "$TMP/ssh/id_ed25519.pub" "$TMP/ssh/authorized_keys"
: >"$TMP/ssh/known_hosts"
mkdir -p -m 0755 /run/sshd # sshd's privilege-separation dir (systemd creates it for the system sshd)

# --- The hosts ----------------------------------------------------------------------------------------------------
HOSTS=(web1 web2 web3)
for i in 1 2 3; do
    name="web$i"
    ns="cofleet-$ID-$name"
    veth="cf${ID}w$i"
    ip="$NET.1$i"
    H="$TMP/$name"
    ip netns add "$ns"
    CREATED_NS+=("$ns")
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    CREATED_LINKS+=("$veth")
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up

    mkdir -p "$H/nginx/conf" "$H/nginx/logs" "$H/nginx/temp" "$H/state" "$H/flags" "$H/ssh"
    bash "$FLEET/sim/host-files.sh" "$H" "$name" "$ip" "$REPO/fixtures/app.py" "$SMALL"

    ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$H/ssh/host_ed25519"
    echo "$ip $(cut -d' ' -f1,2 "$H/ssh/host_ed25519.pub")" >>"$TMP/ssh/known_hosts"
    cat >"$H/ssh/sshd_config" <<EOF
# sshd of simulated host $name (network namespace $ns), started as: sshd -f $H/ssh/sshd_config
ListenAddress $ip:22
HostKey $H/ssh/host_ed25519
PidFile $H/ssh/sshd.pid
AuthorizedKeysFile $TMP/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
Subsystem sftp internal-sftp
EOF

    "$CUTOVER" -c "$H/cutover.toml" render >"$H/nginx/conf/shop.upstream.conf"
    ip netns exec "$ns" nginx -p "$H/nginx/" -c conf/nginx.conf
    ip netns exec "$ns" "$SSHD" -f "$H/ssh/sshd_config" -E "$H/ssh/sshd.log"
done

# --- The front: the load balancer's stand-in, in the root namespace --------------------------------------------------
FRONT_PORT=$(python3 -c '
import random, socket
p = random.randrange(20000, 30000)
while True:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        break
    except OSError:
        p += 1
    finally:
        s.close()
print(p)
')
bash "$FLEET/sim/front.sh" init "$TMP/front" "$FRONT_PORT" "$NET.11" "$NET.12" "$NET.13"
nginx -p "$TMP/front/" -c conf/nginx.conf

# --- The inventory Ansible uses -----------------------------------------------------------------------------------
PY_REMOTE=/usr/bin/python3
[ -x "$PY_REMOTE" ] || PY_REMOTE=auto_silent
{
    echo "# Generated by examples/fleet/run.sh: the simulated hosts (network namespaces on bridge $BRIDGE)."
    echo "# For real hosts: their addresses, your SSH user and key, and cutover_config where cutover.toml lives."
    echo "web:"
    echo "  hosts:"
    for i in 1 2 3; do
        echo "    web$i: {ansible_host: $NET.1$i, cutover_config: $TMP/web$i/cutover.toml}"
    done
    echo "  vars:"
    echo "    ansible_user: root"
    echo "    ansible_ssh_private_key_file: $TMP/ssh/id_ed25519"
    echo "    ansible_ssh_common_args: -o UserKnownHostsFile=$TMP/ssh/known_hosts -o StrictHostKeyChecking=yes"
    echo "    ansible_python_interpreter: $PY_REMOTE"
    echo "    cutover_bin: $CUTOVER"
    echo "    lb_deregister_command: bash $FLEET/sim/front.sh deregister $TMP/front {{ ansible_host }}"
    echo "    lb_register_command: bash $FLEET/sim/front.sh register $TMP/front {{ ansible_host }}"
} >"$TMP/inventory.yml"

# --- Wait for every host's sshd and nginx, then run the scenarios -------------------------------------------------
wait_tcp() { # host port: up to 5 s
    local i
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
for i in 1 2 3; do
    wait_tcp "$NET.1$i" 22 || die "sshd of web$i did not start (see $TMP/web$i/ssh/sshd.log)"
    wait_tcp "$NET.1$i" 80 || die "nginx of web$i did not start (see $TMP/web$i/nginx/logs/error.log)"
done
wait_tcp 127.0.0.1 "$FRONT_PORT" || die "the front nginx did not start (see $TMP/front/logs/error.log)"

cat >"$TMP/fleet.json" <<EOF
{
  "id": "$ID", "tmp": "$TMP", "small": $([ "$SMALL" = 1 ] && echo true || echo false),
  "front_port": $FRONT_PORT, "front_dir": "$TMP/front", "bridge": "$BRIDGE", "net": "$NET.0/24",
  "cutover": "$CUTOVER", "ansible_playbook": "$VENV/bin/ansible-playbook", "inventory": "$TMP/inventory.yml",
  "playbook": "$FLEET/deploy.yml", "callback_plugins": "$FLEET/sim/callback_plugins",
  "hosts": [
$(for i in 1 2 3; do
    sep=","
    [ "$i" = 3 ] && sep=""
    echo "    {\"name\": \"web$i\", \"ns\": \"cofleet-$ID-web$i\", \"ip\": \"$NET.1$i\", \"dir\": \"$TMP/web$i\", \"config\": \"$TMP/web$i/cutover.toml\"}$sep"
done)
  ]
}
EOF
log "hosts web1..web3 up (sshd + nginx each), front nginx on 127.0.0.1:$FRONT_PORT; running the scenarios"

args=(--env "$TMP/fleet.json")
[ -n "$JSON_OUT" ] && args+=(--json "$JSON_OUT")
[ "$SMALL" = 1 ] || args+=(--results "$FLEET/results")
python3 "$FLEET/sim/scenarios.py" "${args[@]}" &
DRIVER_PID=$!
rc=0
wait "$DRIVER_PID" || rc=$?
DRIVER_PID=""
exit "$rc"

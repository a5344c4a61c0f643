#!/usr/bin/env bash
# systemd-sandbox.sh: boot a private systemd, PID 1 of its own pid+mount namespace, for tests of cutover's systemd
# runtime on a machine whose PID 1 is not systemd (containers, CI). tests/common/sandbox.rs drives it.
#
#   systemd-sandbox start UNIT_DIR     boots it; prints its pid (outside the namespace)
#   systemd-sandbox exec PID CMD...    runs CMD inside it (systemctl, journalctl, cutover …)
#   systemd-sandbox stop PID           kills it and everything it runs (a power cut, not a shutdown)
#
# UNIT_DIR is searched for units before the usual paths (SYSTEMD_UNIT_PATH), so a test writes its units there
# instead of /etc/systemd/system; units enabled there (UNIT_DIR/multi-user.target.wants/) come back when the
# sandbox is started again: stop + start is a reboot. /run is private to the sandbox. Everything boot would
# pull in from the host (tmpfiles, which empties /tmp; sysusers; timers; the distro's nginx, cron …) is masked,
# so it runs only journald and what the test starts. The network is the host's: apps it runs listen on the
# host's loopback, where a private nginx outside the sandbox reaches them.
#
# Never boot systemd on a shared machine any other way: an unmasked boot runs tmpfiles, which empties /tmp for
# everyone. Needs root (namespaces, mounts) and Debian's `systemd` package (.ci/test installs it).
set -euo pipefail
cmd=${1:-}; shift || true
case $cmd in
start)
  unit_dir=${1:?usage: systemd-sandbox start UNIT_DIR}
  mkdir -p "$unit_dir"; unit_dir=$(cd "$unit_dir" && pwd)
  [ -x /lib/systemd/systemd ] || { echo "systemd-sandbox: /lib/systemd/systemd missing (apt-get install systemd)" >&2; exit 1; }
# shellcheck disable=SC2016  # the script runs inside the namespace: expanded there, not here
  CG="cutover-sandbox.$$.$RANDOM" SYSTEMD_UNIT_PATH="$unit_dir:" unshare --pid --fork --mount --mount-proc --propagation private bash -c '
    mount -t tmpfs -o mode=755 tmpfs /run || exit 1
    mkdir -p /run/systemd/system /run/lock
    for t in sysinit basic sockets timers paths local-fs remote-fs multi-user graphical getty network network-online cryptsetup veritysetup swap; do
      for d in /lib/systemd/system/$t.target.wants /etc/systemd/system/$t.target.wants; do
        [ -d "$d" ] || continue
        for u in "$d"/*; do
          n=${u##*/}
          case $n in systemd-journald.socket|systemd-journald-dev-log.socket|systemd-journald.service) continue;; esac
          [ -e "/run/systemd/system/$n" ] || ln -s /dev/null "/run/systemd/system/$n"
        done
      done
    done
    for n in tmp.mount systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer \
             systemd-journal-flush.service systemd-sysusers.service systemd-firstboot.service \
             systemd-machine-id-commit.service systemd-random-seed.service systemd-update-utmp.service \
             systemd-remount-fs.service systemd-logind.service; do
      [ -e "/run/systemd/system/$n" ] || ln -s /dev/null "/run/systemd/system/$n"
    done
    # its own cgroup subtree, so sandboxes side by side never share a unit cgroup and stop can remove it all
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
      [ -w "$h/cgroup.procs" ] || continue
      mkdir -p "$h/$CG" && echo 0 > "$h/$CG/cgroup.procs"
    done
    exec /lib/systemd/systemd --system --unit=multi-user.target --log-target=null
  ' </dev/null >/dev/null 2>&1 &
  parent=$! pid=""
  for _ in $(seq 1 100); do pid=$(pgrep -P "$parent" | head -1 || true); [ -n "$pid" ] && break; sleep 0.05; done
  [ -n "$pid" ] || { echo "systemd-sandbox: systemd did not start" >&2; exit 1; }
  for _ in $(seq 1 200); do
    st=$(nsenter -t "$pid" -m -p -- systemctl is-system-running 2>/dev/null || true)
    case $st in running|degraded) echo "$pid"; exit 0;; esac; sleep 0.05
  done
  echo "systemd-sandbox: systemd $pid did not come up (state: ${st:-none})" >&2; kill -9 "$pid"; exit 1 ;;
exec)
  pid=${1:?usage: systemd-sandbox exec PID CMD...}; shift
  exec nsenter -t "$pid" -m -p -- "$@" ;;
stop)
  pid=${1:?usage: systemd-sandbox stop PID}
  cg=$(sed -n 's|^[0-9]*:name=systemd:/\(cutover-sandbox\.[^/]*\).*|\1|p' "/proc/$pid/cgroup" 2>/dev/null || true)
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if [ -n "$cg" ]; then   # the cgroups empty once the namespace's processes are gone
    for _ in $(seq 1 40); do
      for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
        [ -d "$h/$cg" ] && find "$h/$cg" -depth -type d -exec rmdir {} + 2>/dev/null
      done
      [ -d "/sys/fs/cgroup/systemd/$cg" ] || [ -d "/sys/fs/cgroup/unified/$cg" ] || break
      sleep 0.05
    done
  fi ;;
*) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac

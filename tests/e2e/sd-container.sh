#!/bin/bash
# Throw-away systemd container for tests/systemd_e2e.rs (copied from a tested recipe, so the
# tests depend on nothing outside the project).
#
# Boots the host's own systemd as PID 1 of fresh pid/mount/uts/ipc/net/cgroup namespaces, on
# an overlay of the host root whose upper layer is a tmpfs: nothing is written to the host.
# Needs root, unshare/nsenter/setpriv (util-linux) and a cgroup2 hierarchy.
#
#   sd-container.sh start DIR   -> boots; the host PID of the container's PID 1 goes to DIR/pid1
#   sd-container.sh exec  DIR cmd...  -> run cmd inside (all namespaces)
#   sd-container.sh stop  DIR   -> poweroff, wait, remove the cgroup, rm -rf DIR
#
# Units dropped into DIR/units/ before "start" are copied into the container's
# /etc/systemd/system; DIR/share is /host inside (read-write).
set -euo pipefail
cmd=$1; T=$(readlink -f "$2"); shift 2
CGNAME=sdct.$(basename "$T")
# cgroup2 hierarchy: pure v2 hosts have it at /sys/fs/cgroup, hybrid hosts at /sys/fs/cgroup/unified
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then CG2=/sys/fs/cgroup; else CG2=/sys/fs/cgroup/unified; fi
CG=$CG2/$CGNAME

inner() {   # runs as PID 1 of the new namespaces, before exec'ing systemd
  set -e
  R=$T/root
  mount -n --make-rprivate /
  mount -n -t tmpfs -o mode=755 tmpfs "$T/ovl"
  mkdir -p "$T/ovl/upper" "$T/ovl/work"
  mount -n -t overlay overlay -o "lowerdir=/,upperdir=$T/ovl/upper,workdir=$T/ovl/work" "$R"
  # API file systems
  mount -n -t proc proc "$R/proc"
  mount -n --bind "$R/proc/sys" "$R/proc/sys";  mount -n -o remount,bind,ro "$R/proc/sys"
  if [ -e "$R/proc/sysrq-trigger" ]; then mount -n --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"; mount -n -o remount,bind,ro "$R/proc/sysrq-trigger"; fi
  mount -n -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
  mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"   # root = our cgroup (cgroupns)
  mount -n -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
  for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount -n --bind "/dev/$d" "$R/dev/$d"; done
  mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
  mount -n -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
  ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
  touch "$R/dev/console"; mount -n --bind "$T/console.log" "$R/dev/console"
  mount -n -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
  mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
  # share a host directory (read-write) with the container
  mkdir -p "$R/host"; mount -n --bind "$T/share" "$R/host"
  # extra binds: SDCT_BINDS="/abs/src:/abs/dst /other:/other"
  for b in ${SDCT_BINDS:-}; do mkdir -p "$R${b#*:}"; mount -n --bind "${b%%:*}" "$R${b#*:}"; done
  # do not boot the host's enabled services/timers; boot only what we install
  rm -rf "$R"/etc/systemd/system/*.wants
  cp -a "$T/units/." "$R/etc/systemd/system/" 2>/dev/null || true
  echo sdct > "$R/etc/hostname"
  cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot; umount -n -l /.oldroot; rmdir /.oldroot; cd /
  exec env -i container=sdct PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-wake_alarm,-syslog,-mac_admin,-mac_override,-sys_pacct,-block_suspend,-audit_read,-perfmon,-bpf,-checkpoint_restore \
    /lib/systemd/systemd --unit="${SDCT_UNIT:-basic.target}" --show-status=no
}

case $cmd in
start)
  mkdir -p "$T/root" "$T/ovl" "$T/share" "$T/units"; : > "$T/console.log"
  mkdir -p "$CG"
  (
    echo $BASHPID > "$CG/cgroup.procs"
    export T SDCT_UNIT SDCT_BINDS
    exec unshare --pid --fork --mount --uts --ipc --net --cgroup -- bash -c "$(declare -f inner); inner"
  ) > "$T/unshare.log" 2>&1 &
  echo $! > "$T/unshare.pid"
  p=""; st=""
  for i in $(seq 100); do
    p=$(cat /proc/$(cat "$T/unshare.pid")/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = systemd ] && break; sleep 0.1
  done
  echo "$p" > "$T/pid1"
  # wait for the manager to be reachable
  for i in $(seq 200); do
    [ -n "$p" ] || break
    st=$(nsenter -t "$p" -a systemctl is-system-running 2>/dev/null || true)
    case $st in running|degraded) break;; esac; sleep 0.1
  done
  echo "container PID1 (host pid) $p, state: $st"
  case $st in
  running|degraded) ;;
  *) echo "sd-container.sh: systemd did not come up; unshare.log:" >&2; cat "$T/unshare.log" >&2
     echo "console.log (last 30 lines):" >&2; tail -n 30 "$T/console.log" >&2; exit 1;;
  esac
  ;;
exec)
  exec nsenter -t "$(cat "$T/pid1")" -a -- "$@"
  ;;
stop)
  p=$(cat "$T/pid1"); u=$(cat "$T/unshare.pid")
  kill -RTMIN+4 "$p" 2>/dev/null || true            # SIGRTMIN+4 = poweroff
  for i in $(seq 100); do kill -0 "$u" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$u" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; sleep 0.5; fi
  # remove the cgroup subtree (deepest first)
  if [ -d "$CG" ]; then find "$CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  [ -d "$CG" ] && echo "WARN: $CG still present" || true
  rm -rf "$T"
  echo stopped
  ;;
esac

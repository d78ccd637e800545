#!/usr/bin/env bash
# Idle daemon with 100 scheduled jobs (50 databases x backup + vacuum): RSS, CPU and threads.
# Usage: benches/idle_daemon.sh [SECONDS]   (builds the release binary first)
set -euo pipefail
secs=${1:-120}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-idle.XXXXXX)
trap 'kill $P 2>/dev/null || true; rm -rf "$T"' EXIT
{
  printf '[daemon]\nstate_dir = "%s/state"\nlock_dir = "%s/locks"\ntimezone = "Europe/Berlin"\n' "$T" "$T"
  for i in $(seq 1 50); do
    sqlite3 "$T/db$i.db" "create table t(x); pragma journal_mode=wal;" >/dev/null
    printf '[[database]]\nname = "db%d"\npath = "%s/db%d.db"\n' "$i" "$T" "$i"
    printf '[database.backup]\nschedule = "%d 2 * * *"\njitter = "30m"\n' $((i % 60))
    printf '[database.vacuum]\nschedule = "%d 3 * * SUN"\n' $((i % 60))
  done
} > "$T/lk.toml"
"$bin" -c "$T/lk.toml" daemon 2>"$T/daemon.log" &
P=$!
sleep 5
hz=$(getconf CLK_TCK)
t0=$(awk '{print $14+$15}' /proc/$P/stat)
sleep "$secs"
t1=$(awk '{print $14+$15}' /proc/$P/stat)
jobs=$(grep -o '[0-9]* scheduled job' "$T/daemon.log" | head -1)
echo "jobs: $jobs"
echo "rss_kib: $(awk '/VmRSS/ {print $2}' /proc/$P/status)"
echo "cpu_percent_of_one_core: $(python3 -c "print(round(($t1-$t0)/$hz/$secs*100, 3))") (over ${secs}s)"
echo "threads: $(ls /proc/$P/task | wc -l)"
kill -TERM $P
wait $P
echo "exit: $?"

#!/usr/bin/env bash
# Backup speed on a WAL database (default 1 GiB), side by side in one run:
#   cp + fsync, sqlite3 .backup, litekeeper idle, litekeeper under ~200 writes/s.
# Usage: benches/backup.sh [SIZE_MIB]      (needs sqlite3 and python3; builds release)
set -euo pipefail
size_mib=${1:-1024}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/litekeeper
T=$(mktemp -d /tmp/lk-bench-backup.XXXXXX)
W=0
trap 'kill $W 2>/dev/null || true; rm -rf "$T"' EXIT
db=$T/app.db
rows=$((size_mib * 1024 / 4))   # 4 KiB blobs
echo "building a ${size_mib} MiB WAL database ($rows rows)..."
sqlite3 "$db" "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB, ts INTEGER);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO t(data, ts) SELECT randomblob(4000), i FROM n;" >/dev/null
bytes=$(stat -c %s "$db")
mib() { python3 -c "print(f'{$bytes/1048576/$1:.0f}')"; }
now() { date +%s.%N; }

cat > "$T/lk.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "app"
path = "$db"
[database.backup]
dir = "$T/backups"
verify = "none"
keep = { last = 1 }
CONF
run_lk() {
  local out; out=$("$bin" -c "$T/lk.toml" --log-format json run app backup 2>&1 >/dev/null)
  echo "$out" | python3 -c '
import json,sys
for l in sys.stdin:
    try: e=json.loads(l)
    except Exception: continue
    if e.get("litekeeper_outcome"):
        f=json.loads(e.get("litekeeper_figures","{}"))
        print(e["litekeeper_duration_ms"]/1000, f.get("restarts"), e["litekeeper_outcome"])'
}
start_writer() {
  python3 - "$db" > "$T/writer.log" 2>&1 <<'PY' &
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
n = 0; worst = 0.0; start = time.time()
while True:
    t = time.time()
    c.execute("INSERT INTO t(data, ts) VALUES (randomblob(200), ?)", (n,))
    worst = max(worst, time.time() - t); n += 1
    time.sleep(max(0, start + n / 200 - time.time()))
    if n % 100 == 0:
        print(f"{n/(time.time()-start):.0f} commits/s, slowest commit {worst*1000:.0f} ms", flush=True)
PY
  W=$!
}
median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
cp_t=(); sq_t=(); idle_t=(); load_t=(); restarts=0; outcomes=""
for round in 1 2 3; do
  echo "round $round..."
  t0=$(now); cp "$db" "$T/cp.db"; sync -f "$T/cp.db"; cp_t+=("$(python3 -c "print($(now)-$t0)")"); rm -f "$T/cp.db"
  t0=$(now); sqlite3 "$db" ".backup '$T/sqlite3.db'"; sync -f "$T/sqlite3.db"; sq_t+=("$(python3 -c "print($(now)-$t0)")"); rm -f "$T/sqlite3.db"
  read t r o < <(run_lk); idle_t+=("$t"); restarts=$((restarts + r)); outcomes="$outcomes $o"
  start_writer; sleep 1
  read t r o < <(run_lk); load_t+=("$t"); restarts=$((restarts + r)); outcomes="$outcomes $o"
  kill $W; wait $W 2>/dev/null || true
  rate=$(tail -1 "$T/writer.log")
done
t_cp=$(median "${cp_t[@]}"); t_sq=$(median "${sq_t[@]}"); t_idle=$(median "${idle_t[@]}"); t_load=$(median "${load_t[@]}")
echo "runs (s): cp ${cp_t[*]} | sqlite3 ${sq_t[*]} | idle ${idle_t[*]} | load ${load_t[*]}"
echo "litekeeper outcomes:$outcomes; backup restarts in all runs: $restarts; writer (last round): $rate"
printf '\n%-34s %9s %9s %9s\n' "backup of $((bytes/1048576)) MiB (median of 3)" "seconds" "MiB/s" "vs cp"
printf '%-34s %9.2f %9s %9s\n' "cp + fsync" "$t_cp" "$(mib $t_cp)" "1.00"
printf '%-34s %9.2f %9s %9.2f\n' "sqlite3 .backup" "$t_sq" "$(mib $t_sq)" "$(python3 -c "print($t_cp/$t_sq)")"
printf '%-34s %9.2f %9s %9.2f\n' "litekeeper idle" "$t_idle" "$(mib $t_idle)" "$(python3 -c "print($t_cp/$t_idle)")"
printf '%-34s %9.2f %9s %9.2f\n' "litekeeper under ~200 writes/s" "$t_load" "$(mib $t_load)" "$(python3 -c "print($t_cp/$t_load)")"
printf 'under load / idle: %.2f\n' "$(python3 -c "print($t_load/$t_idle)")"

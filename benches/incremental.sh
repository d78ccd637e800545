#!/usr/bin/env bash
# Incremental backups against full verified ones, side by side in one run, on a WAL database
# (default 1 GiB of 4 KiB rows):
#   1. a full verified backup (verify = "quick", no compression): time and bytes;
#   2. the first incremental after it (builds the chain's page-hash index from the full);
#   3. 1 % of the pages changed at random, then an incremental: time and bytes (targets:
#      <= 35 % of the full's time, <= 2 % of its bytes);
#   4. POINTS-1 more points (default 144 in all: a day at 10 minutes), each after changing
#      CHURN_PERMILLE per mille of the rows (default 1), then `restore --at latest` through all
#      of them next to restoring the full alone (target <= 2x).
# Usage: benches/incremental.sh [SIZE_MIB] [POINTS]   (needs sqlite3 and python3; builds
# release unless LITEKEEPER_BIN names a binary)
set -euo pipefail
size_mib=${1:-1024}
points=${2:-144}
churn=${CHURN_PERMILLE:-1}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-bench-incr.XXXXXX)
trap 'rm -rf "$T"' EXIT
db=$T/app.db
rows=$((size_mib * 1024 / 4))   # one 4000-byte blob per row: about one page each
echo "building a ${size_mib} MiB WAL database ($rows rows)..."
sqlite3 "$db" "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO t(data) SELECT randomblob(4000) FROM n;" >/dev/null
cat > "$T/lk.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "app"
path = "$db"
[database.backup]
dir = "$T/backups"
verify = "quick"
keep = { last = 2 }
incremental = { keep = "7d" }
CONF
now() { date +%s.%N; }
# Run a command quietly, print its wall time in seconds.
timed() { local s; s=$(now); "$@" >/dev/null 2>"$T/err" || { cat "$T/err"; exit 1; }; python3 -c "print(f'{$(now)-$s:.2f}')"; }
change() { # change $1 per mille of the rows at random, in one transaction
  sqlite3 "$db" "UPDATE t SET data = randomblob(4000) WHERE id IN
    (SELECT abs(random()) % $rows + 1 FROM t LIMIT max(1, $rows * $1 / 1000));" >/dev/null
}
newest() { ls -t "$T/backups" | grep "$1" | head -1; }
size() { stat -c %s "$T/backups/$1"; }

full_s=$(timed "$bin" -c "$T/lk.toml" run app backup)
full=$(newest '\.db$'); full_b=$(size "$full")
first_s=$(timed "$bin" -c "$T/lk.toml" run app incremental)
first_b=$(size "$(newest '\.delta$')")
change 10
inc_s=$(timed "$bin" -c "$T/lk.toml" run app incremental)
inc_b=$(size "$(newest '\.delta$')")
echo "adding $((points - 2)) more points (${churn} per mille of the rows changed before each)..."
for _ in $(seq 3 "$points"); do
  change "$churn"
  "$bin" -c "$T/lk.toml" run app incremental >/dev/null 2>&1
done
n=$(python3 -c "import json;print(len(json.load(open('$T/backups/manifest.json'))['deltas']))")
restore_full_s=$(timed "$bin" -c "$T/lk.toml" restore app "$full" --to "$T/r-full.db")
restore_pit_s=$(timed "$bin" -c "$T/lk.toml" restore app --at latest --to "$T/r-latest.db")
same=$(python3 - "$db" "$T/r-latest.db" <<'PY'
import sqlite3, sys
q = "SELECT count(*), sum(length(data)), group_concat(hex(substr(data,1,8)),'') FROM (SELECT data FROM t ORDER BY id)"
a, b = (sqlite3.connect(p).execute(q).fetchone() for p in sys.argv[1:])
print("yes" if a == b else "NO")
PY
)
ratio() { python3 -c "print(f'{100*$1/$2:.1f} %')"; }
cat <<OUT

database: $(stat -c %s "$db") bytes, $rows rows; $n points in the chain; latest point equals the live data: $same
| what | time (s) | bytes |
|---|---|---|
| full verified backup (quick) | $full_s | $full_b |
| first incremental after it (index built from the full) | $first_s | $first_b |
| incremental, 1 % of pages changed | $inc_s ($(ratio "$inc_s" "$full_s") of the full) | $inc_b ($(ratio "$inc_b" "$full_b") of the full) |
| restore the full alone | $restore_full_s | |
| restore --at latest through $n points | $restore_pit_s ($(python3 -c "print(f'{$restore_pit_s/$restore_full_s:.2f}')")x the full) | |
OUT

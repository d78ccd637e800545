#!/usr/bin/env bash
# Cost of the vacuum job's free-space measurement (issue 16, item 5) on a ~1 GiB database
# whose rows were deleted at random (pages half full, freelist near 0): 10.8M rows of
# 40-byte blobs plus an index on the blob, then about half the rows deleted at random with
# secure_delete off. Warm page cache (each command runs once before it is timed), single run.
# Prints: file size, pages, freelist; the time of `PRAGMA quick_check` (for scale) and of the
# bare dbstat pass (sqlite3 CLI), then `litekeeper check` and a `litekeeper run … vacuum`
# that is skipped at min_free = "99%" (so it only measures), each with its output.
# Usage: benches/vacuum_measure.sh [ROWS]   (needs sqlite3 with dbstat and python3; builds
#        release unless LITEKEEPER_BIN=/path/to/litekeeper is set)
set -euo pipefail
rows=${1:-10800000}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-bench-vmeasure.XXXXXX)
trap 'rm -rf "$T"' EXIT
db=$T/frag.db
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(sqlite3 --version | cut -d' ' -f1) CLI; $("$bin" --version 2>/dev/null || echo "$bin")"
t0=$(date +%s.%N)
sqlite3 "$db" "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA secure_delete = OFF;
  PRAGMA cache_size = -1048576;
  CREATE TABLE doc(id INTEGER PRIMARY KEY, body BLOB);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO doc(id, body) SELECT i, randomblob(40) FROM n;
  CREATE INDEX doc_body ON doc(body);
  DELETE FROM doc WHERE abs(random()) % 2 = 0;
  PRAGMA journal_mode = WAL;" >/dev/null
sqlite3 "$db" "SELECT printf('database: %d MiB, %d pages of %d, %d free (%.2f%%), %d rows',
  page_count * page_size / 1048576, page_count, page_size, freelist_count,
  100.0 * freelist_count / page_count, (SELECT count(*) FROM doc))
  FROM pragma_page_count, pragma_page_size, pragma_freelist_count;"
echo "setup took $(python3 -c "import time; print(f'{time.time()-$t0:.0f}')") s"
cat > "$T/c.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "bench"
path = "$db"
[database.vacuum]
min_free = "99%"
CONF
timed() {  # label command...
  local label=$1; shift
  "$@" >/dev/null 2>&1 || true   # warm the page cache
  local s e out
  s=$(date +%s.%N)
  out=$("$@" 2>/dev/null) || true
  e=$(date +%s.%N)
  printf '%-40s %6.2f s\n' "$label" "$(python3 -c "print($e-$s)")"
  printf '%s\n' "$out" | sed 's/^/    | /' | grep -v '^    | $' | tail -4 || true
}
timed "cat file > /dev/null (the floor)" sh -c 'cat "$1" >/dev/null' _ "$db"
timed "sqlite3 PRAGMA quick_check" sqlite3 "$db" "PRAGMA quick_check"
timed "sqlite3 dbstat aggregate pass" sqlite3 "$db" \
  "SELECT sum(unused), sum(pageno) FROM dbstat WHERE schema = 'main' AND aggregate = TRUE"
timed "litekeeper check" "$bin" -c "$T/c.toml" check
timed "litekeeper run vacuum (skipped, 99%)" "$bin" -c "$T/c.toml" run bench vacuum

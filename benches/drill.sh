#!/usr/bin/env bash
# Restore drill of a backup (default 1 GiB), each phase timed, side by side in one run with
# what a person does by hand: `sqlite3 NEW.db ".restore BACKUP"` then `PRAGMA integrity_check`
# (after `zstd -d` for the compressed backup). Local source only (remotes: issue #17).
# Usage: benches/drill.sh [SIZE_MIB]      (needs sqlite3, zstd and python3; builds release)
set -euo pipefail
size_mib=${1:-1024}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/litekeeper
T=$(mktemp -d /tmp/lk-bench-drill.XXXXXX)
trap 'rm -rf "$T"' EXIT
db=$T/app.db
rows=$((size_mib * 1024 / 4))   # 4 KiB rows, half of each compressible
echo "building a ${size_mib} MiB database ($rows rows)..."
sqlite3 "$db" "CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB, note TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO t(data, note) SELECT randomblob(2000), printf('%.2000c', 'x') FROM n;" >/dev/null
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

for compress in none zstd; do
  rm -rf "$T/state" "$T/backups" "$T/hand.db" "$T/plain.db"
  cat > "$T/lk.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "app"
path = "$db"
[database.backup]
dir = "$T/backups"
compress = "$compress"
$( [ "$compress" = zstd ] && echo 'compress_level = 1' )
keep = { last = 1 }
[database.drill]
assert = ["SELECT count(*) = $rows FROM t"]
CONF
  "$bin" -c "$T/lk.toml" run app backup >/dev/null 2>&1
  backup=$(ls "$T"/backups/app-*.db* | head -1)
  sync
  out=$("$bin" -c "$T/lk.toml" --log-format json drill app 2>&1 >/dev/null)
  echo "$out" | python3 -c '
import json,sys
for l in sys.stdin:
    try: e=json.loads(l)
    except Exception: continue
    if e.get("litekeeper_outcome"):
        c=json.loads(e["litekeeper_figures"])["copies"][0]; p=c["phases"]; s=lambda k: "%.2f s" % (p[k]/1000)
        print("litekeeper drill (%s): %s: fetch+sha256 %s, decrypt %s, decompress %s, restore %s, check %s, total %s" % (sys.argv[1], e["litekeeper_outcome"], s("fetch_ms"), s("decrypt_ms"), s("decompress_ms"), s("restore_ms"), s("check_ms"), s("total_ms")))' "$compress"
  t=$(now)
  src=$backup
  if [ "$compress" = zstd ]; then zstd -q -d "$backup" -o "$T/plain.db"; src=$T/plain.db; fi
  sqlite3 "$T/hand.db" ".restore '$src'"
  check=$(sqlite3 "$T/hand.db" "PRAGMA integrity_check")
  echo "by hand ($compress): ${check}: $( [ "$compress" = zstd ] && echo 'zstd -d + ')sqlite3 .restore + integrity_check $(since "$t") s"
done

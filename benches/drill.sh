#!/usr/bin/env bash
# Restore drill of a backup (default 1 GiB), each phase timed, side by side in one run with
# what a person does by hand: `sqlite3 NEW.db ".restore BACKUP"` then `PRAGMA integrity_check`
# (after `zstd -d` for the compressed backup). Sources: the local backup directory (plain and
# zstd) and an S3 remote on a local moto server (the zstd backup's encrypted copy), whose
# hand-made restore is a download (boto3), `age -d`, `zstd -d`, `.restore` and the check.
# Usage: benches/drill.sh [SIZE_MIB]
#   needs sqlite3, zstd, age, age-keygen, python3 with boto3, moto_server; builds release.
set -euo pipefail
size_mib=${1:-1024}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-bench-drill.XXXXXX)
moto_pid=
trap '[ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null; rm -rf "$T"' EXIT
db=$T/app.db
rows=$((size_mib * 1024 / 4))   # 4 KiB rows, half of each compressible
echo "building a ${size_mib} MiB database ($rows rows)..."
sqlite3 "$db" "CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB, note TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO t(data, note) SELECT randomblob(2000), printf('%.2000c', 'x') FROM n;" >/dev/null
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }

# The S3 server, its bucket and credentials (moto accepts any), and the age key pair.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto_pid=$!
endpoint=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s -o /dev/null "$endpoint" && break; sleep 0.1; done
curl -s -X PUT "$endpoint/lk-bench" >/dev/null
export AWS_ACCESS_KEY_ID=AKIALITEKEEPERBENCH AWS_SECRET_ACCESS_KEY=lk-bench-secret
age-keygen -o "$T/id.age" 2>/dev/null
public=$(age-keygen -y "$T/id.age")

# One line per drilled copy, from the run's journal event (JSON on stderr).
report() {
  python3 -c '
import json,sys
for l in sys.stdin:
    try: e=json.loads(l)
    except Exception: continue
    if e.get("litekeeper_outcome"):
        for c in json.loads(e["litekeeper_figures"])["copies"]:
            p=c["phases"]; s=lambda k: "%.2f s" % (p[k]/1000)
            print("litekeeper drill (%s, %s): %s: fetch+sha256 %s, decrypt %s, decompress %s, restore %s, check %s, total %s" % (c["source"], sys.argv[1], c["verdict"], s("fetch_ms"), s("decrypt_ms"), s("decompress_ms"), s("restore_ms"), s("check_ms"), s("total_ms")))' "$1"
}

for compress in none zstd; do
  rm -rf "$T/state" "$T/backups" "$T/hand.db" "$T/plain.db"
  remote=
  [ "$compress" = zstd ] && remote=offsite
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
$( [ -n "$remote" ] && echo 'remotes = ["offsite"]' )
[database.drill]
assert = ["SELECT count(*) = $rows FROM t"]
from = ["local"$( [ -n "$remote" ] && echo ', "offsite"' )]
identity = "$T/id.age"
[[remote]]
name = "offsite"
url = "s3://lk-bench/lk"
endpoint = "$endpoint"
region = "us-east-1"
timeout = "300s"
encrypt_to = ["$public"]
CONF
  "$bin" -c "$T/lk.toml" run app backup >/dev/null 2>&1
  backup=$(ls "$T"/backups/app-*.db* | head -1)
  sync
  "$bin" -c "$T/lk.toml" --log-format json drill app 2>&1 >/dev/null | report "$compress"
  t=$(now)
  src=$backup
  if [ "$compress" = zstd ]; then zstd -q -d "$backup" -o "$T/plain.db"; src=$T/plain.db; fi
  sqlite3 "$T/hand.db" ".restore '$src'"
  check=$(sqlite3 "$T/hand.db" "PRAGMA integrity_check")
  echo "by hand (local, $compress): ${check}: $( [ "$compress" = zstd ] && echo 'zstd -d + ')sqlite3 .restore + integrity_check $(since "$t") s"
  if [ -n "$remote" ]; then
    rm -f "$T/hand.db" "$T/plain.db"
    name=$(basename "$backup")
    t=$(now)
    python3 -c '
import boto3,sys
s3=boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.download_file("lk-bench", "lk/app/" + sys.argv[2] + ".age", sys.argv[3])' "$endpoint" "$name" "$T/copy.age"
    t_get=$(since "$t"); t=$(now)
    age -d -i "$T/id.age" -o "$T/copy.zst" "$T/copy.age"
    t_age=$(since "$t"); t=$(now)
    zstd -q -d "$T/copy.zst" -o "$T/plain.db"
    t_zstd=$(since "$t"); t=$(now)
    sqlite3 "$T/hand.db" ".restore '$T/plain.db'"
    t_restore=$(since "$t"); t=$(now)
    check=$(sqlite3 "$T/hand.db" "PRAGMA integrity_check")
    t_check=$(since "$t")
    total=$(python3 -c "print(f'{$t_get + $t_age + $t_zstd + $t_restore + $t_check:.2f}')")
    echo "by hand (offsite, zstd): ${check}: download ${t_get} s, age -d ${t_age} s, zstd -d ${t_zstd} s, .restore ${t_restore} s, integrity_check ${t_check} s, total ${total} s"
    rm -f "$T/copy.age" "$T/copy.zst"
  fi
done

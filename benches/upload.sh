#!/usr/bin/env bash
# Off-site upload benchmark: one verified local backup (default 1 GiB) uploaded to a local S3
# server on 127.0.0.1 (s3s-fs when installed, which stores on disk and checks signatures;
# else moto, which holds every object in memory) by `litekeeper backups push`, i.e. the
# pipeline file -> zstd -> age -> 8 MiB multipart parts -> read back and SHA-256 check.
# Prints, side by side from one run:
#   - upload MB/s (local backup bytes / push wall time) next to `cp` + sync of the same file;
#   - peak RSS of the litekeeper process (GNU time; target < 100 MiB for any size);
#   - the app writer's p99 commit latency (benches/app_writer.py, 200 commits/s) alone and
#     while the push runs (the push holds no transaction: only CPU and disk are shared).
#   The S3 server runs under `nice -n 10` and `ionice -c 3` and keeps its objects in RAM
#   (/dev/shm): in production it is on another host, here it shares the 2 cores and would
#   share the disk; so placed, it models a remote server instead of competing with the app.
#   (LK_SERVER_NICE=0 runs it at the app's priority, as the figures before 2026-12-06 did.)
# Usage: benches/upload.sh [SIZE_MIB] [WRITER_SECONDS]   (default 1024 and 20)
# Needs sqlite3, python3, age-keygen, GNU time, and s3s-fs or moto_server. Builds release
# unless LITEKEEPER_BIN names a binary. The machine is shared: compare the ratios, not the figures.
set -euo pipefail
size_mib=${1:-1024}
alone_s=${2:-20}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d "${TMPDIR:-/tmp}/lk-bench-upload.XXXXXX")
pids=()
# The server's objects: in RAM (/dev/shm) where there is one, like a store on another host
# (on the app's disk, the app's commit fsyncs would flush the server's writes too);
# LK_SERVER_DIR names another place.
S3=${LK_SERVER_DIR:-}
if [ -z "$S3" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then S3=$(mktemp -d /dev/shm/lk-bench-s3.XXXXXX); else S3=$T/s3; fi
fi
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; if [ -z "${LK_SERVER_DIR:-}" ]; then rm -rf "$S3"; fi; }
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }

# The database: the app's schema (conversations, messages), text + random bytes (~2.5x zstd).
db=$T/chat.db
rows=$((size_mib * 1024 * 1024 / 420))
echo "building a ~${size_mib} MiB WAL chat database ($rows messages)..."
sqlite3 -bail "$db" >/dev/null <<SQL
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE conversations(id INTEGER PRIMARY KEY, title TEXT NOT NULL,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id), role TEXT NOT NULL,
  content TEXT NOT NULL, created_at INTEGER NOT NULL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows / 40 + 1)
INSERT INTO conversations SELECT i, 'conversation ' || i, 1700000000 + i, 1700000000 + i FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
INSERT INTO messages(conversation_id, role, content, created_at)
  SELECT 1 + i / 40, CASE i % 2 WHEN 0 THEN 'user' ELSE 'assistant' END,
    'Message ' || i || ': the model explains how to configure backups, retention and vacuum '
    || 'for a small sqlite database, then answers the next question about off-site copies. '
    || lower(hex(randomblob(60 + abs(random()) % 80))),
    1700000000 + i FROM n;
CREATE INDEX conversations_updated_at ON conversations(updated_at);
PRAGMA journal_mode = WAL;
SQL
sqlite3 "$db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null

# The S3 server.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=AKIALITEKEEPERBENCH AWS_SECRET_ACCESS_KEY=lk-bench-secret
mkdir -p "$S3"
if command -v s3s-fs >/dev/null; then
  server="s3s-fs $(s3s-fs --version 2>/dev/null | awk '{print $2}') (files in $S3)"
  mkdir -p "$S3/bench"
  nice -n "${LK_SERVER_NICE:-10}" ionice -c "${LK_SERVER_IOCLASS:-3}" s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$S3" >"$T/server.log" 2>&1 &
  pids+=($!)
else
  server="moto_server (in memory)"
  nice -n "${LK_SERVER_NICE:-10}" ionice -c "${LK_SERVER_IOCLASS:-3}" moto_server -H 127.0.0.1 -p "$port" >"$T/server.log" 2>&1 &
  pids+=($!)
fi
for _ in $(seq 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
command -v s3s-fs >/dev/null || python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/bench', method='PUT'))"

age-keygen -o "$T/identity.txt" 2>/dev/null
recipient=$(age-keygen -y "$T/identity.txt")
cat > "$T/lk.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "chat"
path = "$db"
[database.backup]
dir = "$T/backups"
verify = "quick"
keep = { last = 2 }
remotes = ["offsite"]
[[remote]]
name = "offsite"
url = "s3://bench/lk"
endpoint = "http://127.0.0.1:$port"
region = "us-east-1"
credentials = "env"
encrypt_to = ["$recipient"]
CONF
# A local backup whose copy is pending: the first run finds the remote "down" (a port
# nothing listens on), then the push alone is measured.
sed "s|127.0.0.1:$port|127.0.0.1:1|" "$T/lk.toml" > "$T/down.toml"
"$bin" -c "$T/down.toml" --quiet run chat backup >/dev/null 2>&1 || true
backup=$(ls "$T"/backups/chat-*.db | tail -1)
bytes=$(stat -c %s "$backup")
cat "$backup" >/dev/null   # warm, as after the backup that just wrote it

# cp + sync of the same bytes.
sync
t0=$(now); cp "$backup" "$T/cp.db"; sync -f "$T/cp.db"; t1=$(now)
cp_s=$(secs "$t0" "$t1"); rm -f "$T/cp.db"

# The writer alone.
alone=$(python3 benches/app_writer.py "$db" --rate 200 --seconds "$alone_s")

# The push, with the writer running through it.
python3 benches/app_writer.py "$db" --rate 200 > "$T/during.json" &
wpid=$!; pids+=("$wpid")
sleep 1
t0=$(now)
/usr/bin/time -f '%M' -o "$T/rss" "$bin" -c "$T/lk.toml" backups push chat > "$T/push.out" 2>&1 \
  || { cat "$T/push.out" >&2; exit 1; }
t1=$(now)
sleep 1
kill -TERM "$wpid"; wait "$wpid" || true
during=$(cat "$T/during.json")
push_s=$(secs "$t0" "$t1")
rss_kib=$(cat "$T/rss")
stored=$(find "$S3" -name '*.age' -printf '%s\n' 2>/dev/null | head -1)

python3 - "$bytes" "$cp_s" "$push_s" "$rss_kib" "${stored:-0}" "$alone" "$during" "$server" "$size_mib" <<'PY'
import json, sys
b, cp_s, push_s, rss, stored = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
alone, during, server, size = json.loads(sys.argv[6]), json.loads(sys.argv[7]), sys.argv[8], sys.argv[9]
mb = b / 1e6
print(f"\nupload of a {b / 2**20:.0f} MiB backup (fixture {size} MiB) to {server}, server nice {__import__('os').environ.get('LK_SERVER_NICE', '10')}, I/O class {__import__('os').environ.get('LK_SERVER_IOCLASS', '3')}")
print(f"| measure | value |\n|---|---|")
print(f"| cp + sync | {cp_s:.2f} s, {mb / cp_s:.0f} MB/s |")
print(f"| litekeeper backups push (zstd + age + multipart + read-back check) | {push_s:.2f} s, {mb / push_s:.0f} MB/s ({mb / push_s / (mb / cp_s):.2f}x cp) |")
if stored:
    print(f"| stored object | {stored / 2**20:.0f} MiB ({b / stored:.2f}x smaller) |")
print(f"| peak RSS of litekeeper | {rss / 1024:.1f} MiB (target < 100 MiB) {'MET' if rss < 100 * 1024 else 'NOT MET'} |")
pa, pd = alone["p99_ms"], during["p99_ms"]
print(f"| writer p99 alone / during the push | {pa:.1f} ms / {pd:.1f} ms ({pd / pa:.2f}x); max {alone['max_ms']:.1f} / {during['max_ms']:.1f} ms; busy {alone['busy']} / {during['busy']}; {alone['commits_per_s']} / {during['commits_per_s']} commits/s |")
PY

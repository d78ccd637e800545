#!/usr/bin/env bash
# zstd backups side by side in one run, on a text-heavy WAL database (default 512 MiB):
#   zstd -L -T1 and zstd -L -T2 on the raw copy (+ sync of the output, as litekeeper fsyncs),
#   litekeeper verified backup (verify = "quick") with compress = "zstd" (level L) and without.
# Usage: benches/zstd.sh [SIZE_MIB] [LEVEL] [ROUNDS]   (needs sqlite3, zstd, python3; builds release)
# Prints each run, the medians and the issue's ratios: zstd backup / plain backup (target <= 2)
# and zstd backup / zstd -T2 (target <= 1.1). LK_BASELINE=/path/to/an/older/litekeeper adds its
# zstd backup as one more contender (before/after in the same run).
set -euo pipefail
size_mib=${1:-512}
level=${2:-3}
rounds=${3:-3}
cd "$(dirname "$0")/.."
# LITEKEEPER_BIN=/path/to/litekeeper: measure that binary instead of building this tree.
. benches/bin.sh
T=$(mktemp -d /tmp/lk-bench-zstd.XXXXXX)
trap 'rm -rf "$T"' EXIT
db=$T/chat.db
rows=$((size_mib * 1024 * 1024 / 200))   # ~200 bytes a row with the index
echo "building a ~${size_mib} MiB WAL chat database ($rows messages)..."
sqlite3 "$db" "PRAGMA journal_mode=WAL;
  CREATE TABLE messages(id INTEGER PRIMARY KEY, conversation_id INTEGER, role TEXT,
                        body TEXT, created_at INTEGER);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO messages(conversation_id, role, body, created_at)
    SELECT i / 47, CASE i % 2 WHEN 0 THEN 'user' ELSE 'assistant' END,
      'Message ' || i || ' in conversation ' || (i / 47) || ': ' ||
      substr('the quick brown fox jumps over the lazy dog while the model explains how to ' ||
             'configure backups, retention and vacuum for a small sqlite database ', 1 + i % 61, 90) ||
      ' ref ' || hex(randomblob(12)),
      1700000000 + i * 3
    FROM n;
  CREATE INDEX messages_created ON messages(created_at);
  PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
bytes=$(stat -c %s "$db")
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{$(now) - $1:.3f}')"; }

conf() { # $1 = name, $2 = extra backup keys
  cat > "$T/$1.toml" <<CONF
[daemon]
state_dir = "$T/state-$1"
lock_dir = "$T/locks-$1"
[[database]]
name = "chat"
path = "$db"
[database.backup]
dir = "$T/backups-$1"
verify = "quick"
keep = { last = 1 }
$2
CONF
}
conf plain ""
conf zstd "compress = \"zstd\"
compress_level = $level"
lk() { # $1 = config name, $2 = binary; prints seconds (wall, whole process)
  local t0; t0=$(now)
  "${2:-$bin}" -c "$T/$1.toml" run chat backup >/dev/null 2>"$T/$1.err" || { cat "$T/$1.err" >&2; exit 1; }
  since "$t0"
}
"$bin" -c "$T/plain.toml" run chat backup >/dev/null 2>&1   # the raw copy the CLI compresses
raw=$(ls "$T"/backups-plain/chat-*.db | tail -1)
cp "$raw" "$T/raw.db"
raw=$T/raw.db
zcli() { # $1 = threads
  local t0; t0=$(now)
  zstd -q -f "-$level" "-T$1" "$raw" -o "$T/cli.zst"; sync -f "$T/cli.zst"
  since "$t0"
  rm -f "$T/cli.zst"
}
t1=(); t2=(); lz=(); lp=(); lb=()
for round in $(seq "$rounds"); do
  echo "round $round..."
  sync; t1+=("$(zcli 1)")
  sync; t2+=("$(zcli 2)")
  sync; lz+=("$(lk zstd)")
  sync; lp+=("$(lk plain)")
  if [ -n "${LK_BASELINE:-}" ]; then sync; lb+=("$(lk zstd "$LK_BASELINE")"); fi
done
median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
m1=$(median "${t1[@]}"); m2=$(median "${t2[@]}"); mz=$(median "${lz[@]}"); mp=$(median "${lp[@]}")
zst=$(ls "$T"/backups-zstd/chat-*.db.zst | tail -1)
echo "runs (s): zstd -T1 ${t1[*]} | zstd -T2 ${t2[*]} | litekeeper zstd ${lz[*]} | litekeeper plain ${lp[*]}${LK_BASELINE:+ | baseline zstd ${lb[*]}}"
echo "file $((bytes / 1048576)) MiB, backup .zst $(($(stat -c %s "$zst") / 1048576)) MiB, $(nproc) cores, level $level"
printf '\n%-38s %9s %12s\n' "median of $rounds" "seconds" "x zstd -T2"
for row in "zstd -$level -T1 (+sync):$m1" "zstd -$level -T2 (+sync):$m2" \
           "litekeeper backup, zstd:$mz" "litekeeper backup, plain:$mp"; do
  printf '%-38s %9.2f %12.2f\n' "${row%%:*}" "${row##*:}" "$(python3 -c "print(${row##*:}/$m2)")"
done
if [ -n "${LK_BASELINE:-}" ]; then
  mb=$(median "${lb[@]}")
  printf '%-38s %9.2f %12.2f\n' "baseline backup, zstd" "$mb" "$(python3 -c "print($mb/$m2)")"
  printf 'baseline zstd backup / plain backup: %.2f\n' "$(python3 -c "print($mb/$mp)")"
fi
printf '\nzstd backup / plain backup: %.2f (target <= 2)\n' "$(python3 -c "print($mz/$mp)")"
printf 'zstd backup / zstd -T2:     %.2f (target <= 1.1)\n' "$(python3 -c "print($mz/$m2)")"
printf 'zstd backup / zstd -T1:     %.2f\n' "$(python3 -c "print($mz/$m1)")"

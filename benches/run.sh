#!/usr/bin/env bash
# benches/run.sh: the issue-16 benchmark in one command: the three jobs against the tools an
# operator would otherwise use, side by side on one chat-shaped WAL database, with ratios and
# the issue's targets marked MET / NOT MET.
#
# Usage: benches/run.sh [--only backup,load,prune] [--out FILE] [--help]
#
#   fixture  A chat database of BENCH_MB MiB (default 1024): `conversations` (~1 per 46
#            messages, index on updated_at) and `messages` (text payloads of 40-1000 chars,
#            `conversation_id REFERENCES conversations(id)`, indexes on created_at and
#            conversation_id), created_at spread over a year. Built once with the sqlite3 CLI
#            (recursive CTEs, no journal), then switched to WAL and checkpointed (-wal empty),
#            cached in BENCH_DIR as chat-<MB>MiB-v1.db and read once (warm page cache). Every
#            section works on copies; the cache is never written.
#   backup   hyperfine, BENCH_RUNS (5) runs each, `sync` and a fresh output dir before each run:
#            cp + sync (the floor), sqlite3 .backup, VACUUM INTO (sqlite3 CLI), litekeeper
#            backup with verify = "none", "quick" (the default) and "quick" + compress = "zstd"
#            (level 3), and `zstd -3 -T1` / `-T2` of the same file. Every contender is durable
#            (outputs fsynced). Medians, × `sqlite3 .backup` time, speed, and the targets:
#            quick ≥ 1.0× sqlite3's speed, none ≥ 1.3×, zstd ≤ 2× quick and ≤ 1.1× zstd -T2.
#   load     benches/app_writer.py (a chat app: one message per transaction, BENCH_RATE (200)
#            commits/s, busy_timeout 5000, default auto-checkpoint) alone for
#            BENCH_LOAD_SECONDS (10), then during a litekeeper verified backup, then during
#            `sqlite3 .backup` (killed after BENCH_LOAD_TIMEOUT, default max(15 s, 5× the
#            litekeeper run): every commit restarts it). App p50/p99/max commit, busy errors,
#            max WAL. Target: slowest commit during litekeeper ≤ 2× slowest alone + 20 ms.
#   prune    On a fresh copy each, with the app writing: one transaction deleting the older
#            half of `messages` and then the conversations left empty (child first: the
#            schema declares the key) vs `litekeeper run … prune` with defaults vs with
#            pause = "5ms" (age rules, messages first; max_fraction = 0.9 since half goes).
#            Time, app p99/max, busy, max WAL, and row checks (nothing old left, every young
#            and every app row kept, foreign_key_check and quick_check clean). Targets for the
#            defaults: ≥ 1.5× faster than the one DELETE, p99 ≤ 50 ms, max ≤ 100 ms, 0 busy,
#            WAL < 64 MiB.
#
# Prints everything; --out FILE appends a dated markdown section (machine, exact command, the
# tables) to paste into benches/RESULTS.md. Environment:
#   BENCH_MB=1024       fixture size in MiB (validate the harness with e.g. 150)
#   BENCH_DIR=dir       work dir and fixture cache (default ${TMPDIR:-/tmp}/litekeeper-bench;
#                       needs ~4× BENCH_MB free; must not be inside the repo except target/)
#   BENCH_RUNS=5  BENCH_RATE=200  BENCH_LOAD_SECONDS=10  BENCH_LOAD_TIMEOUT=seconds
#   LITEKEEPER_BIN=path skips `cargo build --release`
# Needs: sqlite3, python3, hyperfine and zstd (backup section), cargo (unless LITEKEEPER_BIN).
set -euo pipefail

started=$(date +%s)
self=$0
repo=$(cd "$(dirname "$0")/.." && pwd)
benches=$repo/benches
# shellcheck source=benches/chat_fixture.sh
. "$benches/chat_fixture.sh"
cmdline=""
for v in BENCH_MB BENCH_DIR BENCH_RUNS BENCH_RATE BENCH_LOAD_SECONDS BENCH_LOAD_TIMEOUT LITEKEEPER_BIN; do
  if [ -n "${!v:-}" ]; then cmdline+="$v=$(printf '%q' "${!v}") "; fi
done
cmdline+="benches/run.sh$(printf ' %q' "$@")"

die() { echo "run.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; }

only=backup,load,prune
out=""
while [ $# -gt 0 ]; do
  case $1 in
    --only) [ $# -ge 2 ] || die "--only needs a value: backup, load, prune or a comma list"; only=$2; shift 2 ;;
    --only=*) only=${1#--only=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a file name"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see benches/run.sh --help)" ;;
  esac
done
for s in ${only//,/ }; do
  case $s in backup|load|prune) ;; *) die "--only: unknown section '$s' (backup, load, prune)" ;; esac
done
want() { [[ ",$only," == *",$1,"* ]]; }

mb=${BENCH_MB:-1024}
runs=${BENCH_RUNS:-5}
rate=${BENCH_RATE:-200}
load_s=${BENCH_LOAD_SECONDS:-10}
[[ $mb =~ ^[0-9]+$ && $mb -ge 8 ]] || die "BENCH_MB must be a whole number of MiB ≥ 8 (got '$mb')"
[[ $runs =~ ^[0-9]+$ && $runs -ge 1 ]] || die "BENCH_RUNS must be a whole number ≥ 1 (got '$runs')"
[[ $rate =~ ^[0-9]+$ && $rate -ge 1 ]] || die "BENCH_RATE must be a whole number of commits/s ≥ 1 (got '$rate')"
[[ $load_s =~ ^[0-9]+$ && $load_s -ge 1 ]] || die "BENCH_LOAD_SECONDS must be a whole number ≥ 1 (got '$load_s')"
[[ ${BENCH_LOAD_TIMEOUT:-1} =~ ^[0-9]+$ ]] || die "BENCH_LOAD_TIMEOUT must be a whole number of seconds (got '$BENCH_LOAD_TIMEOUT')"

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need sqlite3 "install the sqlite3 CLI (apt-get install -y sqlite3)"
need python3 "install python3 (apt-get install -y python3)"
python3 -c 'import sqlite3' 2>/dev/null || die "python3 has no sqlite3 module"
if want backup; then
  need hyperfine "apt-get install -y hyperfine (or cargo install hyperfine)"
  need zstd "apt-get install -y zstd"
fi
if [ -n "${LITEKEEPER_BIN:-}" ]; then
  bin=$LITEKEEPER_BIN
  [ -x "$bin" ] || die "LITEKEEPER_BIN=$bin is not an executable file"
else
  need cargo "install Rust, or point LITEKEEPER_BIN at a release build of litekeeper"
  echo "building the release binary (cargo build --release)..."
  (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
  bin=$repo/target/release/litekeeper
fi

dir=${BENCH_DIR:-${TMPDIR:-/tmp}/litekeeper-bench}
mkdir -p "$dir" || die "BENCH_DIR $dir: cannot create it"
dir=$(cd "$dir" && pwd -P)
case $dir/ in
  "$(cd "$repo" && pwd -P)"/target/*) ;;
  "$(cd "$repo" && pwd -P)"/*) die "BENCH_DIR $dir is inside the repository: use target/… or a directory outside it" ;;
esac
fixture=$dir/chat-${mb}MiB-v1.db   # bump v1 when the fixture's SQL below changes
need_mib=$(( mb * 4 + 64 ))
[ -f "$fixture" ] && need_mib=$(( mb * 3 + 64 ))
avail_mib=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1024 ))
[ "$avail_mib" -ge "$need_mib" ] || die "BENCH_DIR $dir: $avail_mib MiB free, the run needs about $need_mib MiB (lower BENCH_MB or set BENCH_DIR)"

W=$(mktemp -d "$dir/run.XXXXXX")
child=0
# Long steps run in the background and are waited for, so a signal reaches the trap at once
# and the trap can stop them (drive stops its app writer and contender on SIGTERM).
run_child() {
  local rc=0
  "$@" &
  child=$!
  wait "$child" || rc=$?
  child=0
  return "$rc"
}
cleanup() {
  local rc=$?
  if [ "$child" != 0 ]; then kill "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  rm -rf "$W" "$fixture.building"
  [ $rc -eq 0 ] || echo "run.sh: stopped (exit $rc) after $(( $(date +%s) - started )) s" >&2
  exit $rc
}
trap cleanup EXIT
trap 'echo "run.sh: line $LINENO: a command failed (exit $?)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
report=$W/report.md
: > "$report"
say() { printf '%s\n' "$*" | tee -a "$report"; }
tee_report() { tee -a "$report"; }
quiet() { printf '%s\n' "$*"; }   # progress: printed, not in the report

# ---------------------------------------------------------------------------------------------
# Machine
fs=$(findmnt -no FSTYPE,OPTIONS -T "$dir" 2>/dev/null | head -1 | tr -s ' ' || true)
[ -n "$fs" ] || fs=$(df -PT "$dir" | awk 'NR==2 {print $2}')
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo 2>/dev/null || true)
rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(cd "$repo" && git status --porcelain --untracked-files=no 2>/dev/null)" ] && rev="$rev + uncommitted changes"
say "## Issue 16 benchmark: backup, under load, prune ($(date -u '+%Y-%m-%d %H:%M UTC'))"
say ""
say "Command: \`$cmdline\`"
say ""
say "Machine: $(nproc) cores (${cpu:-unknown CPU}), $mem RAM, kernel $(uname -r); BENCH_DIR on ${fs:-unknown filesystem};"
say "load average at the start $(cut -d' ' -f1-3 /proc/loadavg). litekeeper $("$bin" --version 2>/dev/null | head -1 | awk '{print $NF}') (release build of $rev),"
say "sqlite3 CLI $(sqlite3 --version | cut -d' ' -f1), python3 sqlite3 $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')$(want backup && echo ", $(zstd --version | grep -o 'v[0-9.]*' | head -1 | sed 's/^/zstd /'), $(hyperfine --version)")."
say ""

# ---------------------------------------------------------------------------------------------
# Fixture
chat_fixture "$mb" "$fixture"
# Warm the page cache; the cut-off between the older and the younger half of the messages.
cat "$fixture" > /dev/null
read -r n_msg n_conv a b < <(sqlite3 -separator ' ' "$fixture" "
  SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM conversations),
         (SELECT created_at FROM messages ORDER BY created_at LIMIT 1 OFFSET (SELECT count(*) / 2 - 1 FROM messages)),
         (SELECT created_at FROM messages ORDER BY created_at LIMIT 1 OFFSET (SELECT count(*) / 2 FROM messages));")
cutoff=$(( a + (b - a) / 2 ))
[ $(( b - a )) -ge 4 ] || die "fixture $fixture: messages too close in time around the median ($a, $b); delete it to rebuild"
fixture_bytes=$(stat -c %s "$fixture")
say "Fixture: $(basename "$fixture"), $(( fixture_bytes / 1048576 )) MiB WAL database ($(( $(stat -c %s "$fixture-wal" 2>/dev/null || echo 0) / 1024 )) KiB -wal), $n_msg messages in $n_conv conversations; warm page cache."
say ""

lk_conf() {  # name db [backup lines…] : a config with its own state, lock and backup dirs
  local name=$1 db=$2; shift 2
  mkdir -p "$W/lk/$name"
  {
    printf '[daemon]\nstate_dir = "%s"\nlock_dir = "%s"\n' "$W/lk/$name/state" "$W/lk/$name/locks"
    printf '[[database]]\nname = "bench"\npath = "%s"\n' "$db"
    for line in "$@"; do printf '%s\n' "$line"; done
  } > "$W/lk/$name.toml"
  echo "$W/lk/$name.toml"
}
backup_conf() {  # name db verify [compress]
  local z=()
  [ -n "${4:-}" ] && z=("compress = \"$4\"" "compress_level = 3")
  lk_conf "$1" "$2" "[database.backup]" "dir = \"$W/out/lk-$1\"" "verify = \"$3\"" \
    "keep = { last = 1000 }" "${z[@]}"
}
secs() { python3 -c "import sys; print(f'{float(sys.argv[1]):.2f}')" "$1"; }

src=$W/src.db
if want backup || want load; then
  quiet "copying the fixture to the work copy..."
  cp "$fixture" "$src"
  sync "$src"
fi

# ---------------------------------------------------------------------------------------------
# Backup
idle_quick=""
if want backup; then
  quiet ""
  quiet "== backup: hyperfine, $runs runs each =="
  c_none=$(backup_conf none "$src" none)
  c_quick=$(backup_conf quick "$src" quick)
  c_zstd=$(backup_conf zstd "$src" quick zstd)
  o=$W/out
  run_child hyperfine --runs "$runs" --style basic -i \
    --prepare "rm -rf '$o' && mkdir -p '$o' && sync" \
    --export-json "$W/backup.json" \
    -n "cp + sync" "cp '$src' '$o/cp.db' && sync '$o/cp.db'" \
    -n "sqlite3 .backup" "sqlite3 '$src' \".backup '$o/sqlite3.db'\" && sync '$o/sqlite3.db'" \
    -n "VACUUM INTO" "sqlite3 '$src' \"VACUUM INTO '$o/vacuum.db'\" && sync '$o/vacuum.db'" \
    -n "litekeeper verify=none" "'$bin' -c '$c_none' run bench backup 2>'$W/lk/none.log'" \
    -n "litekeeper verify=quick" "'$bin' -c '$c_quick' run bench backup 2>'$W/lk/quick.log'" \
    -n "litekeeper verify=quick zstd" "'$bin' -c '$c_zstd' run bench backup 2>'$W/lk/zstd.log'" \
    -n "zstd -3 -T1" "zstd -q -3 -T1 -f '$src' -o '$o/t1.zst' && sync '$o/t1.zst'" \
    -n "zstd -3 -T2" "zstd -q -3 -T2 -f '$src' -o '$o/t2.zst' && sync '$o/t2.zst'" \
    || die "hyperfine failed"
  zsize=$(stat -c %s "$o/t2.zst" 2>/dev/null || echo 0)
  say "### Backup of the $(( fixture_bytes / 1048576 )) MiB file ($runs runs each, \`sync\` and a fresh output dir before each)"
  say ""
  python3 "$benches/bench.py" backup "$W/backup.json" --runs "$runs" \
    --log "litekeeper verify=none::$W/lk/none.log" --log "litekeeper verify=quick::$W/lk/quick.log" \
    --log "litekeeper verify=quick zstd::$W/lk/zstd.log" | tee_report
  say ""
  say "zstd -3 output: $(( zsize / 1048576 )) MiB ($(python3 -c "print(f'{$zsize / $fixture_bytes:.0%}')") of the file)."
  say ""
  idle_quick=$(python3 -c '
import json, statistics, sys
for r in json.load(open(sys.argv[1]))["results"]:
    if r["command"] == "litekeeper verify=quick": print(statistics.median(r["times"]))' "$W/backup.json")
  rm -rf "$o"
fi

# ---------------------------------------------------------------------------------------------
# Under load
drive() { run_child python3 "$benches/bench.py" drive --rate "$rate" --results "$@"; }
if want load; then
  quiet "== load: the app writer at $rate commits/s =="
  res=$W/load.jsonl
  : > "$res"
  drive "$res" --db "$src" --label "app alone" --tail 1 -- sleep "$load_s"
  c_quick=${c_quick:-$(backup_conf quick "$src" quick)}
  rm -rf "$W/out"; mkdir -p "$W/out"; sync
  drive "$res" --db "$src" --label "during litekeeper backup (verify=quick)" --tail 1 -- \
    "$bin" -c "$c_quick" --log-format json run bench backup
  lk_load=$(python3 -c 'import json, sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["secs"])' "$res")
  timeout_s=${BENCH_LOAD_TIMEOUT:-$(python3 -c "print(max(15, round(5 * $lk_load)))")}
  rm -rf "$W/out"; mkdir -p "$W/out"; sync
  drive "$res" --db "$src" --label "during sqlite3 .backup" --tail 1 --timeout "$timeout_s" -- \
    sqlite3 "$src" ".backup '$W/out/sqlite3.db'"
  rm -rf "$W/out"
  say "### Under load: the app writer (benches/app_writer.py) alone for ${load_s} s, then during each backup"
  say ""
  python3 "$benches/bench.py" load "$res" --rate "$rate" ${idle_quick:+--idle-backup "$idle_quick"} | tee_report
  say ""
fi

# ---------------------------------------------------------------------------------------------
# Prune
if want prune; then
  quiet "== prune: half the messages, with the app writing =="
  res=$W/prune.jsonl
  : > "$res"
  db=$W/prune.db
  prune_conf() {  # name [pause]: age rules whose cut-off is $cutoff when the job starts (~2 s from now)
    local older=$(( $(date +%s) + 2 - cutoff )) pause=()
    [ -n "${2:-}" ] && pause=("pause = \"$2\"")
    lk_conf "$1" "$db" "[database.prune]" "max_fraction = 0.9" "${pause[@]}" \
      "[[database.prune.rule]]" 'table = "messages"' 'column = "created_at"' "older_than = \"${older}s\"" 'time_format = "unix"' \
      "[[database.prune.rule]]" 'table = "conversations"' 'column = "updated_at"' "older_than = \"${older}s\"" 'time_format = "unix"'
  }
  fresh() { rm -f "$db" "$db-wal" "$db-shm"; cp "$fixture" "$db"; sync "$db"; }
  fresh
  drive "$res" --db "$db" --label "one DELETE transaction" --warm 2 --tail 2 --prune-cutoff "$cutoff" -- \
    sqlite3 -cmd ".timeout 5000" "$db" "BEGIN IMMEDIATE; DELETE FROM messages WHERE created_at < $cutoff;
      DELETE FROM conversations WHERE updated_at < $cutoff; COMMIT;"
  fresh
  c=$(prune_conf prune-defaults)
  drive "$res" --db "$db" --label "litekeeper prune (defaults)" --warm 2 --tail 2 --prune-cutoff "$cutoff" -- \
    "$bin" -c "$c" --log-format json run bench prune
  fresh
  c=$(prune_conf prune-5ms 5ms)
  drive "$res" --db "$db" --label "litekeeper prune (pause = 5ms)" --warm 2 --tail 2 --prune-cutoff "$cutoff" -- \
    "$bin" -c "$c" --log-format json run bench prune
  rm -f "$db" "$db-wal" "$db-shm"
  say "### Prune: messages older than the median (and the conversations left empty), app writing $rate commits/s"
  say ""
  say "Each on a fresh copy of the fixture; app figures from 2 s of warm-up's end to 2 s after the run."
  say ""
  python3 "$benches/bench.py" prune "$res" | tee_report
  say ""
fi

took=$(( $(date +%s) - started ))
say "Total runtime: $(( took / 60 )) min $(( took % 60 )) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
if [ -n "$out" ]; then
  # The run's temp dir and the checkout are this machine's paths: not for RESULTS.md.
  { echo; sed -e "s#$W#<work>#g" -e "s#$repo/#./#g" "$report"; } >> "$out" || die "--out $out: cannot append to it"
  echo "appended to $out"
fi

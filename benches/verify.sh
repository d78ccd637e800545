#!/usr/bin/env bash
# benches/verify.sh: the verified backup against `sqlite3 .backup`, side by side in one run, on
# the chat fixture of benches/run.sh (built once, cached): the quick figure to watch while
# working on the backup's copy or checks (benches/run.sh is the full issue-16 table).
#
# Usage: benches/verify.sh [MB ...]     (default: 256 1024)
#
# For each size: hyperfine, BENCH_RUNS (5) runs each, `sync` and a fresh output dir before each
# run: `sqlite3 .backup` + sync, litekeeper backup with verify = "none" and "quick" (and, with
# LITEKEEPER_BEFORE=path, "quick" with that other binary, e.g. a build of the previous commit).
# Prints the medians, each as × `sqlite3 .backup` speed, then one debug-logged quick run's
# phases: the copy, the SHA-256 behind it, the fsync, each check (quick_check, foreign_key_check,
# row counts).
# Environment: BENCH_DIR (default ${TMPDIR:-/tmp}/litekeeper-bench), BENCH_RUNS, LITEKEEPER_BIN
# (default: cargo build --release), LITEKEEPER_BEFORE. Needs sqlite3, python3, hyperfine.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/chat_fixture.sh
. "$repo/benches/chat_fixture.sh"
die() { echo "verify.sh: $*" >&2; exit 1; }
case ${1:-} in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
for t in sqlite3 python3 hyperfine; do command -v $t >/dev/null || die "$t not found"; done
runs=${BENCH_RUNS:-5}
. "$repo/benches/bin.sh"
before=${LITEKEEPER_BEFORE:-}
dir=${BENCH_DIR:-${TMPDIR:-/tmp}/litekeeper-bench}
mkdir -p "$dir"
W=$(mktemp -d "$dir/verify.XXXXXX")
trap 'rm -rf "$W"' EXIT

conf() {  # name verify: a config with its own state, lock and backup dirs
  mkdir -p "$W/lk/$1"
  printf '[daemon]\nstate_dir = "%s"\nlock_dir = "%s"\n[[database]]\nname = "bench"\npath = "%s"\n[database.backup]\ndir = "%s"\nverify = "%s"\nkeep = { last = 1000 }\n' \
    "$W/lk/$1/state" "$W/lk/$1/locks" "$W/src.db" "$W/out/$1" "$2" > "$W/lk/$1.toml"
  echo "$W/lk/$1.toml"
}

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; BENCH_RUNS=$runs"
for mb in "${@:-256 1024}"; do
  for m in $mb; do
    fixture=$dir/chat-${m}MiB-v1.db
    chat_fixture "$m" "$fixture"
    rm -f "$W/src.db"*; cp "$fixture" "$W/src.db"; sync "$W/src.db"; cat "$W/src.db" > /dev/null
    o=$W/out
    extra=()
    if [ -n "$before" ]; then
      extra=(-n "before verify=quick" "'$before' -c '$(conf before quick)' run bench backup 2>/dev/null")
    fi
    hyperfine --runs "$runs" --style basic -i --prepare "rm -rf '$o' && mkdir -p '$o' && sync" \
      --export-json "$W/h.json" \
      -n "sqlite3 .backup" "sqlite3 '$W/src.db' \".backup '$o/sqlite3.db'\" && sync '$o/sqlite3.db'" \
      -n "litekeeper verify=none" "'$bin' -c '$(conf none none)' run bench backup 2>/dev/null" \
      -n "litekeeper verify=quick" "'$bin' -c '$(conf quick quick)' run bench backup 2>/dev/null" \
      "${extra[@]}" > "$W/hyperfine.log" || { cat "$W/hyperfine.log"; die "hyperfine failed"; }
    echo
    echo "== $(( $(stat -c %s "$fixture") / 1048576 )) MiB (chat-${m}MiB-v1.db), medians of $runs, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "$W/h.json" <<'PY'
import json, statistics, sys
res = {r["command"]: r["times"] for r in json.load(open(sys.argv[1]))["results"]}
base = statistics.median(res["sqlite3 .backup"])
print(f"{'contender':28} {'s':>6} {'min-max s':>12} {'speed vs sqlite3 .backup':>26}")
for name, t in res.items():
    m = statistics.median(t)
    print(f"{name:28} {m:6.2f} {min(t):5.2f}-{max(t):5.2f} {base / m:25.2f}x")
PY
    rm -rf "$o"; mkdir -p "$o"; sync
    echo "phases of one verify=quick run (LITEKEEPER_LOG=debug):"
    LITEKEEPER_LOG=debug "$bin" -c "$W/lk/quick.toml" run bench backup 2>&1 \
      | grep -E "quick_check|copy [0-9]+ ms|file copy,|SHA-256 of" | sed -e "s#$W#<work>#g" -e 's/^/  /'
    rm -rf "$o"
  done
done

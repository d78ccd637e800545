#!/usr/bin/env bash
# VACUUM of a WAL database (default ~1 GiB, 1.1M rows of 1000-byte blobs) with about half its
# pages free (every other block of 50 rows deleted), while an app writer commits ~200 times/s,
# side by side in one run: the writer alone (baseline), `sqlite3 db VACUUM` (the CLI, full),
# litekeeper with mode = "full", and litekeeper with mode = "auto" on a copy built with
# auto_vacuum = INCREMENTAL (incremental_vacuum in chunks, 50 ms pause between them).
# The two source files (one per auto_vacuum setting) are built once; each contender starts
# from a fresh cp of its source. Per contender: wall time, file size before -> after, the
# writer's commit latency p50/p99/max and busy errors (attempts started from the contender's
# start to 3 s after its end), peak -wal size (sampled every 50 ms), and afterwards
# freelist_count (should be 0), PRAGMA quick_check and that every writer commit is there.
# Usage: benches/vacuum.sh [ROWS]   (needs sqlite3 and python3, ~2.5x the DB size free in the
#        temp dir; builds release unless LITEKEEPER_BIN=/path/to/litekeeper is set)
set -euo pipefail
rows=${1:-1100000}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-bench-vacuum.XXXXXX)
trap 'rm -rf "$T"' EXIT
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(sqlite3 --version | cut -d' ' -f1) CLI; $("$bin" --version 2>/dev/null || echo "$bin")"

# One source file per auto_vacuum setting. Built without a journal (fast), then half the
# pages freed, then switched to WAL. Deleting every other single row would free no pages
# (4 rows share a page); every other block of 50 rows frees about half of them.
build() {  # file auto_vacuum
  sqlite3 "$1" "PRAGMA auto_vacuum = $2; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
    PRAGMA secure_delete = OFF;
    CREATE TABLE doc(id INTEGER PRIMARY KEY, body BLOB);
    CREATE TABLE w(id INTEGER PRIMARY KEY, ts REAL, body TEXT);
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
    INSERT INTO doc(id, body) SELECT i, randomblob(1000) FROM n;
    DELETE FROM doc WHERE (id / 50) % 2 = 0;
    PRAGMA journal_mode = WAL;
    PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
  sqlite3 "$1" "SELECT printf('  %s: %d MiB, auto_vacuum %d, %d pages, %d free (%.1f%%), %d rows',
    '$(basename "$1")', page_count * page_size / 1048576, auto_vacuum, page_count, freelist_count,
    100.0 * freelist_count / page_count, (SELECT count(*) FROM doc))
    FROM pragma_page_count, pragma_page_size, pragma_freelist_count, pragma_auto_vacuum;"
}
echo "building two source databases of $rows rows (1000-byte blobs), deleting every other block of 50..."
t0=$(date +%s.%N)
build "$T/src-none.db" NONE
build "$T/src-incr.db" INCREMENTAL
echo "setup took $(python3 -c "import time; print(f'{time.time()-$t0:.0f}')") s"

# The driver: writer thread + WAL sampler around one contender command, then the checks.
cat > "$T/drive.py" <<'PY'
import json, os, sqlite3, subprocess, sys, threading, time
db, label, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
WARM, TAIL, RATE = 2.0, 3.0, 200.0
wal = db + "-wal"
size_before = os.stat(db).st_size
c = sqlite3.connect(db)
w_before = c.execute("SELECT count(*) FROM w").fetchone()[0]
c.close()

stop = threading.Event()
attempts = []   # (start, latency s, "ok" | "busy" | error text)
samples = []    # (time, -wal bytes)

def sampler():
    while not stop.is_set():
        try:
            s = os.stat(wal).st_size
        except FileNotFoundError:
            s = 0
        samples.append((time.perf_counter(), s))
        stop.wait(0.05)

def writer():
    # One small row per commit (autocommit INSERT), busy_timeout 10000 ms, paced to RATE
    # commits/s (5 ms slots; after a stall it carries on at the pace instead of bursting).
    c = sqlite3.connect(db, timeout=10.0, isolation_level=None)
    body = "w" * 100
    due = time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        try:
            c.execute("INSERT INTO w(ts, body) VALUES (?, ?)", (time.time(), body))
            res = "ok"
        except sqlite3.OperationalError as e:
            m = str(e)
            res = "busy" if ("locked" in m or "busy" in m) else m
        attempts.append((t, time.perf_counter() - t, res))
        due = max(due + 1 / RATE, time.perf_counter())
        time.sleep(max(0.0, due - time.perf_counter()))
    c.close()

threads = [threading.Thread(target=sampler), threading.Thread(target=writer)]
for th in threads:
    th.start()
time.sleep(WARM)
load = os.getloadavg()[0]
t_start = time.perf_counter()
p = subprocess.run(cmd, capture_output=True, text=True)
t_end = time.perf_counter()
wal_at_end = os.stat(wal).st_size if os.path.exists(wal) else 0
time.sleep(TAIL)
stop.set()
for th in threads:
    th.join()

# Checks on the result (this last connection's close checkpoints and removes the -wal).
c = sqlite3.connect(db)
qc = "; ".join(r[0] for r in c.execute("PRAGMA quick_check"))
freelist, pages, psize = (c.execute(f"PRAGMA {x}").fetchone()[0]
                          for x in ("freelist_count", "page_count", "page_size"))
w_after = c.execute("SELECT count(*) FROM w").fetchone()[0]
c.close()
size_after = os.stat(db).st_size

win = [a for a in attempts if t_start <= a[0] <= t_end + TAIL]
lat = sorted(a[1] * 1000 for a in win)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
ok_total = sum(1 for a in attempts if a[2] == "ok")
busy = sum(1 for a in win if a[2] == "busy")
busy_all = sum(1 for a in attempts if a[2] == "busy")
other = [a[2] for a in attempts if a[2] not in ("ok", "busy")]
peak = max((s for t, s in samples if t_start <= t <= t_end + TAIL), default=0)
rate = sum(1 for a in win if a[2] == "ok") / (t_end + TAIL - t_start)
vacuumed = label != "writer alone"   # the baseline keeps its free pages
checks_ok = qc == "ok" and (freelist == 0 or not vacuumed) and w_after - w_before == ok_total

print(f"--- {label}: {' '.join(cmd)}")
print(f"    exit {p.returncode}, {t_end - t_start:.2f} s, load average before {load:.2f}")
for name, text in (("stdout", p.stdout), ("stderr", p.stderr)):
    for line in text.strip().splitlines()[-15:]:
        print(f"    {name}| {line[:300]}")
print(f"    file {size_before / 1048576:.0f} -> {size_after / 1048576:.0f} MiB "
      f"({pages} pages of {psize}), -wal at the contender's exit {wal_at_end / 1048576:.1f} MiB; "
      f"freelist_count {freelist}; quick_check {qc}; writer rows +{w_after - w_before} "
      f"(commits {ok_total}) {'OK' if w_after - w_before == ok_total else 'MISMATCH'}")
print(f"    writer: {len(win)} attempts in window ({rate:.0f} commits/s), busy {busy} "
      f"(whole run {busy_all}), other errors {len(other)} {other[:3]}")
slow = sorted(win, key=lambda a: -a[1])[:5]
print("    slowest writer attempts (ms @ s after the contender's start): "
      + ", ".join(f"{a[1] * 1000:.0f} @ {a[0] - t_start:.2f}" for a in slow))
with open(out, "a") as f:
    f.write(json.dumps(dict(label=label, secs=t_end - t_start,
        before=size_before / 1048576, after=size_after / 1048576,
        commits=sum(1 for a in win if a[2] == "ok"), p50=pct(0.50), p99=pct(0.99),
        max=lat[-1] if lat else float("nan"), busy=busy, other=len(other),
        wal=peak / 1048576, exit=p.returncode, freelist=freelist, qc=qc,
        checks_ok=checks_ok)) + "\n")
PY

lk_config() {  # db mode
  cat <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "bench"
path = "$1"
[database.vacuum]
mode = "$2"
min_free = "10%"
CONF
}
contender() {  # label source db-name command...
  local label=$1 src=$T/src-$2.db db=$T/$3.db; shift 3
  cp "$src" "$db"; sync
  python3 "$T/drive.py" "$db" "$label" "$T/results.jsonl" "$@"
  rm -f "$db" "$db-wal" "$db-shm"
}
contender "writer alone" none idle sleep 5
contender "sqlite3 VACUUM (full)" none a sqlite3 -cmd ".timeout 10000" "$T/a.db" "VACUUM"
lk_config "$T/b.db" full > "$T/b.toml"
contender "litekeeper full" none b "$bin" -c "$T/b.toml" run bench vacuum
lk_config "$T/c.db" auto > "$T/c.toml"
contender "litekeeper auto (incr.)" incr c "$bin" -c "$T/c.toml" run bench vacuum

python3 - "$T/results.jsonl" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print()
h = ("contender", "seconds", "file MiB", "writer commits", "p50 ms", "p99 ms", "max ms",
     "busy errors", "peak WAL MiB")
print("%-25s %8s %13s %14s %7s %7s %8s %11s %12s" % h)
for r in rs:
    print("%-25s %8.2f %13s %14d %7.1f %7.1f %8.1f %11d %12.1f" % (r["label"], r["secs"],
          f"{r['before']:.0f} -> {r['after']:.0f}", r["commits"], r["p50"], r["p99"], r["max"],
          r["busy"], r["wal"])
          + ("" if r["exit"] == 0 and r["checks_ok"] and not r["other"]
             else f"  (exit {r['exit']}, freelist {r['freelist']}, quick_check {r['qc']}, "
                  f"checks {'ok' if r['checks_ok'] else 'FAILED'}, other errors {r['other']})"))
PY

#!/usr/bin/env bash
# Prune about half of a large table (default 2M rows, 1M deleted) while an app writer commits
# ~200 times/s, side by side in one run: the writer alone (baseline), one `DELETE` statement
# (sqlite3 CLI, .timeout 5000), litekeeper prune with its defaults (max_lock 50ms, pause 50ms),
# and litekeeper with pause = "10ms". Each contender starts from a copy of the same file.
# Per contender: total time, rows deleted, the writer's commit latency p50/p99/max and busy
# errors (attempts started from the contender's start to 2 s after its end), peak -wal size
# (sampled every 50 ms), and a check of the rows left.
# LAYOUT "ordered" (default): ts rises with id, so the old half is ids 1..ROWS/2 (an append-only
# event log); "mixed": old and young rows interleaved at random, ts random within its range.
# Usage: benches/prune.sh [ROWS] [LAYOUT]   (needs sqlite3 and python3; builds release unless
#        LITEKEEPER_BIN=/path/to/litekeeper is set)
set -euo pipefail
rows=${1:-2000000}
layout=${2:-ordered}
cd "$(dirname "$0")/.."
if [ -n "${LITEKEEPER_BIN:-}" ]; then
  bin=$LITEKEEPER_BIN
else
  cargo build --release --quiet
  bin=$PWD/target/release/litekeeper
fi
T=$(mktemp -d /tmp/lk-bench-prune.XXXXXX)
trap 'rm -rf "$T"' EXIT
half=$((rows / 2))
base=$T/base.db
now=$(date +%s)
day=86400
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(sqlite3 --version | cut -d' ' -f1) CLI; $("$bin" --version 2>/dev/null || echo "$bin")"
case $layout in
  ordered) ts="CASE WHEN i <= $half THEN $now - 60*$day + (i-1)*(29*$day)/$half
                    ELSE $now - 29*$day + (i-$half-1)*(29*$day)/($rows-$half) END"
           what="ids 1..$half older than 31 days, the rest younger than 29 days" ;;
  mixed)   ts="CASE WHEN (i * 2654435761) % 1000 < 500 THEN $now - 60*$day ELSE $now - 29*$day END
                + abs(random()) % (29*$day)"
           what="half older than 31 days, half younger than 29 days, interleaved at random" ;;
  *) echo "LAYOUT must be ordered or mixed" >&2; exit 64 ;;
esac
echo "building $rows rows, layout $layout ($what)..."
t0=$(date +%s.%N)
# Built without a journal, then switched to WAL: the file every contender copies.
sqlite3 "$base" "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
  CREATE TABLE event(id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT, body TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
  INSERT INTO event(ts, kind, body) SELECT $ts, 'kind' || (i % 8), hex(randomblob(50)) FROM n;
  CREATE INDEX event_ts ON event(ts);
  PRAGMA journal_mode=WAL;" >/dev/null
echo "built $(( $(stat -c %s "$base") / 1048576 )) MiB in $(python3 -c "import time; print(f'{time.time()-$t0:.0f}')") s"

# The driver: writer thread + WAL sampler around one contender command.
cat > "$T/drive.py" <<'PY'
import json, os, sqlite3, subprocess, sys, threading, time
db, label, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
WARM, TAIL, RATE = 2.0, 2.0, 200.0
wal = db + "-wal"

def counts():
    c = sqlite3.connect(db, timeout=30)
    cutoff = int(time.time()) - 30 * 86400
    r = c.execute("SELECT count(*), total(ts < ?), total(kind = 'writer') FROM event",
                  (cutoff,)).fetchone()
    c.close()
    return [int(x) for x in r]

before = counts()
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
    # One row per commit (autocommit INSERT), busy_timeout 5000 ms, paced to RATE commits/s
    # (5 ms slots; after a stall it carries on at the pace instead of bursting to catch up).
    c = sqlite3.connect(db, timeout=5.0, isolation_level=None)
    body = "w" * 100
    due = time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        try:
            c.execute("INSERT INTO event(ts, kind, body) VALUES (?, 'writer', ?)",
                      (int(time.time()), body))
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
time.sleep(TAIL)
stop.set()
for th in threads:
    th.join()
after = counts()

win = [a for a in attempts if t_start <= a[0] <= t_end + TAIL]
lat = sorted(a[1] * 1000 for a in win)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
ok_total = sum(1 for a in attempts if a[2] == "ok")
busy = sum(1 for a in win if a[2] == "busy")
busy_all = sum(1 for a in attempts if a[2] == "busy")
other = [a[2] for a in attempts if a[2] not in ("ok", "busy")]
deleted = before[0] + ok_total - after[0]
peak = max((s for t, s in samples if t_start <= t <= t_end + TAIL), default=0)
peak_all = max((s for t, s in samples), default=0)
rate = sum(1 for a in win if a[2] == "ok") / (t_end + TAIL - t_start)

print(f"--- {label}: {' '.join(cmd)}")
print(f"    exit {p.returncode}, {t_end - t_start:.2f} s, load average before {load:.2f}")
for name, text in (("stdout", p.stdout), ("stderr", p.stderr)):
    for line in text.strip().splitlines()[-15:]:
        print(f"    {name}| {line[:200]}")
expect_deleted = before[1] if label != "writer alone" else 0
checks = {
    "old rows left": (after[1], 0 if expect_deleted else before[1]),
    "writer rows": (after[2] - before[2], ok_total),
    "rows deleted": (deleted, expect_deleted),
}
print("    rows: before %d (%d older than 30d), after %d (%d older than 30d, %d writer rows); %s"
      % (before[0], before[1], after[0], after[1], after[2],
         "; ".join(f"{k} {v[0]} (expected {v[1]}) {'OK' if v[0] == v[1] else 'MISMATCH'}"
                   for k, v in checks.items())))
print(f"    writer: {len(win)} attempts in window ({rate:.0f} commits/s), busy {busy} "
      f"(whole run {busy_all}), other errors {len(other)} {other[:3]}; "
      f"peak WAL whole run {peak_all / 1048576:.1f} MiB")
slow = sorted(win, key=lambda a: -a[1])[:5]
print("    slowest writer attempts (ms @ s after the contender's start): "
      + ", ".join(f"{a[1] * 1000:.0f} @ {a[0] - t_start:.2f}" for a in slow))
with open(out, "a") as f:
    f.write(json.dumps(dict(label=label, secs=t_end - t_start, deleted=deleted,
        commits=sum(1 for a in win if a[2] == "ok"), p50=pct(0.50), p99=pct(0.99),
        max=lat[-1] if lat else float("nan"), busy=busy, other=len(other),
        wal=peak / 1048576, exit=p.returncode,
        checks_ok=all(v[0] == v[1] for v in checks.values()))) + "\n")
PY

lk_config() {  # db [pause]
  local pause_line=""
  [ -n "${2:-}" ] && pause_line="pause = \"$2\""
  cat <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
[[database]]
name = "bench"
path = "$1"
[database.prune]
max_fraction = 0.9
$pause_line
[[database.prune.rule]]
table = "event"
column = "ts"
older_than = "30d"
time_format = "unix"
CONF
}
contender() {  # label db-name command...
  local label=$1 db=$T/$2.db; shift 2
  cp "$base" "$db"; sync
  python3 "$T/drive.py" "$db" "$label" "$T/results.jsonl" "$@"
  rm -f "$db" "$db-wal" "$db-shm"
}
contender "writer alone" idle sleep 5
cutoff=$(( $(date +%s) - 30 * day ))
contender "one DELETE" a sqlite3 -cmd ".timeout 5000" "$T/a.db" "DELETE FROM event WHERE ts < $cutoff; SELECT changes() || ' rows deleted';"
lk_config "$T/b.db" > "$T/b.toml"
contender "litekeeper (defaults)" b "$bin" -c "$T/b.toml" run bench prune
lk_config "$T/c.db" 10ms > "$T/c.toml"
contender "litekeeper (pause 10ms)" c "$bin" -c "$T/c.toml" run bench prune

python3 - "$T/results.jsonl" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print()
h = ("contender", "total s", "rows deleted", "writer commits", "p50 ms", "p99 ms", "max ms",
     "busy errors", "peak WAL MiB")
print("%-25s %8s %12s %14s %7s %7s %8s %11s %12s" % h)
for r in rs:
    print("%-25s %8.2f %12d %14d %7.1f %7.1f %8.1f %11d %12.1f" % (r["label"], r["secs"],
          r["deleted"], r["commits"], r["p50"], r["p99"], r["max"], r["busy"], r["wal"])
          + ("" if r["exit"] == 0 and r["checks_ok"] and not r["other"]
             else f"  (exit {r['exit']}, row checks {'ok' if r['checks_ok'] else 'FAILED'}, other errors {r['other']})"))
d = next(r for r in rs if r["label"] == "one DELETE")
print()
for r in rs:
    if not r["label"].startswith("litekeeper"):
        continue
    ratio = d["secs"] / r["secs"]
    met = lambda ok: "met" if ok else "NOT met"
    print(f"{r['label']}: DELETE time / litekeeper time = {ratio:.2f} (target >= 2: {met(ratio >= 2)}); "
          f"p99 {r['p99']:.1f} ms (<= 50: {met(r['p99'] <= 50)}); max {r['max']:.1f} ms (<= 150: {met(r['max'] <= 150)}); "
          f"busy {r['busy']} (0: {met(r['busy'] == 0)}); WAL {r['wal']:.1f} MiB (< 64: {met(r['wal'] < 64)})")
PY

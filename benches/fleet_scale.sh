#!/usr/bin/env bash
# A fleet of COUNT small WAL databases (default 10,000) in one [[database]] stanza: one daily
# backup of all of them by the daemon (the tick at the next minute boundary, jitter 20s,
# max_concurrent_jobs = 8, verify = "quick", keep last 1). Prints the wall time of the round,
# runs/s, the daemon's peak RSS, threads and open files, failures, how long `status` and
# `backups list` take for one member and for all (time to first byte and total; once when
# half the fleet is backed up, once after the round), `check`, and the size of state.db.
# The round ends when every tenant has an ok run, at TIMEOUT, or after 120 s without progress.
# Usage: benches/fleet_scale.sh [COUNT]   (needs python3; LITEKEEPER_BIN=path skips the build)
#   TIMEOUT=seconds  for the round (default 900)     JITTER=duration  default 20s
#   NOFILE=n         run the daemon under `ulimit -n n` (1024: systemd's default soft limit)
#   LINGER=seconds   keep sampling the idle daemon that long after the round
#   KEEP=1           keep the temp dir
set -euo pipefail
count=${1:-10000}
timeout=${TIMEOUT:-900}
jitter=${JITTER:-20s}
cd "$(dirname "$0")/.."
. benches/bin.sh
T=$(mktemp -d /tmp/lk-fleet.XXXXXX)
P=0; S=0; Q=0
cleanup() {
  [ "$S" != 0 ] && kill "$S" 2>/dev/null || true
  [ "$Q" != 0 ] && kill "$Q" 2>/dev/null || true
  [ "$P" != 0 ] && kill "$P" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
one=$(printf 'tenant-%05d' $((count / 2)))
lk() { "$bin" -c "$T/lk.toml" "$@"; }

# 1. The tenants: one python3 process.
python3 - "$T/tenants" "$count" <<'PY'
import os, sqlite3, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
t = time.time()
for i in range(n):
    c = sqlite3.connect(f"{d}/{i:05d}.db", isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT, ts INTEGER)")
    c.execute("BEGIN")
    c.executemany("INSERT INTO note(body, ts) VALUES (?, ?)",
                  [(f"note {j} of tenant {i} " + "x" * 40, j) for j in range(20)])
    c.execute("COMMIT")
    c.close()
size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
print(f"created {n} WAL databases (20 rows each, {size/1048576:.1f} MiB in all) in {time.time()-t:.1f} s")
PY

# 2. The configuration: the tick at the next minute boundary at least LEAD seconds away
#    (the daemon needs time to load COUNT members before it arms the timer).
write_config() {  # $1 = "M H" of the daily schedule
  cat > "$T/lk.toml" <<CONF
[daemon]
state_dir = "$T/state"
lock_dir = "$T/locks"
timezone = "UTC"
max_concurrent_jobs = 8

[[database]]
name = "tenant-{stem}"
path = "$T/tenants/*.db"

[database.backup]
schedule = "$1 * * *"
jitter = "$jitter"
dir = "$T/backups/{name}"
keep = { last = 1 }
verify = "quick"
CONF
}
write_config "0 0"
now() { date +%s.%N; }
t0=$(now); lk status "$one" > /dev/null; load_s=$(python3 -c "print(round($(now)-$t0, 2))")
echo "config load + status $one before any run: ${load_s} s"
read -r tick_epoch sched < <(python3 - "$load_s" <<'PY'
import sys, time
lead = max(20, 3 * float(sys.argv[1]) + 10)
t = (int(time.time() + lead) // 60 + 1) * 60
g = time.gmtime(t)
print(t, f"{g.tm_min} {g.tm_hour}")
PY
)
write_config "$sched"
echo "schedule \"$sched * * *\" (UTC): tick at $(date -u -d @"$tick_epoch" +%T), in $((tick_epoch - $(date +%s))) s"

# 3. The daemon, sampled every second: VmRSS, VmHWM, threads, open files, CPU seconds.
if [ -n "${NOFILE:-}" ]; then
  (ulimit -n "$NOFILE"; exec "$bin" -c "$T/lk.toml" daemon) 2>"$T/daemon.log" &
else
  "$bin" -c "$T/lk.toml" daemon 2>"$T/daemon.log" &
fi
P=$!
python3 - "$P" > "$T/samples.tsv" <<'PY' &
import os, sys, time
pid, hz = sys.argv[1], os.sysconf("SC_CLK_TCK")
while True:
    try:
        st = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
        cpu = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        break
    kib = lambda k: int(st[k].split()[0])
    print(f"{time.time():.1f}\t{kib('VmRSS')}\t{kib('VmHWM')}\t{st['Threads'].strip()}\t{fds}\t"
          f"{(int(cpu[11]) + int(cpu[12])) / hz:.2f}\t{kib('RssAnon')}\t{kib('RssFile')}\t{kib('RssShmem')}",
          flush=True)
    time.sleep(1)
PY
S=$!

# 4. Commands timed from a python3 parent reading the pipe: seconds to the first byte and to
#    the end, bytes, exit code; median of 3 (1 if a run takes over 20 s; killed after LIMIT s).
timed() {  # label, args...
  local label=$1; shift
  python3 - "$label" "${LIMIT:-120}" "$bin" -c "$T/lk.toml" "$@" <<'PY'
import statistics, subprocess, sys, threading, time
label, limit, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
res = []
for _ in range(3):
    t = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(limit, p.kill); timer.start()
    first = p.stdout.read(1)
    ttfb = time.time() - t
    n = len(first) + sum(len(b) for b in iter(lambda: p.stdout.read(65536), b""))
    rc = p.wait(); timer.cancel()
    res.append((time.time() - t, ttfb, n, rc if rc >= 0 else f"killed>{limit:.0f}s"))
    if res[-1][0] > 20:
        break
tot = statistics.median(r[0] for r in res); fb = statistics.median(r[1] for r in res)
print(f"{label}\t{fb:.3f}\t{tot:.3f}\t{res[0][2]}\t{res[0][3]}\t{len(res)}", flush=True)
PY
}
queries() {  # $1 = phase label
  for spec in "status $one|status|$one" "status (all)|status" "status --json (all)|status|--json" \
              "status --check (all)|status|--check" \
              "backups list $one|backups|list|$one" "backups list (all)|backups|list" \
              "backups list --json (all)|backups|list|--json"; do
    IFS='|' read -r -a a <<< "$spec"
    timed "$1: ${a[0]}" "${a[@]:1}"
  done
}
# The same commands once half the fleet is backed up, while the daemon works.
( while [ ! -e "$T/state/state.db.half" ]; do sleep 1; [ -e "$T/round.done" ] && exit 0; done
  queries "during" > "$T/during.tsv" ) &
Q=$!

echo "waiting for the tick and for every tenant's ok backup (timeout ${timeout}s)..."
python3 - "$T/state/state.db" "$count" "$tick_epoch" "$timeout" <<'PY'
import os, sqlite3, sys, time
path, n, tick, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
deadline, last, half, moved = time.time() + limit, -1, False, time.time()
while time.time() < deadline:
    ok = failed = 0
    if os.path.exists(path):
        try:
            c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            ok = c.execute("SELECT count(DISTINCT database) FROM runs WHERE job='backup' AND outcome='ok'").fetchone()[0]
            failed = c.execute("SELECT count(*) FROM runs WHERE outcome NOT IN ('ok','running')").fetchone()[0]
            c.close()
        except sqlite3.Error as e:
            print("poll:", e, flush=True)
    if ok != last and (ok >= n or time.time() - getattr(sys, "_lp", 0) > 15):
        sys._lp = time.time()
        print(f"  t={time.time()-tick:+6.0f}s  ok {ok}/{n}  not ok {failed}", flush=True)
        last = ok
    if not half and ok >= n // 2:
        half = True
        open(path + ".half", "w").close()
    if (ok, failed) != getattr(sys, "_seen", None):
        sys._seen, moved = (ok, failed), time.time()
    if ok >= n or (failed and ok + failed >= n):
        break
    if time.time() > tick + 60 and time.time() - moved > 120:
        print(f"  t={time.time()-tick:+6.0f}s  no progress for 120 s: giving up", flush=True)
        break
    time.sleep(1)
PY

touch "$T/round.done"; wait $Q || true

# Commands after the round (the daemon is idle; its timer is armed for tomorrow).
queries "after" > "$T/after.tsv"
{ timed "after: check $one" check "$one"; LIMIT=300 timed "after: check (all)" check; } > "$T/check.tsv"
cat "$T/during.tsv" "$T/after.tsv" "$T/check.tsv" 2>/dev/null > "$T/queries.tsv" || true

if [ "${LINGER:-0}" -gt 0 ]; then echo "daemon idle for ${LINGER}s..."; sleep "$LINGER"; fi
rss_end=$(awk '/VmRSS/ {print $2}' /proc/$P/status)
kill -TERM $P
set +e; wait $P; rc=$?; set -e
P=0
kill $S 2>/dev/null || true; wait $S 2>/dev/null || true; S=0

# 5. The figures.
python3 - "$T" "$count" "$tick_epoch" "$rc" "$rss_end" "$load_s" "$jitter" <<'PY'
import glob, os, sqlite3, statistics, sys
T, n, tick, rc, rss_end, load_s, jitter = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7]
db = f"{T}/state/state.db"
c = sqlite3.connect(db)
rows = c.execute("SELECT database, started_at, finished_at, outcome, coalesce(error, summary) FROM runs WHERE job='backup'").fetchall()
ok = {r[0] for r in rows if r[3] == "ok"}
bad = [r for r in rows if r[3] != "ok"]
starts = sorted(r[1] / 1000 for r in rows); ends = sorted(r[2] / 1000 for r in rows if r[2])
durs = sorted((r[2] - r[1]) for r in rows if r[2])
wall = (ends[-1] - starts[0]) if rows else 0
samples = [l.split("\t") for l in open(f"{T}/samples.tsv") if l.strip()]
rss = [int(s[1]) for s in samples]; hwm = max(int(s[2]) for s in samples)
thr = max(int(s[3]) for s in samples); fds = max(int(s[4]) for s in samples)
cpu = float(samples[-1][5]) if samples else 0
base = [int(s[1]) for s in samples if float(s[0]) < tick]
peak = max(samples, key=lambda s: int(s[1])); last = samples[-1]
split = lambda s: f"{int(s[6])/1024:.0f} / {int(s[7])/1024:.0f} / {int(s[8])/1024:.0f}"
runs_n = c.execute("SELECT count(*) FROM runs").fetchone()[0]
c.close()
size = sum(os.path.getsize(p) for p in glob.glob(db + "*") if not p.endswith(".half"))
log = open(f"{T}/daemon.log", errors="replace").read().splitlines()
warn = [l for l in log if " WARN " in l or " ERROR " in l]
emfile = sum("Too many open files" in l for l in log)
unrecorded = sum("could not record run" in l for l in log)
bsize = sum(os.path.getsize(p) for p in glob.glob(f"{T}/backups/*/*"))
nfiles = len(glob.glob(f"{T}/backups/*/*.db*"))
q = [l.rstrip("\n").split("\t") for l in open(f"{T}/queries.tsv") if l.strip()]

print(f"\nfleet of {n} WAL databases, one daily backup round (jitter {jitter}, max_concurrent_jobs 8, verify quick)")
print(f"{'figure':<46} {'value':>22}  target")
def row(k, v, t=""): print(f"{k:<46} {v:>22}  {t}")
row("tenants with an ok backup", f"{len(ok)}/{n}", "all: " + ("met" if len(ok) == n else "NOT met"))
row("backup runs recorded (not ok)", f"{len(rows)} ({len(bad)})", "0 not ok")
row("tenants with no run recorded at all", f"{n - len({r[0] for r in rows})}")
if rows:
    row("first start after the tick", f"{starts[0]-tick:.1f} s")
    row("last start after the tick", f"{starts[-1]-tick:.1f} s", f"jitter {jitter} + queue")
    row("wall time, first start to last finish", f"{wall:.1f} s")
    row("runs/s over that time", f"{len(rows)/wall:.1f}" if wall else "-")
    row("run duration p50 / p99 / max", f"{durs[len(durs)//2]} / {durs[int(len(durs)*.99)]} / {durs[-1]} ms")
row("daemon RSS before the tick", f"{(base[-1] if base else rss[0])/1024:.1f} MiB")
row("daemon peak RSS (VmHWM)", f"{hwm/1024:.1f} MiB", "< 200 MiB: " + ("met" if hwm < 200*1024 else "NOT met"))
row("  anon / file / shmem MiB at the peak", split(peak))
row("daemon RSS at the end" + (" (after LINGER)" if os.environ.get("LINGER", "0") != "0" else ""), f"{rss_end/1024:.1f} MiB")
row("  anon / file / shmem MiB at the end", split(last))
row("daemon peak threads / open files", f"{thr} / {fds}")
row("daemon open files at the end", last[4])
row("daemon CPU seconds (user+sys, whole run)", f"{cpu:.1f}")
row("daemon exit code on SIGTERM", rc, "0")
row("state.db + -wal size", f"{size/1024:.0f} KiB", f"({runs_n} runs; {size/max(runs_n,1):.0f} B/run)")
row("backup files / bytes", f"{nfiles} / {bsize/1048576:.1f} MiB")
row("daemon log: WARN/ERROR lines", f"{len(warn)}", f"({emfile} 'Too many open files', {unrecorded} 'could not record run')" if warn else "")
row("config load + status one, before the daemon", f"{load_s} s", "< 1 s")
print(f"\n{'command (median of 3)':<46} {'1st byte s':>10} {'total s':>9} {'bytes':>10}  exit  target")
for label, fb, tot, b, rc_, _ in q:
    tgt = ""
    if label.endswith((f"status tenant-{n//2:05d}", f"list tenant-{n//2:05d}")):
        tgt = "< 1 s: " + ("met" if float(tot) < 1 else "NOT met")
    elif "(all)" in label and fb != "-":
        tgt = "stream: first byte " + ("early" if float(fb) < 0.5 * float(tot) else "at the end")
    print(f"{label:<46} {fb:>10} {tot:>9} {b:>10}  {rc_:>4}  {tgt}")
if bad:
    print("\nfirst failures:")
    for r in bad[:5]: print("  ", r[0], r[3], (r[4] or "")[:200])
if warn:
    print("\nfirst WARN/ERROR log lines:")
    for l in warn[:5]: print("  ", l[:300])
PY

# 6. The state DB in its steady state: a fleet member keeps 7 days of history (its own next
#    run deletes older ones), so with daily rounds it holds about 8 rounds. Copy this round's
#    rows 7 times, 1 to 7 days back, then time the same commands against that state DB.
python3 - "$T/state/state.db" <<'PY'
import sqlite3, sys, uuid
c = sqlite3.connect(sys.argv[1])
cols = "database, job, trigger, pid, started_at, finished_at, outcome, figures, summary, error"
rows = c.execute(f"SELECT {cols} FROM runs").fetchall()
day = 86400 * 1000
with c:
    for d in range(1, 8):
        c.executemany(f"INSERT INTO runs (id, {cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [(uuid.uuid4().hex, r[0], r[1], r[2], r[3], r[4] - d * day,
                        r[5] - d * day if r[5] else None, r[6], r[7], r[8], r[9]) for r in rows])
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
n = c.execute("SELECT count(*) FROM runs").fetchone()[0]
c.execute("VACUUM")
c.close()
import os
size = sum(os.path.getsize(sys.argv[1] + s) for s in ("", "-wal") if os.path.exists(sys.argv[1] + s))
print(f"\nsteady state (8 daily rounds kept: 7 days of history): {n} runs, state.db {size/1048576:.1f} MiB ({size/n:.0f} B/run)")
PY
{ timed "steady: status $one" status "$one"; timed "steady: status --json (all)" status --json
  timed "steady: status --check (all)" status --check; } | awk -F'\t' '{printf "%-46s %10s %9s %10s  %4s\n", $1, $2, $3, $4, $5}'

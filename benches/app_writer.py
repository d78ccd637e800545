#!/usr/bin/env python3
"""The application in the benchmarks: a chat app writing one message per transaction.

Each transaction is what a chat backend does when a message arrives: `BEGIN IMMEDIATE`, insert
the message into a recent conversation, bump the conversation's `updated_at`, `COMMIT`. The
connection is an ordinary app connection: WAL, `busy_timeout` 5000 ms, SQLite's default
auto-checkpoint (1000 pages), foreign keys not enforced. Commits are paced at `--rate` per
second (after a stall it carries on at the pace, it does not burst to catch up).

Recorded: every transaction's start time and latency (BEGIN to COMMIT), its result ("ok",
"busy" for SQLITE_BUSY/"database is locked", or the error text) and how long its `BEGIN
IMMEDIATE` and its `COMMIT` took (waiting for another writer's lock, against the commit's own
WAL write, fsync and any auto-checkpoint it ran), and the -wal file's size,
sampled every 50 ms by a second thread. Runs for `--seconds` or until SIGTERM/SIGINT, then
prints a JSON summary (commits, rate, busy errors, p50/p99/max latency, max WAL) on stdout;
`--log FILE` also writes every event, so a driver can summarise a window of the run
(`summarize()` below is the one place the figures are computed).

Usage: benches/app_writer.py DB [--rate 200] [--seconds N] [--log FILE]
Needs the fixture's schema (benches/run.sh builds it): conversations(id, title, created_at,
updated_at), messages(id, conversation_id, role, content, created_at).
"""
import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(commits, wal, t0=None, t1=None):
    """Figures over the transactions started in [t0, t1] (epoch seconds; None = unbounded).

    commits: [(start epoch s, latency ms, result, BEGIN ms, COMMIT ms)], wal: [(epoch s, -wal bytes)].
    """
    lo = float("-inf") if t0 is None else t0
    hi = float("inf") if t1 is None else t1
    win = [c for c in commits if lo <= c[0] <= hi]
    lat = sorted(c[1] for c in win)
    if t0 is not None and t1 is not None:
        span = t1 - t0
    else:
        span = (win[-1][0] - win[0][0]) if len(win) > 1 else 0
    ok = sum(1 for c in win if c[2] == "ok")
    errors = [c[2] for c in win if c[2] not in ("ok", "busy")]
    slowest = sorted(win, key=lambda c: -c[1])[:3]
    return {
        "attempts": len(win),
        "commits": ok,
        "commits_per_s": round(ok / span, 1) if span > 0 else None,
        "busy": sum(1 for c in win if c[2] == "busy"),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] if lat else None,
        "slowest_at_s": [[round(c[1], 1), round(c[0] - (t0 if t0 is not None else commits[0][0]), 2)]
                         + ([round(c[3], 1), round(c[4], 1)] if len(c) > 4 else []) for c in slowest],
        "max_wal_bytes": max((w[1] for w in wal if lo <= w[0] <= hi), default=0),
    }


class Writer:
    def __init__(self, db, rate):
        self.db, self.rate = db, rate
        self.stop = threading.Event()
        self.commits = []  # (start epoch s, latency ms, result, BEGIN ms, COMMIT ms)
        self.wal = []  # (epoch s, bytes)

    def sample_wal(self):
        path = self.db + "-wal"
        while not self.stop.is_set():
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = 0
            self.wal.append((time.time(), size))
            self.stop.wait(0.05)

    def write(self):
        c = sqlite3.connect(self.db, timeout=5.0, isolation_level=None)
        c.execute("PRAGMA journal_mode")  # WAL is persistent in the file; this only opens it
        top = c.execute("SELECT max(id) FROM conversations").fetchone()[0] or 1
        recent = list(range(max(1, top - 99), top + 1))
        rnd = random.Random(16)
        words = "the a backup of this chat message is safe and sound with litekeeper today".split()
        due = time.perf_counter()
        while not self.stop.is_set():
            conv = rnd.choice(recent)
            text = " ".join(rnd.choice(words) for _ in range(rnd.randint(10, 90)))
            start, t = time.time(), time.perf_counter()
            began = committing = done = None
            try:
                c.execute("BEGIN IMMEDIATE")
                began = time.perf_counter()
                now = int(time.time())
                c.execute(
                    "INSERT INTO messages(conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                    (conv, rnd.choice(("user", "assistant")), text, now),
                )
                c.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conv))
                committing = time.perf_counter()
                c.execute("COMMIT")
                done = time.perf_counter()
                result = "ok"
            except sqlite3.OperationalError as e:
                msg = str(e)
                result = "busy" if ("locked" in msg or "busy" in msg) else msg
                if c.in_transaction:
                    c.execute("ROLLBACK")
            end = time.perf_counter()
            self.commits.append((start, (end - t) * 1000.0, result,
                                 ((began or end) - t) * 1000.0,
                                 ((done or end) - committing) * 1000.0 if committing else 0.0))
            due = max(due + 1.0 / self.rate, time.perf_counter())
            time.sleep(max(0.0, due - time.perf_counter()))
        c.close()

    def run(self, seconds):
        threads = [threading.Thread(target=self.sample_wal), threading.Thread(target=self.write)]
        for th in threads:
            th.start()
        end = None if seconds is None else time.monotonic() + seconds
        while not self.stop.is_set() and (end is None or time.monotonic() < end):
            self.stop.wait(0.1)
        self.stop.set()
        for th in threads:
            th.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("db")
    ap.add_argument("--rate", type=float, default=200.0, help="commits per second (default 200)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default: at SIGTERM)")
    ap.add_argument("--log", help="write every commit and WAL sample to this JSON file")
    args = ap.parse_args()
    if not os.path.exists(args.db):
        sys.exit(f"app_writer: {args.db}: no such database (build the fixture with benches/run.sh)")
    w = Writer(args.db, args.rate)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop.set())
    w.run(args.seconds)
    if args.log:
        with open(args.log, "w") as f:
            json.dump({"commits": w.commits, "wal": w.wal}, f)
    print(json.dumps(summarize(w.commits, w.wal)))


if __name__ == "__main__":
    main()

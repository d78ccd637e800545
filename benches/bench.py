#!/usr/bin/env python3
"""Helpers of benches/run.sh: run a contender while the app writes, and turn results into tables.

Subcommands (run.sh calls them; each prints markdown on stdout):
  drive      run one command while benches/app_writer.py commits, append a JSON line of
             figures (the command's time, the app's commits in the window, WAL, row checks)
  backup     the backup table from hyperfine's JSON export: medians, ratios, targets
  load       the under-load table from drive's JSON lines
  prune      the prune table from drive's JSON lines
Medians and ratios are computed here from the raw times, not taken from hyperfine's summary.
"""
import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, HERE)
from app_writer import summarize  # noqa: E402


def met(ok):
    return "MET" if ok else "NOT MET"


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------
# drive: one contender under the app writer


def prune_counts(db, cutoff):
    c = sqlite3.connect(db, timeout=30)
    r = c.execute(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM messages WHERE created_at < ?1),"
        " (SELECT count(*) FROM conversations), (SELECT count(*) FROM conversations WHERE updated_at < ?1)",
        (cutoff,),
    ).fetchone()
    fk = c.execute("SELECT count(*) FROM pragma_foreign_key_check").fetchone()[0]
    qc = c.execute("PRAGMA quick_check").fetchone()[0]
    c.close()
    return {"messages": r[0], "old_messages": r[1], "conversations": r[2], "old_conversations": r[3],
            "fk_violations": fk, "quick_check": qc}


def lk_outcome(stderr):
    """litekeeper's summary from its `--log-format json` lines: outcome, ms, figures."""
    for line in reversed(stderr.splitlines()):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        fields = e.get("fields", e)
        if "litekeeper_outcome" in fields:
            figures = fields.get("litekeeper_figures", "{}")
            try:
                figures = json.loads(figures) if isinstance(figures, str) else figures
            except ValueError:
                pass
            return {"outcome": fields.get("litekeeper_outcome"), "ms": fields.get("litekeeper_duration_ms"),
                    "message": fields.get("message", ""), "figures": figures}
    return None


def cmd_drive(a):
    # SIGTERM (run.sh's cleanup) unwinds like an exception: the contender is killed by
    # subprocess.run and the writer stopped in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    check = a.prune_cutoff is not None
    before = prune_counts(a.db, a.prune_cutoff) if check else None
    fd, log = tempfile.mkstemp(prefix="app_writer.", suffix=".json", dir=os.path.dirname(a.db))
    os.close(fd)
    writer = subprocess.Popen([sys.executable, os.path.join(HERE, "app_writer.py"), a.db, "--rate", str(a.rate),
                               "--log", log], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(a.warm)
        if writer.poll() is not None:
            sys.exit(f"bench.py drive: the app writer exited early ({writer.returncode}) on {a.db}")
        t0 = time.time()
        try:
            p = subprocess.run(a.cmd, capture_output=True, text=True, timeout=a.timeout)
            finished, rc, out, err = True, p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            finished, rc = False, None
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        t1 = time.time()
        time.sleep(a.tail)
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=60)
    with open(log) as f:
        data = json.load(f)
    os.unlink(log)
    commits, wal = data["commits"], data["wal"]
    r = {"label": a.label, "secs": t1 - t0, "finished": finished, "exit": rc, "timeout": a.timeout,
         "window": summarize(commits, wal, t0, t1 + a.tail), "whole": summarize(commits, wal),
         "tail_s": a.tail, "lk": lk_outcome(err),
         "output": [line[:240] for line in (out + err).strip().splitlines()[-6:]]}
    if check:
        after = prune_counts(a.db, a.prune_cutoff)
        ok_total = r["whole"]["commits"]
        expect = before["messages"] - before["old_messages"] + ok_total
        r["checks"] = {
            "old messages left": (after["old_messages"], 0),
            "old conversations left": (after["old_conversations"], 0),
            "messages (young + app's)": (after["messages"], expect),
            "conversations": (after["conversations"], before["conversations"] - before["old_conversations"]),
            "foreign_key_check rows": (after["fk_violations"], 0),
            "quick_check": (after["quick_check"], "ok"),
        }
        r["deleted"] = (before["messages"] + ok_total - after["messages"]
                        + before["conversations"] - after["conversations"])
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")
    w = r["window"]
    print(f"  {a.label}: {r['secs']:.2f} s{'' if finished else f' (did NOT finish within {a.timeout:.0f} s: killed)'}"
          f"{'' if rc in (0, None) else f' exit {rc}'}; app: {w['commits']} commits"
          f" ({fmt(w['commits_per_s'], '.0f')}/s), p99 {fmt(w['p99_ms'])} ms, max {fmt(w['max_ms'])} ms,"
          f" busy {w['busy']}, errors {w['errors']}, max WAL {w['max_wal_bytes'] / 1048576:.1f} MiB")
    if r["lk"]:
        print(f"    litekeeper: {r['lk']['outcome']} in {r['lk']['ms']} ms: {r['lk']['message'][:200]}")
        print(f"    figures: {json.dumps(r['lk']['figures'])[:400]}")
    elif rc not in (0, None) or not finished:
        for line in r["output"]:
            print(f"    | {line}")
    for k, (got, want) in r.get("checks", {}).items():
        if got != want:
            print(f"    CHECK FAILED: {k}: {got} (expected {want})")


# ---------------------------------------------------------------------------------------------
# backup: hyperfine's JSON -> table with ratios and the issue's targets


def cmd_backup(a):
    res = json.load(open(a.json))["results"]
    rows = {}
    for r in res:
        failed = [c for c in (r.get("exit_codes") or []) if c != 0]
        rows[r["command"]] = {"median": statistics.median(r["times"]), "min": min(r["times"]),
                              "max": max(r["times"]), "n": len(r["times"]), "failed": failed}
    sq = rows.get("sqlite3 .backup")
    sq = None if sq is None or sq["failed"] else sq["median"]
    print(f"| contender | s (median of {a.runs}) | min – max s | × `sqlite3 .backup` time | speed vs `sqlite3 .backup` |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        bad = f" **FAILED** (exit {r['failed'][0]} in {len(r['failed'])} of {r['n']} runs)" if r["failed"] else ""
        ratios = f"{r['median'] / sq:.2f} | {sq / r['median']:.2f}×" if sq and not bad else "— | —"
        print(f"| {name}{bad} | {r['median']:.2f} | {r['min']:.2f} – {r['max']:.2f} | {ratios} |")
    print()

    def t(name):
        r = rows.get(name)
        return None if r is None or r["failed"] else r["median"]

    quick, none, z = t("litekeeper verify=quick"), t("litekeeper verify=none"), t("litekeeper verify=quick zstd")
    zt2 = t("zstd -3 -T2")
    print("Targets (issue 16, side by side in this run):")
    lines = []
    if sq and quick:
        lines.append(f"verified (`quick`) backup ≥ 1.0× `sqlite3 .backup` speed: {sq / quick:.2f}× — {met(sq / quick >= 1.0)}")
    if sq and none:
        lines.append(f"`verify = \"none\"` ≥ 1.3× `sqlite3 .backup` speed: {sq / none:.2f}× — {met(sq / none >= 1.3)}")
    if z and quick:
        lines.append(f"zstd backup ≤ 2× the uncompressed verified backup's time: {z / quick:.2f}× — {met(z / quick <= 2.0)}")
    if z and zt2:
        lines.append(f"zstd backup ≤ 1.1× `zstd -3 -T2` of the same file: {z / zt2:.2f}× — {met(z / zt2 <= 1.1)}")
    for line in lines:
        print(f"- {line}")
    logs = dict(spec.split("::", 1) for spec in a.log)
    for name, r in rows.items():
        if r["failed"] and name in logs and os.path.exists(logs[name]):
            print(f"- {name} failed; the end of its last run's output:")
            print("```")
            for line in open(logs[name], errors="replace").read().strip().splitlines()[-8:]:
                print(line[:300])
            print("```")
    missing = [n for n in ("sqlite3 .backup", "litekeeper verify=quick", "litekeeper verify=none",
                           "litekeeper verify=quick zstd", "zstd -3 -T2") if t(n) is None]
    if missing:
        print(f"- not evaluated (contender failed or not run): {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# load and prune tables from drive's JSON lines


def load_results(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def row(r, extra=""):
    w = r["window"]
    secs = f"{r['secs']:.2f}" + ("" if r["finished"] else f" (killed at {r['timeout']:.0f} s, not finished)")
    if r["exit"] not in (0, None):
        secs += f" (exit {r['exit']})"
    return (f"| {r['label']} | {secs} | {w['commits']} ({fmt(w['commits_per_s'], '.0f')}/s) | {fmt(w['p50_ms'])} | "
            f"{fmt(w['p99_ms'])} | {fmt(w['max_ms'])} | {w['busy']} | {w['errors']} | "
            f"{w['max_wal_bytes'] / 1048576:.1f} |{extra}")


def details(rs):
    """Per run: litekeeper's own summary and figures, the app's slowest commits, failures."""
    print("```")
    for r in rs:
        slow = ", ".join(f"{s[0]:.0f} ms at +{s[1]:.2f} s"
                         + (f" (BEGIN {s[2]:.0f} ms, COMMIT {s[3]:.0f} ms)" if len(s) > 3 else "")
                         for s in r["window"]["slowest_at_s"])
        print(f"{r['label']}: slowest commits {slow or '—'} (from the run's start)")
        if r["lk"]:
            print(f"  litekeeper: {r['lk']['outcome']} in {r['lk']['ms']} ms: {r['lk']['message'][:300]}")
            print(f"  figures: {json.dumps(r['lk']['figures'])[:600]}")
        elif r["exit"] not in (0, None):
            for line in r["output"]:
                print(f"  | {line}")
        if r["window"]["first_errors"]:
            print(f"  app errors: {r['window']['first_errors']}")
        for k, (got, want) in r.get("checks", {}).items():
            if got != want:
                print(f"  CHECK FAILED: {k}: {got} (expected {want})")
    print("```")


HEAD = ("| run | s | app commits | p50 ms | p99 ms | max ms | busy | other errors | max WAL MiB |",
        "|---|---|---|---|---|---|---|---|---|")


def cmd_load(a):
    rs = {r["label"]: r for r in load_results(a.results)}
    print(f"App writer at {a.rate:g} commits/s; figures over the transactions started from the run's start "
          f"to {next(iter(rs.values()))['tail_s']:g} s after its end.")
    print()
    print(HEAD[0])
    print(HEAD[1])
    for r in rs.values():
        print(row(r))
    details(list(rs.values()))
    slow = [r["label"] for r in rs.values() if (r["window"]["commits_per_s"] or 0) < 0.9 * a.rate]
    if slow:
        print()
        print(f"The app fell short of {a.rate:g} commits/s in: {', '.join(slow)} (each transaction waits for "
              "its own fsync; on a busy or slow disk it cannot keep the pace).")
    print()
    alone, lk = rs.get("app alone"), rs.get("during litekeeper backup (verify=quick)")
    if alone and lk and alone["window"]["max_ms"] is not None and lk["window"]["max_ms"] is not None:
        bound = 2 * alone["window"]["max_ms"] + 20
        ok = lk["finished"] and lk["exit"] == 0 and lk["window"]["max_ms"] <= bound and lk["window"]["errors"] == 0
        print(f"Target: slowest commit during the litekeeper backup ≤ 2 × slowest alone + 20 ms = {bound:.1f} ms: "
              f"{lk['window']['max_ms']:.1f} ms — {met(ok)}")
        if idle := a.idle_backup:
            print(f"litekeeper backup under load took {lk['secs'] / float(idle):.2f}× its idle median ({float(idle):.2f} s).")


def cmd_prune(a):
    rs = load_results(a.results)
    print(HEAD[0] + " rows deleted | row checks |")
    print(HEAD[1] + "---|---|")
    for r in rs:
        bad = [f"{k} {g} (expected {w})" for k, (g, w) in r.get("checks", {}).items() if g != w]
        print(row(r, f" {r.get('deleted', '—')} | {'ok' if not bad else 'FAILED: ' + '; '.join(bad)} |"))
    details(rs)
    print()
    delete = next((r for r in rs if r["label"].startswith("one DELETE")), None)
    print("Targets (litekeeper with defaults; the pause=5ms row is shown against the same bounds):")
    for r in rs:
        if not r["label"].startswith("litekeeper"):
            continue
        w = r["window"]
        checks_ok = r["finished"] and r["exit"] == 0 and all(g == w_ for g, w_ in r.get("checks", {}).values())
        parts = [] if checks_ok else ["**the run failed or left the wrong rows**: NOT MET"]
        if delete and delete["finished"] and delete["exit"] == 0:
            speed = delete["secs"] / r["secs"]
            parts.append(f"speed vs one DELETE {speed:.2f}× (≥ 1.5×: {met(speed >= 1.5)})")
        else:
            parts.append("speed vs one DELETE: not evaluated (the DELETE did not complete)")
        parts.append(f"p99 {fmt(w['p99_ms'])} ms (≤ 50: {met(w['p99_ms'] is not None and w['p99_ms'] <= 50)})")
        parts.append(f"max {fmt(w['max_ms'])} ms (≤ 100: {met(w['max_ms'] is not None and w['max_ms'] <= 100)})")
        parts.append(f"busy {w['busy']} (0: {met(w['busy'] == 0)})")
        parts.append(f"WAL {w['max_wal_bytes'] / 1048576:.1f} MiB (< 64: {met(w['max_wal_bytes'] < 64 * 1048576)})")
        print(f"- {r['label']}: " + "; ".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="sub", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--db", required=True)
    d.add_argument("--label", required=True)
    d.add_argument("--results", required=True)
    d.add_argument("--rate", type=float, default=200.0)
    d.add_argument("--warm", type=float, default=1.0)
    d.add_argument("--tail", type=float, default=1.0)
    d.add_argument("--timeout", type=float, default=None)
    d.add_argument("--prune-cutoff", type=int, default=None)
    d.add_argument("cmd", nargs=argparse.REMAINDER)
    b = sub.add_parser("backup")
    b.add_argument("json")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--log", action="append", default=[], help="NAME::FILE: a contender's stderr, shown if it failed")
    lo = sub.add_parser("load")
    lo.add_argument("results")
    lo.add_argument("--rate", type=float, default=200.0)
    lo.add_argument("--idle-backup", default=None)
    pr = sub.add_parser("prune")
    pr.add_argument("results")
    a = ap.parse_args()
    if a.sub == "drive":
        if a.cmd and a.cmd[0] == "--":
            a.cmd = a.cmd[1:]
        cmd_drive(a)
    else:
        {"backup": cmd_backup, "load": cmd_load, "prune": cmd_prune}[a.sub](a)


if __name__ == "__main__":
    main()

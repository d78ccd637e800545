#!/usr/bin/env python3
"""Why the app writer's p99 moves while an upload runs on this kind of machine.

Measures a 4 KiB pwrite + fsync (what a commit waits for) and a 5 ms sleep's overshoot, for
SECONDS each: alone, with one spinning process, with one per core; the spinners run under
SCHED_IDLE and nice 19, so the guest's scheduler gives the probe every CPU it asks for. If
fsync is slower with every core spinning, the delay is below the guest: on a VM whose host
runs the disk's emulation on the same cores as the vCPUs, it waits while every vCPU is busy.

Usage: benches/fsync_probe.py [SECONDS] [DIR]   (default 8 and the current directory)
"""
import os
import subprocess
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
DIR = sys.argv[2] if len(sys.argv) > 2 else "."


def p(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def probe(name):
    path = os.path.join(DIR, ".fsync-probe.dat")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    sleeps, syncs = [], []
    end = time.time() + SECONDS
    while time.time() < end:
        t = time.perf_counter()
        time.sleep(0.005)
        sleeps.append((time.perf_counter() - t - 0.005) * 1000)
        t = time.perf_counter()
        os.pwrite(fd, b"x" * 4096, 0)
        os.fsync(fd)
        syncs.append((time.perf_counter() - t) * 1000)
    os.close(fd)
    os.unlink(path)
    print(f"| {name} | {p(syncs, .5):.2f} | {p(syncs, .99):.2f} | {p(sleeps, .5):.3f} | {p(sleeps, .99):.3f} |")


def spinners(n):
    cmd = ["chrt", "-i", "0", "nice", "-n", "19", "sh", "-c", "while :; do :; done"]
    return [subprocess.Popen(cmd, start_new_session=True) for _ in range(n)]


cores = os.cpu_count() or 1
print(f"{cores} cores, {SECONDS:.0f} s per line")
print("| load | fsync p50 ms | fsync p99 ms | sleep overshoot p50 ms | p99 ms |\n|---|---|---|---|---|")
probe("alone")
for n in sorted({1, cores}):
    procs = spinners(n)
    try:
        time.sleep(0.5)
        probe(f"{n} idle-class spinner(s)")
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
probe("alone again")

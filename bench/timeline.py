#!/usr/bin/env python3
"""A burst as it happens (issue 21): every 100 ms, how many deliveries the upstream has had,
how idle the machine was, and how much of a core each of the gateway's thread kinds used.

Where `bench/burst_anatomy.sh` sums a burst up, this shows when the work happened: whether the
deliveries keep pace during the acknowledgements or come after them, and which thread was busy
when. It only reads /proc and the upstream's `/__count`; it never talks to the gateway.

Usage: bench/timeline.py [--comm PREFIX] [--upstream URL] [--every SECONDS]
Runs until interrupted, one line per sample on stdout:
    SECONDS up COUNT idle PERCENT THREAD=PERCENT_OF_A_CORE ...
--comm: the gateway process's name (its binary's file name, as /proc/PID/comm has it; default
payflow-edge); the newest such process is followed until it exits, then the next one.
--upstream: the `loadgen bare` server the gateway delivers to (for example
http://127.0.0.1:PORT), or `auto`: the one running now (as a bench script starts it, on a port
of its choosing); without it the count is -1.
Thread kinds are thread names without their trailing numbers (payflow-plugin-0 and -1 are one).
"""
import argparse
import collections
import os
import re
import sys
import time
import urllib.request

HZ = os.sysconf("SC_CLK_TCK")


def newest(comm):
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip().startswith(comm[:15]):
                        found.append(int(p))
            except OSError:
                pass
    return max(found, default=None)


def thread_ticks(pid):
    ticks = collections.Counter()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ticks
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = re.sub(r"[-\d]+$", "", s[s.index("(") + 1:s.rindex(")")])
        fields = s[s.rindex(")") + 2:].split()
        ticks[name] += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def cpu_idle():
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return v[3] + v[4], sum(v)  # idle + iowait, total


def running_bare():
    """The URL of the `loadgen bare` server running now, if there is one."""
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline") as f:
                    args = f.read().split("\0")
            except OSError:
                continue
            if "bare" in args and "--listen" in args[:-1]:
                return "http://" + args[args.index("--listen") + 1]
    return None


def count(upstream):
    if not upstream:
        return -1
    try:
        with urllib.request.urlopen(upstream.rstrip("/") + "/__count", timeout=1) as r:
            return int(r.read())
    except (OSError, ValueError):
        return -1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comm", default="payflow-edge")
    ap.add_argument("--upstream")
    ap.add_argument("--every", type=float, default=0.1)
    a = ap.parse_args()
    start, prev, pid, upstream = time.time(), None, None, a.upstream
    while True:
        # /proc is scanned only until the gateway (and an `auto` upstream) is found, and again
        # once it has gone: the sampler must not take the CPU it measures.
        if pid is None or not os.path.exists(f"/proc/{pid}"):
            pid = newest(a.comm)
        if a.upstream == "auto" and (upstream == "auto" or upstream is None):
            upstream = running_bare()
        if pid is None:
            prev = None
            time.sleep(a.every)
            continue
        now = (pid, thread_ticks(pid), cpu_idle(), time.time())
        if prev and prev[0] == pid:
            dt = now[3] - prev[3]
            busy = {k: (now[1][k] - prev[1].get(k, 0)) * 100 / HZ / dt for k in now[1]}
            idle = 100 * (now[2][0] - prev[2][0]) / max(now[2][1] - prev[2][1], 1)
            threads = " ".join(f"{k}={v:.0f}" for k, v in sorted(busy.items()) if v >= 1)
            delivered = count(upstream)
            if delivered < 0 and a.upstream == "auto":
                upstream = None  # that server is gone: look for the next one
            print(f"{now[3] - start:7.1f} up {delivered:7d} idle {idle:3.0f}% {threads}", flush=True)
        prev = now
        time.sleep(a.every)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)

#!/usr/bin/env python3
"""Summarises rounds of bench/side_by_side.sh that ran two gateway builds, A and B, side by side.

Usage: bench/pair_ratios.py TABLES NAME_A NAME_B

TABLES is the rounds' output, one side_by_side.sh table after another (bench/pairs.sh and
bench/postgres.sh with SIDE_BY_SIDE write it); NAME_A and NAME_B are the builds' file names,
as the tables' rows name them. An A/A series measures the noise floor, what two identical
builds differ by: either one binary given twice (NAME_A equal to NAME_B, summarised as second
÷ first) or two copies of it under different names (summarised as B ÷ A, like any pair).
One name given twice where each round ran that build once prints its goals' figures alone.

Prints, for the stored and the queue-mode burst:
- B ÷ A per round for CPU per event, acks/s and ack p99 (and the database server's CPU per
  event, on PostgreSQL): median (range), and in how many rounds B was lower;
- the order effect: the gateway run second ÷ the one run first, whatever the build;
- sigma, the spread of log(B ÷ A) over the rounds, and from it the smallest difference the
  median of this many rounds resolves (two standard errors of a median, 1.25 sigma ÷ sqrt(n)):
  a smaller B ÷ A is noise, however the median reads;
and, over every gateway run of both builds, the issue-21 goals' figures.

It only reads the tables; it never runs anything.
"""

import math
import re
import statistics
import sys

COLUMNS = {"CPU µs/event": 3, "acks/s": 1, "ack p99": 2}
DATABASE = "database µs/event"


def value(row, name):
    """A row's figure: a column of COLUMNS, or DATABASE, the database server's CPU per event
    from the per-thread cell (PostgreSQL runs only; None elsewhere)."""
    if name == DATABASE:
        found = re.search(r"database ([\d.]+)", row[6])
        return float(found.group(1)) if found else None
    return float(row[COLUMNS[name]])


def rounds_of(path):
    """Each round's rows by target name, a round starting at each table header."""
    rounds = []
    for line in open(path, encoding="utf-8"):
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "target":
            rounds.append({})
        elif rounds:
            rounds[-1].setdefault(cells[0], []).append(cells)
    return rounds


def show(values):
    """A series as "median (lowest–highest)"."""
    values = sorted(values)
    return f"{statistics.median(values):.3g} ({values[0]:.3g}–{values[-1]:.3g})"


def floor(ratios):
    """Sigma of the ratios' logs and the smallest difference their median resolves, as text.

    Two standard errors of a median (1.25 sigma ÷ sqrt(n)): a B ÷ A closer to 1 is noise.
    """
    if len(ratios) < 2:
        return "sigma needs 2 rounds"
    sigma = statistics.stdev(math.log(x) for x in ratios)
    return f"sigma {sigma:.3f}, resolves ±{math.exp(2 * 1.25 * sigma / math.sqrt(len(ratios))) - 1:.0%}"


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: bench/pair_ratios.py TABLES NAME_A NAME_B")
    path, a, b = sys.argv[1:]
    rounds = rounds_of(path)
    if not rounds:
        sys.exit(f"{path}: no side_by_side.sh table in it")
    same = a == b
    print(f"{len(rounds)} rounds, {'A/A: ' + a if same else f'A {a}, B {b}'}")
    goals = {}
    for mode in ("stored", "queue"):
        pairs = []  # (A's row, B's row, the row run first)
        for r in rounds:
            if same:
                rows = r.get(f"{a} {mode}", [])
                if len(rows) == 2:
                    pairs.append((rows[0], rows[1], rows[0]))
            elif f"{a} {mode}" in r and f"{b} {mode}" in r:
                ra, rb = r[f"{a} {mode}"][0], r[f"{b} {mode}"][0]
                first = ra if list(r).index(f"{a} {mode}") < list(r).index(f"{b} {mode}") else rb
                pairs.append((ra, rb, first))
        n = len(pairs)
        if n:
            print(f"\n{mode}, {n} rounds:")
        for name in [*COLUMNS, DATABASE] if n else []:
            if any(value(row, name) is None for ra, rb, _ in pairs for row in (ra, rb)):
                continue
            ratios = [value(rb, name) / value(ra, name) for ra, rb, _ in pairs]
            order = [value(rb if first is ra else ra, name) / value(first, name) for ra, rb, first in pairs]
            label = "second ÷ first" if same else "B ÷ A"
            line = f"  {name}: {label} {show(order if same else ratios)}"
            if not same:
                line += f", B lower in {sum(x < 1 for x in ratios)} of {n}; second ÷ first {show(order)}"
            print(f"{line}; {floor(ratios)}")
        for r in rounds:
            bare, express = r.get("bare hyper"), r.get("seed Express")
            for row in r.get(f"{a} {mode}", []) + ([] if same else r.get(f"{b} {mode}", [])):
                goals.setdefault(f"{mode} CPU × bare", []).append(float(row[3]) / float(bare[0][3]))
                if value(row, DATABASE) is not None:
                    goals.setdefault(f"{mode} CPU with the database × bare", []).append(
                        (float(row[3]) + value(row, DATABASE)) / float(bare[0][3])
                    )
                goals.setdefault(f"{mode} ack p99 ms", []).append(float(row[2]))
                if mode == "queue":
                    goals.setdefault("queue acks, % of bare", []).append(100 * float(row[1]) / float(bare[0][1]))
                    goals.setdefault("queue acks, × Express", []).append(float(row[1]) / float(express[0][1]))
                    shown = re.search(r"\(([\d.]+)\)", row[5])
                    if shown:
                        goals.setdefault("delivered ÷ acked", []).append(float(shown.group(1)))
    goals["bare hyper µs/request"] = [float(r["bare hyper"][0][3]) for r in rounds if "bare hyper" in r]
    print("\nthe goals' figures, every gateway run: median (range)")
    for name, values in goals.items():
        print(f"  {name}: {show(values)}, n={len(values)}")


if __name__ == "__main__":
    main()

"""How often this machine takes a busy CPU away, and for how long (the bench's `stalls` part).

A process pinned to each CPU reads the monotonic clock in a tight loop for a few seconds and
records every gap longer than `MIN_GAP_NS` between two consecutive readings: the time its CPU
spent elsewhere (an interrupt, the hypervisor, another task). The local timer interrupts the
CPU took meanwhile are read from /proc/interrupts, so that a table whose p99 sits on those gaps
can say so. All paths of the bench run on the same CPUs: the gaps are a property of the
machine, not of any path, and a round trip of T µs catches one with a probability of about
T x (gaps per second, both CPUs).
"""
from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import time

#: shorter gaps are the loop's own jitter (a Python iteration takes ~0.1 µs)
MIN_GAP_NS = 5_000
#: gaps this long are counted apart: a round trip that catches one lands in the RTT's tail
LONG_GAP_NS = 20_000
#: upper bounds of the histogram's bins, in µs (the last bin is everything longer)
BIN_EDGES_US = (10, 20, 40, 80, 160, 1000)

#: what each spinning process runs (`python -c SPIN_PROGRAM cpu seconds min_gap_ns`)
SPIN_PROGRAM = r"""
import json, os, sys, time
cpu, seconds, min_gap = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
now = time.monotonic_ns
gaps = []
start = prev = now()
end = start + int(seconds * 1e9)
while prev < end:
    t = now()
    if t - prev > min_gap:
        gaps.append(t - prev)
    prev = t
print(json.dumps({"cpu": cpu, "elapsed_ns": prev - start, "gaps_ns": gaps}))
"""


def _local_timer_interrupts() -> list[int] | None:
    """Per-CPU counts of the `LOC` line of /proc/interrupts (x86), None elsewhere."""
    try:
        with open("/proc/interrupts") as f:
            for line in f:
                if line.strip().startswith("LOC:"):
                    return [int(x) for x in line.split()[1:] if x.isdigit()]
    except OSError:
        pass
    return None


def start_spinner(cpu: int, seconds: float) -> subprocess.Popen[str]:
    """One spinning process on *cpu* for *seconds*; its stdout is one JSON line."""
    return subprocess.Popen([sys.executable, "-c", SPIN_PROGRAM, str(cpu), str(seconds),
                             str(MIN_GAP_NS)], stdout=subprocess.PIPE, text=True)


def measure(seconds: float, cpus: list[int] | None = None) -> dict:
    """Spin on every CPU in *cpus* (default: all this process may use) at the same time for
    *seconds*; returns per-CPU gap counts, lost time and timer interrupts per second."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    loc0 = _local_timer_interrupts()
    t0 = time.monotonic()
    procs = [start_spinner(c, seconds) for c in cpus]
    outs = [json.loads(p.communicate(timeout=seconds + 30)[0]) for p in procs]
    wall = time.monotonic() - t0
    loc1 = _local_timer_interrupts()
    per_cpu = []
    for o in outs:
        gaps = sorted(o["gaps_ns"])
        secs = o["elapsed_ns"] / 1e9
        bins = [0] * (len(BIN_EDGES_US) + 1)
        for g in gaps:
            bins[bisect.bisect_right(BIN_EDGES_US, g / 1000)] += 1
        cpu = o["cpu"]
        timer = None
        if loc0 and loc1 and cpu < min(len(loc0), len(loc1)):
            timer = (loc1[cpu] - loc0[cpu]) / wall
        per_cpu.append({
            "cpu": cpu, "seconds": secs, "gaps": len(gaps), "per_s": len(gaps) / secs,
            "long_per_s": (len(gaps) - bisect.bisect_left(gaps, LONG_GAP_NS)) / secs,
            "lost_pct": 100.0 * sum(gaps) / o["elapsed_ns"],
            "p50_us": gaps[len(gaps) // 2] / 1000 if gaps else None,
            "max_us": gaps[-1] / 1000 if gaps else None,
            "bins": bins, "timer_irqs_per_s": timer})
    return {"min_gap_us": MIN_GAP_NS / 1000, "long_gap_us": LONG_GAP_NS / 1000,
            "bin_edges_us": list(BIN_EDGES_US), "per_cpu": per_cpu}


def describe(st: dict) -> str:
    """One note for RESULTS.md."""
    parts = []
    for c in st["per_cpu"]:
        timer = (f", {c['timer_irqs_per_s']:.0f} local timer interrupts/s"
                 if c.get("timer_irqs_per_s") is not None else "")
        worst = f", longest {c['max_us']:,.0f}" if c["max_us"] is not None else ""
        parts.append(f"CPU {c['cpu']}: {c['per_s']:.0f} gaps/s over {st['min_gap_us']:g} µs, "
                     f"{c['long_per_s']:.0f}/s over {st['long_gap_us']:g} µs, median "
                     f"{c['p50_us'] or 0:.0f}{worst} µs, {c['lost_pct']:.1f} % of the time"
                     f"{timer}")
    return ("vCPU stalls (a thread spinning on the clock on each CPU at once, before the "
            "paths run; the machine's, not any path's): " + "; ".join(parts) + ".")

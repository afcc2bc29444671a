"""Latency statistics as EVL's ``latmus`` keeps and prints them (``latmus/stats.c``, ``net.c``).

A :class:`LatencySet` is one of latmus' four statistics sets ("RX queuing", "RX delivery", "TX
queuing", "TX delivery"): a one-second window (min/max/sum/count, reset after each ``RTD|``
line) and all-time figures (min/max/sum/count, overruns, the second of the peak), plus EVL's
linear histogram of 1-µs cells for the ``-g`` dump. Optionally it also records every sample in
an HdrHistogram (``hdrhistogram`` package): constant memory however long the run, percentiles
to 3 significant digits, mergeable, the same histograms ``bench/`` records — used for the
percentiles of ``--compare-kernel`` and ``--rtt`` and for ``--plot``.

The formatting functions write EVL's lines byte for byte (``RTT|``, ``RTH|``, ``RTD|``, the
``RTS|`` summary and the gnuplot dump).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

#: EVL's initial min/max (stats.h ``TEN_MILLIONS``)
TEN_MILLIONS = 10_000_000
#: HdrHistogram range: 1 ns .. 60 s, 3 significant digits (as bench/)
HIST_MAX_NS = 60_000_000_000


def new_hdr_histogram() -> Any:
    """An HdrHistogram for nanosecond samples (ImportError without ``hdrhistogram``)."""
    from hdrh.histogram import HdrHistogram
    return HdrHistogram(1, HIST_MAX_NS, 3)


class LatencySet:
    """One statistics set: window and all-time figures, 1-µs cells, optional HdrHistogram."""

    def __init__(self, name: str, cells: int = 0, hdr: bool = False) -> None:
        self.name = name
        self.cells = cells
        self.histogram = [0] * cells
        self.hdr: Any = new_hdr_histogram() if hdr else None
        self.all_min = TEN_MILLIONS
        self.all_max = -TEN_MILLIONS
        self.all_sum = 0
        self.all_samples = 0
        self.all_overruns = 0
        self.peak_time = 0
        self.reset_window()

    def reset_window(self) -> None:
        """Start a new one-second window (EVL ``reset_measurement``)."""
        self.min = TEN_MILLIONS
        self.max = -TEN_MILLIONS
        self.sum = 0
        self.samples = 0

    def add(self, ns: int, elapsed_s: int = 0) -> bool:
        """Record one sample (ns); True when it raised the all-time maximum."""
        self.sum += ns
        self.samples += 1
        if ns < self.min:
            self.min = ns
        if ns > self.max:
            self.max = ns
        self.all_sum += ns
        self.all_samples += 1
        if ns < self.all_min:
            self.all_min = ns
        if self.cells:
            cell = ns // 1000 if ns > 0 else 0
            self.histogram[cell if cell < self.cells else self.cells - 1] += 1
        if self.hdr is not None:
            self.hdr.record_value(ns if ns > 0 else 1)
        if ns > self.all_max:
            self.all_max = ns
            self.peak_time = elapsed_s
            return True
        return False

    def percentile_us(self, pct: float) -> float | None:
        """The *pct* percentile in µs (None without samples or HdrHistogram)."""
        if self.hdr is None or self.hdr.get_total_count() == 0:
            return None
        return float(self.hdr.get_value_at_percentile(pct)) / 1000.0

    @property
    def avg_ns(self) -> int:
        return self.all_sum // self.all_samples if self.all_samples else 0


# ------------------------------------------------------------------------------------------
# EVL's lines
# ------------------------------------------------------------------------------------------

RTH_TITLES = ("--rx sched", "---rx user", "--tx sched", "---tx user", "-msw", "-overrun",
              "---rx best", "--rx worst", "---tx best", "--tx worst")


def hms(seconds: int) -> str:
    """``%.2ld:%.2ld:%.2ld`` of a duration."""
    s = int(seconds)
    return f"{s // 3600:02d}:{(s // 60) % 60:02d}:{s % 60:02d}"


def rtt_line(elapsed_s: int, context: str, period_us: int, priority: int, cpu: int,
             isolated: bool) -> str:
    """The ``RTT|`` page header (net.c ``wrap_net_data_page``)."""
    return (f"RTT|  {hms(elapsed_s)}  ({context}, {period_us} us period, priority {priority},"
            f" CPU{cpu}{'' if isolated else '-noisol'})")


def rth_line() -> str:
    """The ``RTH|`` column titles."""
    t = RTH_TITLES
    return "RTH|" + "|".join([f"{x:>10}" for x in t[:4]] + [f"{t[4]:>4}", f"{t[5]:>8}"]
                             + [f"{x:>10}" for x in t[6:]])


def _us(ns: float) -> float:
    return ns / 1000.0


def rtd_line(rx_q: LatencySet, rx_d: LatencySet, tx_q: LatencySet, tx_d: LatencySet,
             msw: int, overruns: int) -> str:
    """One ``RTD|`` line: window maxima, in-band switches, overruns, all-time best/worst."""
    rx_dev = _us(rx_q.max) if rx_q.samples else 0.0
    rx_usr = _us(rx_d.max) if rx_d.samples else 0.0
    tx_dev = _us(tx_q.max) if tx_q.samples else 0.0
    tx_usr = _us(tx_d.max) if tx_d.samples else 0.0
    rx_best = _us(rx_d.all_min) if rx_d.all_samples else 0.0
    rx_worst = _us(rx_d.all_max) if rx_d.all_samples else 0.0
    tx_best = _us(tx_d.all_min) if tx_d.all_samples else 0.0
    tx_worst = _us(tx_d.all_max) if tx_d.all_samples else 0.0
    return (f"RTD|{rx_dev:10.3f}|{rx_usr:10.3f}|{tx_dev:10.3f}|{tx_usr:10.3f}"
            f"|{msw:4d}|{overruns:8d}|{rx_best:10.3f}|{rx_worst:10.3f}"
            f"|{tx_best:10.3f}|{tx_worst:10.3f}")


RTS_RULE = "---|----------|----------|----------|----------|" + "-" * 57


def rts_lines(sets: Sequence[LatencySet], msw: int, overruns: int, duration_s: int,
              timeout_s: int) -> list[str]:
    """The summary (net.c ``print_net_summary``): the rule and the ``RTS|`` line.

    The second time is EVL's ``timeout ?: duration`` with EVL's own quirk kept: its hours are
    the duration's.
    """
    t = timeout_s or duration_s
    d = int(duration_s)
    maxima = [(_us(s.all_max) if s.all_samples else 0.0) for s in sets]
    return [RTS_RULE,
            "RTS|" + "".join(f"{m:10.3f}|" for m in maxima) + f"{msw:4d}|{overruns:8d}|"
            + " " * 26 + f"{hms(d)}/{d // 3600:02d}:{(t // 60) % 60:02d}:{t % 60:02d}"]


def _paste(out: TextIO, path: str, header: str = "") -> None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return
    out.write(f"# {header}{text}")


def write_gnuplot(out: TextIO, sets: Sequence[LatencySet], *, start_time: float,
                  period_us: int, context: str, priority: int, cpu: int, isolated: bool,
                  duration_s: int, msw: int, version: str,
                  extra: Iterable[str] = ()) -> None:
    """EVL's ``-g`` histogram dump (stats.c ``dump_gnuplot``): ``#`` comment lines, then one
    row ``<cell> <count per set...>`` per 1-µs cell from the first to the last non-empty one;
    the last cell index carries a ``+`` when a set has samples beyond the cells (they are
    counted in the last cell, so each set's counts add up to its sample count).

    *extra* lines (evlnet's: lost and invalid datagrams) go in as comments before the rows.
    """
    out.write(f"# Test started on: {time.ctime(start_time)}\n")
    _paste(out, "/proc/version")
    _paste(out, "/proc/cmdline")
    out.write(f"# libevl version: {version}\n")
    out.write(f"# sampling period: {period_us} microseconds\n")
    _paste(out, "/sys/devices/system/clocksource/clocksource0/current_clocksource",
           "clocksource: ")
    out.write(f"# context: {context}\n")
    out.write(f"# thread priority: {priority}\n")
    out.write(f"# thread affinity: CPU{cpu}{'' if isolated else '-noisol'}\n")
    out.write(f"# duration (hhmmss): {hms(duration_s)}\n")
    if msw > 0:
        out.write(f"# IN-BAND SWITCHES: {msw}\n")
    for st in sets:
        if st.all_overruns > 0:
            out.write(f"# {st.name} OVERRUNS: {st.all_overruns}\n")
        out.write(f"# {st.name} peak (hhmmss): {hms(st.peak_time)}\n")
        out.write(f"# {st.name} min latency: {_us(st.all_min if st.all_samples else 0):.3f}\n")
        out.write(f"# {st.name} avg latency: {_us(st.avg_ns):.3f}\n")
        out.write(f"# {st.name} max latency: {_us(st.all_max if st.all_samples else 0):.3f}\n")
        out.write(f"# {st.name} sample count: {st.all_samples}\n")
    for line in extra:
        out.write(f"# {line}\n")
    cells = min(st.cells for st in sets) if sets else 0
    used = [n for n in range(cells) if any(st.histogram[n] for st in sets)]
    if not used:
        return
    first, last = used[0], used[-1]
    for n in range(first, last):
        out.write(f"{n}" + "".join(f" {st.histogram[n]}" for st in sets) + "\n")
    outliers = any(st.all_samples and st.all_max // 1000 >= st.cells for st in sets)
    out.write(f"{last}{'+' if outliers else ''}"
              + "".join(f" {st.histogram[last]}" for st in sets) + "\n")


def parse_gnuplot(text: str) -> tuple[dict[str, str], list[tuple[int, bool, list[int]]]]:
    """Read a ``-g`` dump back: ``({comment key: value}, [(cell, outliers, counts)])``."""
    meta: dict[str, str] = {}
    rows: list[tuple[int, bool, list[int]]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(": ")
            meta[key] = value
        elif line.strip():
            cell, *counts = line.split()
            rows.append((int(cell.rstrip("+")), cell.endswith("+"), [int(c) for c in counts]))
    return meta, rows


def cpu_isolated(cpu: int) -> bool:
    """Whether *cpu* is in ``/sys/devices/system/cpu/isolated``."""
    try:
        with open("/sys/devices/system/cpu/isolated") as f:
            spec = f.read().strip()
    except OSError:
        return False
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        if int(lo) <= cpu <= int(hi or lo):
            return True
    return False


def current_cpu() -> int:
    """The CPU the calling thread runs on now (``/proc/thread-self/stat``, field 39)."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return 0


__all__ = ["LatencySet", "new_hdr_histogram", "rtt_line", "rth_line", "rtd_line", "rts_lines",
           "write_gnuplot", "parse_gnuplot", "hms", "cpu_isolated", "current_cpu",
           "RTS_RULE", "RTH_TITLES"]

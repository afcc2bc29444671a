"""Latency distributions drawn from HdrHistograms with matplotlib: a percentile curve and a
log-binned histogram per series. Used by ``latmus --plot`` and by ``bench/`` (``rtt.png``).

matplotlib is optional (``pip install 'evlnet[plot]'``); it is imported when a plot is drawn,
with the non-interactive Agg backend.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Series:
    """One curve: a label, a colour, a line style, a width and an HdrHistogram of ns values."""

    label: str
    colour: str
    hist: Any
    style: str = "-"
    width: float = 1.6


def draw_distributions(ax_pct: Any, ax_hist: Any, series: Sequence[Series],
                       value_label: str = "latency (us)") -> None:
    """Percentile curves on *ax_pct* (x: 0%..99.99%, log) and histograms (fraction of samples
    per log-spaced bin) on *ax_hist*, one per series with samples."""
    import numpy as np

    pcts = np.concatenate([np.linspace(0, 90, 46), 100 - np.logspace(1, -3, 60)])
    for s in series:
        h = s.hist
        if h is None or h.get_total_count() == 0:
            continue
        xs = 1.0 / (1.0 - pcts / 100.0)
        ys = [max(h.get_value_at_percentile(float(p)) / 1000.0, 1e-3) for p in pcts]
        ax_pct.plot(xs, ys, s.style, color=s.colour, lw=s.width, label=s.label)
        vals, counts = [], []
        for it in h.get_recorded_iterator():
            vals.append(it.value_iterated_to / 1000.0)
            counts.append(it.count_added_in_this_iter_step)
        if vals:
            lo, hi = max(min(vals), 0.05), max(vals) * 1.01
            bins = np.logspace(np.log10(lo), np.log10(hi), 80) if hi > lo else 10
            ax_hist.hist(vals, bins=bins, weights=np.array(counts) / sum(counts),
                         histtype="step", color=s.colour, ls=s.style, lw=s.width,
                         label=s.label)
    ax_pct.set_xscale("log")
    ax_pct.set_yscale("log")
    ax_pct.set_xticks([1, 10, 100, 1000, 10000])
    ax_pct.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%"])
    ax_pct.set_xlabel("percentile")
    ax_pct.set_ylabel(value_label)
    ax_pct.grid(True, which="both", alpha=0.3)
    ax_hist.set_xscale("log")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel(value_label)
    ax_hist.set_ylabel("fraction of samples")
    ax_hist.grid(True, which="both", alpha=0.3)
    for ax in (ax_pct, ax_hist):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


#: latmus' delays: (attribute of a NetRunner, title)
LATMUS_DELAYS = (("rx_q", "rx sched: device -> RX thread"),
                 ("rx_d", "rx user: device -> queued for the app"),
                 ("tx_q", "tx sched: send call -> qdisc"),
                 ("tx_d", "tx user: send call -> device"))
PATH_COLOURS = {"evlnet": "tab:red", "kernel": "tab:blue"}


def plot_latmus(path: str, results: Mapping[str, Any], title: str = "") -> None:
    """``latmus --plot``: one row per delay (and one for round trips when measured), percentile
    curve on the left, histogram on the right; evlnet's oob path and, with
    ``--compare-kernel``, the kernel's in each panel."""
    plt = pyplot()
    rows: list[tuple[str, str]] = list(LATMUS_DELAYS)
    if any(r.rtt.all_samples for r in results.values()):
        rows.append(("rtt", "round trip"))
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 3.2 * len(rows)), squeeze=False)
    for (attr, label), (ax_pct, ax_hist) in zip(rows, axes):
        series = [Series(f"{name} ({'oob' if name == 'evlnet' else 'kernel UDP'})",
                         PATH_COLOURS.get(name, "tab:gray"), getattr(runner, attr).hdr)
                  for name, runner in results.items()]
        draw_distributions(ax_pct, ax_hist, series)
        ax_pct.set_title(f"{label}: percentiles", fontsize=9)
        ax_hist.set_title(f"{label}: histogram", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["Series", "draw_distributions", "plot_latmus", "pyplot"]

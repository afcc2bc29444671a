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


def recorded_values(hist: Any) -> tuple[Any, Any] | None:
    """The non-empty buckets of an HdrHistogram of ns values as numpy arrays ``(values in µs,
    counts)``, in value order; None when empty. Reads the counts array at once: the package's
    iterators walk every bucket in Python (seconds for a few histograms)."""
    import numpy as np

    if hist is None or hist.get_total_count() == 0:
        return None
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    idx = np.nonzero(counts)[0]
    vals = np.array([hist.get_highest_equivalent_value(hist.get_value_from_index(int(i)))
                     for i in idx], dtype=float) / 1000.0
    return vals, counts[idx].astype(float)


def draw_distributions(ax_pct: Any, ax_hist: Any, series: Sequence[Series],
                       value_label: str = "latency (us)") -> None:
    """Percentile curves on *ax_pct* (x: 0%..99.99%, log) and histograms (fraction of samples
    per log-spaced bin) on *ax_hist*, one per series with samples."""
    import numpy as np

    pcts = np.concatenate([np.linspace(0, 90, 46), 100 - np.logspace(1, -3, 60)])
    for s in series:
        recorded = recorded_values(s.hist)
        if recorded is None:
            continue
        vals, counts = recorded
        cum = np.cumsum(counts)
        at = np.searchsorted(cum, np.maximum(pcts / 100.0 * cum[-1], 1), side="left")
        xs = 1.0 / (1.0 - pcts / 100.0)
        ys = np.maximum(vals[np.minimum(at, len(vals) - 1)], 1e-3)
        ax_pct.plot(xs, ys, s.style, color=s.colour, lw=s.width, label=s.label)
        lo, hi = max(float(vals.min()), 0.05), float(vals.max()) * 1.01
        bins = np.logspace(np.log10(lo), np.log10(hi), 80) if hi > lo else 10
        ax_hist.hist(vals, bins=bins, weights=counts / cum[-1], histtype="step",
                     color=s.colour, ls=s.style, lw=s.width, label=s.label)
    ax_pct.set_xscale("log")
    ax_pct.set_yscale("log")
    ax_pct.set_xticks([1, 10, 100, 1000, 10000])
    ax_pct.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%"])
    ax_pct.set_xlabel("percentile")
    ax_pct.set_ylabel(value_label)
    ax_pct.grid(True, alpha=0.3)
    ax_hist.set_xscale("log")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel(value_label)
    ax_hist.set_ylabel("fraction of samples")
    ax_hist.grid(True, alpha=0.3)
    for ax in (ax_pct, ax_hist):
        ax.minorticks_off()                # hundreds of minor ticks on log axes cost seconds
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
        series = [Series("evlnet oob" if name == "evlnet" else f"{name} UDP",
                         PATH_COLOURS.get(name, "tab:gray"), getattr(runner, attr).hdr)
                  for name, runner in results.items()]
        draw_distributions(ax_pct, ax_hist, series)
        ax_pct.set_title(f"{label}: percentiles", fontsize=9)
        ax_hist.set_title(f"{label}: histogram", fontsize=9)
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout costs seconds with log axes
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.94, hspace=0.45, wspace=0.2)
    fig.savefig(path, dpi=80)
    plt.close(fig)


__all__ = ["Series", "draw_distributions", "plot_latmus", "pyplot", "recorded_values"]

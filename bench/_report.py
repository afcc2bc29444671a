"""The results of one bench/run.py run: the table (text and Markdown), RESULTS.md and rtt.png."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

IMPLS = ("evlnet", "kernel", "raw", "scapy", "floor")
COLUMNS = ("metric", "evlnet", "kernel", "evlnet/kernel", "target", "verdict",
           "raw AF_PACKET", "scapy", "Rust ring floor")
MIB = 1024 * 1024

#: RTT percentiles shown, (label, percentile or "max")
RTT_POINTS = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9), ("max", "max"))
#: targets of issue 8 (printed next to the ratios, never asserted)
TARGET_RTT = {"p50": 0.25, "p99": 0.5}      # evlnet RTT <= x kernel, idle
TARGET_RTT_BURNER = {"p99": 0.2}            # with a CPU burner and SCHED_FIFO
TARGET_FLOOR = 1.5        # evlnet RTT p50 <= x the Rust ring floor's, idle
TARGET_RATE = 1.5         # evlnet RX/TX >= 1.5 x kernel
TARGET_ALLOC = 0.0        # bytes allocated per packet in steady state
TARGET_RSS_SLACK_MIB = 30.0


@dataclass
class Results:
    """Everything one run measured; ``na`` maps (part, impl) or impl to the reason it is n/a."""

    rtt: dict = field(default_factory=lambda: {"idle": {}, "burner": {}})
    rx: dict = field(default_factory=dict)
    tx: dict = field(default_factory=dict)
    alloc: dict = field(default_factory=dict)
    mem: dict = field(default_factory=dict)
    na: dict = field(default_factory=dict)
    virtual: dict = field(default_factory=dict)
    #: the Rust ring floor's build: "binary", "build_s"
    floor: dict = field(default_factory=dict)
    #: the machine's vCPU stalls (bench/_stalls.py)
    stalls: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def set_na(self, key, reason: str) -> None:
        self.na.setdefault(key, reason)

    def reason(self, part: str, impl: str) -> str | None:
        return self.na.get((part, impl)) or self.na.get(impl) or self.na.get(part)

    # -- JSON -----------------------------------------------------------------------------
    def as_json(self) -> dict:
        def rtt_json(d):
            return {impl: {k: (v.encode().decode() if k == "hist" else v) for k, v in r.items()}
                    | rtt_summary(r) for impl, r in d.items()}
        virt = dict(self.virtual)
        if "rtt" in virt:
            virt["rtt"] = rtt_json({"evlnet": virt["rtt"]})["evlnet"]
        e, f = (rtt_value(self.rtt["idle"].get(i) or {}, 50.0) for i in ("evlnet", "floor"))
        floor = {**self.floor, "evlnet_p50_over_floor_p50": e / f if e is not None and f else None,
                 "target": TARGET_FLOOR}
        return {"params": self.params, "rtt": {ph: rtt_json(d) for ph, d in self.rtt.items()},
                "rx": self.rx, "tx": self.tx, "alloc": self.alloc, "mem": self.mem,
                "floor": floor, "virtual": virt, "stalls": self.stalls,
                "na": {(k if isinstance(k, str) else "/".join(k)): v for k, v in self.na.items()},
                "notes": self.notes}


def rtt_value(r: dict, point) -> float | None:
    h = r.get("hist")
    if h is None or h.get_total_count() == 0:
        return None
    ns = h.get_max_value() if point == "max" else h.get_value_at_percentile(point)
    return ns / 1000.0


def rtt_summary(r: dict) -> dict:
    return {f"{label}_us": rtt_value(r, p) for label, p in RTT_POINTS}


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------

def fmt_us(v: float) -> str:
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def fmt_mib(v: float) -> str:
    return f"{v:.1f}"


def fmt_bytes(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:,.0f}"


class Footnotes:
    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, reason: str) -> str:
        if reason not in self.items:
            self.items.append(reason)
        return f"n/a [{self.items.index(reason) + 1}]"


def _rate(d: dict | None, key: str) -> float | None:
    if not d or not d.get("elapsed"):
        return None
    return d[key] / d["elapsed"]


def build_rows(res: Results) -> tuple[list[list[str]], list[str]]:
    """The table: rows of cells (strings, COLUMNS order) and the footnotes they refer to."""
    notes = Footnotes()
    rows: list[list[str]] = []

    def cell(part: str, impl: str, value: float | None, fmt, measured: bool = True) -> str:
        if not measured:
            return "-"
        if value is not None:
            return fmt(value)
        return notes.ref(res.reason(part, impl) or f"{impl}: not measured in this run")

    def add(metric, part, values: dict, fmt, ratio: str | None = None, target=None,
            target_text: str = "", verdict_fn=None, measured=("evlnet", "kernel", "raw", "scapy"),
            versus: str = "kernel"):
        """One row; *ratio* ("le"/"ge") compares evlnet with *versus* against *target*."""
        e, k = values.get("evlnet"), values.get(versus)
        ratio_text = ""
        verdict = ""
        if ratio:
            if e is not None and k:
                r = e / k
                ratio_text = f"{r:.2f}x"
                ok = r <= target if ratio == "le" else r >= target
                verdict = "PASS" if ok else "MISS"
            else:
                ratio_text = "n/a"
                verdict = "n/a"
        elif verdict_fn is not None:
            verdict = "n/a" if e is None else ("PASS" if verdict_fn(e) else "MISS")
        rows.append([
            metric,
            cell(part, "evlnet", e, fmt, "evlnet" in measured),
            cell(part, "kernel", k, fmt, "kernel" in measured),
            ratio_text, target_text, verdict,
            cell(part, "raw", values.get("raw"), fmt, "raw" in measured),
            cell(part, "scapy", values.get("scapy"), fmt, "scapy" in measured),
            cell(part, "floor", values.get("floor"), fmt, "floor" in measured),
        ])

    for phase, suffix, part in (("idle", "", "rtt"), ("burner", " +burner+FIFO", "rtt_burner")):
        targets = TARGET_RTT if phase == "idle" else TARGET_RTT_BURNER
        data = res.rtt[phase]
        measured = ("evlnet", "kernel", "raw", "scapy", "floor") if phase == "idle" else \
            ("evlnet", "kernel", "raw", "floor")
        for label, point in RTT_POINTS:
            vals = {i: rtt_value(data[i], point) for i in IMPLS if i in data}
            if label in targets:
                add(f"RTT {label}{suffix} (us)", part, vals, fmt_us, "le", targets[label],
                    f"<= {targets[label]}x", measured=measured)
            else:
                add(f"RTT {label}{suffix} (us)", part, vals, fmt_us, measured=measured)
        # bound now: called within this iteration only
        def count_cell(i: str, data=data, measured=measured, part=part) -> str:
            if i in data:
                return f"{data[i]['n']:,} ({data[i]['lost']})"
            if i not in measured:
                return "-"
            return notes.ref(res.reason(part, i) or f"{i}: not measured in this run")

        rows.append([f"RTT round trips{suffix} (lost)", count_cell("evlnet"),
                     count_cell("kernel"), "", "", "", count_cell("raw"), count_cell("scapy"),
                     count_cell("floor")])
        if phase == "idle":
            # issue 8: evlnet within 1.5x of the floor (the ratio sits in the ratio column)
            p50 = {i: rtt_value(data[i], 50.0) for i in ("evlnet", "floor") if i in data}
            add("evlnet p50 / floor p50", part, p50, fmt_us, "le", TARGET_FLOOR,
                f"<= {TARGET_FLOOR}x", measured=("evlnet", "floor"), versus="floor")
            # for reading that one: Python's own floor, a busy-polling raw AF_PACKET echo and
            # client with no stack (no target: what Python costs, not what the stack costs)
            raw50 = {i: rtt_value(data[i], 50.0) for i in ("evlnet", "raw") if i in data}
            e50, r50 = raw50.get("evlnet"), raw50.get("raw")
            rows.append(["evlnet p50 / raw p50 (Python, no stack)",
                         cell(part, "evlnet", e50, fmt_us), "-",
                         f"{e50 / r50:.2f}x" if e50 is not None and r50 else "n/a", "", "",
                         cell(part, "raw", r50, fmt_us), "-", "-"])

    add("RX delivered (dgram/s)", "rx", {i: _rate(res.rx.get(i), "received") for i in IMPLS},
        fmt_rate, "ge", TARGET_RATE, f">= {TARGET_RATE}x")
    add("RX offered (pkt/s)", "rx", {i: _rate(res.rx.get(i), "offered") for i in IMPLS},
        fmt_rate)
    add("TX onto wire (dgram/s)", "tx", {i: _rate(res.tx.get(i), "delivered") for i in IMPLS},
        fmt_rate, "ge", TARGET_RATE, f">= {TARGET_RATE}x")
    add("alloc/packet (B)", "alloc",
        {i: res.alloc[i].get("bytes_per_packet") for i in IMPLS if i in res.alloc},
        fmt_bytes, target_text="0 B", verdict_fn=lambda v: round(v) <= TARGET_ALLOC,
        measured=("evlnet", "kernel", "raw"))
    rss = {i: res.mem[i]["rss_kib"] / 1024 for i in IMPLS if i in res.mem}
    add("RSS (MiB)", "mem", rss, fmt_mib, measured=("evlnet", "kernel", "raw"))
    pool = res.mem.get("evlnet", {}).get("pool_bytes")
    add("pools TX+RX, preallocated (MiB)", "mem",
        {"evlnet": pool / MIB if pool is not None else None}, fmt_mib, measured=("evlnet",))
    add("RSS - pool (MiB)", "mem",
        {"evlnet": rss["evlnet"] - pool / MIB if "evlnet" in rss and pool is not None else None},
        fmt_mib, target_text=f"<= {TARGET_RSS_SLACK_MIB:g} MiB",
        verdict_fn=lambda v: v <= TARGET_RSS_SLACK_MIB, measured=("evlnet",))
    return rows, notes.items


def render_text(rows: list[list[str]], header=COLUMNS) -> str:
    widths = [max(len(str(r[i])) for r in [list(header)] + rows) for i in range(len(header))]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def render_markdown(rows: list[list[str]], header=COLUMNS) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def virtual_rows(res: Results) -> list[list[str]]:
    v = res.virtual
    rows = []
    r = v.get("rtt")
    if r:
        for label, p in RTT_POINTS:
            val = rtt_value(r, p)
            rows.append([f"RTT {label} (us)", fmt_us(val) if val is not None else "n/a"])
        rows.append(["RTT round trips (lost)", f"{r['n']:,} ({r['lost']})"])
    a = v.get("alloc")
    if a and a.get("bytes_per_packet") is not None:
        rows.append(["alloc/packet (B)", fmt_bytes(a["bytes_per_packet"])])
    m = v.get("mem")
    if m:
        rows.append(["RSS (MiB)", fmt_mib(m["rss_kib"] / 1024)])
        if m.get("pool_bytes") is not None:
            rows.append(["TX+RX pools, 2 ports (MiB)", fmt_mib(m["pool_bytes"] / MIB)])
    return rows


VIRTUAL_TITLE = ("evlnet on the embedded virtual link -- NOT comparable with the table above: "
                 "both stacks, the client and the echo thread share one process and one GIL")


def format_report(res: Results) -> str:
    rows, notes = build_rows(res)
    p = res.params
    out = [f"evlnet benchmark (issue #5): {p.get('size', 64)}-byte UDP payloads, veth pair between "
           f"two network namespaces, {p.get('mode', '')}", "", render_text(rows), ""]
    for i, n in enumerate(notes, 1):
        out.append(f"[{i}] {n}")
    if notes:
        out.append("")
    out += [f"- {n}" for n in res.notes]
    if res.virtual:
        out += ["", VIRTUAL_TITLE + ":"]
        if res.virtual.get("error"):
            out.append(f"  n/a ({res.virtual['error']})")
        else:
            out.append(render_text(virtual_rows(res), header=("metric", "evlnet (virtual)")))
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------
# machine, RESULTS.md, rtt.png
# ------------------------------------------------------------------------------------------

def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"nproc": os.cpu_count(), "cpu": model or platform.processor() or "unknown",
            "kernel": platform.release(), "python": sys.version.split()[0],
            "machine": platform.machine(), "commit": commit or "unknown"}


def plot_rtt(res: Results, path: Path) -> bool:
    """RTT percentile curves and histograms of this run (evlnet and kernel, idle and +burner;
    the raw AF_PACKET and Rust ring floor references thin), drawn by ``evlnet.tools.histplot``
    as latmus' are."""
    from evlnet.tools.histplot import Series, draw_distributions, pyplot

    plt = pyplot()
    series = []
    colours = {"evlnet": "tab:red", "kernel": "tab:blue", "raw": "tab:gray",
               "floor": "tab:green", "evlnet (virtual link)": "tab:orange"}
    for phase, style in (("idle", "-"), ("burner", "--")):
        for impl in ("evlnet", "kernel", "raw", "floor"):
            r = res.rtt[phase].get(impl)
            if r and r.get("hist") is not None and r["hist"].get_total_count():
                series.append(Series(f"{impl} ({phase})", colours[impl], r["hist"], style,
                                     0.8 if impl in ("raw", "floor") else 1.6))
    if "evlnet" not in res.rtt["idle"] and res.virtual.get("rtt"):
        series.append(Series("evlnet (virtual link, in-process; not comparable)",
                             colours["evlnet (virtual link)"], res.virtual["rtt"]["hist"], ":"))
    if not series:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    draw_distributions(ax1, ax2, series, value_label="round trip (us)")
    ax1.set_title("RTT percentile distribution")
    ax2.set_title("RTT histogram")
    p = res.params
    fig.suptitle(f"UDP {p.get('size', 64)}-byte round trips over veth between two namespaces "
                 f"(N={p.get('round_trips', '?')} per path and phase)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(res: Results, outdir: Path, command: str) -> tuple[Path, Path | None]:
    outdir.mkdir(parents=True, exist_ok=True)
    png = outdir / "rtt.png"
    m = machine_info()         # before rtt.png is written: the tree is "-dirty" only if the code is
    try:
        have_png = plot_rtt(res, png)
    except Exception as exc:   # the table is still worth writing
        res.notes.append(f"rtt.png not written: {type(exc).__name__}: {exc}")
        have_png = False
    rows, notes = build_rows(res)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# evlnet benchmark results (issue #5)",
        "",
        f"Generated by `{command}` on {now}. Regenerate with `./run bench --write-results` "
        "(this file and `rtt.png` are overwritten). Targets are printed, never asserted.",
        "",
        "## Machine",
        "",
        f"- CPUs (nproc): {m['nproc']} -- {m['cpu']} ({m['machine']})",
        f"- kernel: {m['kernel']}",
        f"- Python: {m['python']}",
        f"- evlnet: {m['commit']}",
        f"- parameters: {format_params(res.params)}",
        "",
        "## Results",
        "",
        render_markdown(rows),
        "",
    ]
    for i, n in enumerate(notes, 1):
        lines.append(f"{i}. {n}")
    if notes:
        lines.append("")
    lines += [f"- {n}" for n in res.notes]
    if res.virtual:
        lines += ["", f"### {VIRTUAL_TITLE}", ""]
        if res.virtual.get("error"):
            lines.append(f"n/a ({res.virtual['error']})")
        else:
            lines.append(render_markdown(virtual_rows(res), header=("metric", "evlnet (virtual)")))
    lines += ["", "## RTT distributions", ""]
    if have_png:
        lines.append("![RTT percentile distribution and histogram](rtt.png)")
    else:
        lines.append("(no plot: no RTT was measured)")
    lines += ["", "## How it was measured", "", "See `bench/README.md`.", ""]
    md = outdir / "RESULTS.md"
    md.write_text("\n".join(lines))
    return md, png if have_png else None


def format_params(p: dict) -> str:
    keys = ("mode", "round_trips", "chunk", "warmup", "window_s", "rounds", "alloc_round_trips",
            "burner_cpu", "trafgen_cpu", "rx_cpus", "evlnet_opts", "cpu_latency_us")
    return ", ".join(f"{k}={p[k]}" for k in keys if k in p)

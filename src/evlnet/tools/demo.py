"""The main job (``./run demo``): ``latmus -E`` between two stacks on the embedded virtual link,
then a plain-language reading of its summary.

Both ends run in this process: two ``evlnet.Stack`` objects joined by an
``evlnet.VirtualLink()``, each a ``latmus -E`` pointing at the other (``latmus --virtual``).
No root and no real interface are needed. Run: ``python -m evlnet.tools.demo [--seconds 10]``;
arguments after ``--`` go to latmus (e.g. ``-- -p 500 -S 128``).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

from . import latmus
from .latency import LatencySet


def _p50(st: LatencySet) -> str:
    v = st.percentile_us(50)
    return f"{v:.1f}" if v is not None else "?"


def _worst(st: LatencySet) -> str:
    return f"{st.all_max / 1000:.1f}" if st.all_samples else "?"


def reading(runner: Any, period_us: int, size: int, seconds: int) -> str:
    """One paragraph saying what the ``RTS|`` columns mean, with this run's figures."""
    r = runner
    rtt = ""
    if r.rtt.all_samples:
        rtt = (f" A round trip (send call to the echo's return, through both stacks) took "
               f"{_p50(r.rtt)} us typically and {_worst(r.rtt)} us at worst.")
    return textwrap.fill(
        f"How to read this: for {seconds} s, every {period_us} us, each end sent one "
        f"{size}-byte UDP datagram to the other and evlnet stamped it where EVL does. Each "
        f"RTD line covers one second and shows the worst delay of that second; the RTS line "
        f"sums up the run with the worst of all (microseconds). 'rx sched' is how long a "
        f"received frame waited between the device and the port's receive thread (this run: "
        f"typically {_p50(r.rx_q)} us, worst {_worst(r.rx_q)} us); 'rx user' until it was "
        f"queued for the application (typically {_p50(r.rx_d)}, worst {_worst(r.rx_d)}); "
        f"'tx sched' from the send call to the transmit queue ({_p50(r.tx_q)} / "
        f"{_worst(r.tx_q)}) and 'tx user' to the device ({_p50(r.tx_d)} / {_worst(r.tx_d)}); "
        f"'rx best' and 'rx worst' (and 'tx ...') are the lowest and highest 'user' delays so "
        f"far. 'msw' counts sends that had to take the slow "
        f"in-band path and 'overrun' sends that found no free buffer: both should read 0. "
        f"{r.received} datagrams arrived from the peer, {r.lost} were lost and {r.invalid} "
        f"were invalid.{rtt} Typical values are what the data path costs; the worst ones on "
        f"a shared machine are mostly the scheduler running something else (both ends and "
        f"their Python threads share this process and its CPUs here). For two stacks in two "
        f"network namespaces over a veth pair, next to the kernel's UDP path: "
        f"`./run latmus-veth` (root).", width=96, break_on_hyphens=False)


def run(seconds: float = 10.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        latmus_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``latmus --virtual`` for *seconds* and print its output and the reading;
    returns ``{"status", "runners", "stats"}``."""
    secs = max(1, round(seconds))
    argv = ["--virtual", "-T", str(secs), *latmus_args]
    try:
        import hdrh  # noqa: F401
        argv.append("--rtt")          # medians and round trips need hdrhistogram
    except ImportError:
        pass
    report: dict[str, Any] = {}
    opts = latmus.parse_args(argv)
    latmus.check_options(opts, err)
    print(f"$ latmus {' '.join(argv)}", file=out, flush=True)
    report["status"] = latmus.run(opts, out, err, report=report)
    runner = report.get("runners", {}).get("evlnet")
    if report["status"] == 0 and runner is not None:
        print("", file=out)
        print(reading(runner, opts.period_us, opts.packet_size, secs), file=out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m evlnet.tools.demo`` / ``evlnet-demo``."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="how long (default 10)")
    ap.add_argument("latmus_args", nargs="*", help="more latmus options, after --")
    args = ap.parse_args(argv)
    try:
        report = run(args.seconds, latmus_args=args.latmus_args)
    except latmus.LatmusError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except latmus.BadUsage:
        print(latmus.USAGE, file=sys.stderr)
        return 1
    return int(report["status"])


if __name__ == "__main__":
    sys.exit(main())

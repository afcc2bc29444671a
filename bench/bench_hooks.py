#!/usr/bin/env python3
"""Where a diversion should drop frames on veth: tc ingress or XDP, end to end (issue 10).

    python bench/bench_hooks.py [--seconds S] [--rounds R]      (root: namespaces, trafgen)

trafgen (one process, pinned to CPU 0) floods 64-byte UDP frames into a veth pair as fast as it
can. A veth transmit runs the receiving end's input path in the sender's own context (XDP in the
NAPI poll the transmit schedules on the same CPU), so the rate trafgen reaches -- the sending
end's ``tx_packets`` per second -- falls as the receiving end's per-frame work grows. Modes, on
the receiving end:

- ``none``: no program; the frame goes up the stack (the end has no address: dropped at IP);
- ``tc``: a clsact ingress ``cls_bpf`` program in direct-action mode returning ``TC_ACT_SHOT``
  (the hook evlnet's diversion and kernel-side filters use);
- ``xdp``: a native XDP program returning ``XDP_DROP``;
- ``xdpgeneric``: the same program in generic (skb) mode;
- ``tc+tap``: the tc drop behind an AF_PACKET socket bound to the end that takes a copy of every
  frame first (evlnet's configuration: its ring is such a tap).

Rounds alternate the modes; the figures are medians over rounds, printed with the per-frame time
(1 / rate) and its difference from ``none``. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "..", "src"))
sys.path.insert(0, BENCH)

from _frames import udp_frame  # noqa: E402
from _harness import link_counter, trafgen, trafgen_available  # noqa: E402

from evlnet.testing import in_netns, netns, require_root, veth_pair  # noqa: E402
from evlnet.testing.bpf import build  # noqa: E402

PROGRAMS_C = """\
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

__attribute__((section("tc"), used)) int tc_drop(struct __sk_buff *skb) { return TC_ACT_SHOT; }
__attribute__((section("xdp"), used)) int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""
MODES = ("none", "tc", "xdp", "xdpgeneric", "tc+tap")


def attach(ns, ifname: str, mode: str, obj: str) -> None:
    if mode in ("tc", "tc+tap"):
        ns.run("tc", "qdisc", "add", "dev", ifname, "clsact")
        ns.run("tc", "filter", "add", "dev", ifname, "ingress", "bpf", "da", "obj", obj,
               "sec", "tc")
    elif mode == "xdp":
        ns.ip("link", "set", "dev", ifname, "xdpdrv", "obj", obj, "sec", "xdp")
    elif mode == "xdpgeneric":
        ns.ip("link", "set", "dev", ifname, "xdpgeneric", "obj", obj, "sec", "xdp")


def detach(ns, ifname: str, mode: str) -> None:
    if mode in ("tc", "tc+tap"):
        ns.run("tc", "qdisc", "del", "dev", ifname, "clsact", check=False)
    elif mode == "xdp":
        ns.ip("link", "set", "dev", ifname, "xdpdrv", "off", check=False)
    elif mode == "xdpgeneric":
        ns.ip("link", "set", "dev", ifname, "xdpgeneric", "off", check=False)


def measure(a, b, ea, eb, mode: str, obj: str, frame: bytes, seconds: float,
            workdir: str) -> float:
    """Frames per second trafgen pushed through the pair with *mode* on the receiving end."""
    attach(b, eb.name, mode, obj)
    tap = None
    try:
        if mode == "tc+tap":
            with in_netns(b):
                tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            tap.bind((eb.name, 0))
            tap.setblocking(False)
        with trafgen(a, ea.name, frame, seconds + 0.5, 0, workdir):
            time.sleep(0.25)
            before = link_counter(a, ea.name, "tx")
            t0 = time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                if tap is not None:          # keep the tap's queue from filling: drain it
                    try:
                        while True:
                            tap.recv(2048)
                    except BlockingIOError:
                        pass
                time.sleep(0.001)
            after = link_counter(a, ea.name, "tx")
            elapsed = time.monotonic() - t0
        return (after - before) / elapsed
    finally:
        if tap is not None:
            tap.close()
        detach(b, eb.name, mode)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="window per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    require_root()
    problem = trafgen_available()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 1
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "drop.c")
        with open(src, "w") as f:
            f.write(PROGRAMS_C)
        obj = build(src, work)
        with netns("hka") as a, netns("hkb") as b:
            with veth_pair(a, b, addr_a=None, addr_b=None) as (ea, eb):
                frame = udp_frame(eb.mac_str, ea.mac_str, "203.0.113.33", "203.0.113.34",
                                  40000, 9, bytes(64))
                for r in range(args.rounds):
                    order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
                    for mode in order:
                        rates[mode].append(measure(a, b, ea, eb, mode, obj, frame,
                                                   args.seconds, work))
    base = statistics.median(rates["none"])
    print(f"veth, 64-byte UDP frames, trafgen on CPU 0, medians of {args.rounds} rounds of "
          f"{args.seconds:g} s\n")
    print(f"{'receiving end':14s} {'frames/s':>10s} {'ns/frame':>9s} {'vs none':>8s}")
    for mode in MODES:
        rate = statistics.median(rates[mode])
        per = 1e9 / rate
        print(f"{mode:14s} {rate:10,.0f} {per:9.0f} {per - 1e9 / base:+8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak (issue 9; a benchmark, not in CI): evlnet receives UDP from the kernel on a veth pair
for a long time at half the measured maximum rate.

    sudo .venv/bin/python bench/soak.py                      # 10 minutes (the issue's run)
    sudo .venv/bin/python bench/soak.py --seconds 30         # smoke run
    sudo .venv/bin/python bench/soak.py --rate 20000         # skip the probe, this many pps

Namespace A holds evlnet's port (this process) with an oob UDP receiver; namespace B holds the
kernel's sender (a separate process, paced). First a probe floods for ``--probe-seconds`` and
takes evlnet's delivered rate as the maximum; the soak then runs at half of it. At the end:
``sent == delivered + counted drops`` (evlnet's port and device counters, plus what the veth
itself dropped, read from the kernel's statistics), and RSS, sampled every ``--sample-every``
seconds, is printed with its least-squares slope. Exit status 1 when the accounting does not
balance. Root needed; only 198.51.100.0/24 inside namespaces made here.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time

from evlnet.constants import SOCK_OOB
from evlnet.core.stack import Stack
from evlnet.testing import in_netns, netns, veth_pair

A_IP, B_IP, PORT = "198.51.100.1", "198.51.100.2", 9400
PAYLOAD = 64

SENDER = r"""
import json, socket, sys, time
dst, port, rate, seconds, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(size)
sent = errors = 0
t0 = time.monotonic()
end = t0 + seconds
tick = 0.001
batch = max(1, int(rate * tick)) if rate > 0 else 64
nxt = t0
while True:
    now = time.monotonic()
    if now >= end:
        break
    for _ in range(batch):
        try:
            s.sendto(payload, (dst, port))
            sent += 1
        except OSError:
            errors += 1
    if rate > 0:
        nxt += batch / rate
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - t0}))
"""

#: counters where evlnet records a received frame it lost (port ledger and device)
LOST = ("rx_otherhost", "rx_malformed", "rx_ip_errors", "csum_errors", "rx_no_receiver",
        "rx_sock_full", "rx_unknown_proto", "rx_reasm_fails", "rx_reasm_dups", "rx_filtered",
        "rx_nomem", "rx_reply_fails", "rx_inband_drops", "rx_filter_dropped",
        "rx_filter_invalid", "device_rx_nomem", "rx_dropped", "rx_oversize", "kernel_drops")


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, KiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 60 * sum((t - mt) * (r - mr) for t, r in samples) / var if var else 0.0


class Receiver(threading.Thread):
    def __init__(self, sock) -> None:
        super().__init__(daemon=True, name="soak-rx")
        self.sock = sock
        self.count = 0
        self.stop = False

    def run(self) -> None:
        buf = bytearray(2048)
        recv = self.sock.oob_recvmsg_into
        while not self.stop:
            try:
                recv([buf], timeout=0.2)
                self.count += 1
            except OSError:
                pass


def veth_drops(ns, ifname: str) -> int:
    out = ns.run("cat", f"/sys/class/net/{ifname}/statistics/rx_dropped").stdout
    return int(out.strip())


def run_sender(ns, rate: float, seconds: float) -> dict:
    proc = ns.popen(sys.executable, "-c", SENDER, A_IP, str(PORT), str(rate), str(seconds),
                    str(PAYLOAD), stdout=-1, stderr=-1, text=True)
    out, err = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed: {err}")
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="soak duration (default 600)")
    ap.add_argument("--rate", type=float, default=0,
                    help="datagrams per second (default: half the probed maximum)")
    ap.add_argument("--probe-seconds", type=float, default=3)
    ap.add_argument("--sample-every", type=float, default=10, help="RSS sampling period (s)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (namespaces, veth, AF_PACKET)", file=sys.stderr)
        return 2
    with netns("soaka") as a, netns("soakb") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, eb):
        stack = Stack("soak")
        try:
            with in_netns(a):
                port = stack.enable_port(ea.name)
            sock = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            sock.bind((A_IP, PORT))
            rx = Receiver(sock)
            rx.start()
            rate = args.rate
            if rate <= 0:
                before = rx.count
                probe = run_sender(b, 0, args.probe_seconds)
                time.sleep(0.5)
                got = rx.count - before
                max_rate = got / probe["seconds"]
                print(f"probe: {probe['sent']} sent in {probe['seconds']:.1f} s, {got} "
                      f"delivered: max {max_rate:.0f} datagrams/s")
                rate = max_rate / 2
            time.sleep(0.5)
            base = port.counter_values()
            base_rx = rx.count
            base_veth = veth_drops(a, ea.name)
            print(f"soak: {rate:.0f} datagrams/s of {PAYLOAD} bytes for {args.seconds:.0f} s")
            result: dict = {}
            sender = threading.Thread(target=lambda: result.update(
                run_sender(b, rate, args.seconds)), daemon=True)
            t0 = time.monotonic()
            sender.start()
            samples = [(0.0, rss_kib())]
            while sender.is_alive():
                sender.join(args.sample_every)
                samples.append((time.monotonic() - t0, rss_kib()))
                print(f"  t={samples[-1][0]:6.1f} s  RSS {samples[-1][1]} KiB  "
                      f"delivered {rx.count - base_rx}", flush=True)
            # quiet: wait until the receiver stops moving
            last = -1
            while rx.count != last:
                last = rx.count
                time.sleep(0.5)
            rx.stop = True
            rx.join(2)
            now = port.counter_values()
            delivered = rx.count - base_rx
            lost = {k: now.get(k, 0) - base.get(k, 0) for k in LOST}
            lost = {k: v for k, v in lost.items() if v}
            veth = veth_drops(a, ea.name) - base_veth
            sent = result["sent"]
            counted = delivered + sum(lost.values()) + veth
            print(f"sent {sent} (sender errors {result['errors']}), delivered {delivered}, "
                  f"counted drops {sum(lost.values())} {lost}, veth rx_dropped {veth}: "
                  f"delivered + drops = {counted} {'==' if counted == sent else '!='} sent")
            print("RSS samples (s, KiB): " + ", ".join(f"({t:.0f}, {r})" for t, r in samples))
            print(f"RSS slope {slope(samples):+.1f} KiB/min over {samples[-1][0]:.0f} s "
                  f"(first {samples[0][1]} KiB, last {samples[-1][1]} KiB)")
            return 0 if counted == sent else 1
        finally:
            stack.close()


if __name__ == "__main__":
    sys.exit(main())

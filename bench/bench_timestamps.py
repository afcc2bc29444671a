#!/usr/bin/env python3
"""What timestamping costs per packet, on the embedded virtual link (no root needed).

    python bench/bench_timestamps.py [--packets N] [--rounds R] [--size BYTES]

Two stacks, A and B, on one virtual link; one UDP socket on each. Two loops, both run in this
thread, so that the cost measured is the stack's (TX thread, device, RX thread, socket queue):

- one-way:   A sends a datagram, B receives it;
- ping-pong: A sends, B receives and sends it back, A receives it.

Each loop runs with stamping off (SO_TIMESTAMP_OOB = 0) and with every point on
(EVL_SOF_TIMESTAMPS on both sockets: the RX record is read as control data with every datagram,
the TX records are collected with MSG_TIMESTAMP every 16 packets, as latmus -E drains them).
Rounds of "off" and "on" alternate (their order flips every round) so that drift and load from
other processes hit both alike. Per-packet figures (wall and process CPU time) are medians over
rounds; on/off is the median of the per-round ratios. The target is on/off < 1.10. The process
is pinned to one CPU unless --no-pin: with the GIL, thread hand-offs across CPUs mostly add noise.

It then prints a latmus -E style breakdown of the stamps collected in the "on" rounds, and the
wake-up delay of a collector blocked in oob_recvmsg(MSG_TIMESTAMP) when a packet leaves
(from the TX record's device_time to the collector's return).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from evlnet import (  # noqa: E402
    AF_INET,
    EVL_NEIGH_PERMANENT,
    EVL_SOF_TIMESTAMPS,
    MSG_DONTWAIT,
    MSG_TIMESTAMP,
    SO_TIMESTAMP_OOB,
    SOCK_DGRAM,
    SOCK_OOB,
    SOL_SOCKET,
    IoTimes,
    Stack,
    VirtualLink,
)

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
A_PORT, B_PORT = 5000, 6000
COLLECT_EVERY = 16
COLLECT = int(MSG_TIMESTAMP)
COLLECT_NOWAIT = int(MSG_TIMESTAMP | MSG_DONTWAIT)
TS_RECORDS = 128
_now = time.monotonic_ns


class Bench:
    def __init__(self, size: int) -> None:
        self.link = VirtualLink("bta", "btb")
        self.A, self.B = Stack("benchA"), Stack("benchB")
        self.A.add_interface(self.link.a, f"{A_IP}/24")
        self.B.add_interface(self.link.b, f"{B_IP}/24")
        self.A.enable_port("bta")
        self.B.enable_port("btb")
        self.sa = self.A.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        self.sb = self.B.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        self.sa.bind((A_IP, A_PORT))
        self.sb.bind((B_IP, B_PORT))
        self.A.solicit(self.sa, (B_IP, 0), EVL_NEIGH_PERMANENT)
        self.B.solicit(self.sb, (A_IP, 0), EVL_NEIGH_PERMANENT)
        self.payload = bytes(size)
        self.rxbuf = bytearray(2048)
        self.tsbuf = bytearray(24 * TS_RECORDS)
        self.keep = False            # keep the stamps of this round for the breakdown
        self.rx_stamps: list[bytes] = []
        self.tx_stamps: list[bytes] = []

    def close(self) -> None:
        self.A.close()
        self.B.close()

    def set_stamping(self, on: bool) -> None:
        flags = EVL_SOF_TIMESTAMPS if on else 0
        self.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, flags)
        self.sb.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, flags)

    # -- TX collection -------------------------------------------------------------------------
    def drain(self, sock, block: bool = False) -> int:
        """Collect the TX records there are (MSG_DONTWAIT unless *block*); returns their count."""
        try:
            n, _, _, _ = sock.oob_recvmsg_into(
                [self.tsbuf], 0, COLLECT if block else COLLECT_NOWAIT,
                timeout=5 if block else None)
        except BlockingIOError:
            return 0
        if self.keep:
            self.tx_stamps.append(bytes(self.tsbuf[:n]))
        return n // 24

    def drain_all(self, sock, expected: int) -> None:
        while expected > 0:
            expected -= self.drain(sock, block=True)

    # -- loops ---------------------------------------------------------------------------------
    def one_way(self, count: int, stamped: bool) -> float:
        """Per-packet ns of *count* send+receive (A -> B)."""
        send = self.sa.oob_sendmsg
        recv = self.sb.oob_recvmsg_into
        views, addr, rxbuf = [self.payload], (B_IP, B_PORT), [self.rxbuf]
        keep, rx_stamps = self.keep, self.rx_stamps
        collected = 0
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        for i in range(count):
            send(views, (), 0, addr)
            _, anc, _, _ = recv(rxbuf, 24, 0, timeout=5)
            if stamped:
                if keep:
                    rx_stamps.append(anc[0][2])
                if i % COLLECT_EVERY == COLLECT_EVERY - 1:
                    collected += self.drain(self.sa)
        if stamped:
            self.drain_all(self.sa, count - collected)
        return (time.perf_counter_ns() - t0) / count, (time.process_time_ns() - c0) / count

    def ping_pong(self, count: int, stamped: bool) -> float:
        """Per-exchange ns of *count* round trips (A -> B -> A)."""
        sa, sb = self.sa, self.sb
        a_send, b_send = sa.oob_sendmsg, sb.oob_sendmsg
        a_recv, b_recv = sa.oob_recvmsg_into, sb.oob_recvmsg_into
        to_b, to_a = (B_IP, B_PORT), (A_IP, A_PORT)
        views, rxbuf = [self.payload], [self.rxbuf]
        echo = [memoryview(self.rxbuf)[:len(self.payload)]]
        keep, rx_stamps = self.keep, self.rx_stamps
        got_a = got_b = 0
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        for i in range(count):
            a_send(views, (), 0, to_b)
            _, anc_b, _, _ = b_recv(rxbuf, 24, 0, timeout=5)
            b_send(echo, (), 0, to_a)
            _, anc_a, _, _ = a_recv(rxbuf, 24, 0, timeout=5)
            if stamped:
                if keep:
                    rx_stamps.append(anc_b[0][2])
                    rx_stamps.append(anc_a[0][2])
                if i % COLLECT_EVERY == COLLECT_EVERY - 1:
                    got_a += self.drain(sa)
                    got_b += self.drain(sb)
        if stamped:
            self.drain_all(sa, count - got_a)
            self.drain_all(sb, count - got_b)
        return (time.perf_counter_ns() - t0) / count, (time.process_time_ns() - c0) / count

    def wake_latency(self, trials: int) -> list[float]:
        """µs from a TX record's device_time to the return of a collector blocked on it."""
        self.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
        out: list[float] = []
        buf = bytearray(24)
        for _ in range(trials):
            result: dict[str, Any] = {}

            def collector(result: dict[str, Any]) -> None:
                n, _, _, _ = self.sa.oob_recvmsg_into([buf], 0, COLLECT, timeout=5)
                result["t"] = _now()
                result["io"] = IoTimes.unpack(buf)

            t = threading.Thread(target=collector, args=(result,))
            t.start()
            while not self.sa._ts_waiters:        # let it block first
                time.sleep(0.0002)
            self.sa.oob_sendmsg([self.payload], address=(B_IP, B_PORT))
            self.sb.oob_recvmsg_into([self.rxbuf], timeout=5)
            t.join(5)
            out.append((result["t"] - result["io"].device_time) / 1000)
        self.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, 0)
        return out


def paired_ratio(on: list[float], off: list[float]) -> float:
    """Median of the per-round ratios: each round's on and off ran back to back."""
    return statistics.median(a / b for a, b in zip(on, off))


def stats_line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:>9} |      (none)"
    return (f"{name:>9} | {min(values):9.3f} | {statistics.median(values):9.3f} | "
            f"{max(values):9.3f} | {len(values):7d}")


def breakdown(rx: list[bytes], tx: list[bytes]) -> list[str]:
    rx_recs = [IoTimes.unpack(r) for r in rx]
    tx_recs = IoTimes.unpack_array(b"".join(tx))
    series = {
        "rx sched": [(r.queuing_time - r.device_time) / 1000 for r in rx_recs],
        "rx user": [(r.delivery_time - r.device_time) / 1000 for r in rx_recs],
        "tx sched": [(r.queuing_time - r.delivery_time) / 1000 for r in tx_recs],
        "tx user": [(r.device_time - r.delivery_time) / 1000 for r in tx_recs],
    }
    lines = [f"{'(us)':>9} | {'min':>9} | {'median':>9} | {'max':>9} | samples",
             "-" * 10 + "+" + ("-" * 11 + "+") * 3 + "-" * 8]
    lines += [stats_line(k, v) for k, v in series.items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=20000,
                    help="packets per mode and loop, over all rounds (default 20000)")
    ap.add_argument("--rounds", type=int, default=20, help="alternating rounds (default 20)")
    ap.add_argument("--size", type=int, default=64, help="UDP payload bytes (default 64)")
    ap.add_argument("--wake-trials", type=int, default=200)
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the process to one CPU (noisier: thread hand-offs then "
                         "cross CPUs)")
    args = ap.parse_args(argv)
    pinned = "not pinned"
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu_id = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu_id})
        pinned = f"pinned to CPU{cpu_id}"
    per_round = max(1, args.packets // args.rounds)

    bench = Bench(args.size)
    try:
        # warm-up (caches, thread start-up, branch of both modes)
        for on in (False, True):
            bench.set_stamping(on)
            bench.one_way(500, on)
            bench.ping_pong(200, on)
        gc.collect()
        gc.freeze()
        gc.disable()
        results: dict[tuple[str, bool], list[float]] = {}
        cpu: dict[tuple[str, bool], list[float]] = {}
        loops = (("one-way send+recv", bench.one_way), ("ping-pong round trip", bench.ping_pong))
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for name, loop in loops:
                for on in order:
                    bench.set_stamping(on)
                    bench.keep = on
                    wall, used = loop(per_round, on)
                    results.setdefault((name, on), []).append(wall / 1000)
                    cpu.setdefault((name, on), []).append(used / 1000)
        gc.enable()
        bench.keep = False
        wake = bench.wake_latency(args.wake_trials)

        print(f"evlnet timestamping cost: virtual link, {args.size}-byte UDP payload, "
              f"{per_round} packets x {args.rounds} alternating rounds per mode, "
              f"Python {sys.version.split()[0]}, {pinned}")
        print("wall = elapsed time per packet (per round trip for ping-pong), median of rounds;")
        print("cpu  = process CPU time (all threads) per packet, median of rounds;")
        print("on/off = median over rounds of on/off within the same round (same machine load)")
        print()
        print(f"{'loop':<21}|{'off wall':>9} |{'on wall':>9} |{'on/off':>7} |"
              f"{'off cpu':>9} |{'on cpu':>9} |{'on/off':>7}")
        print(f"{'(us)':<21}|" + "+".join(["-" * 10] * 2 + ["-" * 8] + ["-" * 10] * 2 + ["-" * 8]))
        worst = 0.0
        for name, _ in loops:
            off, on = results[(name, False)], results[(name, True)]
            coff, con = cpu[(name, False)], cpu[(name, True)]
            ratio = paired_ratio(on, off)
            worst = max(worst, ratio)
            print(f"{name:<21}|{statistics.median(off):9.2f} |{statistics.median(on):9.2f} |"
                  f"{ratio:7.3f} |{statistics.median(coff):9.2f} |{statistics.median(con):9.2f} |"
                  f"{paired_ratio(con, coff):7.3f}")
        print()
        print("latmus -E style breakdown of the stamps taken in the 'on' rounds:")
        for line in breakdown(bench.rx_stamps, bench.tx_stamps):
            print(line)
        print()
        print("blocked MSG_TIMESTAMP collector, device_time -> return (us): "
              f"min {min(wake):.1f}  median {statistics.median(wake):.1f}  "
              f"max {max(wake):.1f}  ({len(wake)} trials)")
        print()
        print(f"worst wall on/off ratio {worst:.3f} (target < 1.10): "
              f"{'OK' if worst < 1.10 else 'OVER TARGET'}")
        return 0
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())

"""The main job on the embedded default: two stacks joined by the virtual link exchange oob UDP
datagrams for a few seconds, then both ports' statistics are printed as ``evl net -Q`` does.

No root and no real interface are needed. Run: ``python -m evlnet.tools.demo [--seconds 3]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from typing import Any, TextIO

from .. import (
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

PORT = 59059   # latmus' UDP port


def run(seconds: float = 3.0, size: int = 64, out: TextIO = sys.stdout) -> dict[str, Any]:
    link = VirtualLink("vlink0", "vlink1")
    left, right = Stack("left"), Stack("right")
    try:
        left.add_interface(link.a, "192.0.2.1/24")
        right.add_interface(link.b, "192.0.2.2/24")
        port_l = left.enable_port("vlink0")
        port_r = right.enable_port("vlink1")
        client = left.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        server = right.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        client.bind(("192.0.2.1", PORT))
        server.bind(("192.0.2.2", PORT))
        for s in (client, server):
            s.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
        # Pre-resolve both peers so that no datagram is demoted to the in-band stage.
        left.solicit(client, ("192.0.2.2", PORT), EVL_NEIGH_PERMANENT)
        right.solicit(server, ("192.0.2.1", PORT), EVL_NEIGH_PERMANENT)

        stop = threading.Event()

        def echo() -> None:   # the right side echoes every datagram back
            buf = bytearray(2048)
            while not stop.is_set():
                try:
                    n, _, _, addr = server.oob_recvmsg_into([buf], timeout=0.2)
                except TimeoutError:
                    continue
                except OSError:
                    return
                server.oob_sendmsg([memoryview(buf)[:n]], address=addr)

        t = threading.Thread(target=echo, name="demo-echo", daemon=True)
        t.start()
        payload = bytes(size)
        rtts: list[float] = []
        rx_user: list[float] = []
        tx_user: list[float] = []
        ts_buf = bytearray(24 * 16)
        lost = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            client.oob_sendmsg([payload], address=("192.0.2.2", PORT))
            try:
                _, anc, _, _ = client.oob_recvmsg(2048, 24, timeout=1.0)
            except TimeoutError:
                lost += 1
                continue
            rtts.append((time.monotonic_ns() - t0) / 1000)
            if anc:
                io = IoTimes.unpack(anc[0][2])
                rx_user.append((io.delivery_time - io.device_time) / 1000)
            try:
                n, _, _, _ = client.oob_recvmsg_into([ts_buf], flags=MSG_TIMESTAMP | MSG_DONTWAIT)
                for rec in IoTimes.unpack_array(ts_buf[:n]):
                    tx_user.append((rec.device_time - rec.delivery_time) / 1000)
            except BlockingIOError:
                pass
        stop.set()
        t.join(2)
        report: dict[str, Any] = {"exchanges": len(rtts), "lost": lost}
        print(f"evlnet demo: {len(rtts)} oob UDP round trips of {size} bytes over the embedded "
              f"virtual link in {seconds:g} s ({lost} lost)", file=out)
        if rtts:
            q = statistics.quantiles(rtts, n=100) if len(rtts) >= 2 else rtts * 99
            report.update(rtt_p50=q[49], rtt_p99=q[98])
            print(f"round trip (us): min {min(rtts):.1f}  p50 {q[49]:.1f}  p99 {q[98]:.1f}  "
                  f"max {max(rtts):.1f}", file=out)
        if rx_user and tx_user:
            print(f"rx user (delivery-device, us): median {statistics.median(rx_user):.1f}  "
                  f"tx user (device-delivery, us): median {statistics.median(tx_user):.1f}",
                  file=out)
        for name, stack, port in (("vlink0", left, port_l), ("vlink1", right, port_r)):
            print(f"\n# evl net -Q -i {name}", file=out)
            print(stack.get_stats(port).format_query(), file=out)
        report["stats"] = {"vlink0": left.get_stats(port_l), "vlink1": right.get_stats(port_r)}
        return report
    finally:
        left.close()
        right.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="how long to exchange (default 3)")
    ap.add_argument("--size", type=int, default=64, help="UDP payload bytes (default 64)")
    args = ap.parse_args(argv)
    report = run(args.seconds, args.size)
    return 0 if report["exchanges"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

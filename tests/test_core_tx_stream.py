"""Streams go to the port's TX thread, requests stay run-to-completion (issue 8's TX rate).

A sender that calls ``oob_sendmsg`` back to back hands its datagrams to the port's TX thread,
which makes the device calls on another CPU while the sender builds the next datagram
(``Settings.tx_stream_handoff``); a sender that pauses between datagrams transmits from its own
thread. Either way the kernel, as the peer on a veth pair, receives every datagram once and in
order, and the port counts which way each went (``tx_queued``: through the TX thread).
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from evlnet import EVL_NEIGH_PERMANENT, SOCK_OOB, Stack
from evlnet.testing import in_netns, netns, require_root, veth_pair

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
PORT = 7401
#: the peer's receiving socket can hold every datagram of a run even if it never got to read
#: (SO_RCVBUFFORCE, as root, passes rmem_max; a 64-byte datagram costs about 1 KiB of it)
RCVBUF = 32 << 20
RECEIVER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, {RCVBUF})  # SO_RCVBUFFORCE (root)
s.bind(("{B_IP}", {PORT}))
s.settimeout(10)
print("ready", flush=True)
want = int(sys.stdin.readline())
seqs = []
try:
    while len(seqs) < want:
        seqs.append(int.from_bytes(s.recv(2048)[:4], "big"))
except TimeoutError:
    pass
print(" ".join(map(str, seqs)), flush=True)
"""


def run(handoff: bool, n: int, pause_s: float) -> tuple[list[int], dict]:
    """Send *n* numbered datagrams from an oob socket to a kernel UDP socket; returns the
    sequence numbers the kernel received, in order, and the port's counters."""
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        rx = b.popen(sys.executable, "-c", RECEIVER, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout is not None and rx.stdin is not None
            assert rx.stdout.readline().strip() == "ready"
            stack = Stack("txstream")
            stack.settings.tx_stream_handoff = handoff
            try:
                with in_netns(a):
                    port = stack.enable_port(ea.name)
                s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                s.bind((A_IP, PORT))
                stack.solicit(s, (B_IP, 0), EVL_NEIGH_PERMANENT)
                rx.stdin.write(f"{n}\n")
                rx.stdin.flush()
                payload = bytearray(64)
                for seq in range(n):
                    payload[:4] = seq.to_bytes(4, "big")
                    s.oob_sendmsg([payload], address=(B_IP, PORT))
                    if pause_s:
                        end = time.perf_counter() + pause_s
                        while time.perf_counter() < end:
                            pass
                out, _ = rx.communicate(timeout=30)
                st = stack.get_stats(port)
                counters = {"tx_packets": st.tx_packets, **st.extra}
            finally:
                stack.close()
        finally:
            if rx.poll() is None:
                rx.kill()
                rx.wait()
    return [int(x) for x in out.split()], counters


def test_a_stream_goes_through_the_tx_thread_and_arrives_in_order():
    require_root()
    n = 20000
    seqs, c = run(True, n, 0.0)
    assert seqs == list(range(n))
    assert c["tx_packets"] == n
    assert c["tx_queued"] > n // 2, c        # the TX thread carried the stream


def test_spaced_datagrams_leave_from_the_senders_thread():
    require_root()
    n = 50
    seqs, c = run(True, n, 0.0002)           # 200 µs apart: no stream
    assert seqs == list(range(n))
    assert c["tx_packets"] == n and c["tx_queued"] == 0, c


def test_without_the_handoff_a_stream_is_sent_by_the_sender():
    require_root()
    n = 5000
    seqs, c = run(False, n, 0.0)
    assert seqs == list(range(n))
    assert c["tx_packets"] == n and c["tx_queued"] == 0, c

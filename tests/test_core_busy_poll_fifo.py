"""A busy poller under SCHED_FIFO is never stuck behind the port's RX thread (issue 8's
real-time levers, found by the bench's burner + FIFO phase: its RTT max was the busy-poll budget).

The receiver and the port's RX thread run SCHED_FIFO at one priority on one CPU, as a real-time
application sets them up. While the receiver spins, the RX thread cannot run: a frame that wakes
it leaves it runnable, not running. Before the fix it held the port's receive lock while it waited
in the device, so the spinner could not take the frame either, and every datagram came out when
the spinner's budget ran out (500 ms for a 500 ms budget, each time). Nobody holds a lock while
waiting in a device now: the spinner takes the frame itself.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from evlnet import EVL_NEIGH_PERMANENT, SOCK_OOB, SOL_SOCKET, Stack
from evlnet.sockets.base import SO_BUSY_POLL
from evlnet.testing import in_netns, netns, require_root, veth_pair

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
#: the receiver's busy-poll budget: a datagram stuck behind the RX thread comes out after it
BUDGET_US = 2_000_000
PEER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{B_IP}", 7000))
print("ready", flush=True)
for line in sys.stdin:
    s.sendto(line.strip().encode(), ("{A_IP}", 7001))
"""


def test_a_fifo_busy_poller_takes_frames_its_rx_thread_cannot():
    require_root("network namespaces, veth pairs and SCHED_FIFO")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one for the FIFO receiver and its RX thread, one for the peer")
    cpu = cpus[-1]
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        peer = b.popen(sys.executable, "-c", PEER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True)
        stack = Stack("fifopoll")
        try:
            assert peer.stdout is not None and peer.stdin is not None
            assert peer.stdout.readline().strip() == "ready"
            with in_netns(a):
                port = stack.enable_port(ea.name)
            s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            s.bind((A_IP, 7001))
            stack.solicit(s, (B_IP, 0), EVL_NEIGH_PERMANENT)
            levers = port.set_realtime(cpus={cpu}, fifo_priority=50)
            assert levers["rx affinity"] == levers["rx sched_fifo"] == "ok", levers
            s.setsockopt(SOL_SOCKET, SO_BUSY_POLL, BUDGET_US)
            affinity = os.sched_getaffinity(0)
            for i in range(3):
                time.sleep(0.05)            # the RX thread is back in the device meanwhile
                os.sched_setaffinity(0, {cpu})
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
                try:
                    t0 = time.monotonic()
                    peer.stdin.write(f"n{i}\n")
                    peer.stdin.flush()
                    data = s.oob_recvmsg(100, timeout=10)[0]
                    elapsed = time.monotonic() - t0
                finally:
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                    os.sched_setaffinity(0, affinity)
                assert data == f"n{i}".encode()
                # taken while the receiver still spun, not when its budget ran out
                assert elapsed < BUDGET_US / 1e6 / 2, elapsed
        finally:
            stack.close()
            peer.kill()
            peer.wait()

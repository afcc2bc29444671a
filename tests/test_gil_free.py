"""The oob data path does not need the GIL (issue 8's central claim), shown on a real veth.

evlnet's port is on one end of a veth pair in namespace A; the kernel in namespace B pings the
port's address and sends 20 UDP datagrams, while, in this process, a Python thread holds the GIL
for ~1.5 s (``sys.setswitchinterval(2.0)``: nothing takes it away). The echo replies come back
and the datagrams are queued — with their RX timestamps — while the spin is still running: the
RX thread, UDP demultiplexing, ICMP echo and timestamping never waited for Python. An ordering
property, not a speed bound.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from evlnet import EVL_SOF_TIMESTAMPS, SO_TIMESTAMP_OOB, SOCK_OOB, SOL_SOCKET, IoTimes, Stack
from evlnet.testing import in_netns, netns, require_root, veth_pair

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
SPIN_S = 1.5
TRAFFIC_DELAY_S = 0.3       # the kernel peer starts once the spinner holds the GIL
PORT = 7400
SENDER = f"""
import socket, time
time.sleep({TRAFFIC_DELAY_S})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20):
    s.sendto(b"during spin %d" % i, ("{A_IP}", {PORT}))
    time.sleep(0.01)
"""


def test_rx_icmp_and_timestamps_run_while_python_holds_the_gil():
    require_root()
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        stack = Stack("gil")
        try:
            with in_netns(a):
                stack.enable_port(ea.name)
            srv = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            srv.bind(("", PORT))
            srv.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
            b.run("ping", "-c", "1", "-W", "2", A_IP)          # ARP settled before the spin
            window = {}

            def spin() -> None:
                window["mono0"], window["real0"] = time.monotonic_ns(), time.time()
                end = time.monotonic() + SPIN_S
                while time.monotonic() < end:                   # holds the GIL throughout
                    pass
                window["mono1"], window["real1"] = time.monotonic_ns(), time.time()

            old = sys.getswitchinterval()
            sys.setswitchinterval(2.0)
            try:
                ping = b.popen("sh", "-c", f"sleep {TRAFFIC_DELAY_S}; exec ping -D -n -c 5 "
                               f"-i 0.05 -W 2 -w 3 {A_IP}", stdout=subprocess.PIPE, text=True)
                sender = b.popen(sys.executable, "-c", SENDER)
                spinner = threading.Thread(target=spin, name="gil-hog")
                spinner.start()
                spinner.join()
            finally:
                sys.setswitchinterval(old)
            out, _ = ping.communicate(timeout=10)
            assert sender.wait(10) == 0
            replies = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
            assert len(replies) == 5, out
            # every echo reply reached ping while the spinner still held the GIL
            assert all(window["real0"] < t < window["real1"] for t in replies), (window, replies)
            # every datagram was received, demultiplexed and stamped during the spin
            for i in range(20):
                data, anc, _, _ = srv.oob_recvmsg(100, 24, timeout=5)
                assert data == b"during spin %d" % i
                (_level, _kind, raw), = anc
                io = IoTimes.unpack(raw)
                assert window["mono0"] < io.device_time <= io.queuing_time <= io.delivery_time \
                    < window["mono1"], (window, io)
        finally:
            stack.close()

"""Steady-state memory and clean teardown: no growth with the packet count, every buffer back in
its pool, no thread left behind."""
from __future__ import annotations

import gc
import os
import re
import shutil
import socket as pysocket
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    mac_str,
    make_pair,
    os_thread_names,
    pair,
    stack_threads,
    stacks,
    wait_until,
)

from evlnet import AF_PACKET, ETH_P_ALL, SOCK_OOB, SOCK_RAW
from evlnet.datapath import _core

#: What the heap may move by between the 2 000th and the 10 000th datagram without anything
#: growing per packet (allocator noise, a dict or deque resizing once). A leak of a single small
#: object per datagram (>= 16 bytes x 8 000 = 128 KiB) exceeds it.
SLACK = 16 * 1024


def _exchange(sa, sb, n: int, payload: bytes, out: bytearray) -> None:
    send = sa.oob_sendmsg
    recv = sb.oob_recvmsg_into
    dst = (B_IP, 6000)
    for _ in range(n):
        send([payload], address=dst)
        got = recv([out], timeout=5)[0]
        assert got == len(payload)


def test_memory_does_not_grow_with_packet_count(pair):
    p = pair
    sa, sb = p.solicited_pair()
    payload = bytes(range(200))
    out = bytearray(2048)
    _exchange(sa, sb, 500, payload, out)                    # warm up caches and free lists
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _exchange(sa, sb, 2000, payload, out)
        gc.collect()
        after_2k = tracemalloc.get_traced_memory()[0] - base
        _exchange(sa, sb, 8000, payload, out)
        gc.collect()
        after_10k = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert after_10k - after_2k < SLACK, (after_2k, after_10k)
    assert wait_until(lambda: p.A.get_stats(p.pa).skb_free == p.A.get_stats(p.pa).skb_total)
    for stack, port in ((p.A, p.pa), (p.B, p.pb)):
        st = stack.get_stats(port)
        assert st.skb_free == st.skb_total == 2048
        assert port.rx_pool.free == port.rx_pool.total
    assert p.B.get_stats(p.pb).rx_packets >= 10500


def test_no_thread_left_and_pools_full_after_close_and_disable(make_pair):
    p = make_pair(poolsz=64)
    names = [p.A.name, p.B.name, p.link.a.name, p.link.b.name]
    # rx, tx per port (core threads, named as they start); in-band, events per stack
    assert wait_until(lambda: len(stack_threads(*names)) == 8)
    sa, sb = p.solicited_pair()
    tap = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    unread = p.udp(p.B, (B_IP, 6001))
    for _ in range(20):                                     # left unread in both sockets
        sa.oob_sendmsg([bytes(300)], address=(B_IP, 6001))
    big = bytes(5000)
    for _ in range(3):                                      # fragments, reassembled
        sa.oob_sendmsg([big], address=(B_IP, 6000))
        assert sb.oob_recvmsg(6000, timeout=5)[0] == big
    # a lone first fragment waits in the reassembly state
    frag = fragment(IP(src=A_IP, dst=B_IP, id=999) / UDP(sport=1, dport=6000)
                    / Raw(bytes(3000)), fragsize=1200)[0]
    raw = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    raw.oob_sendmsg([bytes(Ether(dst=mac_str(p.link.b.mac), src=mac_str(p.link.a.mac)) / frag)],
                    address=(p.link.a.name, ETH_P_ALL))
    assert wait_until(lambda: p.pb.reassembly.pending == 1)
    assert wait_until(lambda: len(unread.core_socket) == 20)
    assert p.pb.rx_pool.free < p.pb.rx_pool.total           # buffers are held right now

    p.B.disable_port(p.pb)                                  # B: disable with sockets still open
    assert p.pb.rx_pool.free == p.pb.rx_pool.total
    assert p.pb.tx_pool.free == p.pb.tx_pool.total
    assert p.pb.reassembly.pending == 0
    with_unread = [s for s in (unread, tap) if len(s.core_socket)]
    assert not with_unread
    # The core joined its threads before disable_port returned; the kernel drops an exited
    # thread from /proc/self/task a moment after the join (the tid is cleared before the
    # task is reaped), so wait for the listing, not for the thread.
    assert wait_until(lambda: not stack_threads(p.link.b.name)), stack_threads(p.link.b.name)
    p.B.close()
    p.A.close()                                             # A: close with everything open
    assert p.pa.rx_pool.free == p.pa.rx_pool.total
    assert p.pa.tx_pool.free == p.pa.tx_pool.total
    for port in (p.pa, p.pb):
        state = port.reassembly
        assert state.pending == 0 and state.buffers_free == state.buffers_total
    assert all(s.closed and s.fileno() == -1 for s in (sa, sb, tap, unread, raw))
    assert wait_until(lambda: not stack_threads(*names)), stack_threads(*names)
    assert not [t for t in os_thread_names()
                if t.endswith((".rx", ".tx", ".inband", ".events")) and t.split(".")[0] in names]


# -- no C heap allocation per datagram -------------------------------------------------------
# tracemalloc sees Python's allocator only. The core's own heap use (Rust's allocator is libc's
# malloc) is counted by a shim preloaded into a child process (tests/malloc_counter.c): a
# per-datagram malloc is a non-deterministic delay on the real-time path even when it is freed
# at once.

#: The child: datagrams of every payload type the fast path takes (bytes, bytearray, memoryview)
#: between two stacks on the virtual link, received with busy polling and blocking, plus a packet
#: socket's send and receive; prints the mallocs of the measured stretch per datagram.
MALLOC_CHILD = r"""
import ctypes, socket, sys
sys.path.insert(0, sys.argv[1])
from virtual_fixtures import A_IP, B_IP, StackFactory, mac_str
from evlnet import AF_PACKET, SOCK_OOB, SOCK_RAW, VirtualLink

calls = ctypes.CDLL(None).evltest_malloc_calls
calls.restype = ctypes.c_ulong
factory = StackFactory()
link = VirtualLink("mallocva", "mallocvb")
A, B = factory("A"), factory("B")
A.add_interface(link.a, f"{A_IP}/24")
B.add_interface(link.b, f"{B_IP}/24")
A.enable_port(link.a.name)
B.enable_port(link.b.name)
sa = A.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
sa.bind((A_IP, 0))
sb = B.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
sb.bind((B_IP, 6000))
spin = B.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
spin.bind((B_IP, 6001))
spin.setsockopt(socket.SOL_SOCKET, 46, 50)   # SO_BUSY_POLL: 50 us
A.solicit(sa, (B_IP, 0))
ra = A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, socket.htons(0x88B5))
rb = B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, socket.htons(0x88B5))
frame = bytes.fromhex(mac_str(link.b.mac).replace(":", "") + mac_str(link.a.mac).replace(":", "")
                      + "88b5") + bytes(50)
payloads = [bytes(100), bytearray(100), memoryview(bytearray(300))[100:200]]
out = bytearray(2048)

def exchange(n):
    for i in range(n):
        sa.oob_sendmsg([payloads[i % 3]], address=(B_IP, 6000))
        assert sb.oob_recvmsg_into([out], timeout=5)[0] == 100
        sa.oob_sendmsg([payloads[i % 3]], address=(B_IP, 6001))
        assert spin.oob_recvmsg_into([out], timeout=5)[0] == 100
        ra.oob_sendmsg([frame], address=(link.a.name, 0x88B5))
        assert rb.oob_recvmsg_into([out], timeout=5)[0] == len(frame)

exchange(1500)          # warm-up: caches, free lists, lazily made objects
before = calls()
exchange(1500)
print((calls() - before) / (3 * 1500), flush=True)
factory.close_all()
"""


def test_no_c_heap_allocation_per_datagram(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc, "a C compiler is needed (./run installs clang)"
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "malloc_counter.c")
    lib = tmp_path / "malloc_counter.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), src, "-ldl"], check=True)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "LD_PRELOAD": str(lib)}
    res = subprocess.run([sys.executable, "-c", MALLOC_CHILD, tests_dir], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    per_datagram = float(res.stdout.split()[-1])
    # 0 in steady state; a stray allocation now and then (a table growing once) stays far below
    assert per_datagram < 0.01, per_datagram


#: A program that leaves two stacks open (a port each on a virtual link, sockets, a receiver
#: blocked in the core on a daemon thread) and exits, normally or by an exception. Its first
#: atexit hook runs after evlnet's (atexit is last in, first out) and reports what it finds.
EXIT_CHILD = r"""
import atexit, socket, sys, threading
found = []
atexit.register(lambda: print("closed" if found and all(s.closed for s in found) else "open",
                              sys.modules["evlnet.datapath._core"].threads_outside_gil(),
                              flush=True))
from evlnet import SOCK_OOB, Stack, VirtualLink
link = VirtualLink("exitva", "exitvb")
A, B = Stack("exitA"), Stack("exitB")
found += [A, B]
A.add_interface(link.a, "192.0.2.1/24")
B.add_interface(link.b, "192.0.2.2/24")
A.enable_port(link.a.name)
B.enable_port(link.b.name)
sa = A.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
sa.bind(("192.0.2.1", 6000))
sb = B.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
sb.bind(("192.0.2.2", 6000))
A.solicit(sa, ("192.0.2.2", 0))
def receive():
    try:
        while True:
            sb.oob_recvmsg(100)
    except OSError:
        pass   # the socket closed under it
threading.Thread(target=receive, daemon=True).start()
for _ in range(200):
    sa.oob_sendmsg([b"x"], address=("192.0.2.2", 6000))
if sys.argv[1] == "raise":
    raise RuntimeError("left open")
"""


@pytest.mark.parametrize("how", ["return", "raise"])
def test_stacks_left_open_are_closed_at_exit(how):
    """A stack the program never closed is closed by evlnet's atexit hook, before the
    interpreter's finalization could find a core thread's Python caller waking up."""
    for _ in range(3):
        res = subprocess.run([sys.executable, "-c", EXIT_CHILD, how], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == (1 if how == "raise" else 0), res.stderr[-2000:]
        # closed, and the receiver the close woke is back in Python before finalization
        assert res.stdout.split() == ["closed", "0"], (res.stdout, res.stderr[-2000:])
        if how == "raise":
            assert "RuntimeError: left open" in res.stderr


#: A program whose daemon thread is inside the core (a 0.3 s wait nothing wakes) when the
#: main thread exits. Its first atexit hook runs after evlnet's and reports how many threads
#: are still inside; the object collected at the end says whether finalization ran through.
WAIT_CHILD = r"""
import atexit, os, sys, threading, time
atexit.register(lambda: print("outside", sys.modules["evlnet.datapath._core"].threads_outside_gil(),
                              flush=True))
class CollectedLast:
    def __del__(self, write=os.write):
        write(1, b"finalized\n")
last = CollectedLast()
from evlnet import VirtualLink
link = VirtualLink("waita", "waitb")
started = threading.Event()
def wait():
    started.set()
    link.a.wait_tapped(0.3)
threading.Thread(target=wait, daemon=True).start()
started.wait()
time.sleep(0.05)
print("inside", sys.modules["evlnet.datapath._core"].threads_outside_gil(), flush=True)
"""


def test_exit_waits_for_threads_inside_the_core():
    """evlnet's exit hook lets a thread that is inside the core (GIL released) come back to
    Python before the interpreter finalizes: CPython 3.11 would end it with pthread_exit if
    it took the GIL later, unwinding through the core's frames. Without the wait the hook
    reports it still inside and the interpreter skips its finalizers."""
    res = subprocess.run([sys.executable, "-c", WAIT_CHILD], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:3] == ["inside 1", "outside 0", "finalized"], \
        (res.stdout, res.stderr[-2000:])


def test_threads_outside_the_gil_are_counted(pair):  # noqa: F811
    """``threads_outside_gil`` counts a receiver blocked in the core, and a forked child
    starts from 0 (the parent's waiting threads are not in it)."""
    sa, sb = pair.solicited_pair(6100)
    base = _core.threads_outside_gil()      # each stack's event thread waits in the core too
    got: list[int] = []
    receiver = threading.Thread(target=lambda: got.append(len(sb.oob_recvmsg(100)[0])))
    receiver.start()
    assert wait_until(lambda: _core.threads_outside_gil() == base + 1)
    pid = os.fork()
    if pid == 0:                                       # the child: report and leave at once
        os._exit(10 + _core.threads_outside_gil())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 10
    sa.oob_sendmsg([b"hello"], address=(B_IP, 6100))
    receiver.join(5.0)
    assert got == [5]
    assert wait_until(lambda: _core.threads_outside_gil() == base)


def test_the_seam_releases_the_gil_only_through_outside_gil():
    """The exit hook trusts ``threads_outside_gil``: every GIL release in the seam
    (``core/src/python``) must go through ``outside_gil``, which counts it."""
    seam = Path(__file__).resolve().parent.parent / "core" / "src" / "python"
    release = re.compile(r"\.detach\(\s*(move\s*)?\||allow_threads|PyEval_SaveThread")
    files = sorted(seam.glob("*.rs"))
    assert len(files) > 3, files
    uncounted = [f"{f.name}:{n}" for f in files if f.name != "mod.rs"
                 for n, line in enumerate(f.read_text().splitlines(), 1) if release.search(line)]
    assert uncounted == []
    assert "py.detach(f)" in (seam / "mod.rs").read_text()


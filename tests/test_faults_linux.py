"""Faults and privileges on Linux ports (issue 9), the kernel on the other end.

Already covered elsewhere (not repeated here): ``ip neigh del`` invalidating the front cache
(``test_linux_bridge.py::test_ip_neigh_del_invalidates_the_front_cache``), ``disable_port``
while a receiver is blocked (``test_core_ports.py::
test_disable_port_waits_for_inflight_tx_then_fails_senders_and_wakes_receivers``), interface
down/up and removal on the virtual link (``test_core_ports.py``), ``kill -9`` leaving nothing
(``test_linux_bridge.py``).

Root is needed (skip otherwise, fail under CI=true); only 192.0.2.0/24 inside namespaces made
here.
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time

import pytest
from virtual_fixtures import unique, wait_until

from evlnet.constants import MSG_DONTWAIT, SOCK_OOB
from evlnet.core.stack import Stack
from evlnet.linux import diversion as dv
from evlnet.linux import rtnl
from evlnet.testing import in_netns, list_namespaces, netns, require_root, veth_pair

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"


@pytest.fixture(autouse=True)
def _root():
    require_root()


def _filters(ns) -> list:
    with in_netns(ns):
        nl = rtnl.RtnlSocket()
    try:
        return dv.list_filters(nl)
    finally:
        nl.close()


def test_peer_namespace_deleted_while_traffic_flows():
    """The namespace holding the veth's other end is deleted while evlnet sends and a receiver
    waits: the kernel destroys both ends, the port disables itself, the receiver wakes with an
    error, senders fail, and nothing of ours is left (filters, namespaces, threads)."""
    with netns("fa") as a:
        b_cm = netns("fb")
        b = b_cm.__enter__()
        b_gone = False
        try:
            with veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, eb):
                stack = Stack(unique("fault"))
                try:
                    with in_netns(a):
                        port = stack.enable_port(ea.name)
                    rx = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                    rx.bind(("", 7300))
                    tx = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                    tx.bind((A_IP, 7301))
                    stack.solicit(tx, (B_IP, 9))
                    assert _filters(a), "no diversion filter installed"
                    outcome: dict = {}

                    def receive() -> None:
                        try:
                            rx.oob_recvmsg(100, timeout=10)
                            outcome["rx"] = "data"
                        except OSError as exc:
                            outcome["rx"] = exc.errno

                    sent = {"ok": 0, "err": None}
                    stop = threading.Event()

                    def send() -> None:
                        while not stop.is_set():
                            try:
                                tx.oob_sendto(b"flow", (B_IP, 9))
                                sent["ok"] += 1
                            except OSError as exc:
                                sent["err"] = exc.errno
                                return
                            time.sleep(0.0005)

                    threads = [threading.Thread(target=receive, daemon=True),
                               threading.Thread(target=send, daemon=True)]
                    for t in threads:
                        t.start()
                    assert wait_until(lambda: sent["ok"] > 50, 5)
                    b_cm.__exit__(None, None, None)          # ip netns del, nothing holds B
                    b_gone = True
                    assert wait_until(lambda: not port.enabled, 5), "port still enabled"
                    threads[0].join(5)
                    # the sender keeps going until a send fails, or (once the port and its
                    # routes are gone) its sends miss the front cache and are demoted to the
                    # kernel, which has no route left: counted as failed demotions
                    assert wait_until(lambda: sent["err"] is not None
                                      or stack.counters.tx_demote_failed > 0, 5), \
                        "sends still succeed"
                    stop.set()
                    threads[1].join(5)
                    assert not any(t.is_alive() for t in threads), "a thread is stuck"
                    print(f"\nsent {sent['ok']} datagrams before the namespace went; receiver "
                          f"woke with {errno.errorcode.get(outcome.get('rx'), outcome)}, sender "
                          f"with {errno.errorcode.get(sent['err'], sent['err'])}")
                    assert outcome.get("rx") in (errno.ENETDOWN, errno.ENODEV, errno.EBADF)
                    assert not ea.exists()
                    assert _filters(a) == []
                finally:
                    stack.close()
        finally:
            if not b_gone:
                b_cm.__exit__(None, None, None)
        assert _filters(a) == []
    assert list_namespaces(os.getpid()) == []


def test_enable_linux_port_without_cap_net_raw_is_eperm():
    """As root, a forked child that became nobody (no capabilities) enables a Linux port: EPERM
    with a message naming what is missing. (A subprocess as nobody could not exec the venv's
    python, hence the fork.) Exit codes: 0 EPERM with a message, 2 another errno, 3 no
    message, 4 enabled, 5 another exception."""
    with netns("fp") as a, netns("fq") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                      # the child: never returns
            code = 5
            try:
                os.close(r)
                with in_netns(a):                         # entered as root; never left
                    os.setgroups([])
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                    stack = Stack("nobody")
                    try:
                        stack.enable_port(ea.name)
                        code = 4
                    except OSError as exc:
                        os.write(w, f"{exc.errno} {exc}".encode()[:500])
                        if exc.errno != errno.EPERM:
                            code = 2
                        elif "CAP_NET_RAW" not in str(exc):
                            code = 3
                        else:
                            code = 0
                    os._exit(code)    # a process that gave up root cannot switch back
            except BaseException as exc:                  # noqa: BLE001 - reported by code
                os.write(w, repr(exc).encode()[:500])
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode(errors="replace")
        code = os.waitstatus_to_exitcode(status)
        print(f"\nchild as nobody: exit {code}: {said}")
        assert code == 0, said
        assert _filters(a) == []


def test_neighbour_that_disappears_then_returns():
    """``ip neigh del`` of the peer while evlnet sends to it (the cache invalidation itself is
    ``test_linux_bridge.py::test_ip_neigh_del_invalidates_the_front_cache``): the next datagrams
    are demoted, not lost — the kernel resolves the peer again and delivers them — and once the
    kernel has the neighbour back the front cache has it too and the fast path returns."""
    with netns("na") as a, netns("nb") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        stack = Stack(unique("neigh"))
        with in_netns(b):
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((B_IP, 7400))
        peer.settimeout(2)
        try:
            with in_netns(a):
                stack.enable_port(ea.name)
            s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            s.bind((A_IP, 7401))
            stack.solicit(s, (B_IP, 7400))
            cache = stack.frontcache.neighbours
            b_ip = int.from_bytes(socket.inet_aton(B_IP), "big")
            assert s.oob_sendto(b"fast", (B_IP, 7400), MSG_DONTWAIT) == 4
            assert peer.recvfrom(100)[0] == b"fast"
            for round_ in range(3):
                a.ip("neigh", "del", B_IP, "dev", ea.name)
                assert wait_until(lambda: cache.peek(b_ip) is None, 2)
                payload = b"demoted%d" % round_
                assert s.oob_sendto(payload, (B_IP, 7400)) == 0      # demoted: sent in-band
                assert peer.recvfrom(100)[0] == payload
                assert wait_until(lambda: cache.peek(b_ip) is not None, 5), \
                    "the front cache never learnt the neighbour again"
                assert s.oob_sendto(b"fast again", (B_IP, 7400), MSG_DONTWAIT) == 10
                assert peer.recvfrom(100)[0] == b"fast again"
        finally:
            peer.close()
            stack.close()
        assert _filters(a) == []


def test_own_namespace_deleted_while_traffic_flows():
    """``ip netns del`` of the namespace holding evlnet's port, under traffic from the kernel:
    the name goes, the namespace lives on while evlnet's sockets hold it (as for any process's
    socket), traffic still flows; once the stack closes nothing holds it any more, so the kernel
    destroys it and its veth end, which takes the peer end with it."""
    with netns("da") as a, netns("db") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, eb):
        stack = Stack(unique("own"))
        with in_netns(b):
            kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stop = threading.Event()
        sent = {"n": 0}

        def flow() -> None:
            while not stop.is_set():
                try:
                    kernel.sendto(b"flow", (A_IP, 7500))
                    sent["n"] += 1
                except OSError:
                    pass
                time.sleep(0.001)

        sender = threading.Thread(target=flow, daemon=True)
        try:
            with in_netns(a):
                stack.enable_port(ea.name)
            rx = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            rx.bind(("", 7500))
            sender.start()
            assert rx.oob_recvmsg(100, timeout=5)[0] == b"flow"
            subprocess.run(["ip", "netns", "del", a.name], check=True)
            assert a.name not in list_namespaces(os.getpid())
            got = 0
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and got < 20:
                rx.oob_recvmsg(100, timeout=2)
                got += 1
            assert got == 20, "traffic stopped with the namespace's name"
        finally:
            stop.set()
            sender.join(2)
            stack.close()
        assert wait_until(lambda: not eb.exists(), 5), \
            "the veth survived the stack: something still holds the deleted namespace"
        kernel.close()
    assert list_namespaces(os.getpid()) == []


def test_a_port_object_kept_after_close_holds_nothing_of_the_kernel():
    """A program may keep its Port object (or a reference cycle may, until the garbage collector
    runs) after ``stack.close()``: the packet socket, its ring and its hold on the network
    namespace go at close all the same. Observable: deleting the namespace destroys the veth
    pair at once (a socket still open in it would keep the namespace, and the pair, alive)."""
    with netns("fk") as a, netns("fl") as b:
        with veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, eb):
            stack = Stack(unique("kept"))
            with in_netns(a):
                port = stack.enable_port(ea.name)
            stack.close()
            subprocess.run(["ip", "netns", "del", a.name], check=True)
            assert wait_until(lambda: not eb.exists(), timeout=5), \
                "the veth pair outlived its namespace: something still holds the namespace"
            assert not port.enabled

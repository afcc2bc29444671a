"""EVL fidelity of oob sockets: genuine-socket options, EVL's option ids, SO_BROADCAST,
readiness for poll/select/asyncio (the asyncio example included)."""
from __future__ import annotations

import asyncio
import errno
import importlib.util
import pathlib
import select
import selectors
import socket as pysocket

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    WireTap,
    make_pair,
    pair,
    raises_errno,
    stacks,
    wait_until,
)

from evlnet import (
    EVL_SOCKOPT_RECVSZ,
    EVL_SOCKOPT_SENDSZ,
    EVL_SOCKOPT_TIMESTAMPING,
    EVL_SOF_TIMESTAMPS,
    MSG_DONTWAIT,
    SO_TIMESTAMP_OOB,
    SOL_SOCKET,
)

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "asyncio_echo.py"
SOL_IP = pysocket.IPPROTO_IP


@pytest.mark.parametrize("level, name, value", [
    (SOL_SOCKET, pysocket.SO_KEEPALIVE, 1),
    (SOL_SOCKET, pysocket.SO_DONTROUTE, 1),
    (SOL_SOCKET, pysocket.SO_PRIORITY, 5),
    (SOL_SOCKET, pysocket.SO_BROADCAST, 1),
    (SOL_IP, pysocket.IP_TOS, 0x10),
    (SOL_IP, pysocket.IP_TTL, 17),
])
@pytest.mark.parametrize("when", ["before_bind", "after_bind"])
def test_standard_options_on_a_virtual_link_socket(pair, level, name, value, when):
    """No kernel socket behind it, any order of calls: the option is kept as Linux keeps it."""
    s = pair.udp(pair.A)
    if when == "after_bind":
        s.bind((A_IP, 0))
    s.setsockopt(level, name, value)
    assert s.getsockopt(level, name) == value
    assert s.getsockopt(level, name, 4) == value.to_bytes(4, "little")


def test_tos_and_ttl_go_into_the_headers(pair):
    tap = WireTap(pair.link.b)
    try:
        sa, sb = pair.solicited_pair()
        sa.setsockopt(SOL_IP, pysocket.IP_TOS, 0xB8)
        sa.setsockopt(SOL_IP, pysocket.IP_TTL, 3)
        sa.oob_sendmsg([b"marked"], address=(B_IP, 6000))
        assert sb.oob_recvmsg(100, timeout=5)[0] == b"marked"
        frame = Ether(tap.wait_for(lambda f: Ether(f).haslayer(UDP))[0])
        assert (frame[IP].tos, frame[IP].ttl) == (0xB8, 3)
    finally:
        tap.restore()


def test_evl_option_ids(pair):
    s = pair.udp(pair.A, (A_IP, 0))
    s.oob_setsockopt(SOL_SOCKET, EVL_SOCKOPT_RECVSZ, 5000)
    assert s.oob_getsockopt(SOL_SOCKET, EVL_SOCKOPT_RECVSZ) == 10000      # doubled, as Linux
    assert s.getsockopt(SOL_SOCKET, pysocket.SO_RCVBUF) == 10000
    s.oob_setsockopt(SOL_SOCKET, EVL_SOCKOPT_SENDSZ, 1)
    assert s.oob_getsockopt(SOL_SOCKET, EVL_SOCKOPT_SENDSZ) == 4608       # SOCK_MIN_SNDBUF
    s.oob_setsockopt(SOL_SOCKET, EVL_SOCKOPT_TIMESTAMPING, EVL_SOF_TIMESTAMPS)
    assert s.getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == EVL_SOF_TIMESTAMPS
    with raises_errno(errno.EINVAL):
        s.oob_setsockopt(SOL_SOCKET, EVL_SOCKOPT_TIMESTAMPING, 0x100)     # unknown flag
    with raises_errno(errno.EINVAL):
        s.oob_setsockopt(SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)            # not an oob option


def test_broadcast_needs_so_broadcast(pair):
    sa = pair.udp(pair.A, (A_IP, 0))
    sb = pair.udp(pair.B, ("0.0.0.0", 6000))
    for dst in ("255.255.255.255", "192.0.2.255"):
        with raises_errno(errno.EACCES):
            sa.oob_sendmsg([b"all"], address=(dst, 6000))
    sa.setsockopt(SOL_SOCKET, pysocket.SO_BROADCAST, 1)
    pair.A.solicit(sa, "broadcast")
    assert sa.oob_sendmsg([b"all"], address=("255.255.255.255", 6000)) == 3
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"all"


def test_select_and_poll_follow_the_receive_queue(pair):
    sa, sb = pair.solicited_pair()
    assert select.select([sb], [], [], 0)[0] == []
    assert select.select([], [sb], [], 0)[1] == [sb]                     # POLLOUT always
    sa.oob_sendmsg([b"one"], address=(B_IP, 6000))
    sa.oob_sendmsg([b"two"], address=(B_IP, 6000))
    assert select.select([sb], [], [], 5)[0] == [sb]
    assert wait_until(lambda: len(sb.core_socket) == 2)   # both queued (a loaded machine)
    poller = select.poll()
    poller.register(sb, select.POLLIN | select.POLLOUT)
    assert dict(poller.poll(0))[sb.fileno()] & select.POLLIN
    assert sb.oob_recvmsg(100, flags=MSG_DONTWAIT)[0] == b"one"
    assert select.select([sb], [], [], 0)[0] == [sb]                     # one still queued
    assert sb.oob_recvmsg(100, flags=MSG_DONTWAIT)[0] == b"two"
    assert select.select([sb], [], [], 0)[0] == []
    assert dict(poller.poll(0))[sb.fileno()] == select.POLLOUT


def test_tx_timestamp_records_make_the_socket_readable(pair):
    sa, sb = pair.solicited_pair()
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    assert select.select([sa], [], [], 0)[0] == []
    sa.oob_sendmsg([b"x"], address=(B_IP, 6000))
    assert select.select([sa], [], [], 5)[0] == [sa]
    records, _ = sa.oob_collect_tx_timestamps(4)
    assert len(records) == 1
    assert select.select([sa], [], [], 0)[0] == []


def test_selectors_wait_for_several_sockets(pair):
    sa, sb = pair.solicited_pair()
    other = pair.udp(pair.B, ("0.0.0.0", 6001))
    with selectors.DefaultSelector() as sel:
        sel.register(sb, selectors.EVENT_READ, "sb")
        sel.register(other, selectors.EVENT_READ, "other")
        assert sel.select(0) == []
        sa.oob_sendmsg([b"to other"], address=(B_IP, 6001))
        ready = sel.select(5)
        assert [key.data for key, _ in ready] == ["other"]


def test_asyncio_example():
    spec = importlib.util.spec_from_file_location("asyncio_echo", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    replies, echoed = asyncio.run(mod.run(count=5))
    assert replies == [b"request %d" % i for i in range(5)]
    assert echoed >= 5

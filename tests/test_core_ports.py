"""Ports on the virtual link: enable/open/disable, statistics, the TX pool, link events."""
from __future__ import annotations

import errno
import socket as pysocket
import struct
import time

import pytest
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    Runner,
    extra,
    make_pair,
    os_thread_names,
    pair,
    raises_errno,
    stacks,
    tx_gate,
    unique,
    wait_until,
)

import evlnet
from evlnet import (
    AF_PACKET,
    EVL_DEFAULT_POOLSZ,
    MSG_DONTWAIT,
    PAGE_SIZE,
    SOCK_OOB,
    SOCK_RAW,
    DevStat,
    VirtualLink,
)
from evlnet.constants import ETH_P_ALL


def _lone_stack(stacks, mtu=1500, up=True):
    link = VirtualLink(unique("la"), unique("lb"), mtu=mtu)
    s = stacks("L")
    s.add_interface(link.a, "198.51.100.1/24")
    if not up:
        link.a.set_up(False)
    return s, link


# -- enable_port ---------------------------------------------------------------------------------
def test_enable_port_defaults(stacks):
    s, link = _lone_stack(stacks)
    port = s.enable_port(link.a.name)
    st = s.get_stats(port)
    assert st.skb_total == EVL_DEFAULT_POOLSZ == 2048
    assert st.skb_free == 2048
    assert st.skb_size == PAGE_SIZE        # one page holds 1500 + headers
    assert st.oob_port and st.oob_capable
    assert port.fileno() >= 0


@pytest.mark.parametrize("mtu, bufsz, expected", [
    (1500, 0, 4096),
    (1500, 100, 4096),          # below the MTU: raised
    (1500, 5000, 8192),         # rounded up to whole pages
    (1500, 4 * PAGE_SIZE, 16384),
    (9000, 0, 12288),           # MTU 9000 + headers -> 3 pages
    (9000, 4096, 12288),
])
def test_enable_port_buffer_size(stacks, mtu, bufsz, expected):
    s, link = _lone_stack(stacks, mtu=mtu)
    port = s.enable_port(link.a.name, 16, bufsz)
    st = s.get_stats(port)
    assert st.skb_size == expected
    assert st.skb_total == 16


@pytest.mark.parametrize("poolsz, bufsz", [
    (32769, 0), (-1, 0), (0, 4 * PAGE_SIZE + 1), (0, -1), (100000, 100000),
])
def test_enable_port_limits_einval(stacks, poolsz, bufsz):
    s, link = _lone_stack(stacks)
    with raises_errno(errno.EINVAL):
        s.enable_port(link.a.name, poolsz, bufsz)
    assert link.a.name not in s.ports


def test_enable_port_mtu_needing_more_than_four_pages_einval(stacks):
    s, link = _lone_stack(stacks, mtu=16384)
    with raises_errno(errno.EINVAL):
        s.enable_port(link.a.name)


def test_enable_port_unknown_interface_einval(stacks):
    s, _ = _lone_stack(stacks)
    with raises_errno(errno.EINVAL):
        s.enable_port("nosuchif0")
    with raises_errno(errno.EINVAL):
        s.enable_port("")


def test_enable_port_link_down_enetdown(stacks):
    s, link = _lone_stack(stacks, up=False)
    with raises_errno(errno.ENETDOWN):     # EVL dev.c: the device must be IFF_UP
        s.enable_port(link.a.name)


def test_enable_enabled_port_returns_same_port(stacks):
    s, link = _lone_stack(stacks)
    port = s.enable_port(link.a.name, 8)
    assert s.enable_port(link.a.name) is port
    assert s.enable_port(link.a.name, 32) is port
    assert s.get_stats(port).skb_total == 8


def test_open_port(stacks):
    s, link = _lone_stack(stacks)
    with raises_errno(errno.EINVAL):       # known interface, port not enabled
        s.open_port(link.a.name)
    with raises_errno(errno.EINVAL):       # unknown interface
        s.open_port("nosuchif0")
    port = s.enable_port(link.a.name, 8)
    assert s.open_port(link.a.name) is port
    s.disable_port(port)
    with raises_errno(errno.EINVAL):       # disabled again
        s.open_port(link.a.name)


# -- disable_port --------------------------------------------------------------------------------
def test_disable_port_waits_for_inflight_tx_then_fails_senders_and_wakes_receivers(
        make_pair, tx_gate):
    # the TX-thread model: a frame held inside the device by the TX thread, one in the qdisc
    p = make_pair(poolsz=2, tx_direct=False)
    sa, sb = p.solicited_pair()
    ra = p.udp(p.A, (A_IP, 7000))
    raw = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    raw.bind((p.link.a.name, ETH_P_ALL))
    gate = tx_gate(p.link.a)

    assert sa.oob_sendmsg([b"first"], address=(B_IP, 6000)) == 5
    assert gate.entered.wait(5)                    # TX thread holds "first" inside the device
    assert sa.oob_sendmsg([b"second"], address=(B_IP, 6000)) == 6   # waits in the qdisc
    blocked_sender = Runner(sa.oob_sendmsg, [b"third"], address=(B_IP, 6000))
    blocked_sender.start()
    assert wait_until(lambda: p.pa.counters.tx_nomem >= 1)          # pool empty: it waits
    receiver = Runner(ra.oob_recvmsg, 100)
    receiver.start()
    receiver.started_call.wait(5)

    disabler = Runner(p.A.disable_port, p.pa)
    disabler.start()
    assert wait_until(lambda: not p.pa.enabled)
    assert disabler.is_alive()                     # still waiting for the in-flight frames
    gate.open()
    disabler.finish()
    assert disabler.error is None

    # both in-flight datagrams left before the port went away
    got = {sb.oob_recvmsg(100, timeout=5)[0], sb.oob_recvmsg(100, timeout=5)[0]}
    assert got == {b"first", b"second"}
    # the sender waiting for a buffer, and the blocked receiver, get ENETDOWN
    blocked_sender.finish()
    assert isinstance(blocked_sender.error, OSError)
    assert blocked_sender.error.errno == errno.ENETDOWN
    receiver.finish()
    assert isinstance(receiver.error, OSError) and receiver.error.errno == errno.ENETDOWN
    # a sender on the disabled port
    with raises_errno(errno.ENETDOWN):
        raw.oob_sendmsg([bytes(60)])
    with raises_errno(errno.ENETDOWN):
        raw.oob_recvmsg(100, flags=MSG_DONTWAIT)
    with raises_errno(errno.EWOULDBLOCK):          # "third" never made it
        sb.oob_recvmsg(100, flags=MSG_DONTWAIT)
    # UDP senders whose route led to the port get ENETDOWN (the route stays as a tombstone,
    # its neighbour is gone), blocking or not
    b_ip = int.from_bytes(pysocket.inet_aton(B_IP), "big")
    assert p.A.frontcache.routes.peek(b_ip).port is p.pa
    assert p.A.frontcache.neighbours.peek(b_ip) is None
    with raises_errno(errno.ENETDOWN):
        sa.oob_sendmsg([b"late"], address=(B_IP, 6000), flags=MSG_DONTWAIT)
    with raises_errno(errno.ENETDOWN):
        sa.oob_sendmsg([b"late"], address=(B_IP, 6000))
    assert p.pa.fileno() == -1
    assert not p.pa.threads_alive
    assert p.pa.tx_pool.free == p.pa.tx_pool.total
    raw.close()


def test_disable_port_twice_is_noop_and_non_port_ebadf(pair):
    p = pair
    fd = p.pa.fileno()
    p.A.disable_port(fd)                            # by descriptor
    p.A.disable_port(p.pa)                          # second call: no-op
    p.A.disable_port(p.pa)
    for bogus in (fd, -1, 123456, "va", None, object()):
        with raises_errno(errno.EBADF):
            p.A.disable_port(bogus)
    with raises_errno(errno.EBADF):                 # B's port is not one of A's
        p.A.disable_port(p.pb)


def test_reenable_after_disable(pair):
    p = pair
    name = p.link.a.name
    p.A.disable_port(p.pa)
    port = p.A.enable_port(name, 4)
    assert port is not p.pa and port.enabled
    # the disabled port's route tombstones are gone: no sender is stuck on ENETDOWN
    assert all(r.port.enabled for r in p.A.frontcache.routes)
    sa, sb = p.solicited_pair()
    assert sa.oob_sendmsg([b"again"], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 5
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"again"


# -- statistics ----------------------------------------------------------------------------------
def test_get_stats_counts_traffic(pair):
    p = pair
    sa, sb = p.solicited_pair()
    a0, b0 = p.A.get_stats(p.pa), p.B.get_stats(p.pb)
    payload = b"x" * 100
    for _ in range(3):
        sa.oob_sendmsg([payload], address=(B_IP, 6000))
        assert sb.oob_recvmsg(200, timeout=5)[0] == payload
    frame = 14 + 20 + 8 + 100
    assert wait_until(lambda: p.A.get_stats(p.pa).tx_packets == a0.tx_packets + 3)
    a1, b1 = p.A.get_stats(p.pa), p.B.get_stats(p.pb)
    assert a1.tx_bytes - a0.tx_bytes == 3 * frame
    assert b1.rx_packets - b0.rx_packets == 3
    assert b1.rx_bytes - b0.rx_bytes == 3 * frame
    assert a1.csum_errors == b1.csum_errors == 0
    assert a1.tx_nomem == 0 and b1.rx_nomem == 0
    assert wait_until(lambda: p.A.get_stats(p.pa).skb_free == 2048)
    assert isinstance(a1.extra, dict) and "rx_otherhost" in a1.extra


def test_get_stats_not_a_port_ebadf(pair):
    p = pair
    for bogus in (-1, 999999, "va", None, p.pb):
        with raises_errno(errno.EBADF):
            p.A.get_stats(bogus)
    assert p.A.get_stats(p.pa.fileno()).skb_total == 2048
    p.A.disable_port(p.pa)
    with raises_errno(errno.EBADF):
        p.A.get_stats(p.pa)


def test_devstat_pack_is_evl_struct_and_round_trips(pair):
    st = DevStat(rx_packets=1, rx_bytes=2**40, tx_packets=3, tx_bytes=4, skb_size=4096,
                 skb_free=5, skb_total=2048, csum_errors=6, rx_nomem=7, tx_nomem=8,
                 oob_capable=True, oob_port=False)
    raw = st.pack()
    assert len(raw) == 64
    assert struct.unpack_from("=4Q6I", raw) == (1, 2**40, 3, 4, 4096, 5, 2048, 6, 7, 8)
    assert struct.unpack_from("=I", raw, 56)[0] == 0b01     # oob_capable:1, oob_port:1
    back = DevStat.unpack(raw)
    assert back == st
    both = DevStat(oob_capable=True, oob_port=True)
    assert struct.unpack_from("=I", both.pack(), 56)[0] == 0b11
    assert DevStat.unpack(both.pack()) == both
    live = pair.A.get_stats(pair.pa)
    again = DevStat.unpack(live.pack())
    assert again.skb_total == live.skb_total and again.oob_port and again.oob_capable


def test_format_query():
    st = DevStat(rx_packets=1, rx_bytes=2, tx_packets=3, tx_bytes=4, skb_size=4096, skb_free=5,
                 skb_total=2048, csum_errors=6, rx_nomem=7, tx_nomem=8, oob_capable=True)
    assert st.format_query() == (
        "oob capability: yes\n"
        "    rx packets: 1\n"
        "      rx bytes: 2\n"
        "    tx packets: 3\n"
        "      tx bytes: 4\n"
        "      skb size: 4096\n"
        "      skb free: 5 / 2048\n"
        "   csum errors: 6\n"
        "      rx nomem: 7\n"
        "      tx nomem: 8")
    assert st.format_query("RrTtosfacx") == "1 2 3 4 yes 4096 5 2048 6 7 8"
    assert st.format_query("xR") == "7 8 1"
    assert DevStat().format_query("o") == "no"
    assert DevStat().format_query().startswith("oob capability: no\n")
    with pytest.raises(ValueError):
        st.format_query("Z")


def test_direct_tx_runs_in_the_sender_and_queues_behind_a_busy_device(make_pair, tx_gate):
    """Run-to-completion TX: an empty FIFO is bypassed by the sender's own thread; while that
    transmit holds the device, the next frame goes through the qdisc and the TX thread, in order,
    and disable_port waits for the sender's in-flight frame too."""
    p = make_pair(poolsz=4)
    assert p.pa.direct_tx
    sa, sb = p.solicited_pair()
    gate = tx_gate(p.link.a)
    first = Runner(sa.oob_sendmsg, [b"first"], address=(B_IP, 6000))
    first.start()
    assert gate.entered.wait(5)
    tx_thread_names = set(os_thread_names())
    assert first.is_alive()                          # the sender itself is inside the device
    assert sa.oob_sendmsg([b"second"], address=(B_IP, 6000)) == 6   # queued: returns at once
    assert len(p.pa.qdisc) == 1
    disabler = Runner(p.A.disable_port, p.pa)
    disabler.start()
    assert wait_until(lambda: not p.pa.enabled)
    assert disabler.is_alive()                       # waits for both in-flight frames
    gate.open()
    first.finish()
    disabler.finish()
    assert first.error is None and disabler.error is None
    got = [sb.oob_recvmsg(100, timeout=5)[0] for _ in range(2)]
    assert got == [b"first", b"second"]
    assert f"{p.link.a.name}.tx" in tx_thread_names


# -- the TX pool ---------------------------------------------------------------------------------
def test_pool_exhaustion_dontwait_timeout_and_wait_for_buffer(make_pair, tx_gate):
    p = make_pair(poolsz=2, tx_direct=False)      # frames wait in the TX thread, not the caller
    sa, sb = p.solicited_pair()
    assert wait_until(lambda: p.A.get_stats(p.pa).skb_free == 2)
    gate = tx_gate(p.link.a)
    dst = (B_IP, 6000)
    sa.oob_sendmsg([b"1"], address=dst)
    assert gate.entered.wait(5)
    sa.oob_sendmsg([b"2"], address=dst)
    st = p.A.get_stats(p.pa)
    assert (st.skb_free, st.skb_total, st.tx_nomem) == (0, 2, 0)

    with raises_errno(errno.EWOULDBLOCK):
        sa.oob_sendmsg([b"x"], address=dst, flags=MSG_DONTWAIT)
    assert p.A.get_stats(p.pa).tx_nomem == 1
    sa.setblocking(False)                           # O_NONBLOCK implies DONTWAIT
    with raises_errno(errno.EWOULDBLOCK):
        sa.oob_sendmsg([b"x"], address=dst)
    sa.setblocking(True)
    with raises_errno(errno.ETIMEDOUT):
        sa.oob_sendmsg([b"x"], address=dst, timeout=0.05)
    with raises_errno(errno.ETIMEDOUT):
        sa.oob_sendmsg([b"x"], address=dst, abs_timeout_ns=time.monotonic_ns() + 50_000_000)
    assert p.A.get_stats(p.pa).tx_nomem == 4

    waiter = Runner(sa.oob_sendmsg, [b"3"], address=dst)
    waiter.start()
    assert wait_until(lambda: p.A.get_stats(p.pa).tx_nomem == 5)
    assert waiter.is_alive()                        # blocked until a buffer comes back
    gate.open()
    waiter.finish()
    assert waiter.error is None and waiter.result == 1
    got = sorted(sb.oob_recvmsg(10, timeout=5)[0] for _ in range(3))
    assert got == [b"1", b"2", b"3"]
    with raises_errno(errno.EWOULDBLOCK):           # the refused ones were not sent
        sb.oob_recvmsg(10, flags=MSG_DONTWAIT)
    assert wait_until(lambda: p.A.get_stats(p.pa).skb_free == 2)


def test_pool_returns_to_full_after_fragmented_traffic(make_pair):
    p = make_pair(poolsz=8)
    sa, sb = p.solicited_pair()
    big = bytes(range(256)) * 20                    # 5120 bytes: 4 fragments
    for _ in range(20):
        assert sa.oob_sendmsg([big], address=(B_IP, 6000)) == len(big)
        assert sb.oob_recvmsg(8000, timeout=5)[0] == big
    assert wait_until(lambda: p.A.get_stats(p.pa).skb_free == 8)
    st = p.A.get_stats(p.pa)
    assert st.skb_free == st.skb_total == 8
    assert wait_until(lambda: p.pb.rx_pool.free == p.pb.rx_pool.total)


def test_fragmented_send_needing_more_buffers_than_pool(make_pair):
    p = make_pair(poolsz=2)
    sa, sb = p.solicited_pair()
    with raises_errno(errno.EWOULDBLOCK):           # 3 fragments, 2 buffers: all or nothing
        sa.oob_sendmsg([bytes(4000)], address=(B_IP, 6000), flags=MSG_DONTWAIT)
    with raises_errno(errno.ETIMEDOUT):
        sa.oob_sendmsg([bytes(4000)], address=(B_IP, 6000), timeout=0.05)
    assert p.A.get_stats(p.pa).skb_free == 2       # nothing leaked by the failed attempts
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(5000, flags=MSG_DONTWAIT)


# -- link events ---------------------------------------------------------------------------------
def test_link_down_fails_senders_wakes_receivers_and_up_recovers(pair):
    p = pair
    sa, sb = p.solicited_pair()
    ra = p.udp(p.A, (A_IP, 7000))
    receiver = Runner(ra.oob_recvmsg, 100)
    receiver.start()
    receiver.started_call.wait(5)
    p.link.a.set_up(False)
    receiver.finish()
    assert isinstance(receiver.error, OSError) and receiver.error.errno == errno.ENETDOWN
    with raises_errno(errno.ENETDOWN):
        sa.oob_sendmsg([b"down"], address=(B_IP, 6000))
    with raises_errno(errno.ENETDOWN):
        sa.oob_sendmsg([b"down"], address=(B_IP, 6000), flags=MSG_DONTWAIT)

    p.link.a.set_up(True)
    # back up: sending works again, and a receiver waits as usual instead of failing
    assert sa.oob_sendmsg([b"up"], address=(B_IP, 6000)) == 2
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"up"
    with raises_errno(errno.EWOULDBLOCK):
        ra.oob_recvmsg(100, flags=MSG_DONTWAIT)
    with raises_errno(errno.ETIMEDOUT):
        ra.oob_recvmsg(100, timeout=0.02)
    sb_to_a = p.udp(p.B, (B_IP, 0))
    p.B.solicit(sb_to_a, (A_IP, 0))
    sb_to_a.oob_sendmsg([b"hello A"], address=(A_IP, 7000))
    assert ra.oob_recvmsg(100, timeout=5)[0] == b"hello A"


def test_link_removed_disables_port_and_nothing_hangs(pair):
    p = pair
    sa, sb = p.solicited_pair()
    ra = p.udp(p.A, (A_IP, 7000))
    receiver = Runner(ra.oob_recvmsg, 100)
    receiver.start()
    receiver.started_call.wait(5)
    name = p.link.a.name
    p.link.a.remove()
    receiver.finish()
    assert isinstance(receiver.error, OSError) and receiver.error.errno == errno.ENETDOWN
    assert wait_until(lambda: name not in p.A.ports and p.pa.fileno() == -1)
    assert not p.pa.enabled
    assert wait_until(lambda: not p.pa.threads_alive)
    with raises_errno(errno.EBADF):
        p.A.get_stats(p.pa)
    with raises_errno(errno.EINVAL):
        p.A.open_port(name)
    p.A.close()
    p.B.close()


# -- module-level API on the default stack -------------------------------------------------------
def test_module_level_functions_use_default_stack():
    stack = evlnet.default_stack()
    try:
        link = VirtualLink(unique("da"), unique("db"))
        stack.add_interface(link.a, "203.0.113.1/24")
        port = evlnet.enable_port(link.a.name, 4)
        assert evlnet.open_port(link.a.name) is port
        assert evlnet.get_stats(port).skb_total == 4
        with raises_errno(errno.EBADF):
            evlnet.solicit(object(), ("203.0.113.2", 0))
        evlnet.disable_port(port)
        with raises_errno(errno.EBADF):
            evlnet.get_stats(port)
    finally:
        stack.close()
    assert evlnet.default_stack() is not stack       # a closed default is replaced
    evlnet.default_stack().close()

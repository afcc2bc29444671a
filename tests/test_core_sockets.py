"""Sockets on the virtual link: creation, addressing, oob_sendmsg/oob_recvmsg, packet sockets,
options."""
from __future__ import annotations

import errno
import socket as pysocket
import time

import pytest
from virtual_fixtures import A_IP, B_IP, Runner, extra, make_pair, pair, raises_errno, stacks  # noqa: F401

from evlnet import (
    AF_INET,
    AF_PACKET,
    ETH_P_ALL,
    ETH_P_IP,
    MSG_DONTWAIT,
    MSG_TIMESTAMP,
    MSG_TRUNC,
    SO_TIMESTAMP_OOB,
    SOCK_DGRAM,
    SOCK_OOB,
    SOCK_RAW,
    SOL_SOCKET,
)
from evlnet.errors import ENOTSUPP

SO_RCVBUF = pysocket.SO_RCVBUF
SO_SNDBUF = pysocket.SO_SNDBUF
SO_REUSEPORT = pysocket.SO_REUSEPORT
SO_KEEPALIVE = pysocket.SO_KEEPALIVE
ETH_P_TEST = 0x88B5          # IEEE local experimental EtherType
PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST = 0, 1, 3


# -- creation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, type_, proto, code", [
    (pysocket.AF_INET6, SOCK_DGRAM, 0, errno.EAFNOSUPPORT),
    (pysocket.AF_UNIX, SOCK_DGRAM, 0, errno.EAFNOSUPPORT),
    (AF_INET, pysocket.SOCK_STREAM, 0, errno.ESOCKTNOSUPPORT),
    (AF_INET, SOCK_RAW, 0, errno.ESOCKTNOSUPPORT),
    (AF_PACKET, SOCK_DGRAM, 0, errno.ESOCKTNOSUPPORT),
    (AF_INET, SOCK_DGRAM, 6, errno.EPROTONOSUPPORT),          # TCP over a datagram socket
    (AF_INET, SOCK_DGRAM, 1, ENOTSUPP),                       # user ICMP: not yet, as EVL
    (AF_PACKET, SOCK_RAW, pysocket.htons(0x8100), errno.EPROTONOSUPPORT),
])
def test_socket_creation_errors(stacks, family, type_, proto, code):
    s = stacks()
    with raises_errno(code):
        s.socket(family, type_ | SOCK_OOB, proto)


def test_socket_without_sock_oob_is_a_plain_socket(stacks):
    s = stacks()
    with s.socket(AF_INET, SOCK_DGRAM) as plain:
        assert type(plain) is pysocket.socket
        assert plain.family == AF_INET and plain.type == SOCK_DGRAM
    with s.socket(AF_INET, pysocket.SOCK_STREAM) as plain:   # in-band: anything Linux does
        assert type(plain) is pysocket.socket


def test_socket_kinds_and_nonblock_flag(stacks):
    s = stacks()
    with s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB) as u:
        assert u.getblocking() and u.fileno() >= 0
        assert u.getsockopt(SOL_SOCKET, pysocket.SO_TYPE) == SOCK_DGRAM
        assert u.getsockopt(SOL_SOCKET, pysocket.SO_PROTOCOL) == pysocket.IPPROTO_UDP
    with s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB, pysocket.IPPROTO_UDP) as u:
        assert u.getsockopt(SOL_SOCKET, pysocket.SO_DOMAIN) == AF_INET
    with s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB | pysocket.SOCK_NONBLOCK) as u:
        assert not u.getblocking()
        with raises_errno(errno.EWOULDBLOCK):
            u.oob_recvmsg(10)
    for proto in (ETH_P_ALL, ETH_P_IP, ETH_P_TEST, 0):
        with s.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(proto)) as p:
            assert p.fileno() >= 0


def test_close_fileno_context_manager(stacks):
    s = stacks()
    u = s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    fd = u.fileno()
    assert fd >= 0
    u.close()
    assert u.fileno() == -1 and u.closed
    u.close()                                        # idempotent
    for call in (lambda: u.oob_sendmsg([b"x"], address=(B_IP, 1)),
                 lambda: u.oob_recvmsg(10, flags=MSG_DONTWAIT),
                 lambda: u.bind(("", 0)),
                 lambda: u.setsockopt(SOL_SOCKET, SO_RCVBUF, 4096),
                 lambda: u.oob_getsockopt(SOL_SOCKET, SO_RCVBUF)):
        with raises_errno(errno.EBADF):
            call()
    with s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB) as v:
        assert v.fileno() >= 0
    assert v.fileno() == -1
    p = s.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    p.close()
    assert p.fileno() == -1


# -- addressing ----------------------------------------------------------------------------------
def test_bind_connect_names(pair):
    p = pair
    u = p.udp(p.A)
    assert u.getsockname() == ("0.0.0.0", 0)
    with raises_errno(errno.ENOTCONN):
        u.getpeername()
    u.bind((A_IP, 0))
    host, port = u.getsockname()
    assert host == A_IP and 32768 <= port <= 60999     # ephemeral range
    with raises_errno(errno.EINVAL):                     # already bound
        u.bind((A_IP, 0))
    u.connect((B_IP, 6000))
    assert u.getpeername() == (B_IP, 6000)
    v = p.udp(p.A)
    v.connect((B_IP, 6000))                              # connect auto-binds
    assert v.getsockname()[1] != 0
    for bad in ((B_IP, 0), ("0.0.0.0", 6000)):
        with raises_errno(errno.EINVAL):
            v.connect(bad)
    for bad in ("192.0.2.2", ("nonsense", 1), (B_IP, 70000), (B_IP, "80"), None):
        with raises_errno(errno.EINVAL):
            p.udp(p.A).bind(bad)


def test_bind_non_local_address_eaddrnotavail(pair):
    with raises_errno(errno.EADDRNOTAVAIL):
        pair.udp(pair.A).bind(("203.0.113.9", 5000))
    with raises_errno(errno.EADDRNOTAVAIL):
        pair.udp(pair.A).bind((B_IP, 5000))              # the peer's address is not ours


def test_bind_conflicts_eaddrinuse(pair):
    p = pair
    p.udp(p.B, (B_IP, 6000))
    with raises_errno(errno.EADDRINUSE):
        p.udp(p.B, (B_IP, 6000))
    with raises_errno(errno.EADDRINUSE):                 # wildcard overlaps the bound address
        p.udp(p.B, ("0.0.0.0", 6000))
    p.udp(p.B, ("0.0.0.0", 6001))
    with raises_errno(errno.EADDRINUSE):
        p.udp(p.B, (B_IP, 6001))
    u = p.udp(p.B)
    u.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)            # the first owner did not allow sharing
    with raises_errno(errno.EADDRINUSE):
        u.bind((B_IP, 6000))
    p.udp(p.B, (B_IP, 6002)).close()                     # a closed socket frees its address
    p.udp(p.B, (B_IP, 6002))


def test_so_reuseport_shares_one_slot(pair):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    p.A.solicit(sa, (B_IP, 0))
    r1, r2 = p.udp(p.B), p.udp(p.B)
    for r in (r1, r2):
        r.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)
        assert r.getsockopt(SOL_SOCKET, SO_REUSEPORT) == 1
        r.bind((B_IP, 6000))
    for i in range(2):
        sa.oob_sendmsg([b"d%d" % i], address=(B_IP, 6000))
    # one queue for both: each datagram is received once, by whichever socket asks
    assert r1.oob_recvmsg(10, timeout=5)[0] == b"d0"
    assert r2.oob_recvmsg(10, timeout=5)[0] == b"d1"
    with raises_errno(errno.EWOULDBLOCK):
        r1.oob_recvmsg(10, flags=MSG_DONTWAIT)
    plain = p.udp(p.B)
    with raises_errno(errno.EADDRINUSE):                 # sharing needs SO_REUSEPORT on both
        plain.bind((B_IP, 6000))
    r1.close()                                           # the other owner keeps receiving
    with raises_errno(errno.EWOULDBLOCK):
        r2.oob_recvmsg(10, flags=MSG_DONTWAIT)
    sa.oob_sendmsg([b"d2"], address=(B_IP, 6000))
    assert r2.oob_recvmsg(10, timeout=5)[0] == b"d2"
    r2.close()
    p.udp(p.B, (B_IP, 6000))                             # the slot is free again


# -- oob_sendmsg / oob_recvmsg -------------------------------------------------------------------
def test_datagram_round_trip_with_address_and_gather(pair):
    sa, sb = pair.solicited_pair()
    n = sa.oob_sendmsg([b"ab", memoryview(b"cd"), bytearray(b"ef")], address=(B_IP, 6000))
    assert n == 6
    data, anc, flags, addr = sb.oob_recvmsg(100, timeout=5)
    assert (data, anc, flags) == (b"abcdef", [], 0)
    assert addr == sa.getsockname() == (A_IP, addr[1])
    assert sa.oob_sendmsg(b"single", address=(B_IP, 6000)) == 6   # a bytes object is one iov
    assert sb.oob_recvfrom(100, timeout=5) == (b"single", addr)
    sa.connect((B_IP, 6000))
    assert sa.oob_send(b"connected") == 9
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"connected"


def test_recv_truncation_and_scatter(pair):
    sa, sb = pair.solicited_pair()
    payload = bytes(range(100))
    sa.oob_sendmsg([payload], address=(B_IP, 6000))
    data, _, flags, _ = sb.oob_recvmsg(10, timeout=5)
    assert data == payload[:10] and flags & MSG_TRUNC
    sa.oob_sendmsg([payload], address=(B_IP, 6000))
    b1, b2 = bytearray(3), bytearray(200)
    n, _, flags, _ = sb.oob_recvmsg_into([b1, b2], timeout=5)
    assert n == 100 and flags == 0
    assert bytes(b1) == payload[:3] and bytes(b2[:97]) == payload[3:]
    sa.oob_sendmsg([payload], address=(B_IP, 6000))
    b3 = bytearray(40)
    n, _, flags, _ = sb.oob_recvmsg_into(memoryview(b3), timeout=5)
    assert n == 40 and flags == MSG_TRUNC and bytes(b3) == payload[:40]


@pytest.mark.parametrize("flags", [pysocket.MSG_OOB, MSG_TRUNC, MSG_TIMESTAMP, pysocket.MSG_PEEK,
                                   MSG_DONTWAIT | pysocket.MSG_WAITALL])
def test_send_accepts_only_dontwait(pair, flags):
    sa, sb = pair.solicited_pair()
    with raises_errno(errno.EINVAL):
        sa.oob_sendmsg([b"x"], address=(B_IP, 6000), flags=flags)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(10, flags=MSG_DONTWAIT)


@pytest.mark.parametrize("flags", [pysocket.MSG_PEEK, MSG_TRUNC, pysocket.MSG_WAITALL,
                                   MSG_DONTWAIT | pysocket.MSG_OOB])
def test_recv_accepts_only_dontwait_and_timestamp(pair, flags):
    sa, sb = pair.solicited_pair()
    sa.oob_sendmsg([b"x"], address=(B_IP, 6000))
    with raises_errno(errno.EINVAL):
        sb.oob_recvmsg(10, flags=flags, timeout=1)
    with raises_errno(errno.EINVAL):
        sb.oob_recvmsg_into([bytearray(10)], flags=flags, timeout=1)
    assert sb.oob_recvmsg(10, flags=0, timeout=5)[0] == b"x"   # still queued


def test_send_destination_errors(pair):
    p = pair
    sa, sb = p.solicited_pair()
    with raises_errno(errno.EDESTADDRREQ):
        sa.oob_sendmsg([b"x"])
    with raises_errno(errno.EDESTADDRREQ):
        sa.oob_sendmsg([b"x"], flags=MSG_DONTWAIT)
    for bad in (("0.0.0.0", 6000), (B_IP, 0), ("", 6000)):
        with raises_errno(errno.EINVAL):
            sa.oob_sendmsg([b"x"], address=bad)
    for bad in (("not-an-ip", 6000), (B_IP,), "192.0.2.2", (B_IP, -1), (B_IP, 65536)):
        with raises_errno(errno.EINVAL):
            sa.oob_sendmsg([b"x"], address=bad)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(10, flags=MSG_DONTWAIT)


def test_emsgsize_and_largest_datagram(pair):
    sa, sb = pair.solicited_pair()
    sb.setsockopt(SOL_SOCKET, SO_RCVBUF, 1 << 20)
    with raises_errno(errno.EMSGSIZE):
        sa.oob_sendmsg([bytes(65508)], address=(B_IP, 6000))
    with raises_errno(errno.EMSGSIZE):
        sa.oob_sendmsg([bytes(40000), bytes(25508)], address=(B_IP, 6000))
    biggest = bytes(i * 7 & 0xFF for i in range(65507))
    assert sa.oob_sendmsg([biggest[:1000], biggest[1000:]], address=(B_IP, 6000)) == 65507
    data, _, flags, _ = sb.oob_recvmsg(70000, timeout=5)
    assert data == biggest and flags == 0
    with raises_errno(errno.EWOULDBLOCK):              # the refused ones never left
        sb.oob_recvmsg(10, flags=MSG_DONTWAIT)


def test_zero_length_datagram_delivered(pair):
    sa, sb = pair.solicited_pair()
    assert sa.oob_sendmsg([b""], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 0
    assert sa.oob_sendmsg([], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 0
    for _ in range(2):
        data, _, flags, addr = sb.oob_recvmsg(10, timeout=5)
        assert data == b"" and flags == 0 and addr == sa.getsockname()


def test_recv_would_block_and_timeouts(pair):
    p = pair
    sb = p.udp(p.B, (B_IP, 6000))
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(10, flags=MSG_DONTWAIT)
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg(10, timeout=0.02)
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg(10, abs_timeout_ns=time.monotonic_ns() + 20_000_000)
    with raises_errno(errno.ETIMEDOUT):                # an absolute time already past
        sb.oob_recvmsg(10, abs_timeout_ns=time.monotonic_ns() - 1)
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg_into([bytearray(10)], timeout=0.0)
    with raises_errno(errno.EINVAL):
        sb.oob_recvmsg(10, timeout=-1)
    sb.setblocking(False)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(10)
    with raises_errno(errno.EWOULDBLOCK):
        sb.oob_recvmsg(10, timeout=1)                 # non-blocking wins over a timeout
    sb.setblocking(True)
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg(10, timeout=0.01)


def test_blocked_receiver_gets_datagram_and_close_wakes_it(pair):
    p = pair
    sa, sb = p.solicited_pair()
    waiting = Runner(sb.oob_recvmsg, 100)
    waiting.start()
    waiting.started_call.wait(5)
    sa.oob_sendmsg([b"wake"], address=(B_IP, 6000))
    waiting.finish()
    assert waiting.error is None and waiting.result[0] == b"wake"
    doomed = p.udp(p.B, (B_IP, 6100))
    waiting = Runner(doomed.oob_recvmsg, 100)
    waiting.start()
    waiting.started_call.wait(5)
    doomed.close()
    waiting.finish()
    assert isinstance(waiting.error, OSError) and waiting.error.errno == errno.EBADF


def test_unbound_sender_is_autobound(pair):
    p = pair
    sb = p.udp(p.B, (B_IP, 6000))
    sa = p.udp(p.A)
    p.A.solicit(sa, (B_IP, 0))
    sa.oob_sendmsg([b"x"], address=(B_IP, 6000))
    _, _, _, (host, port) = sb.oob_recvmsg(10, timeout=5)
    assert host == A_IP and port == sa.getsockname()[1] != 0


def test_datagram_for_unbound_port_dropped_and_counted(pair):
    sa, sb = pair.solicited_pair()
    before = extra(pair.B, pair.pb)["rx_no_receiver"]
    sa.oob_sendmsg([b"nobody"], address=(B_IP, 6999))
    sa.oob_sendmsg([b"marker"], address=(B_IP, 6000))
    assert sb.oob_recvmsg(10, timeout=5)[0] == b"marker"
    assert extra(pair.B, pair.pb)["rx_no_receiver"] == before + 1


# -- packet sockets ------------------------------------------------------------------------------
def _frame(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def test_packet_socket_send_errors(pair):
    p = pair
    raw = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_TEST))
    frame = _frame(p.link.b.mac, p.link.a.mac, ETH_P_TEST, bytes(46))
    with raises_errno(errno.ENXIO):                   # neither an address nor a binding
        raw.oob_sendmsg([frame])
    with raises_errno(errno.ENXIO):                   # not an oob port
        raw.oob_sendmsg([frame], address=("nosuchif0", ETH_P_TEST))
    dev = (p.link.a.name, ETH_P_TEST)
    with raises_errno(errno.EINVAL):                  # not a full Ethernet header
        raw.oob_sendmsg([frame[:13]], address=dev)
    with raises_errno(errno.EMSGSIZE):                # beyond MTU + header
        raw.oob_sendmsg([frame[:14] + bytes(1501)], address=dev)
    with raises_errno(errno.EINVAL):
        raw.oob_sendmsg([frame], address=dev, flags=pysocket.MSG_OOB)
    assert raw.oob_sendmsg([frame[:14] + bytes(1500)], address=dev) == 1514
    assert raw.oob_sendmsg([frame[:14]], address=dev, flags=MSG_DONTWAIT) == 14
    with raises_errno(errno.EINVAL):                  # bind needs an enabled oob port
        raw.bind(("nosuchif0", ETH_P_TEST))
    with raises_errno(errno.EINVAL):
        raw.bind((p.link.a.name,))
    raw.bind(dev)
    assert raw.oob_sendmsg([frame]) == len(frame)     # the device comes from the binding
    raw.close()


def test_packet_socket_receives_whole_frame_and_address(pair):
    p = pair
    tx = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_TEST))
    rx = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_TEST))
    dev = (p.link.a.name, ETH_P_TEST)
    frame = _frame(p.link.b.mac, p.link.a.mac, ETH_P_TEST, b"payload" + bytes(39))
    assert tx.oob_sendmsg([frame], address=dev) == 60
    data, _, flags, addr = rx.oob_recvmsg(2000, timeout=5)
    assert data == frame and flags == 0
    assert addr == (p.link.b.name, ETH_P_TEST, PACKET_HOST, 1, p.link.a.mac)
    bcast = _frame(b"\xff" * 6, p.link.a.mac, ETH_P_TEST, bytes(46))
    tx.oob_sendmsg([bcast], address=dev)
    data, _, _, addr = rx.oob_recvmsg(2000, timeout=5)
    assert data == bcast and addr[2] == PACKET_BROADCAST
    tx.oob_sendmsg([frame], address=dev)
    data, _, flags, _ = rx.oob_recvmsg(20, timeout=5)
    assert data == frame[:20] and flags & MSG_TRUNC
    tx.close()
    rx.close()


def test_packet_socket_eth_p_all_gets_a_copy_udp_still_delivered(pair):
    p = pair
    sa, sb = p.solicited_pair()
    tap = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    sa.oob_sendmsg([b"to udp"], address=(B_IP, 6000))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"to udp"
    frame, _, _, addr = tap.oob_recvmsg(2000, timeout=5)
    assert frame[0:6] == p.link.b.mac and frame[6:12] == p.link.a.mac
    assert frame[12:14] == b"\x08\x00" and b"to udp" in frame
    assert addr[1] == ETH_P_IP and addr[2] == PACKET_HOST and addr[4] == p.link.a.mac
    # frames not for us are seen by the tap (PACKET_OTHERHOST) but not by IPv4
    raw = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    other = _frame(b"\x02\x00\x00\x00\x00\x99", p.link.a.mac, ETH_P_TEST, bytes(46))
    raw.oob_sendmsg([other], address=(p.link.a.name, ETH_P_ALL))
    data, _, _, addr = tap.oob_recvmsg(2000, timeout=5)
    assert data == other and addr[2] == PACKET_OTHERHOST
    tap.close()
    raw.close()


def test_packet_socket_specific_ethertype_consumes_frame(pair):
    p = pair
    sa, sb = p.solicited_pair()
    ip_listener = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_IP))
    tap = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    sa.oob_sendmsg([b"taken"], address=(B_IP, 6000))
    frame, _, _, addr = ip_listener.oob_recvmsg(2000, timeout=5)
    assert b"taken" in frame and addr[1] == ETH_P_IP
    assert b"taken" in tap.oob_recvmsg(2000, timeout=5)[0]      # taps still get their copy
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg(100, timeout=0.1)                         # UDP never saw it
    ip_listener.close()
    sa.oob_sendmsg([b"free again"], address=(B_IP, 6000))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"free again"
    tap.close()


def test_packet_socket_bound_to_port_and_proto(pair):
    p = pair
    rx = p.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, 0)        # proto 0: nothing until bound
    tx = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_TEST))
    dev = (p.link.a.name, ETH_P_TEST)
    frame = _frame(p.link.b.mac, p.link.a.mac, ETH_P_TEST, bytes(46))
    tx.oob_sendmsg([frame], address=dev)
    with raises_errno(errno.ETIMEDOUT):
        rx.oob_recvmsg(100, timeout=0.1)
    rx.bind((p.link.b.name, ETH_P_TEST))
    assert rx.getsockname()[:2] == (p.link.b.name, ETH_P_TEST)
    tx.oob_sendmsg([frame], address=dev)
    assert rx.oob_recvmsg(100, timeout=5)[0] == frame
    tx.close()
    rx.close()


# -- options -------------------------------------------------------------------------------------
def _linux_doubled(option: int, value: int) -> int:
    with pysocket.socket(AF_INET, SOCK_DGRAM) as k:
        k.setsockopt(SOL_SOCKET, option, value)
        return k.getsockopt(SOL_SOCKET, option)


@pytest.mark.parametrize("value", [0, 1, 1000, 1152, 1153, 2304, 5000, 10000, 100000])
def test_rcvbuf_sndbuf_doubling_rule(stacks, value):
    s = stacks()
    u = s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    u.oob_setsockopt(SOL_SOCKET, SO_RCVBUF, value)
    expected_rcv = max(2 * value, 2304)
    assert u.getsockopt(SOL_SOCKET, SO_RCVBUF) == expected_rcv
    assert u.oob_getsockopt(SOL_SOCKET, SO_RCVBUF) == expected_rcv
    u.setsockopt(SOL_SOCKET, SO_SNDBUF, value)
    expected_snd = max(2 * value, 4608)
    assert u.oob_getsockopt(SOL_SOCKET, SO_SNDBUF) == expected_snd
    assert u.getsockopt(SOL_SOCKET, SO_SNDBUF, 4) == expected_snd.to_bytes(4, "little")
    if value <= 100000:        # below the host's rmem_max/wmem_max: Linux agrees
        assert expected_rcv == _linux_doubled(SO_RCVBUF, value)
        assert expected_snd == _linux_doubled(SO_SNDBUF, value)
    u.setsockopt(SOL_SOCKET, SO_RCVBUF, (value).to_bytes(4, "little"))
    assert u.oob_getsockopt(SOL_SOCKET, SO_RCVBUF) == expected_rcv
    u.close()


def test_unknown_options(stacks):
    s = stacks()
    u = s.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    with raises_errno(errno.EINVAL):
        u.oob_setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1)
    with raises_errno(errno.EINVAL):
        u.oob_getsockopt(SOL_SOCKET, SO_KEEPALIVE)
    with raises_errno(errno.EINVAL):
        u.oob_setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
    # in-band, a standard option is accepted as a genuine socket accepts it (issue 8)...
    u.setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1)
    assert u.getsockopt(SOL_SOCKET, SO_KEEPALIVE) == 1
    # ...and one of another protocol is not (Linux: ENOPROTOOPT for TCP options on UDP)
    with raises_errno(errno.ENOPROTOOPT):
        u.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
    with raises_errno(errno.ENOPROTOOPT):
        u.getsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY)
    # SO_TIMESTAMP_OOB is reachable both ways
    u.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, 3)
    assert u.oob_getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == 3
    u.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, 0)
    assert u.getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == 0
    u.close()


def test_rcvbuf_bounds_the_receive_queue(pair):
    p = pair
    sa, sb = p.solicited_pair()
    sb.setsockopt(SOL_SOCKET, SO_RCVBUF, 1)          # the floor: 2304 bytes
    before = extra(p.B, p.pb)["rx_sock_full"]
    for _ in range(20):
        sa.oob_sendmsg([bytes(500)], address=(B_IP, 6000))
    marker = p.udp(p.B, (B_IP, 6001))           # RX is in order: once it is in, all were
    sa.oob_sendmsg([b"m"], address=(B_IP, 6001))
    assert marker.oob_recvmsg(10, timeout=5)[0] == b"m"
    got = 0
    while True:
        try:
            sb.oob_recvmsg(1000, flags=MSG_DONTWAIT)
        except BlockingIOError:
            break
        got += 1
    assert 1 <= got < 20
    assert extra(p.B, p.pb)["rx_sock_full"] - before == 20 - got

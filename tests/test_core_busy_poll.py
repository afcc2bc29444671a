"""Run-to-completion receive: busy polling (SO_BUSY_POLL) from the receiver's own thread."""
import errno
import socket as pysocket
import threading

from virtual_fixtures import A_IP, B_IP, make_pair, pair, raises_errno, stacks, wait_until  # noqa: F401

from evlnet import MSG_DONTWAIT, SOL_SOCKET
from evlnet.sockets.base import SO_BUSY_POLL


class _Release:
    def __init__(self, port) -> None:
        self.port = port

    def set(self) -> None:
        self.port.core.pause_rx_thread(False)


def park_rx_thread(port, monkeypatch):
    """Keep the port's RX thread asleep (the core's test hook): only a busy poller can consume
    frames. Returns an object whose ``set()`` lets the thread run again."""
    port.core.pause_rx_thread(True)
    assert wait_until(lambda: port.core.rx_thread_parked)
    return _Release(port)


def test_busy_poller_receives_while_rx_thread_sleeps(make_pair, monkeypatch):
    p = make_pair()
    sa, sb = p.solicited_pair()
    park_rx_thread(p.pb, monkeypatch)
    sb.setsockopt(SOL_SOCKET, SO_BUSY_POLL, 200_000)
    assert sb.getsockopt(SOL_SOCKET, SO_BUSY_POLL) == 200_000
    for i in range(50):
        sa.oob_sendmsg([b"n%d" % i], address=(B_IP, 6000))
        assert sb.oob_recvmsg(100, timeout=5)[0] == b"n%d" % i
    assert p.pb.counters.rx_packets >= 50


def test_without_busy_poll_a_sleeping_rx_thread_delivers_nothing(make_pair, monkeypatch):
    p = make_pair(b_settings={"rx_wait_in_device": False})
    sa, sb = p.solicited_pair()
    release = park_rx_thread(p.pb, monkeypatch)
    sa.oob_sendmsg([b"late"], address=(B_IP, 6000))
    with raises_errno(errno.ETIMEDOUT):
        sb.oob_recvmsg(100, timeout=0.1)
    with raises_errno(errno.EWOULDBLOCK):           # DONTWAIT never busy polls
        sb.setsockopt(SOL_SOCKET, SO_BUSY_POLL, 100_000)
        sb.oob_recvmsg(100, flags=MSG_DONTWAIT)
    release.set()


def test_a_blocked_receiver_waits_in_the_device(make_pair, monkeypatch):
    """With rx_wait_in_device (the default) a blocked receiver runs the RX processing itself
    when a frame comes: it receives even with the RX thread parked, and the datagram is not
    late (it was processed by the receiver, not by a thread that never runs)."""
    p = make_pair()
    sa, sb = p.solicited_pair()
    release = park_rx_thread(p.pb, monkeypatch)
    try:
        for i in range(20):
            sa.oob_sendmsg([b"direct %d" % i], address=(B_IP, 6000))
            assert sb.oob_recvmsg(100, timeout=5)[0] == b"direct %d" % i
        assert p.pb.core.rx_thread_parked                     # nobody else consumed them
    finally:
        release.set()


def test_rx_thread_and_busy_poller_keep_order_exactly_once(make_pair):
    p = make_pair(b_settings={"busy_poll_us": 50, "rx_poolsz": 4096})
    sa, sb = p.solicited_pair()
    assert sb.getsockopt(SOL_SOCKET, SO_BUSY_POLL) == 50
    sb.setsockopt(SOL_SOCKET, pysocket.SO_RCVBUF, 1 << 21)    # room for all 2000: no drops
    got = []

    def receive():
        for _ in range(2000):
            got.append(int(sb.oob_recvmsg(100, timeout=5)[0]))

    t = threading.Thread(target=receive)
    t.start()
    for i in range(2000):
        sa.oob_sendmsg([b"%d" % i], address=(B_IP, 6000))
    t.join(30)
    assert got == list(range(2000))
    assert p.pb.counters.rx_sock_full == 0


def test_negative_busy_poll_is_einval(pair):
    s = pair.B.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM | 0x40000000)
    with raises_errno(errno.EINVAL):
        s.setsockopt(SOL_SOCKET, SO_BUSY_POLL, -1)

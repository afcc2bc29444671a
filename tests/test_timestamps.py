"""Timestamping (issue #3): SO_TIMESTAMP_OOB, RX iotimes as control data, the TX ring read with
MSG_TIMESTAMP — on two stacks joined by the embedded virtual link (no root needed).

What is asserted is ordering (device <= queuing <= delivery on RX, delivery <= queuing <= device
on TX), zero / non-zero per requested point, record counts, flags and exact errnos; never a
duration.
"""
from __future__ import annotations

import errno
import itertools
import socket as pysocket
import struct
import threading
import time

import pytest
from virtual_fixtures import wait_until

from evlnet import (
    AF_INET,
    AF_PACKET,
    EVL_SOF_TIMESTAMP_DEVICE,
    EVL_SOF_TIMESTAMP_QUEUING,
    EVL_SOF_TIMESTAMP_RX,
    EVL_SOF_TIMESTAMP_TX,
    EVL_SOF_TIMESTAMPS,
    EVL_TX_TSRING_SIZE,
    MSG_DONTWAIT,
    MSG_TIMESTAMP,
    MSG_TRUNC,
    SO_TIMESTAMP_OOB,
    SOCK_DGRAM,
    SOCK_OOB,
    SOCK_RAW,
    SOL_SOCKET,
    IoTimes,
    Stack,
    VirtualLink,
)
from evlnet.core.timestamps import IOTIMES_SIZE
from evlnet.datapath import _core


def rx_stamping_count() -> int:
    """Sockets with RX stamping on, process-wide (the core's EVL evl_net_rx_timestamping)."""
    return _core.Stack.rx_stamping_count()

RX, TX, DEV, QUE = (EVL_SOF_TIMESTAMP_RX, EVL_SOF_TIMESTAMP_TX, EVL_SOF_TIMESTAMP_DEVICE,
                    EVL_SOF_TIMESTAMP_QUEUING)
A_IP, B_IP = "192.0.2.1", "192.0.2.2"
ETH_P_TEST = 0x88B5          # IEEE local experimental EtherType
_names = itertools.count(1)


# -- fixtures ---------------------------------------------------------------------------------
class Net:
    """Stacks A and B on one virtual link; A may send to B without demotion."""

    def __init__(self) -> None:
        n = next(_names)
        self.link = VirtualLink(f"tsa{n}", f"tsb{n}")
        self.A = Stack(f"tsA{n}")
        self.B = Stack(f"tsB{n}")
        self.A.add_interface(self.link.a, f"{A_IP}/24")
        self.B.add_interface(self.link.b, f"{B_IP}/24")
        self.pa = self.A.enable_port(self.link.a.name)
        self.pb = self.B.enable_port(self.link.b.name)
        self.sa = self.udp(self.A, (A_IP, 0))
        self.sb = self.udp(self.B, ("0.0.0.0", 6000))
        self.A.solicit(self.sa, (B_IP, 0))

    def udp(self, stack, bind):
        s = stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        s.bind(bind)
        return s

    def packet(self, stack, port, ethertype=ETH_P_TEST):
        s = stack.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ethertype))
        s.bind((port.name, ethertype))
        return s

    def frame(self, payload: bytes = b"raw", ethertype=ETH_P_TEST) -> bytes:
        return self.link.b.mac + self.link.a.mac + struct.pack("!H", ethertype) + payload

    def send(self, payload: bytes = b"ping", sock=None) -> int:
        return (sock or self.sa).oob_sendmsg([payload], address=(B_IP, 6000))

    def close(self) -> None:
        self.A.close()
        self.B.close()


@pytest.fixture
def net():
    n = Net()
    try:
        yield n
    finally:
        n.close()


def collect(sock, count: int, timeout: float = 5.0) -> tuple[list[IoTimes], list[bool]]:
    """Blocking collections until *count* TX records are in; (records, MSG_TRUNC per call)."""
    records: list[IoTimes] = []
    truncs: list[bool] = []
    while len(records) < count:
        got, trunc = sock.oob_collect_tx_timestamps(count - len(records), timeout=timeout)
        records += got
        truncs.append(trunc)
    return records, truncs




def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kw)
    return info.value.errno


def rx_record(anc) -> IoTimes:
    assert len(anc) == 1
    level, kind, data = anc[0]
    assert (level, kind, len(data)) == (SOL_SOCKET, SO_TIMESTAMP_OOB, IOTIMES_SIZE)
    return IoTimes.unpack(data)


class Collector(threading.Thread):
    def __init__(self, fn, *args, **kw) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.kw = fn, args, kw
        self.result = self.error = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kw)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def finish(self):
        self.join(10)
        assert not self.is_alive(), "collector still blocked"
        return self


# -- IoTimes and the ring ---------------------------------------------------------------------
def test_iotimes_layout_roundtrip():
    rec = IoTimes(1, 2**64 - 1, 3)
    data = rec.pack()
    assert len(data) == IOTIMES_SIZE == 24
    assert data == struct.pack("=QQQ", 1, 2**64 - 1, 3)   # struct evl_net_iotimes, native order
    assert IoTimes.unpack(data) == rec
    assert IoTimes.unpack(bytearray(data) + b"junk") == rec
    recs = [IoTimes(i, i + 1, i + 2) for i in range(5)]
    blob = IoTimes.pack_array(recs)
    assert len(blob) == 5 * 24
    assert IoTimes.unpack_array(blob) == recs
    assert IoTimes.unpack_array(memoryview(blob)) == recs
    assert IoTimes.unpack_array(b"") == []
    assert IoTimes() == IoTimes(0, 0, 0)
    with pytest.raises(ValueError):
        IoTimes.unpack(data[:23])
    with pytest.raises(ValueError):
        IoTimes.unpack_array(blob[:-1])


# -- SO_TIMESTAMP_OOB -------------------------------------------------------------------------
def test_option_defaults_to_off(net):
    assert net.sa.getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == 0
    assert net.sa.oob_getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == 0


@pytest.mark.parametrize("setter,getter", [("setsockopt", "oob_getsockopt"),
                                           ("oob_setsockopt", "getsockopt"),
                                           ("setsockopt", "getsockopt"),
                                           ("oob_setsockopt", "oob_getsockopt")])
def test_option_set_one_way_read_the_other(net, setter, getter):
    s = net.sa
    for mask in (RX, TX | DEV, EVL_SOF_TIMESTAMPS, 0, QUE):
        getattr(s, setter)(SOL_SOCKET, SO_TIMESTAMP_OOB, mask)
        assert getattr(s, getter)(SOL_SOCKET, SO_TIMESTAMP_OOB) == mask
        assert getattr(s, getter)(SOL_SOCKET, SO_TIMESTAMP_OOB, 4) == struct.pack("i", mask)
    # C form: the value as an int buffer
    getattr(s, setter)(SOL_SOCKET, SO_TIMESTAMP_OOB, struct.pack("i", TX | RX))
    assert getattr(s, getter)(SOL_SOCKET, SO_TIMESTAMP_OOB) == TX | RX


@pytest.mark.parametrize("value", [0x10, 0x1F, 0x100, -1, 1 << 31])
@pytest.mark.parametrize("setter", ["setsockopt", "oob_setsockopt"])
def test_option_unknown_bits_einval(net, setter, value):
    s = net.sa
    s.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    assert errno_of(getattr(s, setter), SOL_SOCKET, SO_TIMESTAMP_OOB, value) == errno.EINVAL
    assert s.getsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB) == TX         # unchanged


def test_option_short_buffer_and_closed_socket(net):
    s = net.sa
    assert errno_of(s.oob_setsockopt, SOL_SOCKET, SO_TIMESTAMP_OOB, b"\x01") == errno.EINVAL
    assert errno_of(s.oob_getsockopt, SOL_SOCKET, SO_TIMESTAMP_OOB, 2) == errno.EINVAL
    s.close()
    assert errno_of(s.setsockopt, SOL_SOCKET, SO_TIMESTAMP_OOB, TX) == errno.EBADF
    assert errno_of(s.oob_getsockopt, SOL_SOCKET, SO_TIMESTAMP_OOB) == errno.EBADF


@pytest.mark.parametrize("setter", ["setsockopt", "oob_setsockopt"])
def test_setting_the_option_resets_the_ring(net, setter):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    for i in range(5):
        net.send(b"%d" % i)
    assert wait_until(lambda: sa.core_socket.tx_records == 5)
    getattr(sa, setter)(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)   # same value: reset
    assert errno_of(sa.oob_recvmsg, 240, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EWOULDBLOCK
    net.send(b"after")
    recs, truncs = collect(sa, 1)
    assert len(recs) == 1 and truncs == [False]


def test_reset_also_forgets_an_overflow(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    for i in range(EVL_TX_TSRING_SIZE + 3):
        net.send(b"%d" % i)
    assert wait_until(lambda: sa.core_socket.tx_records_dropped == 3)
    sa.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    net.send(b"x")
    recs, truncs = collect(sa, 1)
    assert truncs == [False]


def test_rx_stamping_users_count(net):
    base = rx_stamping_count()
    net.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX)
    net.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX | DEV)       # still one user
    assert rx_stamping_count() == base + 1
    net.sb.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    assert rx_stamping_count() == base + 2
    net.sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    assert rx_stamping_count() == base + 1
    net.sb.close()
    assert rx_stamping_count() == base


# -- RX ---------------------------------------------------------------------------------------
def test_rx_all_points_ordered(net):
    net.sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    for i in range(20):
        before = time.monotonic_ns()
        net.send(b"data %d" % i)
        data, anc, flags, addr = net.sb.oob_recvmsg(100, 24, timeout=5)
        after = time.monotonic_ns()
        assert data == b"data %d" % i and flags == 0
        io = rx_record(anc)
        assert before <= io.device_time <= io.queuing_time <= io.delivery_time <= after


@pytest.mark.parametrize("mask", range(16))
def test_rx_points_per_mask(net, mask):
    net.sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, mask)
    net.send(b"hello")
    data, anc, _, _ = net.sb.oob_recvmsg(100, 64, timeout=5)
    assert data == b"hello"
    if not mask & RX:
        assert anc == []                          # TX-only and point-only masks stamp no RX
        return
    io = rx_record(anc)
    assert io.delivery_time > 0                   # always taken when RX is on
    assert (io.device_time > 0) == bool(mask & DEV)
    assert (io.queuing_time > 0) == bool(mask & QUE)
    if mask & DEV:
        assert io.device_time <= io.delivery_time
    if mask & QUE:
        assert io.queuing_time <= io.delivery_time
        if mask & DEV:
            assert io.device_time <= io.queuing_time


def test_rx_ancdata_absent_when_off_present_when_on(net):
    sb = net.sb
    net.send(b"off")
    assert sb.oob_recvmsg(100, 24, timeout=5)[1] == []
    sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX)
    net.send(b"on")
    anc = sb.oob_recvmsg(100, 24, timeout=5)[1]
    assert len(anc) == 1 and len(anc[0][2]) == 24
    # into-form: the same control data
    net.send(b"on2")
    buf = bytearray(100)
    n, anc, flags, addr = sb.oob_recvmsg_into([buf], 24, timeout=5)
    assert bytes(buf[:n]) == b"on2" and addr == (A_IP, net.sa.getsockname()[1])
    rx_record(anc)
    # no control buffer (ancbufsize 0, EVL: NULL msg_control): data, no control data, no error
    net.send(b"noctl")
    assert net.sb.oob_recvmsg(100, 0, timeout=5)[:2] == (b"noctl", [])
    sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, 0)
    net.send(b"off again")
    assert sb.oob_recvmsg(100, 24, timeout=5)[1] == []


def test_rx_datagram_queued_before_stamping_has_no_stamps(net):
    assert rx_stamping_count() == 0, "a socket of another test still has RX stamping on"
    sb = net.sb
    net.send(b"early")
    assert wait_until(lambda: len(sb.core_socket))
    sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    data, anc, _, _ = sb.oob_recvmsg(100, 24, timeout=5)
    assert data == b"early" and anc == []          # EVL: msg_controllen set to 0
    net.send(b"late")
    data, anc, _, _ = sb.oob_recvmsg(100, 24, timeout=5)
    assert data == b"late"
    rx_record(anc)


@pytest.mark.parametrize("ancbufsize", [1, 8, 23])
def test_rx_short_control_buffer_einval(net, ancbufsize):
    sb = net.sb
    sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX)
    net.send(b"keep me")
    assert wait_until(lambda: len(sb.core_socket))
    assert errno_of(sb.oob_recvmsg, 100, ancbufsize, timeout=5) == errno.EINVAL
    assert errno_of(sb.oob_recvmsg_into, [bytearray(100)], ancbufsize) == errno.EINVAL
    # the datagram was not consumed by the failed calls
    data, anc, _, _ = sb.oob_recvmsg(100, 24, timeout=5)
    assert data == b"keep me"
    rx_record(anc)
    # with RX stamping off a short control buffer is simply not filled
    sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    net.send(b"x")
    assert sb.oob_recvmsg(100, ancbufsize, timeout=5)[:2] == (b"x", [])


def test_rx_reassembled_datagram_one_record(net):
    net.sb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    big = bytes(range(256)) * 16                  # 4096 bytes: 3 fragments at MTU 1500
    net.send(big)
    data, anc, _, _ = net.sb.oob_recvmsg(70000, 24, timeout=5)
    assert data == big
    io = rx_record(anc)
    assert 0 < io.device_time <= io.queuing_time <= io.delivery_time


# -- TX ---------------------------------------------------------------------------------------
def test_tx_all_points_ordered(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    before = time.monotonic_ns()
    for i in range(20):
        net.send(b"%d" % i)
    recs, truncs = collect(sa, 20)
    after = time.monotonic_ns()
    assert not any(truncs)
    prev = before
    for io in recs:                               # one per datagram, in transmit order
        assert prev <= io.delivery_time <= io.queuing_time <= io.device_time <= after
        prev = io.delivery_time


@pytest.mark.parametrize("mask", range(16))
def test_tx_points_per_mask(net, mask):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, mask)
    net.send(b"hello")
    assert net.sb.oob_recvmsg(100, timeout=5)[0] == b"hello"
    if not mask & TX:
        assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EINVAL
        assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP) == errno.EINVAL
        assert sa.core_socket.tx_records == 0
        return
    data, anc, flags, addr = sa.oob_recvmsg(24 * 16, 0, MSG_TIMESTAMP, timeout=5)
    assert len(data) == 24 and anc == [] and flags == 0 and addr is None
    (io,) = IoTimes.unpack_array(data)
    assert io.delivery_time > 0                   # always taken when TX is on
    assert (io.queuing_time > 0) == bool(mask & QUE)
    assert (io.device_time > 0) == bool(mask & DEV)
    points = [t for t in (io.delivery_time, io.queuing_time, io.device_time) if t]
    assert points == sorted(points)


def test_tx_collect_as_many_as_fit(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    for i in range(10):
        net.send(b"%d" % i)
    assert wait_until(lambda: sa.core_socket.tx_records == 10)
    data, _, flags, _ = sa.oob_recvmsg(24 * 4 + 23, 0, MSG_TIMESTAMP)   # room for 4
    assert len(data) == 96 and flags == 0
    buf = bytearray(24 * 16)
    n, anc, flags, _ = sa.oob_recvmsg_into([buf], 0, MSG_TIMESTAMP | MSG_DONTWAIT)
    assert n == 6 * 24 and anc == [] and flags == 0
    times = [r.delivery_time for r in IoTimes.unpack_array(data + bytes(buf[:n]))]
    assert times == sorted(times) and all(times)
    assert errno_of(sa.oob_recvmsg_into, [buf], 0,
                    MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EWOULDBLOCK


def test_tx_records_straddle_buffers(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    net.send(b"a")
    net.send(b"b")
    assert wait_until(lambda: sa.core_socket.tx_records == 2)
    parts = [bytearray(10), bytearray(30), bytearray(9)]      # 49 bytes: room for 2 records
    n, _, _, _ = sa.oob_recvmsg_into(parts, 0, MSG_TIMESTAMP)
    assert n == 48
    recs = IoTimes.unpack_array(bytes(b"".join(parts))[:48])
    assert len(recs) == 2
    for io in recs:
        assert 0 < io.delivery_time <= io.queuing_time <= io.device_time


def test_tx_errors(net):
    sa = net.sa
    # TX stamping off (never set, then RX only)
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(sa.oob_collect_tx_timestamps) == errno.EINVAL
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX | DEV | QUE)
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EINVAL
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    # less room than one record, even with records queued
    net.send(b"x")
    assert wait_until(lambda: sa.core_socket.tx_records == 1)
    for size in (0, 1, 23):
        assert errno_of(sa.oob_recvmsg, size, 0, MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(sa.oob_recvmsg_into, [bytearray(12), bytearray(11)], 0,
                    MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(sa.oob_recvmsg_into, [], 0, MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(sa.oob_collect_tx_timestamps, 0) == errno.EINVAL
    assert sa.core_socket.tx_records == 1
    assert len(sa.oob_collect_tx_timestamps(4, MSG_DONTWAIT)[0]) == 1
    # nothing there: EWOULDBLOCK with MSG_DONTWAIT or a non-blocking socket, ETIMEDOUT with a
    # timeout (relative or EVL's absolute form)
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EWOULDBLOCK
    assert errno_of(sa.oob_collect_tx_timestamps, 1, MSG_DONTWAIT) == errno.EWOULDBLOCK
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP, timeout=0.01) == errno.ETIMEDOUT
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP,
                    abs_timeout_ns=time.monotonic_ns()) == errno.ETIMEDOUT
    sa.setblocking(False)
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP) == errno.EWOULDBLOCK
    sa.setblocking(True)
    # flags other than MSG_DONTWAIT|MSG_TIMESTAMP
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_TRUNC) == errno.EINVAL
    assert errno_of(sa.oob_collect_tx_timestamps, 1, pysocket.MSG_PEEK) == errno.EINVAL
    sa.close()
    assert errno_of(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EBADF


def test_tx_overflow_reported_once(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    total = EVL_TX_TSRING_SIZE + 22
    for i in range(total):
        net.send(b"%d" % i)
    assert wait_until(lambda: net.pa.stats().tx_packets >= total
                      and sa.core_socket.tx_records_dropped == 22)
    assert sa.core_socket.tx_records == EVL_TX_TSRING_SIZE
    recs, truncs = [], []
    while True:                                   # drain in chunks of 16
        try:
            got, trunc = sa.oob_collect_tx_timestamps(16, MSG_DONTWAIT)
        except BlockingIOError:
            break
        recs += got
        truncs.append(trunc)
    assert len(recs) == EVL_TX_TSRING_SIZE
    assert truncs == [True] + [False] * 7         # MSG_TRUNC on the first collection only
    times = [r.delivery_time for r in recs]
    assert times == sorted(times)
    net.send(b"more")                             # the ring works again, no stale MSG_TRUNC
    recs, truncs = collect(sa, 1)
    assert truncs == [False]
    # the binary form reports it too
    dropped = sa.core_socket.tx_records_dropped
    for i in range(EVL_TX_TSRING_SIZE + 1):
        net.send(b"%d" % i)
    assert wait_until(lambda: sa.core_socket.tx_records_dropped == dropped + 1)
    data, _, flags, _ = sa.oob_recvmsg(24 * 200, 0, MSG_TIMESTAMP)
    assert len(data) == 24 * EVL_TX_TSRING_SIZE and flags == MSG_TRUNC
    net.send(b"more")
    assert sa.oob_recvmsg(24, 0, MSG_TIMESTAMP, timeout=5)[2] == 0


def test_tx_fragmented_datagram_one_record(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    frames_before = net.pa.stats().tx_packets
    big = bytes(4096)                             # 3 IP fragments
    net.send(big)
    net.send(b"small")
    assert net.sb.oob_recvmsg(70000, timeout=5)[0] == big
    assert net.sb.oob_recvmsg(100, timeout=5)[0] == b"small"
    recs, _ = collect(sa, 2)
    assert net.pa.stats().tx_packets - frames_before == 4
    assert errno_of(sa.oob_recvmsg, 240, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EWOULDBLOCK
    for io in recs:
        assert 0 < io.delivery_time <= io.queuing_time <= io.device_time
    # in send order: the big datagram's record (from its last fragment) comes first
    assert recs[0].delivery_time < recs[1].delivery_time
    assert recs[0].device_time <= recs[1].device_time


# -- blocking collection -----------------------------------------------------------------------
def test_blocking_collection_woken_by_a_transmit(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    c = Collector(sa.oob_recvmsg, 24 * 16, 0, MSG_TIMESTAMP)        # no timeout: wait forever
    c.start()
    assert wait_until(lambda: sa.core_socket.waiters == 1), "collector did not block"
    assert c.is_alive()
    sender = threading.Thread(target=net.send, args=(b"wake",))
    sender.start()
    sender.join(5)
    c.finish()
    assert c.error is None, c.error
    data, _, flags, _ = c.result
    (io,) = IoTimes.unpack_array(data)
    assert 0 < io.delivery_time <= io.queuing_time <= io.device_time


def test_blocking_collection_with_deadline_woken_by_a_transmit(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX | DEV)
    c = Collector(sa.oob_collect_tx_timestamps, 4, timeout=30)
    c.start()
    assert wait_until(lambda: sa.core_socket.waiters == 1)
    net.send(b"wake")
    c.finish()
    assert c.error is None, c.error
    recs, trunc = c.result
    assert len(recs) == 1 and not trunc and recs[0].queuing_time == 0


def test_close_wakes_every_blocked_collector(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    collectors = [Collector(sa.oob_recvmsg, 24, 0, MSG_TIMESTAMP) for _ in range(3)]
    for c in collectors:
        c.start()
    assert wait_until(lambda: sa.core_socket.waiters == 3)
    sa.close()
    for c in collectors:
        c.finish()
        assert isinstance(c.error, OSError) and c.error.errno == errno.EBADF


def test_turning_tx_off_wakes_a_blocked_collector(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    c = Collector(sa.oob_collect_tx_timestamps, 1)
    c.start()
    assert wait_until(lambda: sa.core_socket.waiters == 1)
    sa.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX)
    c.finish()
    assert isinstance(c.error, OSError) and c.error.errno == errno.EINVAL


def test_two_collectors_share_the_records(net):
    sa = net.sa
    sa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    collectors = [Collector(sa.oob_collect_tx_timestamps, 1, timeout=10) for _ in range(2)]
    for c in collectors:
        c.start()
    assert wait_until(lambda: sa.core_socket.waiters == 2)
    net.send(b"1")
    net.send(b"2")
    got = []
    for c in collectors:
        c.finish()
        assert c.error is None, c.error
        got += c.result[0]
    assert len(got) == 2 and got[0] != got[1]


# -- packet sockets ----------------------------------------------------------------------------
def test_packet_socket_rx_and_tx(net):
    pa = net.packet(net.A, net.pa)
    pb = net.packet(net.B, net.pb)
    pa.oob_setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    pb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    frame = net.frame(b"raw" * 20)
    for _ in range(3):
        assert pa.oob_sendmsg([frame]) == len(frame)
        data, anc, _, addr = pb.oob_recvmsg(2048, 24, timeout=5)
        assert data == frame and addr[1] == ETH_P_TEST
        io = rx_record(anc)
        assert 0 < io.device_time <= io.queuing_time <= io.delivery_time
    recs, truncs = collect(pa, 3)
    assert not any(truncs)
    for io in recs:
        assert 0 < io.delivery_time <= io.queuing_time <= io.device_time
    # zeros where not asked; errors as for UDP
    pa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX)
    pb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, RX)
    pa.oob_sendmsg([frame])
    io = rx_record(pb.oob_recvmsg(2048, 24, timeout=5)[1])
    assert io.device_time == io.queuing_time == 0 < io.delivery_time
    (tx,), _ = collect(pa, 1)
    assert tx.device_time == tx.queuing_time == 0 < tx.delivery_time
    assert errno_of(pb.oob_recvmsg, 24, 0, MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(pa.oob_recvmsg, 23, 0, MSG_TIMESTAMP) == errno.EINVAL
    assert errno_of(pa.oob_recvmsg, 24, 0, MSG_TIMESTAMP | MSG_DONTWAIT) == errno.EWOULDBLOCK
    pa.oob_sendmsg([frame])
    assert errno_of(pb.oob_recvmsg, 2048, 12, timeout=5) == errno.EINVAL
    pb.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, 0)
    assert pb.oob_recvmsg(2048, 24, timeout=5)[1] == []


def test_packet_tap_gets_stamps_too(net):
    tap = net.packet(net.B, net.pb, ethertype=0x0003)           # ETH_P_ALL: a clone per frame
    tap.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, EVL_SOF_TIMESTAMPS)
    net.send(b"tapped")
    assert net.sb.oob_recvmsg(100, timeout=5)[0] == b"tapped"
    data, anc, _, _ = tap.oob_recvmsg(2048, 24, timeout=5)
    assert b"tapped" in data
    io = rx_record(anc)
    assert 0 < io.device_time <= io.queuing_time <= io.delivery_time


def test_packet_blocking_collection_woken_and_closed(net):
    pa = net.packet(net.A, net.pa)
    pa.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, TX | QUE)
    c = Collector(pa.oob_collect_tx_timestamps, 2)
    c.start()
    assert wait_until(lambda: pa.core_socket.waiters == 1)
    pa.oob_sendmsg([net.frame()])
    c.finish()
    assert c.error is None and len(c.result[0]) == 1 and c.result[0][0].device_time == 0
    c = Collector(pa.oob_collect_tx_timestamps, 2)
    c.start()
    assert wait_until(lambda: pa.core_socket.waiters == 1)
    pa.close()
    c.finish()
    assert c.error.errno == errno.EBADF

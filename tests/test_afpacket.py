"""AfPacketDevice against the real kernel: two namespaces joined by a veth pair.

The device drives one end (its thread entered that namespace only to create it); the kernel's own
UDP sockets on the other end are the peer. Root is needed (skip otherwise, fail under CI=true).
Only 192.0.2.0/24 and 198.51.100.0/24 addresses are used, inside namespaces made here.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from evlnet.core.buffers import BufferPool, PacketBuffer
from evlnet.drivers.afpacket import (
    AfPacketDevice, linux_interface_exists, parse_link_message,
)
from evlnet.testing import (
    Namespace, VethEnd, check_address, cleanup_leaked, in_netns, list_namespaces, netns,
    require_root, veth_pair, vlan, vlan_supported,
)

pytestmark = pytest.mark.root

DEV_IP = "192.0.2.1"
PEER_IP = "192.0.2.2"
PEER_CIDR = "192.0.2.2/24"
PORT = 7000


# ------------------------------------------------------------------------------------------
# frame helpers
# ------------------------------------------------------------------------------------------

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes, vlan_tci: int | None = None) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # UDP csum 0 is legal
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = dst_mac + src_mac
    if vlan_tci is not None:
        eth += struct.pack("!HH", 0x8100, vlan_tci)
    return eth + b"\x08\x00" + ip + udp


def parse_udp(frame: bytes) -> tuple[int, bytes] | None:
    """(dst port, payload) of an untagged Ethernet/IPv4/UDP frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0xF) * 4
    sport, dport, ulen = struct.unpack_from("!HHH", frame, 14 + ihl)
    return dport, bytes(frame[14 + ihl + 8:14 + ihl + ulen])


def wait_until(cond, timeout: float = 2.0) -> bool:
    """Poll *cond* (operstate changes reach IFF_RUNNING through linkwatch, asynchronously)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def frame_of(buf: PacketBuffer) -> bytes:
    return bytes(buf.data[buf.start:buf.end])


def collect(dev: AfPacketDevice, want: int, timeout: float = 3.0, port: int | None = PORT,
            limit: int = 16) -> list[PacketBuffer]:
    """Receive until *want* UDP frames to *port* arrived (others are released) or timeout."""
    got: list[PacketBuffer] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        batch: list[PacketBuffer] = []
        dev.receive(batch, limit, left)
        for buf in batch:
            parsed = parse_udp(frame_of(buf))
            if port is None or (parsed is not None and parsed[0] == port):
                got.append(buf)
            else:
                buf.release()
    return got


@contextmanager
def udp_socket(ns: Namespace, ip: str, port: int = 0):
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((ip, port))
        s.settimeout(2.0)
        yield s
    finally:
        s.close()


@dataclass
class AfpEnv:
    ns_dev: Namespace
    ns_peer: Namespace
    dev_end: VethEnd
    peer_end: VethEnd
    dev: AfPacketDevice
    pool: BufferPool


@contextmanager
def afp_setup(pool_size: int = 256, **dev_kw):
    require_root()
    with netns("afpdev") as a, netns("afppeer") as b, \
            veth_pair(a, b, addr_a=None, addr_b=PEER_CIDR) as (ea, eb):
        eb.add_neighbor(DEV_IP, ea.mac)       # the peer kernel needs no ARP reply from us
        with in_netns(a):
            dev = AfPacketDevice(ea.name, **dev_kw)
        pool = BufferPool(pool_size, 2048, "afp-test")
        try:
            dev.attach(pool)
            yield AfpEnv(a, b, ea, eb, dev, pool)
        finally:
            dev.close()


@pytest.fixture
def afp_env():
    with afp_setup() as env:
        yield env


# ------------------------------------------------------------------------------------------
# tests that need no root
# ------------------------------------------------------------------------------------------

def test_harness_refuses_foreign_addresses():
    for bad in ("10.0.0.1/24", "192.0.2.1/16", "8.8.8.8/32", "2001:db8::1/64"):
        with pytest.raises(ValueError):
            check_address(bad)
        with pytest.raises(ValueError):
            with veth_pair(None, None, addr_a=bad):
                pass
    check_address("203.0.113.7/24")
    check_address("198.51.100.9/28")


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("<HH", n, atype) + payload + b"\0" * ((4 - n % 4) % 4)


def test_parse_link_message_vlan():
    data = _nla(1, struct.pack("<H", 42)) + _nla(5, struct.pack("!H", 0x8100))
    info = _nla(1, b"vlan\0") + _nla(2 | 0x8000, data)
    attrs = _nla(3, b"veth0.42\0") + _nla(5, struct.pack("<I", 7)) + _nla(18 | 0x8000, info)
    body = struct.pack("<BxHiII", 0, 1, 9, 0, 0) + attrs
    msg = struct.pack("<IHHII", 16 + len(body), 16, 0, 1, 0) + body
    out = parse_link_message(msg)
    assert out == dict(ifname="veth0.42", kind="vlan", link=7, link_netnsid=None, vlan_id=42,
                       vlan_protocol=0x8100)
    err = struct.pack("<IHHII", 36, 2, 0, 1, 0) + struct.pack("<i", -errno.ENODEV) + bytes(16)
    with pytest.raises(OSError) as ei:
        parse_link_message(err)
    assert ei.value.errno == errno.ENODEV


# ------------------------------------------------------------------------------------------
# (a) receive
# ------------------------------------------------------------------------------------------

def test_receive_in_order_with_device_time(afp_env):
    env = afp_env
    dev = env.dev
    assert dev.ifindex == env.dev_end.ifindex and dev.mac == env.dev_end.mac and dev.mtu == 1500
    assert dev.is_up() and dev.vlan_id == 0 and not dev.oob_capable
    assert dev.link_kind == "veth" and dev.real_ifname is None and dev.real_ifindex == 0
    count = 60
    with udp_socket(env.ns_peer, PEER_IP) as s:
        sent_at = time.monotonic_ns()
        for i in range(count):
            s.sendto(struct.pack("!I", i) + bytes(i * 7), (DEV_IP, PORT))
    got = collect(dev, count)
    now = time.monotonic_ns()
    try:
        assert len(got) == count
        last = 0
        for i, buf in enumerate(got):
            frame = frame_of(buf)
            assert frame[0:6] == dev.mac and frame[6:12] == env.peer_end.mac
            dport, payload = parse_udp(frame)
            assert struct.unpack("!I", payload[:4])[0] == i         # in order
            assert buf.length == 14 + 20 + 8 + 4 + i * 7             # exact frame length
            assert last <= buf.device_time <= now                    # monotonic, not in the future
            assert buf.device_time >= sent_at - 1_000_000            # stamped after the send
            assert now - buf.device_time < 1_000_000_000             # close to now
            last = buf.device_time
    finally:
        for buf in got:
            buf.release()
    assert env.pool.free == env.pool.total
    packets, drops, _ = dev.read_kernel_stats()
    assert packets >= count and drops == 0 and dev.stats.kernel_drops == 0


def test_receive_latency(afp_env):
    """One datagram at a time: kernel send -> device_time -> receive() return."""
    env = afp_env
    to_dev, to_ret = [], []
    with udp_socket(env.ns_peer, PEER_IP) as s:
        for i in range(30):
            t0 = time.monotonic_ns()
            s.sendto(b"lat%d" % i, (DEV_IP, PORT))
            got = collect(env.dev, 1, timeout=1.0)
            t1 = time.monotonic_ns()
            assert len(got) == 1
            to_dev.append(got[0].device_time - t0)
            to_ret.append(t1 - t0)
            got[0].release()
    to_dev.sort()
    to_ret.sort()
    print(f"\nAF_PACKET RX latency (us): send->device_time median {to_dev[15] / 1e3:.1f} "
          f"max {to_dev[-1] / 1e3:.1f}; send->receive() return median {to_ret[15] / 1e3:.1f} "
          f"max {to_ret[-1] / 1e3:.1f}")
    assert to_dev[15] < 5_000_000          # the stamp is taken in the kernel, right away
    assert to_ret[15] < 50_000_000         # block retire timer (1 ms) plus scheduling


# ------------------------------------------------------------------------------------------
# (b) transmit
# ------------------------------------------------------------------------------------------

def test_transmit_reaches_kernel_socket(afp_env):
    env = afp_env
    with udp_socket(env.ns_peer, PEER_IP, 7100) as s:
        for i in range(5):
            payload = b"hello from evlnet %d" % i
            frame = udp_frame(env.dev.mac, env.peer_end.mac, DEV_IP, PEER_IP, 5555, 7100, payload)
            env.dev.transmit(memoryview(frame))
            data, (src, sport) = s.recvfrom(2048)
            assert (data, src, sport) == (payload, DEV_IP, 5555)
    assert env.dev.stats.tx_errors == 0
    # our own transmissions are not looped back into the RX ring (PACKET_IGNORE_OUTGOING)
    batch: list[PacketBuffer] = []
    assert env.dev.receive(batch, 16, 0.05) == 0


def test_transmit_oversized_counts_tx_error(afp_env):
    frame = udp_frame(afp_env.dev.mac, afp_env.peer_end.mac, DEV_IP, PEER_IP, 1, 2, bytes(3000))
    with pytest.raises(OSError) as ei:
        afp_env.dev.transmit(memoryview(frame))
    assert ei.value.errno == errno.EMSGSIZE
    assert afp_env.dev.stats.tx_errors == 1


# ------------------------------------------------------------------------------------------
# (c) pool exhaustion, ring overflow
# ------------------------------------------------------------------------------------------

def test_rx_nomem_when_pool_empty():
    with afp_setup(pool_size=2) as env:
        with udp_socket(env.ns_peer, PEER_IP) as s:
            for i in range(5):
                s.sendto(b"n%d" % i, (DEV_IP, PORT))
        held: list[PacketBuffer] = []
        deadline = time.monotonic() + 3
        while len(held) + env.dev.stats.rx_nomem < 5 and time.monotonic() < deadline:
            env.dev.receive(held, 16, 0.2)
        assert len(held) == 2 and env.dev.stats.rx_nomem == 3
        assert [parse_udp(frame_of(b))[1] for b in held] == [b"n0", b"n1"]
        for b in held:
            b.release()
        # buffers are back: the next frame gets one
        with udp_socket(env.ns_peer, PEER_IP) as s:
            s.sendto(b"again", (DEV_IP, PORT))
        got = collect(env.dev, 1)
        assert len(got) == 1 and parse_udp(frame_of(got[0]))[1] == b"again"
        got[0].release()


def test_ring_overflow_counts_kernel_drops():
    # 4 blocks of 2 frames: a burst nobody reads overflows the ring
    with afp_setup(rx_frames=8, block_frames=1) as env:
        assert env.dev._block_nr == 4
        with udp_socket(env.ns_peer, PEER_IP) as s:
            for i in range(200):
                s.sendto(b"o%d" % i, (DEV_IP, PORT))
        time.sleep(0.05)
        packets, drops, _ = env.dev.read_kernel_stats()
        assert packets == 200 and drops > 0 and env.dev.stats.kernel_drops == drops
        got = collect(env.dev, 200, timeout=0.3)
        assert 0 < len(got) == 200 - drops
        seqs = [int(parse_udp(frame_of(b))[1][1:]) for b in got]
        assert seqs == sorted(seqs)
        for b in got:
            b.release()
        assert env.dev.read_kernel_stats() == (0, 0, 0)  # reading reset the kernel counters


# ------------------------------------------------------------------------------------------
# (d) socket filter
# ------------------------------------------------------------------------------------------

def bpf_udp_dst_port(port: int) -> list[tuple[int, int, int, int]]:
    """``tcpdump -dd 'ip and udp dst port <port>'`` on Ethernet."""
    return [
        (0x28, 0, 0, 12),            # ldh [12]
        (0x15, 0, 8, 0x0800),        # jeq IPv4 ? next : drop
        (0x30, 0, 0, 23),            # ldb [23]
        (0x15, 0, 6, 17),            # jeq UDP
        (0x28, 0, 0, 20),            # ldh [20]
        (0x45, 4, 0, 0x1FFF),        # jset fragment offset -> drop
        (0xB1, 0, 0, 14),            # ldxb 4*([14]&0xf)
        (0x48, 0, 0, 16),            # ldh [x+16]
        (0x15, 0, 1, port),          # jeq port
        (0x06, 0, 0, 0x40000),       # ret whole frame
        (0x06, 0, 0, 0),             # ret 0 (drop)
    ]


def test_socket_filter_selects_frames(afp_env):
    env = afp_env
    env.dev.set_socket_filter(bpf_udp_dst_port(7001))
    with udp_socket(env.ns_peer, PEER_IP) as s:
        for i in range(10):
            s.sendto(b"f%d" % i, (DEV_IP, 7001 if i % 2 == 0 else 7002))
    got = collect(env.dev, 10, timeout=0.5, port=None)
    try:
        assert [parse_udp(frame_of(b)) for b in got] == \
            [(7001, b"f%d" % i) for i in range(0, 10, 2)]
    finally:
        for b in got:
            b.release()
    env.dev.clear_socket_filter()
    with udp_socket(env.ns_peer, PEER_IP) as s:
        s.sendto(b"open", (DEV_IP, 7002))
    got = collect(env.dev, 1, port=7002)
    assert len(got) == 1
    got[0].release()
    with pytest.raises(OSError) as ei:
        env.dev.set_socket_filter([(0x06, 0, 0, 0), (0xFFFF, 0, 0, 0)])  # invalid opcode
    assert ei.value.errno == errno.EINVAL


# ------------------------------------------------------------------------------------------
# (e) wake
# ------------------------------------------------------------------------------------------

def _blocked_receive(dev: AfPacketDevice, timeout: float | None = None):
    result: dict = {}

    def run():
        batch: list[PacketBuffer] = []
        t0 = time.monotonic()
        c0 = time.thread_time()
        result["n"] = dev.receive(batch, 16, timeout)
        result["elapsed"] = time.monotonic() - t0
        result["cpu"] = time.thread_time() - c0
        for b in batch:
            b.release()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(0.1)
    assert th.is_alive(), "receive() returned before it was woken"
    return th, result


def test_wake_unblocks_receive(afp_env):
    th, res = _blocked_receive(afp_env.dev)
    afp_env.dev.wake()
    th.join(2)
    assert not th.is_alive() and res["n"] == 0
    assert res["cpu"] < 0.05                      # it slept in poll(), it did not spin
    # a wake with nobody waiting is not lost: the next receive returns at once
    afp_env.dev.wake()
    t0 = time.monotonic()
    assert afp_env.dev.receive([], 16, 5.0) == 0
    assert time.monotonic() - t0 < 1.0


def test_detach_unblocks_receive_and_reattach_works(afp_env):
    env = afp_env
    th, res = _blocked_receive(env.dev)
    env.dev.detach()
    th.join(2)
    assert not th.is_alive() and res["n"] == 0
    env.dev.detach()                               # idempotent
    assert env.dev.receive([], 16, 0.01) == 0
    with pytest.raises(OSError) as ei:
        env.dev.transmit(memoryview(bytes(60)))
    assert ei.value.errno == errno.ENETDOWN
    # attach again from this thread, which is NOT in the device's namespace
    env.dev.attach(env.pool)
    with udp_socket(env.ns_peer, PEER_IP) as s:
        s.sendto(b"back", (DEV_IP, PORT))
    got = collect(env.dev, 1)
    assert len(got) == 1 and parse_udp(frame_of(got[0]))[1] == b"back"
    got[0].release()


# ------------------------------------------------------------------------------------------
# (f) link down, interface removed
# ------------------------------------------------------------------------------------------

def test_link_down_enetdown_and_back_up(afp_env):
    env = afp_env
    events: list = []
    env.dev.on_link_change = events.append
    th, res = _blocked_receive(env.dev)
    env.dev_end.set_down()
    th.join(2)
    assert not th.is_alive() and res["n"] == 0     # POLLERR woke it
    assert not env.dev.is_up() and events == [False]
    frame = udp_frame(env.dev.mac, env.peer_end.mac, DEV_IP, PEER_IP, 1, 2, b"x")
    with pytest.raises(OSError) as ei:
        env.dev.transmit(memoryview(frame))
    assert ei.value.errno == errno.ENETDOWN
    assert env.dev.stats.tx_errors == 0
    # the socket error was cleared: a new receive sleeps instead of spinning
    th, res = _blocked_receive(env.dev, timeout=0.3)
    th.join(2)
    assert res["n"] == 0 and res["elapsed"] >= 0.29 and res["cpu"] < 0.05
    # peer carrier down is also "down"
    env.dev_end.set_up()
    assert wait_until(env.dev.is_up) and events == [False, True]
    env.peer_end.set_down()
    assert wait_until(lambda: not env.dev.is_up()) and events == [False, True, False]
    env.peer_end.set_up()
    assert wait_until(env.dev.is_up)
    env.peer_end.add_neighbor(DEV_IP, env.dev.mac)   # "link down" flushed the static entry
    # and traffic flows again
    with udp_socket(env.ns_peer, PEER_IP) as s:
        s.sendto(b"up again", (DEV_IP, PORT))
    got = collect(env.dev, 1)
    assert len(got) == 1
    got[0].release()


def test_interface_removed_while_receiving(afp_env):
    env = afp_env
    events: list = []
    env.dev.on_link_change = events.append
    th, res = _blocked_receive(env.dev)
    env.dev_end.delete()
    th.join(3)
    assert not th.is_alive(), "receive() hung after the interface was deleted"
    assert res["n"] == 0
    assert not env.dev.is_up() and events == [None]
    th, res = _blocked_receive(env.dev, timeout=0.3)
    th.join(2)
    assert res["n"] == 0 and res["cpu"] < 0.05
    with pytest.raises(OSError) as ei:
        env.dev.transmit(memoryview(bytes(60)))
    assert ei.value.errno == errno.ENETDOWN
    env.dev.detach()
    with pytest.raises(OSError):
        env.dev.attach(env.pool)                     # gone: cannot bind again


# ------------------------------------------------------------------------------------------
# (g) unknown interface, no privilege
# ------------------------------------------------------------------------------------------

def test_unknown_interface_is_einval():
    require_root()
    with netns("afpx") as a:
        with in_netns(a):
            assert linux_interface_exists("lo")
            assert not linux_interface_exists("nosuch0")
            with pytest.raises(OSError) as ei:
                AfPacketDevice("nosuch0")
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(OSError) as ei:
                AfPacketDevice("a/b")
            assert ei.value.errno == errno.EINVAL


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def test_without_cap_net_raw_is_eperm():
    """Drop CAP_NET_RAW from the effective set of one short-lived thread (caps are per thread)."""
    require_root()
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict = {}

    def run(ns):
        with in_netns(ns):
            hdr = _CapHeader(0x20080522, 0)
            data = (_CapData * 2)()
            assert libc.capget(ctypes.byref(hdr), data) == 0
            data[0].effective &= ~(1 << 13)            # CAP_NET_RAW
            assert libc.capset(ctypes.byref(hdr), data) == 0, os.strerror(ctypes.get_errno())
            try:
                AfPacketDevice("lo")
            except OSError as exc:
                out["exc"] = exc

    with netns("afpcap") as a:
        th = threading.Thread(target=run, args=(a,))
        th.start()
        th.join(5)
    exc = out.get("exc")
    assert exc is not None and exc.errno == errno.EPERM and "CAP_NET_RAW" in str(exc)


# ------------------------------------------------------------------------------------------
# (h) VLAN
# ------------------------------------------------------------------------------------------

def test_tagged_frames_keep_their_tag_on_the_parent(afp_env):
    """On a non-VLAN device the kernel moves the 802.1Q tag out of the frame; it is put back."""
    env = afp_env
    with in_netns(env.ns_peer):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        raw.bind((env.peer_end.name, 0))
        tci = (5 << 13) | 42
        sent = [udp_frame(env.peer_end.mac, env.dev.mac, PEER_IP, DEV_IP, 9, PORT, b"t%d" % i,
                          vlan_tci=tci) for i in range(3)]
        for f in sent:
            raw.send(f)
    finally:
        raw.close()
    got = collect(env.dev, 3, timeout=1.0, port=None)
    try:
        assert [frame_of(b) for b in got] == sent
    finally:
        for b in got:
            b.release()


def test_vlan_device():
    require_root()
    if not vlan_supported():
        pytest.skip("this kernel cannot create 802.1Q VLAN devices (CONFIG_VLAN_8021Q not set)")
    vlan_dev_ip, vlan_peer_ip = "198.51.100.1", "198.51.100.2"
    with netns("afpvd") as a, netns("afpvp") as b, \
            veth_pair(a, b, addr_a=None, addr_b=None) as (ea, eb), \
            vlan(a, ea.name, 42) as va, vlan(b, eb.name, 42, vlan_peer_ip + "/24") as vb:
        vb.add_neighbor(vlan_dev_ip, va.mac)
        with in_netns(a):
            dev = AfPacketDevice(va.name)
        try:
            assert dev.name == f"{ea.name}.42" and dev.vlan_id == 42
            assert dev.real_ifname == ea.name and dev.real_ifindex == ea.ifindex
            assert dev.mac == va.mac
            dev.attach(BufferPool(64, 2048))
            with udp_socket(b, vlan_peer_ip, 7200) as s:
                for i in range(3):
                    s.sendto(b"v%d" % i, (vlan_dev_ip, PORT))
                got = collect(dev, 3)
                assert len(got) == 3
                for i, buf in enumerate(got):
                    frame = frame_of(buf)
                    assert frame[12:14] == b"\x08\x00"            # untagged on the VLAN device
                    assert parse_udp(frame) == (PORT, b"v%d" % i)
                    buf.release()
                payload = b"tagged by the kernel"
                dev.transmit(memoryview(udp_frame(dev.mac, vb.mac, vlan_dev_ip, vlan_peer_ip,
                                                  4444, 7200, payload)))
                data, (src, sport) = s.recvfrom(2048)
                assert (data, src, sport) == (payload, vlan_dev_ip, 4444)
        finally:
            dev.close()


# ------------------------------------------------------------------------------------------
# harness
# ------------------------------------------------------------------------------------------

def test_harness_in_netns_restores_and_cleanup_leaked():
    require_root()
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with netns("afph") as a:
        with pytest.raises(KeyError):
            with in_netns(a):
                assert os.stat("/proc/thread-self/ns/net").st_ino != home
                assert socket.if_nameindex() == [(1, "lo")]
                raise KeyError
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
    # a namespace left behind by a crashed run (its pid is dead) is recognised and removed
    proc = subprocess.Popen(["true"])
    proc.wait()
    leaked = f"evlt-crashed-{proc.pid}-0"
    subprocess.run(["ip", "netns", "add", leaked], check=True)
    try:
        assert leaked in list_namespaces()
        assert leaked in cleanup_leaked()
        assert leaked not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", leaked], capture_output=True)


# ------------------------------------------------------------------------------------------
# last: nothing leaked
# ------------------------------------------------------------------------------------------

def test_zz_no_namespace_or_link_leaked():
    require_root()
    assert list_namespaces(os.getpid()) == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"evlt:{os.getpid()}" not in links

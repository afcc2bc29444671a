"""AfPacketDevice against the real kernel: two namespaces joined by a veth pair.

The device drives one end (its thread entered that namespace only to create it); the kernel's own
UDP sockets on the other end are the peer. Root is needed (skip otherwise, fail under CI=true).
Only 192.0.2.0/24 and 198.51.100.0/24 addresses are used, inside namespaces made here.

Every behaviour runs in both RX ring modes (``ring="v2"``: TPACKET_V2, per-frame status;
``ring="v3"``: TPACKET_V3, blocks retired by a timer): the ``afp_env`` fixture and the ``ring``
parameter cover both.
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
from evlnet.wire.checksum import internet_checksum
from evlnet.drivers import afpacket as afp
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
RINGS = ("v2", "v3")


# ------------------------------------------------------------------------------------------
# frame helpers
# ------------------------------------------------------------------------------------------

_csum = internet_checksum


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
def afp_setup(pool_size: int = 256, ring: str = "v2", **dev_kw):
    require_root()
    with netns("afpdev") as a, netns("afppeer") as b, \
            veth_pair(a, b, addr_a=None, addr_b=PEER_CIDR) as (ea, eb):
        eb.add_neighbor(DEV_IP, ea.mac)       # the peer kernel needs no ARP reply from us
        with in_netns(a):
            dev = AfPacketDevice(ea.name, ring=ring, **dev_kw)
        pool = BufferPool(pool_size, 2048, "afp-test")
        try:
            dev.attach(pool)
            yield AfpEnv(a, b, ea, eb, dev, pool)
        finally:
            dev.close()


@pytest.fixture(params=RINGS)
def afp_env(request):
    with afp_setup(ring=request.param) as env:
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
    print(f"\nAF_PACKET {env.dev.ring} RX latency (us): "
          f"send->device_time median {to_dev[15] / 1e3:.1f} "
          f"max {to_dev[-1] / 1e3:.1f}; send->receive() return median {to_ret[15] / 1e3:.1f} "
          f"max {to_ret[-1] / 1e3:.1f}")
    assert to_dev[15] < 5_000_000          # the stamp is taken in the kernel, right away
    if env.dev.ring == "v2":
        assert to_ret[15] < 500_000        # per-frame status: no retire timer (~10 us here)
    else:
        assert to_ret[15] < 50_000_000     # block retire timer (1 ms) plus scheduling


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

@pytest.mark.parametrize("ring", RINGS)
def test_rx_nomem_when_pool_empty(ring):
    with afp_setup(pool_size=2, ring=ring) as env:
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


@pytest.mark.parametrize("ring", RINGS)
def test_ring_overflow_counts_kernel_drops(ring):
    # v2: 8 frame slots; v3: 4 blocks of 2 frames: a burst nobody reads overflows the ring
    with afp_setup(rx_frames=8, block_frames=1, ring=ring) as env:
        if ring == "v2":
            assert env.dev._frame_nr == 8
        else:
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


@pytest.mark.parametrize("ring", RINGS)
def test_vlan_device(ring):
    require_root()
    if not vlan_supported():
        pytest.skip("this kernel cannot create 802.1Q VLAN devices (CONFIG_VLAN_8021Q not set)")
    vlan_dev_ip, vlan_peer_ip = "198.51.100.1", "198.51.100.2"
    with netns("afpvd") as a, netns("afpvp") as b, \
            veth_pair(a, b, addr_a=None, addr_b=None) as (ea, eb), \
            vlan(a, ea.name, 42) as va, vlan(b, eb.name, 42, vlan_peer_ip + "/24") as vb:
        vb.add_neighbor(vlan_dev_ip, va.mac)
        with in_netns(a):
            dev = AfPacketDevice(va.name, ring=ring)
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
# (i) ring modes: layout, busy polling, concurrent consumers
# ------------------------------------------------------------------------------------------

_OFFSETOF_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/if_packet.h>
#define O(t, f) printf("%zu ", offsetof(struct t, f))
int main(void) {
    O(tpacket2_hdr, tp_status); O(tpacket2_hdr, tp_len); O(tpacket2_hdr, tp_snaplen);
    O(tpacket2_hdr, tp_mac); O(tpacket2_hdr, tp_net); O(tpacket2_hdr, tp_sec);
    O(tpacket2_hdr, tp_nsec); O(tpacket2_hdr, tp_vlan_tci); O(tpacket2_hdr, tp_vlan_tpid);
    O(tpacket2_hdr, tp_padding);
    printf("%zu %zu %zu ", sizeof(struct tpacket2_hdr), (size_t)TPACKET2_HDRLEN,
           (size_t)TPACKET_ALIGN(sizeof(struct tpacket2_hdr)));
    O(tpacket3_hdr, tp_next_offset); O(tpacket3_hdr, tp_sec); O(tpacket3_hdr, tp_nsec);
    O(tpacket3_hdr, tp_snaplen); O(tpacket3_hdr, tp_len); O(tpacket3_hdr, tp_status);
    O(tpacket3_hdr, tp_mac); O(tpacket3_hdr, hv1.tp_vlan_tci); O(tpacket3_hdr, hv1.tp_vlan_tpid);
    printf("%zu %d %d %d\n", (size_t)TPACKET3_HDRLEN, TPACKET_V2, TPACKET_V3,
           TP_STATUS_CSUMNOTREADY);
    return 0;
}
"""


def test_ring_header_layout_matches_kernel_headers(tmp_path):
    """The struct layouts the driver hard-codes, checked against <linux/if_packet.h> with gcc."""
    import shutil
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "off.c"
    src.write_text(_OFFSETOF_C)
    build = subprocess.run([cc, "-o", str(tmp_path / "off"), str(src)], capture_output=True)
    if build.returncode:
        pytest.skip(f"cannot build against linux/if_packet.h: {build.stderr[-200:]!r}")
    got = [int(x) for x in subprocess.run([str(tmp_path / "off")], capture_output=True,
                                          text=True, check=True).stdout.split()]
    t2 = afp._T2_HDR
    # tp_status, tp_len, tp_snaplen (u32) tp_mac, tp_net (u16) tp_sec, tp_nsec (u32) @ 0..20
    assert t2.format == "<IIIHHII" and t2.size == 24
    assert got[:10] == [0, 4, 8, 12, 14, 16, 20, afp.T2_VLAN_OFF, afp.T2_VLAN_OFF + 2, 28]
    assert got[10:13] == [32, afp.TPACKET2_HDRLEN, 32]
    # tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status (u32), mac (u16), vlan tci/tpid
    assert got[13:22] == [0, 4, 8, 12, 16, 20, 24, afp.T3_VLAN_OFF, afp.T3_VLAN_OFF + 4]
    assert got[22:] == [afp.TPACKET3_HDRLEN, afp.TPACKET_V2, afp.TPACKET_V3,
                        afp.TP_STATUS_CSUMNOTREADY]


def test_ring_mode_argument():
    require_root()
    with netns("afpr") as a:
        with in_netns(a):
            with pytest.raises(OSError) as ei:
                AfPacketDevice("lo", ring="v1")
            assert ei.value.errno == errno.EINVAL
            dev = AfPacketDevice("lo")
        try:
            assert dev.ring == "v2"                     # the default: per-frame wake-ups
            assert not dev.poll_ready() and dev.receive([], 4) == 0    # not attached
        finally:
            dev.close()


def test_ring_geometry(afp_env):
    dev = afp_env.dev
    mm_size = len(dev._mm)
    if dev.ring == "v2":
        # 2 KiB frame slots (>= 80 + 1500 + 22), contiguous, at least rx_frames of them
        assert dev._frame_size == 2048 and dev._frame_nr >= 2048
        assert mm_size == dev._frame_nr * dev._frame_size
        assert (dev._idx_first, dev._idx_step) == (0, 2048 // 4)
    else:
        # 16 KiB blocks of 8 slots; the status word of block k is u32 k * 4096 + 2
        assert dev._block_size == 16384 and mm_size == dev._block_nr * 16384
        assert (dev._idx_first, dev._idx_step) == (2, 16384 // 4)
    assert dev._idx_end == mm_size // 4 and dev._idx == dev._idx_first
    assert not dev.poll_ready()


def _ready_within(dev: AfPacketDevice, timeout: float = 2.0) -> bool:
    return wait_until(dev.poll_ready, timeout)


class _NoPoll:
    """Stands in for the select.poll object: a non-blocking receive() must never get there."""

    def poll(self, *args):
        raise AssertionError("receive(timeout=0) made a poll() syscall")


def test_poll_ready_and_nonblocking_receive(afp_env):
    env = afp_env
    dev = env.dev
    batch: list[PacketBuffer] = []
    real_poller = dev._poller
    dev._poller = _NoPoll()
    try:
        # empty ring: False/0, immediately, without poll() (v2: one mmap status-word read)
        assert not dev.poll_ready()
        t0 = time.perf_counter_ns()
        for _ in range(20000):
            assert dev.receive(batch, 16) == 0              # timeout defaults to 0
        per_call = (time.perf_counter_ns() - t0) / 20000
        assert dev.receive(batch, 16, 0) == 0 and dev.receive(batch, 16, -1) == 0
        assert per_call < 20_000, per_call                 # ~150 ns here; no syscall, no sleep
        with udp_socket(env.ns_peer, PEER_IP) as s:
            for i in range(3):
                s.sendto(b"bp%d" % i, (DEV_IP, PORT))
        assert _ready_within(dev)                          # v3: once the block is retired
        got = []
        deadline = time.monotonic() + 2
        while len(got) < 3 and time.monotonic() < deadline:
            n = dev.receive(got, 2, 0)                     # limit respected
            assert n <= 2
        assert [parse_udp(frame_of(b))[1] for b in got] == [b"bp0", b"bp1", b"bp2"]
        for b in got:
            b.release()
        assert not dev.poll_ready() and dev.receive(batch, 16, 0) == 0
    finally:
        dev._poller = real_poller
    print(f"\n{dev.ring}: empty receive(timeout=0) {per_call:.0f} ns per call")
    dev.detach()
    assert not dev.poll_ready() and dev.receive(batch, 16, 0) == 0


def test_busy_poll_never_waits_for_the_ring_lock(afp_env):
    env = afp_env
    dev = env.dev
    with udp_socket(env.ns_peer, PEER_IP) as s:
        s.sendto(b"locked", (DEV_IP, PORT))
    assert _ready_within(dev)
    batch: list[PacketBuffer] = []
    assert dev._rx_lock.acquire(False)          # as if another thread were walking the ring
    try:
        t0 = time.monotonic()
        assert dev.poll_ready()
        assert dev.receive(batch, 16, 0) == 0   # try-lock failed: 0 at once, nothing lost
        assert time.monotonic() - t0 < 0.1
    finally:
        dev._rx_lock.release()
    assert dev.receive(batch, 16, 0) == 1 and parse_udp(frame_of(batch[0]))[1] == b"locked"
    batch[0].release()


def test_blocked_receiver_does_not_hold_the_ring_lock(afp_env):
    """A receive() sleeping in poll() leaves the ring to busy pollers; whoever wins takes the
    frame, exactly once, and the sleeper goes back to sleep if a poller took it."""
    env = afp_env
    dev = env.dev
    results: list[PacketBuffer] = []

    def sleeper():
        batch: list[PacketBuffer] = []
        dev.receive(batch, 16, 0.4)
        results.extend(batch)

    th = threading.Thread(target=sleeper, daemon=True)
    th.start()
    time.sleep(0.1)
    assert th.is_alive()
    assert dev._rx_lock.acquire(False), "the sleeping receiver holds the ring lock"
    dev._rx_lock.release()
    with udp_socket(env.ns_peer, PEER_IP) as s:
        s.sendto(b"race", (DEV_IP, PORT))
    polled: list[PacketBuffer] = []
    deadline = time.monotonic() + 2
    while not polled and th.is_alive() and time.monotonic() < deadline:
        dev.receive(polled, 16, 0)
    th.join(2)
    assert not th.is_alive()
    got = polled + results
    assert [parse_udp(frame_of(b))[1] for b in got] == [b"race"]
    for b in got:
        b.release()


def _count_consumers(dev: AfPacketDevice, ns_peer: Namespace, total: int, limit: int):
    """An RX thread (receive with a timeout) and a busy poller (receive(0)) consume the same
    ring while the main thread sends *total* numbered datagrams in paced bursts."""
    seen: dict[str, list[int]] = {"rx": [], "poll": []}
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume(who: str, timeout: float):
        batch: list[PacketBuffer] = []
        out = seen[who]
        try:
            while not stop.is_set():
                if dev.receive(batch, limit, timeout):
                    for b in batch:
                        parsed = parse_udp(frame_of(b))
                        if parsed is not None and parsed[0] == PORT:
                            out.append(struct.unpack("!I", parsed[1][:4])[0])
                        b.release()
                    batch.clear()
                elif timeout == 0:
                    time.sleep(0)                        # let the others have the GIL
        except BaseException as exc:                     # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=("rx", 0.05), daemon=True),
               threading.Thread(target=consume, args=("poll", 0), daemon=True)]
    for th in threads:
        th.start()
    try:
        with udp_socket(ns_peer, PEER_IP) as s:
            for i in range(total):
                s.sendto(struct.pack("!I", i), (DEV_IP, PORT))
                if i % 200 == 199:                       # pace: never fill the ring
                    deadline = time.monotonic() + 2
                    while len(seen["rx"]) + len(seen["poll"]) < i - 400 and \
                            time.monotonic() < deadline:
                        time.sleep(0.001)
        deadline = time.monotonic() + 5
        while len(seen["rx"]) + len(seen["poll"]) < total and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)                                 # a duplicate would show up now
    finally:
        stop.set()
        dev.wake()
        for th in threads:
            th.join(2)
    assert not errors, errors
    return seen


@pytest.mark.parametrize("ring", RINGS)
def test_concurrent_rx_thread_and_busy_poller_lose_and_duplicate_nothing(ring):
    total = 5000
    with afp_setup(pool_size=256, ring=ring) as env:
        seen = _count_consumers(env.dev, env.ns_peer, total, limit=4)
        everything = seen["rx"] + seen["poll"]
        _, drops, _ = env.dev.read_kernel_stats()
        assert drops == 0 and env.dev.stats.rx_nomem == 0
        assert len(everything) == total, (len(seen["rx"]), len(seen["poll"]))
        assert sorted(everything) == list(range(total))   # no loss, no duplicate
        for who in ("rx", "poll"):                        # each walk is in ring order
            assert seen[who] == sorted(seen[who])
        assert seen["poll"], "the busy poller never won the ring"
        print(f"\n{ring}: RX thread took {len(seen['rx'])}, busy poller {len(seen['poll'])}")
        assert env.pool.free == env.pool.total


def test_detach_while_busy_polling_and_blocked(afp_env):
    env = afp_env
    dev = env.dev
    stop = threading.Event()
    errors: list[BaseException] = []

    def spin():
        batch: list[PacketBuffer] = []
        try:
            while not stop.is_set():
                dev.poll_ready()
                dev.receive(batch, 16, 0)
                for b in batch:
                    b.release()
                batch.clear()
        except BaseException as exc:
            errors.append(exc)

    pollers = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for th in pollers:
        th.start()
    blocked, res = _blocked_receive(dev)
    with udp_socket(env.ns_peer, PEER_IP) as s:
        for i in range(50):
            s.sendto(b"d%d" % i, (DEV_IP, PORT))
    time.sleep(0.02)
    dev.detach()
    blocked.join(2)
    assert not blocked.is_alive()
    time.sleep(0.02)                      # pollers keep calling into the detached device
    stop.set()
    for th in pollers:
        th.join(2)
    assert not errors, errors
    assert not dev.poll_ready() and dev.receive([], 16, 0) == 0
    assert env.pool.free == env.pool.total


# ------------------------------------------------------------------------------------------
# (j) TX options, checksums of locally sent frames
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bypass", [False, True])
def test_transmit_qdisc_bypass_taps(bypass):
    """Both ways the peer gets every frame (a tap there sees them); PACKET_QDISC_BYPASS also
    skips the taps of the sending interface (dev_queue_xmit_nit): tcpdump there sees nothing."""
    with afp_setup(qdisc_bypass=bypass) as env:
        taps = []
        for ns, ifname in ((env.ns_peer, env.peer_end.name), (env.ns_dev, env.dev_end.name)):
            with in_netns(ns):
                # ETH_P_ALL, as tcpdump: only those taps see outgoing frames
                tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            tap.bind((ifname, 0))
            tap.settimeout(0.1)
            taps.append(tap)
        try:
            frame = env.peer_end.mac + env.dev.mac + b"\x88\xb5" + bytes(50)
            for _ in range(10):
                env.dev.transmit(memoryview(frame))
            counts = []
            for tap in taps:
                n = 0
                try:
                    while True:
                        if tap.recv(2048) == frame:
                            n += 1
                except (TimeoutError, socket.timeout):
                    pass
                counts.append(n)
        finally:
            for tap in taps:
                tap.close()
        assert counts == [10, 0 if bypass else 10]
        assert env.dev.stats.tx_errors == 0


def _udp_checksum_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 0xF) * 4
    l4 = 14 + ihl
    ulen, csum = struct.unpack_from("!HH", frame, l4 + 4)
    if csum == 0:
        return True                                   # "no checksum" (RFC 768)
    pseudo = frame[26:34] + struct.pack("!BBH", 0, 17, ulen)
    return _csum(pseudo + frame[l4:l4 + ulen]) == 0


def test_locally_sent_udp_has_no_bad_checksum(afp_env):
    """The peer kernel leaves its UDP checksum to veth 'hardware' (TP_STATUS_CSUMNOTREADY): the
    frame handed up must not carry the partial sum, or the stack would drop it."""
    env = afp_env
    with udp_socket(env.ns_peer, PEER_IP) as s:
        for n in (0, 1, 33, 1472):
            s.sendto((bytes(range(256)) * 6)[:n], (DEV_IP, PORT))
    got = collect(env.dev, 4)
    try:
        assert [len(parse_udp(frame_of(b))[1]) for b in got] == [0, 1, 33, 1472]
        assert all(_udp_checksum_ok(frame_of(b)) for b in got)
    finally:
        for b in got:
            b.release()


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

"""evlnet on a real Linux interface, the Linux kernel on the other end (issue #4).

Namespace A holds evlnet's port on one end of a veth pair; namespace B holds the kernel's stack on
the other end (kernel UDP sockets, ``ping``, ``tcpdump``, ``ip neigh``). Root is needed (skip
otherwise, fail under CI=true). Only 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 are used,
inside namespaces made here; every test checks that nothing (tc filter, clsact qdisc) stays in the
kernel once its stack is closed, and the module checks that no ``evlt-`` namespace is left.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from virtual_fixtures import wait_until

from evlnet.constants import EVL_NEIGH_MAYROUTE, EVL_NEIGH_PERMANENT, MSG_DONTWAIT, SOCK_OOB
from evlnet.core.stack import Stack
from evlnet.linux import diversion as dv
from evlnet.linux import rtnl
from evlnet.testing import (
    Namespace,
    in_netns,
    list_namespaces,
    netns,
    require_root,
    veth_pair,
    vlan,
    vlan_supported,
)

pytestmark = pytest.mark.root

A_IP, B_IP = "192.0.2.1", "192.0.2.2"
A_CIDR, B_CIDR = "192.0.2.1/24", "192.0.2.2/24"
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_namespaces():
    yield
    if os.geteuid() == 0:
        assert list_namespaces(os.getpid()) == []


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------



def leftovers(ns: Namespace) -> list:
    """evlnet tc filters and clsact qdiscs left in *ns* (should be none after close)."""
    with in_netns(ns):
        nl = rtnl.RtnlSocket()
    try:
        out = [("filter", f) for f in dv.list_filters(nl)]
        out += [("clsact", link.ifname) for link in rtnl.link_dump(nl)
                if rtnl.has_clsact(nl, link.ifindex)]
        return out
    finally:
        nl.close()


class KernelUdp:
    """A kernel UDP socket in a namespace, served by a thread: an echo server or a sink."""

    def __init__(self, ns: Namespace, addr: str, port: int, echo: bool = True,
                 reuse: bool = False) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if reuse:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.settimeout(0.05)
        self.echo = echo
        self.received: list[tuple[bytes, tuple]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, addr))
            if self.echo:
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def kernel_socket(ns: Namespace, bind=None, reuse: bool = False) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind is not None:
        s.bind(bind)
    return s


@dataclass
class Pair:
    a: Namespace
    b: Namespace
    ea: object
    eb: object
    stack: Stack
    port: object

    def oob_socket(self, bind=None):
        s = self.stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
        if bind is not None:
            s.bind(bind)
        return s


@contextmanager
def evl_pair(**settings):
    """evlnet in A (port enabled on its veth end), the kernel in B."""
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=A_CIDR, addr_b=B_CIDR) as (ea, eb):
        stack = Stack("t", **settings)
        try:
            with in_netns(a):
                port = stack.enable_port(ea.name)
            yield Pair(a, b, ea, eb, stack, port)
        finally:
            stack.close()
            assert leftovers(a) == [], "evlnet left tc objects in the kernel"


@pytest.fixture
def pair():
    with evl_pair() as p:
        yield p


def echo_once(s, dst, payload=b"ping", timeout=2.0):
    s.oob_sendto(payload, dst)
    data, _, _, addr = s.oob_recvmsg(65535, timeout=timeout)
    return data, addr


# --------------------------------------------------------------------------------------------
# UDP both ways, ICMP, ARP
# --------------------------------------------------------------------------------------------

def test_oob_client_against_kernel_echo_server(pair):
    with KernelUdp(pair.b, B_IP, 7000) as srv:
        s = pair.oob_socket((A_IP, 6000))
        pair.stack.solicit(s, (B_IP, 7000))
        for i in range(20):
            data, addr = echo_once(s, (B_IP, 7000), b"x%d" % i)
            assert data == b"x%d" % i and addr == (B_IP, 7000)
        assert len(srv.received) == 20 and srv.received[0][1] == (A_IP, 6000)
        st = pair.port.stats()
        assert st.rx_packets == 20 and st.tx_packets == 20 and st.csum_errors == 0
        # large datagrams leave as IP fragments and come back reassembled
        big = bytes(range(256)) * 16
        assert echo_once(s, (B_IP, 7000), big)[0] == big


def test_kernel_client_against_oob_server_and_kernel_arp(pair):
    srv = pair.oob_socket(("", 7200))
    cli = kernel_socket(pair.b, (B_IP, 0))
    cli.settimeout(2)
    cli.sendto(b"hello", (A_IP, 7200))                 # B's kernel ARPs for A: A's kernel answers
    data, _, _, peer = srv.oob_recvmsg(100, timeout=2)
    assert data == b"hello" and peer == (B_IP, cli.getsockname()[1])
    # first reply: nothing cached for B yet -> demoted through the genuine socket (EINPROGRESS)
    with pytest.raises(OSError) as ei:
        srv.oob_sendto(b"r1", peer, MSG_DONTWAIT)
    assert ei.value.errno == errno.EINPROGRESS
    assert cli.recvfrom(100) == (b"r1", (A_IP, 7200))
    pair.stack.solicit(srv, peer)
    assert srv.oob_sendto(b"r2", peer, MSG_DONTWAIT) == 2           # fast path now
    assert cli.recvfrom(100) == (b"r2", (A_IP, 7200))
    neigh = json.loads(pair.b.run("ip", "-j", "neigh", "show", "dev", pair.eb.name).stdout)
    assert any(n["dst"] == A_IP and n["lladdr"] == pair.ea.mac_str for n in neigh)
    cli.close()


def test_ping_answered_by_the_oob_stage(pair):
    r = pair.b.run("ping", "-c", "3", "-i", "0.05", "-W", "1", A_IP, check=False)
    assert r.returncode == 0, r.stdout
    assert pair.port.counters.icmp_echo_replies == 3
    # a new address: the port follows it (refresh_addresses) and so does its diversion, while
    # a route already learnt survives the routing change (re-asked, unchanged)
    s = pair.oob_socket()
    pair.stack.solicit(s, B_IP)
    route = pair.stack.frontcache.routes.peek(0xC0000202)
    pair.a.ip("addr", "add", "192.0.2.50/24", "dev", pair.ea.name)
    assert wait_until(lambda: 0xC0000232 in pair.port.iface_unicast)
    r = pair.b.run("ping", "-c", "1", "-W", "1", "192.0.2.50", check=False)
    assert r.returncode == 0 and pair.port.counters.icmp_echo_replies == 4
    assert pair.stack.frontcache.routes.peek(0xC0000202) is route
    # echo not answered by the stack: not diverted, the kernel answers
    pair.stack.settings.icmp_echo_ignore_all = True
    pair.stack.kernel.refresh_diversion()
    r = pair.b.run("ping", "-c", "2", "-i", "0.05", "-W", "1", A_IP, check=False)
    assert r.returncode == 0 and pair.port.counters.icmp_echo_replies == 4


def test_socket_made_before_the_port_is_demoted_through_a_raw_socket():
    """No genuine socket (made before the stack had a Linux port): a front-cache miss still
    leaves through the kernel, with the socket's own address and port."""
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=A_CIDR, addr_b=B_CIDR) as (ea, eb):
        stack = Stack("t")
        try:
            s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
            with in_netns(a):
                stack.enable_port(ea.name)
            s.bind((A_IP, 6100))
            with KernelUdp(b, B_IP, 7000) as srv:
                with pytest.raises(OSError) as ei:
                    s.oob_sendto(b"raw", (B_IP, 7000), MSG_DONTWAIT)
                assert ei.value.errno == errno.EINPROGRESS
                assert s.oob_recvmsg(100, timeout=2)[0] == b"raw"        # the echo is diverted
                assert srv.received == [(b"raw", (A_IP, 6100))]
                # bumped by the in-band worker after its send: the echo may come back first
                assert wait_until(lambda: stack.kernel.counters.demoted_raw == 1)
        finally:
            stack.close()
        assert leftovers(a) == []


# --------------------------------------------------------------------------------------------
# diversion
# --------------------------------------------------------------------------------------------

def test_diverted_traffic_reaches_the_oob_stack_only(pair):
    oob = pair.stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
    oob.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)      # reaches the genuine socket
    oob.bind((A_IP, 7000))
    shadow = kernel_socket(pair.a, ("", 7000), reuse=True)          # same port, in A's kernel
    other = kernel_socket(pair.a, (A_IP, 7001))
    for s in (shadow, other):
        s.setblocking(False)
    cli = kernel_socket(pair.b, (B_IP, 0))
    cli.connect((A_IP, 7000))                 # a connected socket sees ICMP port unreachable
    cli.setblocking(False)
    for i in range(5):
        cli.send(b"d%d" % i)
    got = [oob.oob_recvmsg(100, timeout=2)[0] for _ in range(5)]
    assert got == [b"d%d" % i for i in range(5)]
    kernel_socket_b = kernel_socket(pair.b, (B_IP, 0))
    kernel_socket_b.sendto(b"other", (A_IP, 7001))                  # not ours: the kernel's
    time.sleep(0.1)
    assert other.recv(100) == b"other"
    for s in (shadow,):
        with pytest.raises(BlockingIOError):
            s.recv(100)                        # the kernel delivered nothing of ours
    oob.setblocking(False)
    with pytest.raises(BlockingIOError):
        oob.recv(100)                          # nor did it queue it on the genuine socket
    with pytest.raises(BlockingIOError):
        cli.recv(100)                          # and it answered nothing (no port unreachable)
    # closed: the traffic is the kernel's again
    oob.close()
    cli.send(b"after")
    assert wait_until(lambda: _try_recv(shadow) == b"after", 2)
    for s in (shadow, other, cli, kernel_socket_b):
        s.close()


def _try(fn, *args):
    try:
        return fn(*args)
    except BlockingIOError:
        return None


def _try_recv(s):
    return _try(s.recv, 100)


def test_genuine_socket_reserves_the_port_and_does_inband_io(pair):
    with KernelUdp(pair.b, B_IP, 7000, echo=False) as sink:
        s = pair.oob_socket((A_IP, 7300))
        assert s.fileno() >= 0 and s.kernel_fileno() >= 0
        with pytest.raises(OSError) as ei:
            kernel_socket(pair.a, (A_IP, 7300))
        assert ei.value.errno == errno.EADDRINUSE
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 17)              # standard option...
        with socket.socket(fileno=os.dup(s.kernel_fileno())) as k:        # ...reaches the kernel
            assert k.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 17
            assert k.getsockname() == (A_IP, 7300)
        assert s.sendto(b"inband", (B_IP, 7000)) == 6                   # through the kernel
        assert wait_until(lambda: sink.received)
        assert sink.received[0] == (b"inband", (A_IP, 7300))
        # ephemeral binding: the port is taken in the kernel too
        e = pair.oob_socket((A_IP, 0))
        with pytest.raises(OSError):
            kernel_socket(pair.a, (A_IP, e.getsockname()[1]))


def test_strict_diversion_and_the_vlan_set_on_the_parent(pair):
    """Tagged IPv4 whose VID is in the VLAN set is diverted on the parent (sent by a raw socket
    in B: this works without 802.1Q support in the kernel)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether
    s = pair.oob_socket((A_IP, 7100))

    def tagged(vid, payload):
        return bytes(Ether(src=pair.eb.mac_str, dst=pair.ea.mac_str) / Dot1Q(vlan=vid) /
                     IP(src=B_IP, dst=A_IP) / UDP(sport=5000, dport=7100) / payload)

    with in_netns(pair.b):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((pair.eb.name, 0))
    try:
        raw.send(tagged(42, b"no-set"))
        with pytest.raises(OSError) as ei:
            s.oob_recvmsg(100, timeout=0.3)
        assert ei.value.errno == errno.ETIMEDOUT
        pair.stack.set_vlans("42")
        raw.send(tagged(43, b"vid43"))
        raw.send(tagged(42, b"vid42"))
        assert s.oob_recvmsg(100, timeout=2)[0] == b"vid42"
        # strict (EVL's rule): untagged traffic to the bound port is no longer diverted...
        pair.stack.settings.strict_diversion = True
        pair.stack.kernel.refresh_diversion()
        cli = kernel_socket(pair.b, (B_IP, 5001))
        cli.sendto(b"untagged", (A_IP, 7100))
        # ... so it reaches the kernel, where the genuine socket receives it in-band
        s.setblocking(False)
        got: list = []
        assert wait_until(lambda: got.append(_try(s.recvfrom, 100)) or got[-1] is not None)
        assert got[-1] == (b"untagged", (B_IP, 5001))
        s.setblocking(True)
        raw.send(tagged(42, b"strict42"))
        assert s.oob_recvmsg(100, timeout=2)[0] == b"strict42"
        cli.close()
    finally:
        raw.close()


# --------------------------------------------------------------------------------------------
# the kernel-fed front cache, solicitation
# --------------------------------------------------------------------------------------------

def test_ip_neigh_del_invalidates_the_front_cache(pair):
    s = pair.oob_socket((A_IP, 6001))
    pair.stack.solicit(s, (B_IP, 9))
    b_ip = 0xC0000202
    cache = pair.stack.frontcache.neighbours
    assert cache.peek(b_ip) is not None
    t0 = time.monotonic()
    pair.a.ip("neigh", "del", B_IP, "dev", pair.ea.name)
    assert wait_until(lambda: cache.peek(b_ip) is None, 0.1, 0.0005)
    assert time.monotonic() - t0 < 0.1 + 0.05        # the ip command itself included
    with pytest.raises(OSError) as ei:               # a miss: demoted
        s.oob_sendto(b"x", (B_IP, 9), MSG_DONTWAIT)
    assert ei.value.errno == errno.EINPROGRESS


def test_solicit_permanent_shows_in_ip_neigh(pair):
    s = pair.oob_socket()
    pair.stack.solicit(s, B_IP, EVL_NEIGH_PERMANENT)
    neigh = json.loads(pair.a.run("ip", "-j", "neigh", "show", B_IP, "dev", pair.ea.name).stdout)
    assert neigh and neigh[0]["state"] == ["PERMANENT"]
    assert neigh[0]["lladdr"] == pair.eb.mac_str
    assert pair.stack.frontcache.neighbours.peek(0xC0000202).permanent


def test_solicit_errors(pair):
    s = pair.oob_socket()
    pair.stack.set_solicit_timeout(0.4)
    t0 = time.monotonic()
    with pytest.raises(OSError) as ei:
        pair.stack.solicit(s, "192.0.2.99")              # nobody answers
    assert ei.value.errno == errno.ETIMEDOUT
    assert 0.35 < time.monotonic() - t0 < 1.5
    with pytest.raises(OSError) as ei:
        pair.stack.solicit(s, "198.51.100.7")            # no route at all
    assert ei.value.errno == errno.ENETUNREACH
    # ENODEV: routed through an interface that is no oob port
    with veth_pair(pair.a, pair.b, addr_a="203.0.113.1/24", addr_b="203.0.113.2/24"):
        with pytest.raises(OSError) as ei:
            pair.stack.solicit(s, "203.0.113.2")
        assert ei.value.errno == errno.ENODEV
    with pytest.raises(OSError) as ei:
        pair.stack.solicit(s, A_IP)                      # ourselves: through lo
    assert ei.value.errno == errno.ENODEV


def test_mayroute_through_a_gateway():
    """A (evlnet) -- R (router, ip_forward=1) -- C (kernel echo server)."""
    with netns("a") as a, netns("r") as r, netns("c") as c, \
            veth_pair(a, r, addr_a=A_CIDR, addr_b="192.0.2.254/24") as (ea, _), \
            veth_pair(r, c, addr_a="198.51.100.254/24", addr_b="198.51.100.2/24"):
        r.sysctl("net.ipv4.ip_forward", 1)
        a.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.254")
        c.ip("route", "add", "192.0.2.0/24", "via", "198.51.100.254")
        stack = Stack("t")
        try:
            with in_netns(a):
                stack.enable_port(ea.name)
            with KernelUdp(c, "198.51.100.2", 7000):
                s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                s.bind((A_IP, 6000))
                with pytest.raises(OSError) as ei:
                    stack.solicit(s, ("198.51.100.2", 7000))
                assert ei.value.errno == errno.ENETUNREACH
                stack.solicit(s, ("198.51.100.2", 7000), EVL_NEIGH_MAYROUTE)
                route = stack.frontcache.routes.peek(0xC6336402)
                assert route.gateway == 0xC00002FE
                assert echo_once(s, ("198.51.100.2", 7000), b"routed") == \
                    (b"routed", ("198.51.100.2", 7000))
        finally:
            stack.close()
        assert leftovers(a) == []


# --------------------------------------------------------------------------------------------
# VLAN devices (need CONFIG_VLAN_8021Q)
# --------------------------------------------------------------------------------------------

_vlan_ok: bool | None = None


def _need_vlan():
    global _vlan_ok
    if _vlan_ok is None:
        _vlan_ok = vlan_supported()
    if not _vlan_ok:
        pytest.skip("this kernel cannot create 802.1Q devices (CONFIG_VLAN_8021Q is off)")


def test_vlan_device_port_with_a_kernel_vlan_peer():
    _need_vlan()
    with netns("a") as a, netns("b") as b, veth_pair(a, b, addr_a=None, addr_b=None) as (ea, eb), \
            vlan(a, ea.name, 42, "198.51.100.1/24") as va, vlan(b, eb.name, 42, "198.51.100.2/24"):
        stack = Stack("t")
        try:
            with in_netns(a):
                stack.enable_port(va.name)
            with KernelUdp(b, "198.51.100.2", 7000):
                s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                s.bind(("198.51.100.1", 6000))
                stack.solicit(s, ("198.51.100.2", 7000))
                assert echo_once(s, ("198.51.100.2", 7000), b"vlan")[0] == b"vlan"
            # a packet socket bound to the VLAN device
            p = stack.socket(socket.AF_PACKET, socket.SOCK_RAW | SOCK_OOB, socket.htons(0x88B5))
            p.bind((va.name, 0x88B5))
            with in_netns(b):
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            raw.bind((f"{eb.name}.42", 0))
            raw.send(va.mac + eb.mac + b"\x88\xb5" + b"hello".ljust(46, b"\0"))
            assert p.oob_recvmsg(100, timeout=2)[0][14:19] == b"hello"
            raw.close()
        finally:
            stack.close()
        assert leftovers(a) == []


# --------------------------------------------------------------------------------------------
# wire checks: capture and counters
# --------------------------------------------------------------------------------------------

def test_capture_shows_well_formed_frames(pair):
    from scapy.all import rdpcap
    from scapy.layers.inet import ICMP, IP, UDP, defragment
    from scapy.layers.l2 import Ether
    fd, path = tempfile.mkstemp(suffix=".pcap")
    os.close(fd)
    td = pair.b.popen("tcpdump", "-Z", "root", "--immediate-mode", "-i", pair.eb.name, "-U",
                      "-w", path, "-n",
                      stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert b"listening" in td.stderr.readline()
        with KernelUdp(pair.b, B_IP, 7000, echo=False) as sink:
            s = pair.oob_socket((A_IP, 6000))
            pair.stack.solicit(s, (B_IP, 7000))
            sizes = [0, 1, 17, 18, 500, 1472, 1473, 4000, 9000]
            for n in sizes:
                s.oob_sendto(bytes(range(256)) * (n // 256) + bytes(n % 256), (B_IP, 7000))
            assert pair.b.run("ping", "-c", "2", "-i", "0.05", "-s", "100", A_IP).returncode == 0
            assert wait_until(lambda: len(sink.received) == len(sizes)), \
                ([len(d) for d, _ in sink.received], pair.port.stats())
        time.sleep(0.1)
    finally:
        td.send_signal(signal.SIGINT)
        td.wait(5)
        td.stderr.close()
    captured = rdpcap(path)
    frames = [p for p in captured if p.haslayer(Ether) and p[Ether].src == pair.ea.mac_str]
    assert frames, (len(captured), captured[:3], pair.ea.mac_str)
    os.unlink(path)
    ours = [p for p in frames if p.haslayer(IP)]
    assert len(ours) > len(sizes)
    for p in ours:
        assert len(bytes(p)) >= 60
        ip_layer = p[IP]
        raw = bytes(ip_layer)
        assert ip_layer.len <= len(raw)
        recomputed = IP(raw)
        recomputed.chksum = None
        assert IP(bytes(recomputed)).chksum == ip_layer.chksum, "bad IPv4 header checksum"
    whole = defragment([p for p in ours if p.haslayer(IP)])
    udp = [p for p in whole if p.haslayer(UDP)]
    icmp = [p for p in whole if p.haslayer(ICMP)]
    assert sorted(p[UDP].len - 8 for p in udp) == sorted(sizes)
    for p in udp + icmp:
        layer = p[UDP] if p.haslayer(UDP) else p[ICMP]
        original = layer.chksum
        ip_layer = p[IP].copy()
        ip_layer[type(layer)].chksum = None
        assert IP(bytes(ip_layer))[type(layer)].chksum == original, "bad L4 checksum"
    assert len(icmp) == 2 and all(p[ICMP].type == 0 for p in icmp)


def _link_stats(ns: Namespace, ifname: str) -> dict:
    info = json.loads(ns.run("ip", "-s", "-j", "link", "show", "dev", ifname).stdout)[0]
    return info["stats64"]


def test_port_counters_agree_with_the_kernel(pair):
    # no ARP during the measurement: static entries on both sides
    pair.eb.add_neighbor(A_IP, pair.ea.mac)
    with KernelUdp(pair.b, B_IP, 7000) as _srv:
        s = pair.oob_socket((A_IP, 6000))
        pair.stack.solicit(s, (B_IP, 7000), EVL_NEIGH_PERMANENT)
        echo_once(s, (B_IP, 7000))
        before_k = _link_stats(pair.a, pair.ea.name)
        before_p = pair.port.stats()
        for n in (10, 100, 1000, 3000):                     # 3000: two fragments each way
            for _ in range(5):
                echo_once(s, (B_IP, 7000), b"z" * n)
        after_k = _link_stats(pair.a, pair.ea.name)
        after_p = pair.port.stats()
    dk = {d: {k: after_k[d][k] - before_k[d][k] for k in ("packets", "bytes")}
          for d in ("rx", "tx")}
    assert dk["tx"] == {"packets": after_p.tx_packets - before_p.tx_packets,
                        "bytes": after_p.tx_bytes - before_p.tx_bytes}
    assert dk["rx"] == {"packets": after_p.rx_packets - before_p.rx_packets,
                        "bytes": after_p.rx_bytes - before_p.rx_bytes}
    assert dk["tx"]["packets"] == 30             # 5 x (10, 100, 1000) + 5 x 3 fragments


# --------------------------------------------------------------------------------------------
# link events
# --------------------------------------------------------------------------------------------

def _blocked_receiver(s, out: list):
    def run():
        try:
            out.append(s.oob_recvmsg(100))
        except OSError as exc:
            out.append(exc.errno)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_link_down_then_up(pair):
    with KernelUdp(pair.b, B_IP, 7000):
        s = pair.oob_socket((A_IP, 6000))
        pair.stack.solicit(s, (B_IP, 7000))
        woke: list = []
        t = _blocked_receiver(s, woke)
        time.sleep(0.05)
        pair.a.ip("link", "set", pair.ea.name, "down")
        t.join(2)
        assert not t.is_alive() and woke == [errno.ENETDOWN]
        with pytest.raises(OSError) as ei:
            s.oob_sendto(b"x", (B_IP, 7000))
        assert ei.value.errno == errno.ENETDOWN
        assert pair.port.enabled
        pair.a.ip("link", "set", pair.ea.name, "up")
        assert wait_until(lambda: pair.port.link_up, 3)
        pair.stack.solicit(s, (B_IP, 7000))
        assert echo_once(s, (B_IP, 7000), b"back")[0] == b"back"


def test_interface_deleted_under_traffic_then_back():
    with netns("a") as a, netns("b") as b:
        stack = Stack("t")
        try:
            with veth_pair(a, b, addr_a=A_CIDR, addr_b=B_CIDR) as (ea, eb):
                with in_netns(a):
                    port = stack.enable_port(ea.name)
                sink = KernelUdp(b, B_IP, 7000, echo=False)
                s = stack.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
                s.bind((A_IP, 6000))
                stack.solicit(s, (B_IP, 7000))
                errors: list = []
                results: list = []
                stop = threading.Event()

                def sender():
                    while not stop.is_set():
                        try:
                            results.append(s.oob_sendto(b"y" * 64, (B_IP, 7000)))
                        except OSError as exc:
                            errors.append(exc.errno)
                        time.sleep(0.0005)

                tx = threading.Thread(target=sender, daemon=True)
                tx.start()
                woke: list = []
                rx = _blocked_receiver(s, woke)
                assert wait_until(lambda: len(sink.received) > 20)
                eb.delete()                              # takes A's end with it
                rx.join(3)
                assert not rx.is_alive() and woke == [errno.ENETDOWN]
                assert wait_until(lambda: ea.name not in stack.ports, 3)
                # the port is gone: sends are demoted to the kernel, which has no route now
                failed = stack.counters.tx_demote_failed
                assert wait_until(lambda: stack.counters.tx_demote_failed > failed + 3)
                stop.set()
                tx.join(2)
                assert not tx.is_alive()
                assert set(errors) <= {errno.ENETDOWN} and results[-1] == 0
                assert not port.enabled and not port.threads_alive
                assert all(e.port is not port for e in stack.frontcache.neighbours)
                assert all(r.port is not port for r in stack.frontcache.routes)
                sink.close()
            assert leftovers(a) == []
            # the interface comes back: the port can be enabled again
            with veth_pair(a, b, addr_a=A_CIDR, addr_b=B_CIDR) as (ea2, eb2):
                assert ea2.name == ea.name
                port2 = stack.enable_port(ea2.name)       # the bridge knows A's namespace
                assert port2 is not port and port2.ifindex == ea2.ifindex
                with KernelUdp(b, B_IP, 7000):
                    stack.solicit(s, (B_IP, 7000))
                    assert echo_once(s, (B_IP, 7000), b"again")[0] == b"again"
        finally:
            stack.close()
        assert leftovers(a) == []


# --------------------------------------------------------------------------------------------
# nothing stays in the kernel
# --------------------------------------------------------------------------------------------

_CHILD = """
import os, socket, sys
sys.path.insert(0, {src!r})
from evlnet.core.stack import Stack
from evlnet.constants import SOCK_OOB
st = Stack("child")
st.enable_port({ifname!r})
s = st.socket(socket.AF_INET, socket.SOCK_DGRAM | SOCK_OOB)
s.bind(("192.0.2.1", 7000))
print(len(st.kernel.diversion_filters()), flush=True)
if {kill}:
    os.kill(os.getpid(), 9)
"""


def test_no_tc_objects_survive_the_process(pair):
    """Exit without close(): the atexit hook removes the filter. Killed: the next bridge in that
    namespace removes the dead process's filter (recognised by the pid in its program)."""
    pair.stack.disable_port(pair.port)
    assert leftovers(pair.a) == []
    r = pair.a.run(sys.executable, "-c", _CHILD.format(src=SRC, ifname=pair.ea.name, kill=False))
    assert r.stdout.strip() == "1"
    assert leftovers(pair.a) == []
    r = pair.a.run(sys.executable, "-c", _CHILD.format(src=SRC, ifname=pair.ea.name, kill=True),
                   check=False)
    assert r.returncode == -9 and r.stdout.strip() == "1"
    stale = leftovers(pair.a)
    assert [kind for kind, _ in stale] == ["filter", "clsact"]
    with in_netns(pair.a):
        port = pair.stack.enable_port(pair.ea.name)     # a fresh bridge cleans up first
    assert [owner for _, owner in pair.stack.kernel.diversion_filters()] == \
        [(os.getpid(), dv._START)]
    pair.stack.disable_port(port)
    assert leftovers(pair.a) == []


def test_route_learnt_from_an_inband_ping_takes_the_fast_path(pair):
    """EVL learns routes from the in-band side: once the kernel has routed and resolved a peer
    through the oob port (here: a ping from A's own kernel), an oob send to it takes the fast
    path without solicit."""
    with KernelUdp(pair.b, B_IP, 7500, echo=False) as sink:
        s = pair.oob_socket((A_IP, 7501))
        with pytest.raises(OSError) as ei:                       # nothing known yet: demoted
            s.oob_sendto(b"before", (B_IP, 7500), MSG_DONTWAIT)
        assert ei.value.errno == errno.EINPROGRESS
        assert wait_until(lambda: len(sink.received) == 1)       # it still arrived, in-band
        pair.a.run("ping", "-c", "1", "-W", "2", B_IP)           # the kernel resolves B
        assert wait_until(lambda: pair.stack.frontcache.routes.peek(_ip(B_IP)) is not None)
        demoted = pair.stack.counters.tx_demoted
        assert s.oob_sendto(b"fast", (B_IP, 7500), MSG_DONTWAIT) == 4      # no EINPROGRESS
        assert pair.stack.counters.tx_demoted == demoted
        assert wait_until(lambda: len(sink.received) == 2)
        assert sink.received[1] == (b"fast", (A_IP, 7501))
        assert pair.port.stats().tx_packets >= 1


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")

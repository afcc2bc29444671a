"""The diversion program (classic BPF) and the rtnetlink codec, without root.

The generated program runs in a reference interpreter against frames built by scapy and is
compared with a plain-Python statement of the rule; the kernel's own classic-BPF checker
validates the programs (``SO_ATTACH_FILTER`` on an unprivileged UDP socket).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from evlnet.linux import diversion as dv
from evlnet.linux import rtnl

A1, A2, BCAST = 0xC0000201, 0xC0000203, 0xC00002FF       # 192.0.2.1, .3, .255
OTHER = 0xC6336407                                        # 198.51.100.7


def ip(n: int) -> str:
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def frame(pkt, vlan: int | None = None) -> tuple[bytes, int | None]:
    """What a packet hook sees: the frame with the (outer) tag moved to the metadata."""
    raw = bytes(pkt)
    if vlan is not None:
        assert raw[12:14] == b"\x81\x00"
        tci = int.from_bytes(raw[14:16], "big")
        return raw[:12] + raw[16:], tci
    return raw, None


def verdict(rule, pkt, tagged=False) -> bool:
    ops = dv.build_program(rule, dv.SOCKET_ACCEPT, dv.SOCKET_PASS)
    data, tci = frame(pkt, 0 if tagged else None)
    r = dv.run_program(ops, data, tci)
    assert r in (dv.SOCKET_ACCEPT, dv.SOCKET_PASS)
    # the tc flavour is the same program with other verdicts
    t = dv.run_program(dv.build_program(rule, dv.TC_ACT_SHOT, dv.TC_ACT_UNSPEC), data, tci)
    assert (t == dv.TC_ACT_SHOT) == (r == dv.SOCKET_ACCEPT)
    return r == dv.SOCKET_ACCEPT


ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def udp(dst, dport, src=0xC0000202, **kw):
    return ETH / IP(src=ip(src), dst=ip(dst), **kw) / UDP(sport=5555, dport=dport) / (b"x" * 20)


RULE = dv.DiversionRule(udp=((7000, (A1,)), (7100, (A1, A2, BCAST))), icmp_echo=(A1,),
                        fragments=(A1, A2, BCAST))


def test_udp_to_bound_address_and_port_only():
    assert verdict(RULE, udp(A1, 7000))
    assert not verdict(RULE, udp(A2, 7000))          # bound to A1 only
    assert not verdict(RULE, udp(A1, 7001))          # another port: the kernel's
    assert verdict(RULE, udp(A2, 7100)) and verdict(RULE, udp(BCAST, 7100))
    assert not verdict(RULE, udp(OTHER, 7100))
    # IP options move the UDP header: the port is found through the header length
    assert verdict(RULE, udp(A1, 7000, options=[b"\x01\x01\x01\x00"]))


def test_icmp_echo_requests_only():
    assert verdict(RULE, ETH / IP(src="192.0.2.2", dst=ip(A1)) / ICMP(type=8))
    assert not verdict(RULE, ETH / IP(src="192.0.2.2", dst=ip(A1)) / ICMP(type=0))
    assert not verdict(RULE, ETH / IP(src="192.0.2.2", dst=ip(A2)) / ICMP(type=8))


def test_fragments_by_address():
    first = udp(A1, 9999, flags="MF")                 # port unknown to the rule, but a fragment
    later = ETH / IP(src="192.0.2.2", dst=ip(A1), frag=100, proto=17) / (b"y" * 40)
    assert verdict(RULE, first) and verdict(RULE, later)
    assert not verdict(RULE, ETH / IP(src="192.0.2.2", dst=ip(OTHER), frag=3, proto=17) / b"z")


def test_non_ip_is_never_diverted_by_default():
    arp = ETH / ARP(op=1, psrc="192.0.2.2", pdst=ip(A1))
    assert not verdict(RULE, arp)
    assert not verdict(dv.DiversionRule(all_ipv4=True), arp)
    assert verdict(dv.DiversionRule(all_ipv4=True), udp(OTHER, 1))
    assert verdict(dv.DiversionRule(ethertypes=(0x88B5,)), Ether(type=0x88B5) / (b"\0" * 46))
    assert not verdict(dv.DiversionRule(ethertypes=(0x88B5,)), Ether(type=0x88B6) / (b"\0" * 46))


def test_empty_rule_accepts_nothing():
    rule = dv.DiversionRule()
    assert rule.empty
    for pkt in (udp(A1, 7000), ETH / IP(dst=ip(A1)) / ICMP(), ETH / ARP()):
        assert not verdict(rule, pkt)


def test_vlan_rule_on_the_parent():
    rule = dv.DiversionRule(udp=((7000, (A1,)),), tagged_vids=(42, 100))
    tagged = Ether() / Dot1Q(vlan=42, prio=5) / IP(dst=ip(OTHER)) / UDP(dport=1)
    assert verdict(rule, tagged, tagged=True)                     # any tagged IPv4 in the set
    assert not verdict(rule, Ether() / Dot1Q(vlan=43) / IP() / UDP(), tagged=True)
    assert not verdict(rule, Ether() / Dot1Q(vlan=42) / ARP(), tagged=True)
    # QinQ: the inner tag selects (the outer one is in the metadata)
    qinq = Ether() / Dot1Q(vlan=7) / Dot1Q(vlan=100) / IP() / UDP()
    assert verdict(rule, qinq, tagged=True)
    assert not verdict(rule, Ether() / Dot1Q(vlan=100) / Dot1Q(vlan=7) / IP() / UDP(), tagged=True)
    # the socket rule covers untagged frames only
    assert not verdict(dv.DiversionRule(udp=((7000, (A1,)),)),
                       Ether() / Dot1Q(vlan=42) / IP(dst=ip(A1)) / UDP(dport=7000), tagged=True)


def _reference(rule: dv.DiversionRule, data: bytes, tci) -> bool:
    """The rule in plain Python (what diversion.py's docstring promises)."""
    if tci is not None:
        et = int.from_bytes(data[12:14], "big")
        if et == 0x8100:
            vid, et = int.from_bytes(data[14:16], "big") & 0xFFF, int.from_bytes(data[16:18], "big")
        else:
            vid = tci & 0xFFF
        return et == 0x0800 and vid in rule.tagged_vids
    et = int.from_bytes(data[12:14], "big")
    if et in rule.ethertypes:
        return True
    if et != 0x0800:
        return False
    if rule.all_ipv4:
        return True
    if data[14] >> 4 != 4:
        return False
    dst = int.from_bytes(data[30:34], "big")
    if int.from_bytes(data[20:22], "big") & 0x3FFF:
        return dst in rule.fragments
    ihl = (data[14] & 0xF) * 4
    if data[23] == 17:
        dport = int.from_bytes(data[14 + ihl + 2:14 + ihl + 4], "big")
        return any(p == dport and dst in addrs for p, addrs in rule.udp)
    if data[23] == 1:
        return dst in rule.icmp_echo and data[14 + ihl] == 8
    return False


_addrs = st.sampled_from([A1, A2, BCAST, OTHER])
_ports = st.sampled_from([7000, 7001, 7100, 53])


@st.composite
def rules(draw):
    udp_map = draw(st.dictionaries(_ports, st.sets(_addrs, min_size=1), max_size=3))
    return dv.DiversionRule(
        udp=tuple((p, tuple(sorted(a))) for p, a in sorted(udp_map.items())),
        icmp_echo=tuple(sorted(draw(st.sets(_addrs)))),
        fragments=tuple(sorted(draw(st.sets(_addrs)))),
        ethertypes=tuple(sorted(draw(st.sets(st.sampled_from([0x88B5, 0x88A4]))))),
        all_ipv4=draw(st.booleans()),
        tagged_vids=tuple(sorted(draw(st.sets(st.sampled_from([2, 42, 4094]))))))


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["udp", "icmp", "frag", "arp", "other", "tagged", "qinq"]))
    dst = ip(draw(_addrs))
    if kind == "udp":
        pkt = ETH / IP(dst=dst, ihl=draw(st.sampled_from([None, 6]))) / UDP(dport=draw(_ports))
        if pkt[IP].ihl == 6:
            pkt[IP].options = [b"\x01\x01\x01\x00"]
    elif kind == "icmp":
        pkt = ETH / IP(dst=dst) / ICMP(type=draw(st.sampled_from([0, 8, 3])))
    elif kind == "frag":
        pkt = ETH / IP(dst=dst, proto=17, frag=draw(st.integers(0, 50)), flags="MF") / (b"q" * 16)
    elif kind == "arp":
        pkt = ETH / ARP()
    elif kind == "other":
        pkt = Ether(type=draw(st.sampled_from([0x88B5, 0x88A4, 0x86DD]))) / (b"\0" * 46)
    elif kind == "tagged":
        pkt = Ether() / Dot1Q(vlan=draw(st.sampled_from([2, 42, 43]))) / IP(dst=dst) / UDP()
    else:
        inner = draw(st.sampled_from([2, 42, 43]))
        pkt = Ether() / Dot1Q(vlan=5) / Dot1Q(vlan=inner) / IP() / UDP()
    return pkt, kind in ("tagged", "qinq")


@settings(max_examples=120, deadline=None)
@given(rules(), frames())
def test_program_matches_the_rule(rule, item):
    pkt, tagged = item
    data, tci = frame(pkt, 0 if tagged else None)
    ops = dv.build_program(rule, 1, 0)
    assert bool(dv.run_program(ops, data, tci)) == _reference(rule, data, tci)


class _Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Filter))]


def _kernel_accepts(ops) -> None:
    arr = (_Filter * len(ops))(*[_Filter(*o) for o in ops])
    prog = _Fprog(len(ops), ctypes.cast(arr, ctypes.POINTER(_Filter)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, 26, bytes(prog))         # SO_ATTACH_FILTER


@pytest.mark.parametrize("rule", [
    dv.DiversionRule(), RULE, dv.DiversionRule(all_ipv4=True, tagged_vids=(42,)),
    dv.DiversionRule(udp=tuple((p, (A1, A2)) for p in range(1000, 2800)), icmp_echo=(A1,)),
])
def test_kernel_checker_accepts_the_programs(rule):
    ops = dv.build_program(rule, dv.SOCKET_ACCEPT, dv.SOCKET_PASS)
    assert len(ops) <= dv.BPF_MAXINSNS
    _kernel_accepts(ops)


def test_too_many_bindings_fall_back_to_addresses():
    rule = dv.DiversionRule(udp=tuple((p, (A1,)) for p in range(1000, 4000)))
    ops = dv.build_program(rule, 1, 0)
    assert len(ops) < 100
    data, _ = frame(udp(A1, 60000))
    assert dv.run_program(ops, data) == 1                   # coarser, never narrower
    assert dv.run_program(ops, frame(udp(A2, 1000))[0]) == 0


def test_marker_names_the_owner():
    ops = dv.build_program(RULE, 2, 0xFFFFFFFF)
    pid, start = dv.marker_of(ops)
    assert pid == os.getpid() and dv.owner_alive(pid, start)
    assert not dv.owner_alive(pid, start + 1)                # same pid, another process
    assert dv.marker_of([(6, 0, 0, 0)]) is None


def test_rtnl_attributes_round_trip():
    body = rtnl.attr(1, b"abc") + rtnl.nested(2, rtnl.attr(3, struct.pack("=I", 7)))
    a = rtnl.parse_attrs(body)
    assert bytes(a[1]) == b"abc"
    assert struct.unpack("=I", rtnl.parse_attrs(a[2])[3])[0] == 7


def test_rtnl_decodes_a_neighbour_message():
    body = struct.pack("=BxxxiHBB", socket.AF_INET, 4, rtnl.NUD_REACHABLE, 0, 1) + \
        rtnl.attr(rtnl.NDA_DST, socket.inet_aton("192.0.2.2")) + \
        rtnl.attr(rtnl.NDA_LLADDR, b"\x02\0\0\0\0\x09")
    msg = rtnl.decode(rtnl.RTM_NEWNEIGH, memoryview(body))
    assert (msg.ifindex, msg.state, msg.dst, msg.lladdr, msg.deleted) == \
        (4, rtnl.NUD_REACHABLE, 0xC0000202, b"\x02\0\0\0\0\x09", False)
    assert rtnl.decode(rtnl.RTM_DELNEIGH, memoryview(body)).deleted


def test_rtnl_route_lookup_without_privileges():
    """RTM_GETROUTE needs no privilege: the loopback route of this namespace."""
    nl = rtnl.RtnlSocket()
    try:
        ans = rtnl.route_get(nl, 0x7F000001)
        assert ans.rtype == rtnl.RTN_LOCAL and ans.oif == socket.if_nametoindex("lo")
        with pytest.raises(OSError) as ei:
            rtnl.neigh_set(nl, 0xC0000202, 999999, rtnl.NUD_PERMANENT, b"\0" * 6)
        assert ei.value.errno in (errno.ENODEV, errno.EPERM, errno.EINVAL)
    finally:
        nl.close()

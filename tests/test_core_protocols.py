"""Protocols on the virtual link, checked against scapy: Ethernet/802.1Q/QinQ, VLAN ports, ARP,
IPv4 checks, fragmentation and reassembly, UDP checksums, ICMP echo, custom protocols."""
from __future__ import annotations

import errno
import random
import socket as pysocket

import pytest
from scapy.layers.inet import ICMP, IP, UDP, defragment, fragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    WireTap,
    extra,
    ip2int,
    mac_str,
    make_pair,
    make_solo,
    pair,
    raises_errno,
    solo,
    stacks,
    unique,
    wait_until,
)

from evlnet import (
    AF_INET,
    AF_OOB,
    AF_PACKET,
    ETH_P_ALL,
    MSG_DONTWAIT,
    SOCK_DGRAM,
    SOCK_OOB,
    SOCK_RAW,
    Protocol,
    VirtualLink,
)

PEER_IP = "192.0.2.9"          # the raw wire's address (nobody's stack)
ETH_P_TEST = 0x88B5


def _udp_frame(solo, payload=b"hello", dport=6000, src=PEER_IP, dst=B_IP, eth_dst=None,
               ip_kw=None, udp_kw=None, tags=()):
    eth = Ether(dst=eth_dst or mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    l2 = eth
    for tag in tags:
        l2 = l2 / tag
    return l2 / IP(src=src, dst=dst, **(ip_kw or {})) / UDP(sport=1234, dport=dport,
                                                             **(udp_kw or {})) / Raw(payload)


class Marker:
    """A datagram sent after the frames under test: once received, the RX thread (in order)
    has processed everything before it."""

    def __init__(self, solo) -> None:
        self.solo = solo
        self.sock = solo.udp((B_IP, 6999))
        self.n = 0

    def sync(self) -> None:
        self.n += 1
        token = b"marker%d" % self.n
        self.solo.inject(_udp_frame(self.solo, token, dport=6999))
        assert self.sock.oob_recvmsg(100, timeout=5)[0] == token


def _nothing_queued(sock) -> bool:
    try:
        sock.oob_recvmsg(70000, flags=MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


# -- Ethernet, 802.1Q, QinQ ----------------------------------------------------------------------
def test_ethernet_ii_udp_received(solo):
    sb = solo.udp((B_IP, 6000))
    solo.inject(_udp_frame(solo, b"plain ethernet"))
    data, _, _, addr = sb.oob_recvmsg(100, timeout=5)
    assert data == b"plain ethernet" and addr == (PEER_IP, 1234)


def test_vlan_tagged_frames_follow_the_vlan_set(solo):
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    solo.B.set_vlans("42-45,100")
    assert solo.B.get_vlans() == "42-45,100"
    cases = [
        ((Dot1Q(vlan=43),), True),                        # single 802.1Q tag in the set
        ((Dot1Q(vlan=46),), False),                       # not in the set
        ((Dot1AD(vlan=7), Dot1Q(vlan=100)), True),        # QinQ: the inner tag selects
        ((Dot1Q(vlan=5), Dot1Q(vlan=44)), True),          # 802.1Q-in-802.1Q, inner selects
        ((Dot1AD(vlan=42), Dot1Q(vlan=7)), False),        # outer in the set, inner not
        ((Dot1Q(vlan=45, prio=5),), True),                # PCP bits do not matter
    ]
    for i, (tags, accepted) in enumerate(cases):
        before = extra(solo.B, solo.pb)["rx_filtered"]
        solo.inject(_udp_frame(solo, b"case%d" % i, tags=tags))
        m.sync()
        if accepted:
            assert sb.oob_recvmsg(100, flags=MSG_DONTWAIT)[0] == b"case%d" % i, tags
            assert extra(solo.B, solo.pb)["rx_filtered"] == before
        else:
            assert _nothing_queued(sb), tags
            assert extra(solo.B, solo.pb)["rx_filtered"] == before + 1
    solo.B.set_vlans("")                                   # cleared: tagged frames dropped
    assert solo.B.get_vlans() == ""
    solo.inject(_udp_frame(solo, b"late", tags=(Dot1Q(vlan=43),)))
    m.sync()
    assert _nothing_queued(sb)


def test_vlan_filter_applies_before_packet_sockets_and_tags_are_popped(solo):
    sb = solo.udp((B_IP, 6000))
    tap = solo.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    m = Marker(solo)
    solo.B.set_vlans("43")
    solo.inject(_udp_frame(solo, b"outside", tags=(Dot1Q(vlan=46),)))
    solo.inject(_udp_frame(solo, b"inside", tags=(Dot1AD(vlan=9), Dot1Q(vlan=43))))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"inside"
    frame, _, _, addr = tap.oob_recvmsg(2000, timeout=5)      # "outside" never reached it
    untagged = bytes(_udp_frame(solo, b"inside"))
    assert frame == untagged and addr[1] == 0x0800 and addr[2] == 0
    m.sync()
    tap.oob_recvmsg(2000, timeout=5)                           # the marker
    with raises_errno(errno.EWOULDBLOCK):
        tap.oob_recvmsg(2000, flags=MSG_DONTWAIT)
    assert extra(solo.B, solo.pb)["rx_filtered"] == 1
    tap.close()


@pytest.mark.parametrize("spec", ["0", "1", "4095", "4096", "1-3", "40-4095", "abc", "9-5",
                                  "42,,43", "-1"])
def test_set_vlans_rejects_reserved_and_malformed(stacks, spec):
    s = stacks()
    s.set_vlans("42")
    with raises_errno(errno.EINVAL):
        s.set_vlans(spec)
    assert s.get_vlans() == "42"                            # unchanged by the failed call


def test_set_vlans_accepts_edges(stacks):
    s = stacks()
    s.set_vlans("2,4094, 100-102")
    assert s.get_vlans() == "2,100-102,4094"


def test_vlan_devices_as_ports(stacks):
    link = VirtualLink(unique("qa"), unique("qb"))
    A, B = stacks("A"), stacks("B")
    va, vb = link.a.add_vlan(42), link.b.add_vlan(42)
    A.add_interface(link.a)
    B.add_interface(link.b)
    A.add_interface(va, "198.51.100.1/24")
    B.add_interface(vb, "198.51.100.2/24")
    pa, pb = A.enable_port(va.name), B.enable_port(vb.name)
    tap = WireTap(link.b)                                  # sees frames as they are on the wire
    try:
        sa = A.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        sb = B.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        sb.bind(("198.51.100.2", 6000))
        A.solicit(sa, ("198.51.100.2", 0))                 # ARP runs over the VLAN too
        assert sa.oob_sendmsg([b"over vlan 42"], address=("198.51.100.2", 6000)) == 12
        data, _, _, addr = sb.oob_recvmsg(100, timeout=5)
        assert data == b"over vlan 42" and addr[0] == "198.51.100.1"
        wire = [Ether(f) for f in tap.frames]
        udp = [f for f in wire if f.haslayer(UDP)]
        assert udp and all(f[Dot1Q].vlan == 42 and f[Dot1Q].type == 0x0800 for f in udp)
        arp = [f for f in wire if f.haslayer(ARP)]
        assert arp and all(f.haslayer(Dot1Q) and f[Dot1Q].vlan == 42 for f in arp)
        # a packet socket on the VLAN port gets the frame untagged
        raw = B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
        raw.bind((vb.name, ETH_P_ALL))
        sa.oob_sendmsg([b"again"], address=("198.51.100.2", 6000))
        frame, _, _, paddr = raw.oob_recvmsg(2000, timeout=5)
        assert frame[12:14] == b"\x08\x00" and b"again" in frame
        assert paddr[1] == 0x0800 and paddr[4] == link.a.mac
        assert paddr[0] == link.b.name             # EVL: sll_ifindex of the real device
        # untagged traffic does not reach the VLAN port
        assert pa.vlan_id == 42 and pb.vlan_id == 42
        raw.close()
    finally:
        tap.restore()


# -- ARP -----------------------------------------------------------------------------------------
def test_arp_request_answered(solo):
    def who_has(target):
        return (Ether(dst="ff:ff:ff:ff:ff:ff", src=mac_str(solo.wire_mac))
                / ARP(op=1, hwsrc=mac_str(solo.wire_mac), psrc=PEER_IP, pdst=target))

    solo.inject(who_has(B_IP))
    replies = solo.tap.wait_for(lambda f: Ether(f).haslayer(ARP))
    rep = Ether(replies[0])
    assert rep.dst == mac_str(solo.wire_mac) and rep.src == mac_str(solo.b_mac)
    assert rep.type == 0x0806
    a = rep[ARP]
    assert (a.op, a.hwtype, a.ptype, a.hwlen, a.plen) == (2, 1, 0x0800, 6, 4)
    assert a.hwsrc == mac_str(solo.b_mac) and a.psrc == B_IP
    assert a.hwdst == mac_str(solo.wire_mac) and a.pdst == PEER_IP
    assert len(replies[0]) >= 60
    # the requester is learnt as a neighbour (by the in-band stage, once the core handed the
    # request up)
    assert wait_until(lambda: solo.B.frontcache.neighbours.peek(ip2int(PEER_IP)) is not None)
    neigh = solo.B.frontcache.neighbours.peek(ip2int(PEER_IP))
    assert neigh.mac == solo.wire_mac
    # a request for an address that is not ours gets no answer
    solo.inject(who_has("192.0.2.50"))
    solo.inject(who_has(B_IP))
    replies = solo.tap.wait_for(lambda f: Ether(f).haslayer(ARP), count=2)
    assert all(Ether(f)[ARP].psrc == B_IP for f in replies)
    assert extra(solo.B, solo.pb)["arp_replies"] == 2


# -- IPv4 input checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, ip_kw", [
    ("bad version", dict(version=6)),
    ("ihl below 5", dict(ihl=4)),
    ("bad header checksum", dict(chksum=0x1234)),
    ("total length beyond the frame", dict(len=1000)),
    ("total length below the header", dict(len=12)),
])
def test_ipv4_header_errors_dropped_and_counted(solo, name, ip_kw):
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    before = extra(solo.B, solo.pb)["rx_ip_errors"]
    solo.inject(_udp_frame(solo, b"bad", ip_kw=ip_kw))
    m.sync()
    assert _nothing_queued(sb), name
    assert extra(solo.B, solo.pb)["rx_ip_errors"] == before + 1, name


def test_truncated_frames_dropped_and_counted(solo):
    m = Marker(solo)
    good = bytes(_udp_frame(solo, b"x"))
    before = extra(solo.B, solo.pb)
    solo.inject(good[:10])                                 # not even an Ethernet header
    solo.inject(good[:14 + 12])                            # IPv4 header cut short
    m.sync()
    after = extra(solo.B, solo.pb)
    assert after["rx_malformed"] == before["rx_malformed"] + 1
    assert after["rx_ip_errors"] == before["rx_ip_errors"] + 1


def test_ethernet_padding_is_stripped(solo):
    sb = solo.udp((B_IP, 6000))
    frame = bytes(_udp_frame(solo, b"ab")) + b"\xee" * 30   # trailing junk after tot_len
    solo.inject(frame)
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"ab"


def test_frames_not_for_us_dropped_and_counted(solo):
    sb = solo.udp(("0.0.0.0", 6000))
    m = Marker(solo)
    before = extra(solo.B, solo.pb)["rx_otherhost"]
    solo.inject(_udp_frame(solo, b"other mac", eth_dst="02:00:00:00:00:99"))
    solo.inject(_udp_frame(solo, b"other ip", dst="192.0.2.99"))
    solo.inject(_udp_frame(solo, b"other net", dst="203.0.113.5"))
    m.sync()
    assert _nothing_queued(sb)
    assert extra(solo.B, solo.pb)["rx_otherhost"] == before + 3
    # broadcast is ours
    solo.inject(_udp_frame(solo, b"bcast", dst="192.0.2.255", eth_dst="ff:ff:ff:ff:ff:ff"))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"bcast"


# -- fragmentation and reassembly ----------------------------------------------------------------
def test_tx_fragmentation_checked_by_scapy(pair):
    p = pair
    tap = WireTap(p.link.b)
    try:
        sa, sb = p.solicited_pair()
        payload = bytes(random.Random(1).randbytes(4000))
        assert sa.oob_sendmsg([payload[:1], payload[1:2999], payload[2999:]],
                              address=(B_IP, 6000)) == 4000
        assert sb.oob_recvmsg(5000, timeout=5)[0] == payload
        frags = [Ether(f) for f in tap.frames if Ether(f).haslayer(IP)
                 and Ether(f)[IP].proto == 17]
        assert len(frags) == 3
        ids = {f[IP].id for f in frags}
        assert len(ids) == 1
        for i, f in enumerate(frags):
            assert len(bytes(f)) <= 1514
            assert f[IP].frag * 8 == i * 1480
            assert bool(f[IP].flags.MF) == (i < 2)
            assert not f[IP].flags.DF
            ip = f[IP].copy()
            ip.chksum = None
            assert IP(bytes(ip))[IP].chksum == f[IP].chksum      # header checksums valid
        whole = defragment([f[IP] for f in frags])
        assert len(whole) == 1
        dg = IP(bytes(whole[0]))
        assert bytes(dg[UDP].payload) == payload
        assert dg[UDP].len == 4008 and dg[UDP].sport == sa.getsockname()[1]
        checked = dg.copy()
        checked[UDP].chksum = None
        assert IP(bytes(checked))[UDP].chksum == dg[UDP].chksum    # UDP checksum valid
    finally:
        tap.restore()


@pytest.mark.parametrize("order", ["reversed", "shuffled", "duplicates"])
def test_rx_reassembly_out_of_order(solo, order):
    sb = solo.udp((B_IP, 6000))
    payload = bytes(random.Random(2).randbytes(5000))
    dg = IP(src=PEER_IP, dst=B_IP, id=0x4242) / UDP(sport=1234, dport=6000) / Raw(payload)
    frags = fragment(dg, fragsize=1200)
    assert len(frags) == 5
    if order == "reversed":
        frags = frags[::-1]
    elif order == "shuffled":
        random.Random(3).shuffle(frags)
    else:
        frags = [frags[2], frags[0], frags[2], frags[4], frags[1], frags[0], frags[3]]
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    for f in frags:
        solo.inject(eth / f)
    data, _, _, addr = sb.oob_recvmsg(6000, timeout=5)
    assert data == payload and addr == (PEER_IP, 1234)
    assert extra(solo.B, solo.pb)["rx_reasm_ok"] == 1
    assert wait_until(lambda: solo.pb.rx_pool.free == solo.pb.rx_pool.total)
    state = solo.pb.reassembly
    assert state.pending == 0 and state.buffers_free == state.buffers_total


def test_reassembly_timeout(make_solo):
    solo = make_solo(ipfrag_time=0.4)
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    dg = IP(src=PEER_IP, dst=B_IP, id=7) / UDP(sport=1234, dport=6000) / Raw(bytes(3000))
    frags = fragment(dg, fragsize=1200)
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    solo.inject(eth / frags[0])
    m.sync()
    assert solo.pb.reassembly.pending == 1
    assert wait_until(lambda: not solo.pb.reassembly.pending)
    assert extra(solo.B, solo.pb)["rx_reasm_fails"] == 1
    state = solo.pb.reassembly
    assert state.buffers_free == state.buffers_total
    assert wait_until(lambda: solo.pb.rx_pool.free == solo.pb.rx_pool.total)
    for f in frags[1:]:                                     # too late: no datagram
        solo.inject(eth / f)
    m.sync()
    assert _nothing_queued(sb)
    assert wait_until(lambda: not solo.pb.reassembly.pending)   # expired in turn
    assert extra(solo.B, solo.pb)["rx_reasm_ok"] == 0


def test_reassembly_memory_bound(make_solo):
    """At most ``ipfrag_max_datagrams`` datagrams are reassembled at once per port (their
    fragments copied into 64 KiB reassembly buffers, so no RX buffer is held); a datagram
    beyond the bound is refused and counted, the ones in progress are kept (as Linux)."""
    solo = make_solo(ipfrag_max_datagrams=4)
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))

    def frags_of(ident, size, fragsize=1000):
        # one source each: one source alone may only hold a quarter (test below)
        return fragment(IP(src=f"192.0.2.{100 + ident}", dst=B_IP, id=ident)
                        / UDP(sport=1234, dport=6000)
                        / Raw(bytes([ident & 0xFF]) * size), fragsize=fragsize)

    # first fragments of six datagrams: four are taken in, two refused
    for ident in range(1, 7):
        solo.inject(eth / frags_of(ident, 2500)[0])
        m.sync()
        assert solo.pb.reassembly.pending <= 4
    assert solo.pb.reassembly.pending == 4
    assert extra(solo.B, solo.pb)["rx_reasm_fails"] == 2
    assert solo.pb.rx_pool.free == solo.pb.rx_pool.total     # no RX buffer held
    # a refused datagram stays refused while the others wait
    for f in frags_of(6, 2500)[1:]:
        solo.inject(eth / f)
    m.sync()
    assert _nothing_queued(sb)
    # a datagram in progress completes and makes room
    for f in frags_of(1, 2500)[1:]:
        solo.inject(eth / f)
    assert sb.oob_recvmsg(5000, timeout=5)[0] == bytes([1]) * 2500
    assert solo.pb.reassembly.pending == 3
    for f in frags_of(9, 5500):
        solo.inject(eth / f)
    assert sb.oob_recvmsg(6000, timeout=5)[0] == bytes([9]) * 5500
    assert extra(solo.B, solo.pb)["rx_reasm_ok"] == 2


def test_fragment_flood_from_one_source_leaves_room_for_the_others(make_solo):
    """One address flooding first fragments gets a quarter of what can be in reassembly at
    once (16 buffers here: 4) and is refused beyond, counted; a fragmented datagram from
    another address still completes meanwhile, and plain traffic flows."""
    solo = make_solo()
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    before = extra(solo.B, solo.pb)["rx_reasm_fails"]
    for ident in range(50):
        first = fragment(IP(src=PEER_IP, dst=B_IP, id=ident) / UDP(sport=1, dport=6000)
                         / Raw(bytes(3000)), fragsize=1000)[0]
        solo.inject(eth / first)
    m.sync()
    assert solo.pb.reassembly.pending == 4
    assert extra(solo.B, solo.pb)["rx_reasm_fails"] - before == 46
    payload = bytes(range(256)) * 20
    for f in fragment(IP(src="192.0.2.77", dst=B_IP, id=3) / UDP(sport=2, dport=6000)
                      / Raw(payload), fragsize=1000):
        solo.inject(eth / f)
    data, _, _, addr = sb.oob_recvmsg(6000, timeout=5)
    assert (data, addr) == (payload, ("192.0.2.77", 2))
    solo.inject(eth / IP(src=PEER_IP, dst=B_IP) / UDP(sport=1, dport=6000) / Raw(b"plain"))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"plain"
    assert wait_until(lambda: solo.pb.rx_pool.free == solo.pb.rx_pool.total)


# -- UDP checksums -------------------------------------------------------------------------------
@pytest.mark.parametrize("pieces", [[b"a"], [b"ab"], [b"a", b"bcd", b"e"], [bytes(range(255))],
                                    [b"\xff" * 101], [b""]])
def test_udp_checksum_on_tx_checked_by_scapy(pair, pieces):
    p = pair
    tap = WireTap(p.link.b)
    try:
        sa, sb = p.solicited_pair()
        payload = b"".join(pieces)
        sa.oob_sendmsg(pieces, address=(B_IP, 6000))
        assert sb.oob_recvmsg(500, timeout=5)[0] == payload
        frame = Ether(tap.wait_for(lambda f: Ether(f).haslayer(UDP))[0])
        assert frame.dst == mac_str(p.link.b.mac) and frame.src == mac_str(p.link.a.mac)
        ip = frame[IP]
        assert (ip.src, ip.dst, ip.ttl, ip.proto, ip.len) == (A_IP, B_IP, 64, 17,
                                                             28 + len(payload))
        # EVL: DF when the payload is at most IPV4_MIN_MTU (68) bytes
        assert bool(ip.flags.DF) == (len(payload) <= 68)
        assert frame[UDP].len == 8 + len(payload)
        assert bytes(frame[UDP].payload)[:len(payload)] == payload
        assert frame[UDP].chksum != 0
        rebuilt = frame.copy()
        rebuilt[UDP].chksum = None
        rebuilt[IP].chksum = None
        again = Ether(bytes(rebuilt))
        assert again[UDP].chksum == frame[UDP].chksum
        assert again[IP].chksum == frame[IP].chksum
        assert len(tap.frames[-1]) >= 60                    # padded to the Ethernet minimum
    finally:
        tap.restore()


def test_udp_checksum_verified_on_rx(solo):
    sb = solo.udp((B_IP, 6000))
    m = Marker(solo)
    good = _udp_frame(solo, b"checked")
    correct = Ether(bytes(good))[UDP].chksum
    bad = _udp_frame(solo, b"corrupt", udp_kw=dict(chksum=correct ^ 0x5555))
    before = solo.B.get_stats(solo.pb).csum_errors
    solo.inject(bad)
    m.sync()
    assert _nothing_queued(sb)
    assert solo.B.get_stats(solo.pb).csum_errors == before + 1
    solo.inject(good)
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"checked"
    solo.inject(_udp_frame(solo, b"no checksum", udp_kw=dict(chksum=0)))   # 0: none sent
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"no checksum"
    # a corrupted byte in a fragmented datagram is caught after reassembly
    dg = IP(src=PEER_IP, dst=B_IP, id=99) / UDP(sport=1234, dport=6000) / Raw(bytes(3000))
    frags = fragment(IP(bytes(dg)), fragsize=1200)
    last = frags[-1]
    raw_last = bytearray(bytes(last))
    raw_last[-1] ^= 0xFF
    frags[-1] = IP(bytes(raw_last))
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    for f in frags:
        solo.inject(eth / f)
    m.sync()
    assert _nothing_queued(sb)
    assert solo.B.get_stats(solo.pb).csum_errors == before + 2


# -- ICMP echo -----------------------------------------------------------------------------------
def _echo(solo, payload=b"ping-payload", dst=B_IP, eth_dst=None, **icmp_kw):
    return (Ether(dst=eth_dst or mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
            / IP(src=PEER_IP, dst=dst, id=321)
            / ICMP(type=8, code=0, id=0x1234, seq=7, **icmp_kw) / Raw(payload))


def _is_echo_reply(f: bytes) -> bool:
    e = Ether(f)
    return e.haslayer(ICMP) and e[ICMP].type == 0


@pytest.mark.parametrize("payload", [b"ping-payload", b"odd", b"", bytes(range(256)) * 5])
def test_icmp_echo_answered(solo, payload):
    solo.inject(_echo(solo, payload))
    rep = Ether(solo.tap.wait_for(_is_echo_reply)[0])
    assert rep.dst == mac_str(solo.wire_mac) and rep.src == mac_str(solo.b_mac)
    assert rep[IP].src == B_IP and rep[IP].dst == PEER_IP and rep[IP].proto == 1
    icmp = rep[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x1234, 7)
    assert bytes(icmp.payload)[:len(payload)] == payload
    assert rep[IP].len == 20 + 8 + len(payload)
    rebuilt = rep.copy()
    rebuilt[ICMP].chksum = None
    rebuilt[IP].chksum = None
    again = Ether(bytes(rebuilt))
    assert again[ICMP].chksum == icmp.chksum and again[IP].chksum == rep[IP].chksum
    assert wait_until(lambda: extra(solo.B, solo.pb)["icmp_echo_replies"] == 1)  # counted after TX


def test_icmp_echo_not_answered(solo):
    m = Marker(solo)
    before = solo.B.get_stats(solo.pb).csum_errors
    solo.inject(_echo(solo, chksum=0x1111))                                 # bad checksum
    solo.inject(_echo(solo, dst="192.0.2.255", eth_dst="ff:ff:ff:ff:ff:ff"))  # broadcast
    m.sync()
    assert not [f for f in solo.tap.frames if _is_echo_reply(f)]
    assert solo.B.get_stats(solo.pb).csum_errors == before + 1
    solo.B.settings.icmp_echo_ignore_all = True
    solo.inject(_echo(solo))
    m.sync()
    assert not [f for f in solo.tap.frames if _is_echo_reply(f)]
    solo.B.settings.icmp_echo_ignore_all = False
    solo.inject(_echo(solo))
    solo.tap.wait_for(_is_echo_reply)


def test_icmp_echo_larger_than_mtu(solo):
    """A reassembled 4000-byte echo request is answered in fragments, and RX keeps going."""
    payload = bytes(random.Random(4).randbytes(4000))
    req = IP(src=PEER_IP, dst=B_IP, id=77) / ICMP(type=8, id=1, seq=2) / Raw(payload)
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    for f in fragment(IP(bytes(req)), fragsize=1400):
        solo.inject(eth / f)
    replies = solo.tap.wait_for(lambda f: Ether(f).haslayer(IP) and Ether(f)[IP].proto == 1,
                                count=3)
    assert all(len(f) <= 1514 for f in replies)
    whole = defragment([Ether(f)[IP] for f in replies])
    assert len(whole) == 1
    rep = IP(bytes(whole[0]))
    assert rep[ICMP].type == 0 and rep[ICMP].id == 1 and rep[ICMP].seq == 2
    assert bytes(rep[ICMP].payload) == payload
    rebuilt = rep.copy()
    rebuilt[ICMP].chksum = None
    assert IP(bytes(rebuilt))[ICMP].chksum == rep[ICMP].chksum
    m = Marker(solo)
    m.sync()                                                # the RX thread is still alive


# -- custom protocols ----------------------------------------------------------------------------
class _Recorder(Protocol):
    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, int]] = []

    def input_frame(self, port, pkt):
        self.seen.append((pkt.payload, pkt.src_addr))


class EtherRecorder(_Recorder):
    ethertype = ETH_P_TEST


class IpRecorder(_Recorder):
    ip_protocol = 253                                        # RFC 3692 experimentation


class OobFamily(_Recorder):
    family = AF_OOB
    sock_type = SOCK_DGRAM
    ethertype = 0x88B6

    def create_socket(self, family, sock_type, proto, flags):
        return ("custom socket", family, sock_type, proto)


def test_custom_protocol_by_ethertype(solo):
    proto = solo.B.register_protocol(EtherRecorder())
    assert proto.stack is solo.B
    frame = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac),
                  type=ETH_P_TEST) / Raw(b"custom L2" + bytes(40))
    solo.inject(frame)
    assert wait_until(lambda: proto.seen)
    assert proto.seen[0][0] == b"custom L2" + bytes(40)
    tagged = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac)) / Dot1Q(
        vlan=50, type=ETH_P_TEST) / Raw(b"tagged" + bytes(40))
    solo.B.set_vlans("50")
    solo.inject(tagged)
    assert wait_until(lambda: len(proto.seen) == 2)
    assert proto.seen[1][0] == b"tagged" + bytes(40)
    solo.B.protocols.unregister(proto)
    before = extra(solo.B, solo.pb)["rx_unknown_proto"]
    solo.inject(frame)
    assert wait_until(lambda: extra(solo.B, solo.pb)["rx_unknown_proto"] == before + 1)
    assert len(proto.seen) == 2


def test_custom_protocol_by_ip_protocol(solo):
    proto = solo.B.register_protocol(IpRecorder())
    pkt = (Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
           / IP(src=PEER_IP, dst=B_IP, proto=253) / Raw(b"custom L4 payload"))
    solo.inject(pkt)
    assert wait_until(lambda: proto.seen)
    assert proto.seen[0] == (b"custom L4 payload", ip2int(PEER_IP))
    big = IP(src=PEER_IP, dst=B_IP, proto=253, id=5) / Raw(bytes(range(256)) * 12)
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    for f in fragment(IP(bytes(big)), fragsize=1000):       # reassembled before dispatch
        solo.inject(eth / f)
    assert wait_until(lambda: len(proto.seen) == 2)
    assert proto.seen[1][0] == bytes(range(256)) * 12


def test_custom_protocol_sockets(stacks):
    s = stacks()
    with raises_errno(errno.EAFNOSUPPORT):
        s.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, 0)
    s.register_protocol(OobFamily())
    assert s.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, 9) == ("custom socket", AF_OOB, SOCK_DGRAM, 9)
    with raises_errno(errno.ESOCKTNOSUPPORT):
        s.socket(AF_OOB, SOCK_RAW | SOCK_OOB, 0)


@pytest.mark.parametrize("attrs", [
    dict(ethertype=ETH_P_TEST),          # taken by the first registration below
    dict(ip_protocol=253),
    dict(ip_protocol=17),                # UDP
    dict(ip_protocol=1),                 # ICMP (answered by the stack)
    dict(ethertype=0x0800),              # IPv4
    dict(ethertype=0x0806),              # ARP
])
def test_duplicate_registration_eexist(stacks, attrs):
    s = stacks()
    s.register_protocol(EtherRecorder())
    s.register_protocol(IpRecorder())
    dup = type("Dup", (_Recorder,), attrs)()
    with raises_errno(errno.EEXIST):
        s.register_protocol(dup)
    assert dup.stack is None


class Exploding(_Recorder):
    ethertype = 0x88B7

    def input_frame(self, port, pkt):
        raise RuntimeError("custom protocol bug")


def test_faulty_custom_protocol_does_not_kill_the_port(solo):
    solo.B.register_protocol(Exploding())
    sb = solo.udp((B_IP, 6000))
    solo.inject(Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac), type=0x88B7)
                / Raw(bytes(46)))
    solo.inject(_udp_frame(solo, b"still alive"))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"still alive"
    assert wait_until(lambda: extra(solo.B, solo.pb)["inband_errors"] == 1)
    assert extra(solo.B, solo.pb)["rx_inband"] == 1          # the core handed it up once


def test_ipv4_options_are_skipped(solo):
    from scapy.layers.inet import IPOption_NOP, IPOption_Router_Alert
    sb = solo.udp((B_IP, 6000))
    frame = _udp_frame(solo, b"with options",
                       ip_kw=dict(options=[IPOption_Router_Alert(), IPOption_NOP()]))
    assert Ether(bytes(frame))[IP].ihl > 5
    solo.inject(frame)
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"with options"

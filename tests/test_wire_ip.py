"""IPv4, UDP, ICMP echo and ARP codecs, checked against scapy both ways and by round trips."""
from __future__ import annotations

import ipaddress
import logging
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.inet import ICMP, IP, UDP, IPOption_RR  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402

from evlnet.wire import WireError  # noqa: E402
from evlnet.wire.arp import ARP_LEN, ARP_REPLY, ARP_REQUEST, ArpRepr  # noqa: E402
from evlnet.wire.ethernet import ETH_P_IP, EthernetRepr, mac_to_str  # noqa: E402
from evlnet.wire.icmp import (  # noqa: E402
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    IcmpEchoRepr,
)
from evlnet.wire.ipv4 import (  # noqa: E402
    INADDR_ANY,
    INADDR_BROADCAST,
    IP_DF,
    IP_MF,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    IPV4_HEADER,
    IPV4_MIN_HLEN,
    Ipv4Repr,
    bytes_to_int,
    int_to_ip,
    ip_to_bytes,
    ip_to_int,
    is_multicast,
    multicast_mac,
)
from evlnet.wire.udp import UDP_HLEN, UdpRepr  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None)
SCAPY_SETTINGS = settings(max_examples=60, deadline=None)

addrs = st.integers(0, 0xFFFFFFFF)
ports = st.integers(0, 0xFFFF)
macs = st.binary(min_size=6, max_size=6)

SRC = ip_to_int("192.0.2.1")
DST = ip_to_int("198.51.100.7")


def reason(exc_info) -> str:
    return exc_info.value.reason


def ipv4_reprs(max_payload: int = 65515):
    return st.builds(
        Ipv4Repr, src=addrs, dst=addrs, protocol=st.integers(0, 255),
        payload_len=st.integers(0, max_payload), ttl=st.integers(0, 255),
        tos=st.integers(0, 255), ident=st.integers(0, 0xFFFF), dont_fragment=st.booleans(),
        more_fragments=st.booleans(), frag_offset=st.integers(0, 0x1FFF).map(lambda u: u * 8))


def udp_datagram(payload: bytes, src=SRC, dst=DST, sport=5000, dport=6000) -> bytes:
    """Our IPv4 header + our UDP segment."""
    seg = UdpRepr(sport, dport, len(payload)).to_bytes(payload, src, dst)
    return Ipv4Repr(src, dst, IPPROTO_UDP, len(seg)).to_bytes() + seg


def scapy_recomputed(pkt):
    """Dissect *pkt* again with every checksum deleted, so scapy computes them itself."""
    copy = pkt.copy()
    for layer in (IP, UDP, ICMP):
        if layer in copy:
            del copy[layer].chksum
    return pkt.__class__(raw(copy))


# --- address helpers -----------------------------------------------------------------------

def test_ip_to_int_examples():
    assert ip_to_int("0.0.0.0") == INADDR_ANY == 0
    assert ip_to_int("255.255.255.255") == INADDR_BROADCAST
    assert ip_to_int("192.0.2.1") == 0xC0000201
    assert int_to_ip(0xC0000201) == "192.0.2.1"
    assert ip_to_bytes("10.1.2.3") == b"\x0a\x01\x02\x03"
    assert ip_to_bytes(0x0A010203) == b"\x0a\x01\x02\x03"
    assert bytes_to_int(b"\x0a\x01\x02\x03") == 0x0A010203


@SETTINGS
@given(addrs)
def test_ip_helpers_match_stdlib(n):
    text = int_to_ip(n)
    assert text == str(ipaddress.IPv4Address(n))
    assert ip_to_int(text) == n
    assert ip_to_bytes(n) == socket.inet_aton(text)
    assert bytes_to_int(socket.inet_aton(text)) == n
    assert is_multicast(n) == ipaddress.IPv4Address(n).is_multicast


@pytest.mark.parametrize("bad", [
    "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "1.2.3.4 ", " 1.2.3.4", "01.2.3.4",
    "1..2.3", "a.b.c.d", "1.2.3.\u0664", "1.2.3.+4", "1.2.3.0x4", "1234.1.1.1",
])
def test_ip_to_int_rejects(bad):
    with pytest.raises(ValueError):
        ip_to_int(bad)


def test_int_to_ip_and_bytes_to_int_reject():
    with pytest.raises(ValueError):
        int_to_ip(-1)
    with pytest.raises(ValueError):
        int_to_ip(1 << 32)
    with pytest.raises(ValueError):
        bytes_to_int(b"\x01\x02\x03")


@pytest.mark.parametrize("group", ["224.0.0.1", "239.255.255.250", "239.129.2.3", "232.1.1.1"])
def test_multicast_mac_matches_scapy(group):
    n = ip_to_int(group)
    assert is_multicast(n)
    frame = Ether(raw(Ether(src="02:00:00:00:00:01") / IP(src="10.0.0.1", dst=group)))
    assert mac_to_str(multicast_mac(n)) == frame.dst
    assert multicast_mac(n)[:3] == b"\x01\x00\x5e" and not multicast_mac(n)[3] & 0x80


def test_is_multicast_bounds():
    assert not is_multicast(ip_to_int("223.255.255.255"))
    assert is_multicast(ip_to_int("224.0.0.0"))
    assert is_multicast(ip_to_int("239.255.255.255"))
    assert not is_multicast(ip_to_int("240.0.0.0"))


# --- IPv4 ----------------------------------------------------------------------------------

@SETTINGS
@given(ipv4_reprs())
def test_ipv4_round_trip(ip):
    header = ip.to_bytes()
    assert len(header) == IPV4_MIN_HLEN == ip.header_len
    parsed, hlen = Ipv4Repr.parse(header + bytes(ip.payload_len))
    assert parsed == ip
    assert hlen == 20
    assert ip.total_len == 20 + ip.payload_len


@SCAPY_SETTINGS
@given(ipv4_reprs(max_payload=64), st.data())
def test_ipv4_ours_dissected_by_scapy(ip, data):
    payload = data.draw(st.binary(min_size=ip.payload_len, max_size=ip.payload_len))
    wire = ip.to_bytes() + payload
    pkt = IP(wire)
    assert pkt.version == 4 and pkt.ihl == 5
    assert pkt.src == int_to_ip(ip.src) and pkt.dst == int_to_ip(ip.dst)
    assert pkt.proto == ip.protocol and pkt.ttl == ip.ttl and pkt.tos == ip.tos
    assert pkt.id == ip.ident and pkt.len == ip.total_len
    assert bool(pkt.flags.DF) == ip.dont_fragment and bool(pkt.flags.MF) == ip.more_fragments
    assert pkt.frag * 8 == ip.frag_offset
    redo = IP(wire[:20])
    del redo.chksum
    assert IP(raw(redo)).chksum == pkt.chksum
    assert wire[10:12] == pkt.chksum.to_bytes(2, "big")


@SCAPY_SETTINGS
@given(addrs, addrs, st.integers(0, 255), st.integers(1, 255), st.integers(0, 255),
       ports, st.booleans(), st.booleans(), st.integers(0, 0x1FFF), st.binary(max_size=40))
def test_ipv4_scapy_built_parsed_by_ours(src, dst, proto, ttl, tos, ident, df, mf, frag,
                                         payload):
    flags = (2 if df else 0) | (1 if mf else 0)
    pkt = IP(src=int_to_ip(src), dst=int_to_ip(dst), proto=proto, ttl=ttl, tos=tos, id=ident,
             flags=flags, frag=frag) / Raw(payload)
    wire = raw(pkt)
    ip, hlen = Ipv4Repr.parse(wire)
    assert hlen == 20
    assert ip == Ipv4Repr(src, dst, proto, len(payload), ttl, tos, ident, df, mf, frag * 8)
    # Emitting the parsed repr reproduces scapy's header byte for byte, checksum included.
    assert ip.to_bytes() == wire[:20]


def test_ipv4_options_are_skipped():
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR(routers=["1.2.3.4"])]) \
        / UDP(sport=1, dport=2) / b"hello"
    wire = raw(pkt)
    ip, hlen = Ipv4Repr.parse(wire)
    assert hlen == IP(wire).ihl * 4 > 20
    assert ip.payload_len == 13
    assert wire[hlen:hlen + ip.payload_len] == raw(pkt[UDP])
    udp = UdpRepr.parse(wire[hlen:hlen + ip.payload_len], ip.src, ip.dst)
    assert (udp.src_port, udp.dst_port, udp.payload_len) == (1, 2, 5)


def test_ipv4_ethernet_padding_is_fine():
    wire = udp_datagram(b"x")
    padded = wire + b"\x00" * 17  # as after a 60-byte minimum Ethernet frame
    ip, hlen = Ipv4Repr.parse(padded)
    assert ip.payload_len == len(wire) - 20
    UdpRepr.parse(padded[hlen:hlen + ip.payload_len], ip.src, ip.dst)


def test_ipv4_emit_at_offset():
    ip = Ipv4Repr(SRC, DST, IPPROTO_UDP, 0, ident=7, dont_fragment=True)
    buf = bytearray(b"\xee" * 30)
    assert ip.emit(memoryview(buf), 5) == 20
    assert buf[:5] == b"\xee" * 5 and buf[25:] == b"\xee" * 5
    assert bytes(buf[5:25]) == ip.to_bytes()
    assert IPV4_HEADER.unpack_from(buf, 5)[4] == IP_DF


def test_ipv4_flag_bits():
    ip = Ipv4Repr(SRC, DST, IPPROTO_UDP, 8, more_fragments=True, frag_offset=1480)
    frag = IPV4_HEADER.unpack(ip.to_bytes())[4]
    assert frag == IP_MF | (1480 // 8)


def test_ipv4_truncated():
    wire = udp_datagram(b"abc")
    for n in (0, 1, 19):
        with pytest.raises(WireError) as info:
            Ipv4Repr.parse(wire[:n])
        assert reason(info) == "truncated"


def test_ipv4_bad_version():
    wire = bytearray(udp_datagram(b"abc"))
    wire[0] = 0x65
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire)
    assert reason(info) == "bad_version"


@pytest.mark.parametrize("ihl", [0, 4])
def test_ipv4_ihl_too_small(ihl):
    wire = bytearray(udp_datagram(b"abc"))
    wire[0] = 0x40 | ihl
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire, verify_checksum=False)
    assert reason(info) == "bad_ihl"


def test_ipv4_ihl_past_buffer():
    wire = bytearray(Ipv4Repr(SRC, DST, IPPROTO_UDP, 0).to_bytes())
    wire[0] = 0x46  # claims 24 bytes of header, only 20 there
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire, verify_checksum=False)
    assert reason(info) == "bad_ihl"


def test_ipv4_total_length_below_header():
    wire = bytearray(udp_datagram(b"abc"))
    wire[2:4] = (19).to_bytes(2, "big")
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire, verify_checksum=False)
    assert reason(info) == "bad_length"


def test_ipv4_total_length_past_buffer():
    wire = udp_datagram(b"abcdef")
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire[:-1])  # header intact, checksum still right
    assert reason(info) == "bad_length"


@pytest.mark.parametrize("index", range(20))
def test_ipv4_any_corrupted_header_byte_fails(index):
    wire = bytearray(udp_datagram(b"abc"))
    wire[index] ^= 0x01 if index else 0x02  # keep byte 0 a valid version/ihl
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire)
    if index in (2, 3):  # the total length field: may now disagree with the buffer first
        assert reason(info) in ("bad_checksum", "bad_length")
    else:
        assert reason(info) == "bad_checksum"


def test_ipv4_checksum_byte_corrupted():
    wire = bytearray(udp_datagram(b"abc"))
    wire[11] ^= 0xFF
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(wire)
    assert reason(info) == "bad_checksum"
    ip, _ = Ipv4Repr.parse(wire, verify_checksum=False)
    assert ip.src == SRC and ip.dst == DST


def test_ipv4_emit_rejects():
    with pytest.raises(WireError) as info:
        Ipv4Repr(SRC, DST, IPPROTO_UDP, 65516).to_bytes()
    assert reason(info) == "bad_length"
    with pytest.raises(ValueError):
        Ipv4Repr(SRC, DST, IPPROTO_UDP, 0, frag_offset=12).to_bytes()
    with pytest.raises(ValueError):
        Ipv4Repr(SRC, DST, IPPROTO_UDP, 0, ttl=256).to_bytes()
    with pytest.raises(WireError) as info:
        Ipv4Repr(SRC, DST, IPPROTO_UDP, 0).emit(bytearray(19))
    assert reason(info) == "truncated"


# --- UDP -----------------------------------------------------------------------------------

@SETTINGS
@given(ports, ports, st.binary(max_size=300), addrs, addrs)
def test_udp_round_trip(sport, dport, payload, src, dst):
    udp = UdpRepr(sport, dport, len(payload))
    seg = udp.to_bytes(payload, src, dst)
    assert len(seg) == udp.total_len == UDP_HLEN + len(payload)
    assert seg[UDP_HLEN:] == payload
    assert seg[6:8] != b"\x00\x00"  # a checksum is always sent
    assert UdpRepr.parse(seg, src, dst) == udp


@SCAPY_SETTINGS
@given(ports, ports, st.binary(max_size=80), addrs, addrs)
def test_udp_ours_dissected_by_scapy(sport, dport, payload, src, dst):
    wire = udp_datagram(payload, src, dst, sport, dport)
    pkt = IP(wire)
    assert pkt[UDP].sport == sport and pkt[UDP].dport == dport
    assert pkt[UDP].len == 8 + len(payload)
    assert raw(pkt[UDP].payload) == payload
    again = scapy_recomputed(pkt)
    assert again[UDP].chksum == pkt[UDP].chksum
    assert again[IP].chksum == pkt[IP].chksum


@SCAPY_SETTINGS
@given(ports, ports, st.binary(max_size=80), addrs, addrs)
def test_udp_scapy_built_parsed_by_ours(sport, dport, payload, src, dst):
    wire = raw(IP(src=int_to_ip(src), dst=int_to_ip(dst)) / UDP(sport=sport, dport=dport)
               / Raw(payload))
    ip, hlen = Ipv4Repr.parse(wire)
    seg = wire[hlen:hlen + ip.payload_len]
    udp = UdpRepr.parse(seg, ip.src, ip.dst)
    assert udp == UdpRepr(sport, dport, len(payload))
    assert seg[UDP_HLEN:UDP_HLEN + udp.payload_len] == payload
    # Our checksum equals scapy's byte for byte.
    assert udp.to_bytes(payload, src, dst) == seg


@pytest.mark.parametrize("payload", [b"", b"a", b"abc", b"\xff" * 7, bytes(range(255))])
def test_udp_odd_and_empty_payloads_against_scapy(payload):
    wire = udp_datagram(payload)
    pkt = IP(wire)
    assert raw(pkt[UDP].payload) == payload
    assert scapy_recomputed(pkt)[UDP].chksum == pkt[UDP].chksum
    ip, hlen = Ipv4Repr.parse(wire)
    udp = UdpRepr.parse(wire[hlen:], ip.src, ip.dst)
    assert udp.payload_len == len(payload)


def test_udp_zero_length_payload():
    udp = UdpRepr(53, 53, 0)
    seg = udp.to_bytes(b"", SRC, DST)
    assert len(seg) == 8 and seg[4:6] == b"\x00\x08"
    assert UdpRepr.parse(seg, SRC, DST) == udp


def test_udp_checksum_zero_means_none():
    seg = bytearray(UdpRepr(1, 2, 4).to_bytes(b"data", SRC, DST))
    seg[6:8] = b"\x00\x00"
    seg[-1] ^= 0xFF  # corrupt payload: would fail any real checksum
    assert UdpRepr.parse(seg, SRC, DST) == UdpRepr(1, 2, 4)
    # ...and scapy agrees it is a valid "no checksum" datagram with that field.
    assert IP(raw(IP(src=int_to_ip(SRC), dst=int_to_ip(DST), proto=17) / Raw(bytes(seg))))[UDP] \
        .chksum == 0


def test_udp_computed_zero_is_sent_as_ffff():
    # Choose a 2-byte payload that makes the one's complement sum all ones (checksum 0).
    probe = UdpRepr(1000, 2000, 2).to_bytes(b"\0\0", SRC, DST)
    word = int.from_bytes(probe[6:8], "big")
    payload = word.to_bytes(2, "big") if word != 0xFFFF else b"\0\0"
    seg = UdpRepr(1000, 2000, 2).to_bytes(payload, SRC, DST)
    assert seg[6:8] == b"\xff\xff"
    assert UdpRepr.parse(seg, SRC, DST) == UdpRepr(1000, 2000, 2)
    wire = Ipv4Repr(SRC, DST, IPPROTO_UDP, len(seg)).to_bytes() + seg
    assert scapy_recomputed(IP(wire))[UDP].chksum == 0xFFFF


def test_udp_wrong_addresses_fail_checksum():
    seg = UdpRepr(1, 2, 3).to_bytes(b"abc", SRC, DST)
    with pytest.raises(WireError) as info:
        UdpRepr.parse(seg, SRC, DST + 1)
    assert reason(info) == "bad_checksum"


@pytest.mark.parametrize("index", [0, 1, 2, 3, 6, 7, 8, 9, 10])
def test_udp_corrupted_byte_fails_checksum(index):
    seg = bytearray(UdpRepr(1234, 80, 3).to_bytes(b"abc", SRC, DST))
    seg[index] ^= 0x10
    with pytest.raises(WireError) as info:
        UdpRepr.parse(seg, SRC, DST)
    assert reason(info) == "bad_checksum"
    if index not in (6, 7):
        UdpRepr.parse(seg, SRC, DST, verify_checksum=False)


def test_udp_truncated():
    seg = UdpRepr(1, 2, 3).to_bytes(b"abc", SRC, DST)
    with pytest.raises(WireError) as info:
        UdpRepr.parse(seg[:7], SRC, DST)
    assert reason(info) == "truncated"


@pytest.mark.parametrize("length", [0, 7, 12])
def test_udp_bad_length(length):
    seg = bytearray(UdpRepr(1, 2, 3).to_bytes(b"abc", SRC, DST))
    seg[4:6] = length.to_bytes(2, "big")
    with pytest.raises(WireError) as info:
        UdpRepr.parse(seg, SRC, DST)
    assert reason(info) == "bad_length"


def test_udp_shorter_length_field_ignores_trailing_bytes():
    seg = UdpRepr(1, 2, 3).to_bytes(b"abc", SRC, DST) + b"\xde\xad"
    assert UdpRepr.parse(seg, SRC, DST) == UdpRepr(1, 2, 3)


def test_udp_emit_at_offset_and_rejects():
    udp = UdpRepr(7, 9, 3)
    buf = bytearray(b"\xee" * 20)
    assert udp.emit(buf, 4, b"xyz", SRC, DST) == 11
    assert buf[:4] == b"\xee" * 4 and buf[15:] == b"\xee" * 5
    assert bytes(buf[4:15]) == udp.to_bytes(b"xyz", SRC, DST)
    with pytest.raises(ValueError):
        udp.to_bytes(b"xy", SRC, DST)  # payload disagrees with payload_len
    with pytest.raises(WireError) as info:
        udp.emit(bytearray(10), 0, b"xyz", SRC, DST)
    assert reason(info) == "truncated"
    with pytest.raises(WireError) as info:
        UdpRepr(1, 2, 65528).to_bytes(bytes(65528), SRC, DST)
    assert reason(info) == "bad_length"


def test_full_frame_with_scapy():
    """Ethernet + IPv4 + UDP built by us, dissected by scapy, and the reverse."""
    payload = b"evl" * 5
    eth = EthernetRepr(b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01", ETH_P_IP)
    frame = eth.to_bytes() + udp_datagram(payload)
    pkt = Ether(frame)
    assert pkt[IP].src == int_to_ip(SRC) and pkt[UDP].dport == 6000
    assert raw(pkt[UDP].payload) == payload
    again = scapy_recomputed(pkt)
    assert again[IP].chksum == pkt[IP].chksum and again[UDP].chksum == pkt[UDP].chksum
    scapy_frame = raw(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
                      / IP(src=int_to_ip(SRC), dst=int_to_ip(DST), id=0)
                      / UDP(sport=5000, dport=6000) / payload)
    assert scapy_frame == frame


# --- ICMP echo -----------------------------------------------------------------------------

echo_reprs = st.builds(IcmpEchoRepr, type=st.sampled_from([ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST]),
                       code=st.integers(0, 255), ident=ports, seq=ports,
                       payload=st.binary(max_size=200))


@SETTINGS
@given(echo_reprs)
def test_icmp_round_trip(echo):
    data = echo.to_bytes()
    assert len(data) == 8 + len(echo.payload) == echo.total_len
    assert IcmpEchoRepr.parse(data) == echo


@SCAPY_SETTINGS
@given(echo_reprs)
def test_icmp_ours_dissected_by_scapy(echo):
    data = echo.to_bytes()
    pkt = ICMP(data)
    assert (pkt.type, pkt.code, pkt.id, pkt.seq) == (echo.type, echo.code, echo.ident, echo.seq)
    assert raw(pkt.payload) == echo.payload
    assert scapy_recomputed(pkt).chksum == pkt.chksum


@SCAPY_SETTINGS
@given(st.sampled_from(["echo-request", "echo-reply"]), ports, ports, st.binary(max_size=100))
def test_icmp_scapy_built_parsed_by_ours(kind, ident, seq, payload):
    wire = raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=kind, id=ident, seq=seq)
               / Raw(payload))
    ip, hlen = Ipv4Repr.parse(wire)
    assert ip.protocol == IPPROTO_ICMP
    echo = IcmpEchoRepr.parse(wire[hlen:hlen + ip.payload_len])
    expected_type = ICMP_ECHO_REQUEST if kind == "echo-request" else ICMP_ECHO_REPLY
    assert echo == IcmpEchoRepr(expected_type, 0, ident, seq, payload)
    assert echo.to_bytes() == wire[hlen:]


def test_icmp_errors():
    data = bytearray(IcmpEchoRepr(ICMP_ECHO_REQUEST, 0, 1, 2, b"ping").to_bytes())
    with pytest.raises(WireError) as info:
        IcmpEchoRepr.parse(data[:7])
    assert reason(info) == "truncated"
    bad = bytearray(data)
    bad[3] ^= 0x01
    with pytest.raises(WireError) as info:
        IcmpEchoRepr.parse(bad)
    assert reason(info) == "bad_checksum"
    bad = bytearray(data)
    bad[-1] ^= 0x40
    with pytest.raises(WireError) as info:
        IcmpEchoRepr.parse(bad)
    assert reason(info) == "bad_checksum"
    assert IcmpEchoRepr.parse(bad, verify_checksum=False).payload == bytes(bad[8:])
    # A well-formed destination unreachable is not an echo.
    unreach = raw(ICMP(type=ICMP_DEST_UNREACH, code=3) / (b"\x45" + bytes(27)))
    with pytest.raises(WireError) as info:
        IcmpEchoRepr.parse(unreach)
    assert reason(info) == "unsupported"


def test_icmp_all_zero_fields_checksum():
    echo = IcmpEchoRepr(ICMP_ECHO_REPLY, 0, 0, 0, b"")
    data = echo.to_bytes()
    assert data == b"\x00\x00\xff\xff\x00\x00\x00\x00"
    assert IcmpEchoRepr.parse(data) == echo
    with pytest.raises(WireError) as info:
        IcmpEchoRepr.parse(bytes(8))
    assert reason(info) == "bad_checksum"


# --- ARP -----------------------------------------------------------------------------------

arp_reprs = st.builds(ArpRepr, op=st.sampled_from([ARP_REQUEST, ARP_REPLY]) | ports,
                      sender_mac=macs, sender_ip=addrs, target_mac=macs, target_ip=addrs)


@SETTINGS
@given(arp_reprs)
def test_arp_round_trip(arp):
    data = arp.to_bytes()
    assert len(data) == ARP_LEN == 28
    assert ArpRepr.parse(data + bytes(18)) == arp  # with Ethernet padding


@SCAPY_SETTINGS
@given(arp_reprs)
def test_arp_ours_dissected_by_scapy(arp):
    pkt = ARP(arp.to_bytes())
    assert (pkt.hwtype, pkt.ptype, pkt.hwlen, pkt.plen) == (1, 0x0800, 6, 4)
    assert pkt.op == arp.op
    assert pkt.hwsrc == mac_to_str(arp.sender_mac) and pkt.psrc == int_to_ip(arp.sender_ip)
    assert pkt.hwdst == mac_to_str(arp.target_mac) and pkt.pdst == int_to_ip(arp.target_ip)


@SCAPY_SETTINGS
@given(st.sampled_from([ARP_REQUEST, ARP_REPLY]), macs, addrs, macs, addrs)
def test_arp_scapy_built_parsed_by_ours(op, sha, spa, tha, tpa):
    wire = raw(ARP(op=op, hwsrc=mac_to_str(sha), psrc=int_to_ip(spa), hwdst=mac_to_str(tha),
                   pdst=int_to_ip(tpa)))
    arp = ArpRepr.parse(wire)
    assert arp == ArpRepr(op, sha, spa, tha, tpa)
    assert arp.to_bytes() == wire


def test_arp_errors():
    good = ArpRepr(ARP_REQUEST, b"\x02" * 6, SRC, bytes(6), DST).to_bytes()
    with pytest.raises(WireError) as info:
        ArpRepr.parse(good[:27])
    assert reason(info) == "truncated"
    with pytest.raises(WireError) as info:
        ArpRepr.parse(b"\x00\x06" + good[2:])  # IEEE 802 hardware type
    assert reason(info) == "bad_hwtype"
    with pytest.raises(WireError) as info:
        ArpRepr.parse(good[:2] + b"\x86\xdd" + good[4:])  # protocol type IPv6
    assert reason(info) == "unsupported"
    for index, value in ((4, 8), (5, 16)):  # hlen, plen
        bad = bytearray(good)
        bad[index] = value
        with pytest.raises(WireError) as info:
            ArpRepr.parse(bad)
        assert reason(info) == "unsupported"
    with pytest.raises(ValueError):
        ArpRepr(ARP_REQUEST, b"\x02" * 5, SRC, bytes(6), DST).to_bytes()
    with pytest.raises(WireError) as info:
        ArpRepr(ARP_REQUEST, b"\x02" * 6, SRC, bytes(6), DST).emit(bytearray(27))
    assert reason(info) == "truncated"

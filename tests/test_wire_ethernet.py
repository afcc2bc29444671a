"""Ethernet/VLAN codec, MAC helpers and WireError, checked against scapy and by round trips."""
from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402

from evlnet.wire import WireError  # noqa: E402
from evlnet.wire.errors import REASONS  # noqa: E402
from evlnet.wire.ethernet import (  # noqa: E402
    BROADCAST_MAC,
    ETH_HEADER,
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    VLAN_HLEN,
    VLAN_TAG,
    ZERO_MAC,
    EthernetRepr,
    VlanTag,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
)

SETTINGS = settings(max_examples=200, deadline=None)
SCAPY_SETTINGS = settings(max_examples=60, deadline=None)

macs = st.binary(min_size=6, max_size=6)
# Ethertypes that do not announce a tag, so an untagged header parses back unchanged.
plain_types = st.integers(0, 0xFFFF).filter(lambda t: t not in (ETH_P_8021Q, ETH_P_8021AD))
tags = st.builds(VlanTag, vid=st.integers(0, 4095), pcp=st.integers(0, 7), dei=st.integers(0, 1),
                 tpid=st.sampled_from([ETH_P_8021Q, ETH_P_8021AD]))
inner_tags = st.builds(VlanTag, vid=st.integers(0, 4095), pcp=st.integers(0, 7),
                       dei=st.integers(0, 1))


@st.composite
def ethernet_reprs(draw, min_type=0):
    """Headers that parse back unambiguously: the parser stops after two tags, and only an
    inner 0x8100 TPID continues into a second tag. (scapy reads types below 0x600 as 802.3
    lengths, hence *min_type* for the scapy tests.)"""
    dst, src = draw(macs), draw(macs)
    ntags = draw(st.integers(0, 2))
    types = st.integers(min_type, 0xFFFF)
    if ntags == 0:
        ethertype = draw(types.filter(lambda t: t not in (ETH_P_8021Q, ETH_P_8021AD)))
        return EthernetRepr(dst, src, ethertype)
    if ntags == 1:
        ethertype = draw(types.filter(lambda t: t != ETH_P_8021Q))
        return EthernetRepr(dst, src, ethertype, (draw(tags),))
    return EthernetRepr(dst, src, draw(types), (draw(tags), draw(inner_tags)))


# --- MAC helpers ---------------------------------------------------------------------------

def test_mac_to_str_and_back():
    mac = bytes([0xAA, 0xBB, 0xCC, 0x01, 0x02, 0xFF])
    assert mac_to_str(mac) == "aa:bb:cc:01:02:ff"
    assert mac_from_str("aa:bb:cc:01:02:ff") == mac
    assert mac_from_str("AA-BB-CC-01-02-FF") == mac
    assert mac_from_str("aa:bb:cc:1:2:ff") == mac
    assert mac_to_str(BROADCAST_MAC) == "ff:ff:ff:ff:ff:ff"
    assert mac_to_str(ZERO_MAC) == "00:00:00:00:00:00"


@SETTINGS
@given(macs)
def test_mac_str_round_trip(mac):
    text = mac_to_str(mac)
    assert len(text) == 17
    assert mac_from_str(text) == mac


@pytest.mark.parametrize("bad", [
    "", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb:cc:dd:ee:fg", "aaa:bb:cc:dd:ee:ff",
    "aa::cc:dd:ee:ff", "+a:bb:cc:dd:ee:ff", " a:bb:cc:dd:ee:ff", "0x:bb:cc:dd:ee:ff",
    "aabbccddeeff", "aa:bb-cc:dd:ee:ff",
])
def test_mac_from_str_rejects(bad):
    with pytest.raises(ValueError):
        mac_from_str(bad)


def test_is_multicast_mac():
    assert is_multicast_mac(BROADCAST_MAC)
    assert is_multicast_mac(b"\x01\x00\x5e\x00\x00\x01")
    assert is_multicast_mac(b"\x33\x33\x00\x00\x00\x01")
    assert not is_multicast_mac(b"\x02\x00\x00\x00\x00\x01")
    assert not is_multicast_mac(ZERO_MAC)


# --- WireError -----------------------------------------------------------------------------

def test_wire_error_reason():
    err = WireError("bad_checksum", "IPv4 header")
    assert isinstance(err, ValueError)
    assert err.reason == "bad_checksum"
    assert "IPv4 header" in str(err)
    assert WireError("truncated").reason == "truncated"
    assert REASONS == {"truncated", "bad_version", "bad_ihl", "bad_checksum", "bad_length",
                       "bad_hwtype", "unsupported"}
    with pytest.raises(ValueError):
        WireError("no_such_reason")


# --- VlanTag -------------------------------------------------------------------------------

def test_vlan_tag_tci():
    tag = VlanTag(vid=0x123, pcp=5, dei=1)
    assert tag.tci == (5 << 13) | (1 << 12) | 0x123
    assert VlanTag.from_tci(tag.tci) == tag
    assert VlanTag(vid=4095, pcp=7, dei=1).tci == 0xFFFF


@pytest.mark.parametrize("kwargs", [dict(vid=4096), dict(vid=-1), dict(vid=1, pcp=8),
                                    dict(vid=1, dei=2), dict(vid=1, tpid=0x10000)])
def test_vlan_tag_rejects_out_of_range(kwargs):
    with pytest.raises(ValueError):
        VlanTag(**kwargs)


# --- EthernetRepr --------------------------------------------------------------------------

DST = bytes.fromhex("010203040506")
SRC = bytes.fromhex("0a0b0c0d0e0f")


def test_untagged_layout():
    e = EthernetRepr(DST, SRC, ETH_P_IP)
    data = e.to_bytes()
    assert data == DST + SRC + b"\x08\x00"
    assert e.header_len == ETH_HLEN == len(data)
    assert e.inner_vlan_id == 0
    parsed, off = EthernetRepr.parse(data + b"payload")
    assert parsed == e and off == 14


def test_8021q_layout():
    e = EthernetRepr(DST, SRC, ETH_P_ARP, (VlanTag(vid=100, pcp=3),))
    data = e.to_bytes()
    assert data == DST + SRC + b"\x81\x00" + ((3 << 13) | 100).to_bytes(2, "big") + b"\x08\x06"
    assert e.header_len == 18
    assert e.inner_vlan_id == 100
    assert EthernetRepr.parse(data) == (e, 18)


def test_qinq_layout():
    outer, inner = VlanTag(vid=10, tpid=ETH_P_8021AD), VlanTag(vid=20, pcp=1)
    e = EthernetRepr(DST, SRC, ETH_P_IPV6, (outer, inner))
    data = e.to_bytes()
    assert data == (DST + SRC + b"\x88\xa8" + (10).to_bytes(2, "big") + b"\x81\x00"
                    + ((1 << 13) | 20).to_bytes(2, "big") + b"\x86\xdd")
    assert e.header_len == 22
    assert e.inner_vlan_id == 20
    assert EthernetRepr.parse(data) == (e, 22)


def test_qinq_with_8021q_outer():
    # Old-style QinQ: two 0x8100 tags.
    e = EthernetRepr(DST, SRC, ETH_P_IP, (VlanTag(vid=7), VlanTag(vid=8)))
    assert EthernetRepr.parse(e.to_bytes()) == (e, 22)


def test_single_8021ad_tag():
    e = EthernetRepr(DST, SRC, ETH_P_IP, (VlanTag(vid=7, tpid=ETH_P_8021AD),))
    parsed, off = EthernetRepr.parse(e.to_bytes())
    assert off == 18 and parsed.vlans[0].tpid == ETH_P_8021AD and parsed.ethertype == ETH_P_IP


def test_parse_stops_after_two_tags():
    # A third 0x8100 is left as the ethertype: the payload starts after the second tag.
    data = (ETH_HEADER.pack(DST, SRC, ETH_P_8021Q) + VLAN_TAG.pack(1, ETH_P_8021Q)
            + VLAN_TAG.pack(2, ETH_P_8021Q) + VLAN_TAG.pack(3, ETH_P_IP))
    parsed, off = EthernetRepr.parse(data)
    assert off == 22
    assert [t.vid for t in parsed.vlans] == [1, 2]
    assert parsed.ethertype == ETH_P_8021Q


@pytest.mark.parametrize("data", [
    b"",
    DST + SRC + b"\x08",                              # 13 bytes
    DST + SRC + b"\x81\x00" + b"\x00\x64\x08",        # tag cut short
    DST + SRC + b"\x88\xa8" + b"\x00\x0a\x81\x00",    # QinQ, inner tag missing
    DST + SRC + b"\x88\xa8" + b"\x00\x0a\x81\x00\x00\x14\x08",
])
def test_parse_truncated(data):
    with pytest.raises(WireError) as info:
        EthernetRepr.parse(data)
    assert info.value.reason == "truncated"


def test_emit_at_offset_into_memoryview():
    e = EthernetRepr(DST, SRC, ETH_P_IP, (VlanTag(vid=5),))
    buf = bytearray(b"\xee" * 30)
    assert e.emit(memoryview(buf), 4) == 18
    assert buf[:4] == b"\xee" * 4 and buf[22:] == b"\xee" * 8
    assert bytes(buf[4:22]) == e.to_bytes()


def test_emit_rejects_bad_values():
    with pytest.raises(WireError) as info:
        EthernetRepr(DST, SRC, ETH_P_IP).emit(bytearray(13))
    assert info.value.reason == "truncated"
    with pytest.raises(ValueError):
        EthernetRepr(DST[:5], SRC, ETH_P_IP).to_bytes()
    with pytest.raises(ValueError):
        EthernetRepr(DST, SRC, 0x10000).to_bytes()


@SETTINGS
@given(ethernet_reprs(), st.binary(max_size=20))
def test_round_trip(e, payload):
    data = e.to_bytes()
    assert len(data) == e.header_len == ETH_HLEN + VLAN_HLEN * len(e.vlans)
    parsed, off = EthernetRepr.parse(data + payload)
    assert parsed == e
    assert off == e.header_len


# --- scapy as the oracle -------------------------------------------------------------------

@SCAPY_SETTINGS
@given(ethernet_reprs(min_type=0x0600))
def test_ours_dissected_by_scapy(e):
    pkt = Ether(e.to_bytes() + b"\x00" * 46)
    assert pkt.dst == mac_to_str(e.dst)
    assert pkt.src == mac_to_str(e.src)
    layer = pkt.payload
    if e.vlans:
        assert pkt.type == e.vlans[0].tpid
    for i, tag in enumerate(e.vlans):
        assert isinstance(layer, (Dot1Q, Dot1AD))
        assert (layer.vlan, layer.prio, layer.dei) == (tag.vid, tag.pcp, tag.dei)
        following = e.vlans[i + 1].tpid if i + 1 < len(e.vlans) else e.ethertype
        assert layer.type == following
        layer = layer.payload
    if not e.vlans:
        assert pkt.type == e.ethertype


@SCAPY_SETTINGS
@given(macs, macs, st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 7),
                                      st.integers(0, 1)), max_size=2),
       st.booleans(), plain_types.filter(lambda t: t >= 0x0600))
def test_scapy_built_parsed_by_ours(dst, src, vlan_fields, outer_ad, ethertype):
    ethertype = ethertype if ethertype != ETH_P_8021Q else ETH_P_IP
    pkt = Ether(dst=mac_to_str(dst), src=mac_to_str(src))
    for i, (vid, pcp, dei) in enumerate(vlan_fields):
        layer = Dot1AD if (i == 0 and outer_ad) else Dot1Q
        pkt = pkt / layer(vlan=vid, prio=pcp, dei=dei)
    if vlan_fields:
        pkt.lastlayer().type = ethertype
    else:
        pkt.type = ethertype
    pkt = pkt / Raw(b"\x00" * 46)
    data = raw(pkt)
    parsed, off = EthernetRepr.parse(data)
    assert parsed.dst == dst and parsed.src == src
    assert parsed.ethertype == ethertype
    assert [(t.vid, t.pcp, t.dei) for t in parsed.vlans] == vlan_fields
    for i, tag in enumerate(parsed.vlans):
        assert tag.tpid == (ETH_P_8021AD if (i == 0 and outer_ad) else ETH_P_8021Q)
    assert off == 14 + 4 * len(vlan_fields)
    assert data[off:] == b"\x00" * 46
    assert parsed.inner_vlan_id == (vlan_fields[-1][0] if vlan_fields else 0)

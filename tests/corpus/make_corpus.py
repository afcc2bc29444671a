#!/usr/bin/env python3
"""Build the malformed-frame corpus (issue 9): pcap files and ``expected.json`` beside them.

Run once (``.venv/bin/python tests/corpus/make_corpus.py``) and commit its output; the tests
(``tests/test_corpus.py``) only read the files. scapy builds every frame; what a frame is and
what the stack must do with it is stated here, next to the frame.

The victim: a port with address ``192.0.2.2/24`` (VLAN set ``43``, multicast not accepted, echo
to broadcasts ignored, 16 reassembly buffers: the stack's defaults) with a UDP socket bound to
``0.0.0.0:7000``; the peer on the link is ``192.0.2.1``. Frames are written with placeholder
MACs (``VICTIM_MAC``, ``PEER_MAC``): the replay puts the real ones in. Each frame's outcome is
one of:

- ``delivered``: the UDP socket on 7000 gets the datagram (``rx_delivered`` + 1);
- ``answered``: the stack replies (``icmp_echo_replies`` or ``arp_replies`` + 1);
- ``consumed``: handed to the in-band stage or held by reassembly (its counter + 1);
- ``dropped``: the named drop counter + 1.

Counter names are the core's (``core/src/stats.rs``: ``PortCounters``, ``DropReason``) and the
device's (``rx_oversize``, ``core/src/device/mod.rs``). The decisions behind the martian and
echo-to-broadcast outcomes are the core's (``core/src/ipv4.rs``, ``core/src/icmp.rs``).
"""
from __future__ import annotations

import json
import os
import struct

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, LLC, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapWriter

HERE = os.path.dirname(os.path.abspath(__file__))
VICTIM_MAC = "02:00:00:00:00:02"
PEER_MAC = "02:00:00:00:00:01"
VICTIM_IP, PEER_IP = "192.0.2.2", "192.0.2.1"
UDP_PORT = 7000
SETUP = {
    "victim_mac": VICTIM_MAC, "peer_mac": PEER_MAC, "victim_cidr": f"{VICTIM_IP}/24",
    "peer_ip": PEER_IP, "udp_port": UDP_PORT, "vlans": "43", "mtu": 1500,
    "reasm_poolsz": 16,      # the stack's default (StackSettings.reasm_poolsz)
}


def eth(dst: str = VICTIM_MAC, src: str = PEER_MAC) -> Ether:
    return Ether(dst=dst, src=src)


def udp(payload: bytes = b"corpus", src: str = PEER_IP, dst: str = VICTIM_IP,
        dport: int = UDP_PORT, eth_dst: str = VICTIM_MAC, ip_kw=None, udp_kw=None):
    return (eth(eth_dst) / IP(src=src, dst=dst, **(ip_kw or {})) /
            UDP(sport=5000, dport=dport, **(udp_kw or {})) / payload)


def echo(src: str = PEER_IP, dst: str = VICTIM_IP, eth_dst: str = VICTIM_MAC, **icmp_kw):
    return eth(eth_dst) / IP(src=src, dst=dst) / ICMP(id=7, seq=1, **icmp_kw) / b"echo-data"


def ip_bytes(pkt) -> bytes:
    return bytes(pkt)


def fragments(ident: int, payload_len: int, size: int, first_options: bytes = b""):
    """The IP fragments (as scapy IP packets with raw payload) of a UDP datagram to 7000."""
    whole = IP(src=PEER_IP, dst=VICTIM_IP, id=ident) / UDP(sport=5000, dport=UDP_PORT) / (
        bytes(range(256)) * (payload_len // 256 + 1))[:payload_len]
    data = bytes(whole[UDP])          # the UDP header and payload, checksum computed
    out = []
    for off in range(0, len(data), size):
        chunk = data[off:off + size]
        more = off + size < len(data)
        opts = first_options if off == 0 else b""
        out.append(IP(src=PEER_IP, dst=VICTIM_IP, id=ident, proto=17, flags="MF" if more else 0,
                      frag=off // 8, options=opts) / Raw(chunk))
    return out


def frag(ident: int, off: int, data: bytes, more: bool, src: str = PEER_IP):
    return eth() / IP(src=src, dst=VICTIM_IP, id=ident, proto=17,
                      flags="MF" if more else 0, frag=off // 8) / Raw(data)


def with_bytes(pkt, at: int, value: bytes) -> bytes:
    b = bytearray(bytes(pkt))
    b[at:at + len(value)] = value
    return bytes(b)


def ip_with(pkt, **fields) -> bytes:
    """*pkt* with IPv4 header fields forced (the header checksum recomputed unless given)."""
    b = bytearray(bytes(pkt))
    ip = 14
    if "ihl" in fields:
        b[ip] = 0x40 | fields["ihl"]
    if "version" in fields:
        b[ip] = (fields["version"] << 4) | (b[ip] & 0x0F)
    if "total_len" in fields:
        b[ip + 2:ip + 4] = struct.pack("!H", fields["total_len"])
    b[ip + 10:ip + 12] = b"\0\0"
    hlen = max(20, (b[ip] & 0x0F) * 4)
    csum = fields.get("checksum", _checksum(bytes(b[ip:ip + hlen])))
    b[ip + 10:ip + 12] = struct.pack("!H", csum)
    return bytes(b)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_short_length() -> bytes:
    """A UDP length of 12 (4 bytes of data) inside an IP payload of 20: valid, trailing bytes
    ignored (RFC 768; Linux trims to the UDP length)."""
    seg = bytes(IP(src=PEER_IP, dst=VICTIM_IP) / UDP(sport=5000, dport=UDP_PORT) / b"shrt")[20:]
    return bytes(eth() / IP(src=PEER_IP, dst=VICTIM_IP, proto=17) / Raw(seg + b"trailing"))


def udp_bad_length(length: int) -> bytes:
    seg = bytearray(bytes(IP(src=PEER_IP, dst=VICTIM_IP) / UDP(sport=5000, dport=UDP_PORT) /
                          b"length"))[20:]
    seg[4:6] = struct.pack("!H", length)
    seg[6:8] = b"\0\0"                 # no checksum: the length alone is wrong
    return bytes(eth() / IP(src=PEER_IP, dst=VICTIM_IP, proto=17) / Raw(bytes(seg)))


def arp(op: int = 1, pdst: str = VICTIM_IP, eth_dst: str = "ff:ff:ff:ff:ff:ff"):
    return (Ether(dst=eth_dst, src=PEER_MAC) /
            ARP(op=op, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst="00:00:00:00:00:00", pdst=pdst))


def build() -> dict[str, list[tuple[str, bytes, str, str, str]]]:
    """pcap name -> [(case, frame, outcome, counter, why)]."""
    good = udp()
    l2 = [
        ("runt_10_bytes", bytes(good)[:10], "dropped", "rx_malformed",
         "shorter than an Ethernet header"),
        ("ethernet_header_only", bytes(good)[:14], "dropped", "rx_ip_errors",
         "IPv4 EtherType, no IPv4 header"),
        ("unknown_ethertype", bytes(eth() / Raw(b"\x00" * 46))[:12] + b"\x88\xb5" + b"\0" * 46,
         "dropped", "rx_unknown_proto", "EtherType 0x88b5: no protocol, no packet socket"),
        ("ieee_802_3_length_frame", bytes(Dot3(dst=VICTIM_MAC, src=PEER_MAC) /
                                          LLC(dsap=0x42, ssap=0x42, ctrl=3) / Raw(b"\0" * 40)),
         "dropped", "rx_unknown_proto", "a length, not an EtherType, in the type field"),
        ("other_host_mac", bytes(udp(eth_dst="02:00:00:00:00:99")), "dropped", "rx_otherhost",
         "unicast to another MAC"),
        ("multicast_mac_and_group", bytes(udp(dst="224.0.0.1", eth_dst="01:00:5e:00:00:01")),
         "dropped", "rx_filtered", "multicast not accepted by the stack (the default)"),
        ("broadcast_mac_unicast_ip", bytes(udp(b"l2 bcast", eth_dst="ff:ff:ff:ff:ff:ff")),
         "delivered", "rx_delivered",
         "Linux delivers it too (drop_unicast_in_l2_multicast is off by default)"),
        ("frame_larger_than_mtu", bytes(udp(b"J" * 3000)), "dropped", "rx_oversize",
         "3042 bytes on a 1500-byte MTU link: the device cannot hold it"),
    ]
    ipv4 = [
        ("good_udp", bytes(good), "delivered", "rx_delivered", "reference frame"),
        ("ip_header_cut", bytes(good)[:14 + 12], "dropped", "rx_ip_errors",
         "12 bytes of IPv4 header"),
        ("ihl_4", ip_with(good, ihl=4), "dropped", "rx_ip_errors", "IHL below 5"),
        ("ihl_15_beyond_total_length", ip_with(good, ihl=15), "dropped", "rx_ip_errors",
         "a 60-byte header in a 34-byte datagram"),
        ("version_6_in_ipv4", ip_with(good, version=6), "dropped", "rx_ip_errors",
         "version field 6 under EtherType IPv4"),
        ("total_length_beyond_frame", ip_with(good, total_len=400), "dropped", "rx_ip_errors",
         "total length 400 in a 34-byte datagram"),
        ("total_length_below_header", ip_with(good, total_len=12), "dropped", "rx_ip_errors",
         "total length 12 < IHL*4"),
        ("bad_header_checksum", ip_with(good, checksum=0x1234), "dropped", "rx_ip_errors",
         "header checksum wrong"),
        ("unknown_ip_protocol", bytes(eth() / IP(src=PEER_IP, dst=VICTIM_IP, proto=253) /
                                      Raw(b"x" * 20)), "dropped", "rx_unknown_proto",
         "IP protocol 253: nobody handles it"),
        ("other_ip", bytes(udp(dst="192.0.2.99")), "dropped", "rx_otherhost",
         "our MAC, not our address"),
        ("martian_src_0.0.0.0", bytes(udp(src="0.0.0.0")), "dropped", "rx_ip_errors",
         "0.0.0.0 only to 255.255.255.255 (RFC 1122 3.2.1.3)"),
        ("src_0.0.0.0_to_limited_broadcast", bytes(udp(b"dhcp-like", src="0.0.0.0",
                                                       dst="255.255.255.255",
                                                       eth_dst="ff:ff:ff:ff:ff:ff")),
         "delivered", "rx_delivered", "a host learning its address (BOOTP/DHCP): allowed"),
        ("martian_src_loopback", bytes(udp(src="127.0.0.1")), "dropped", "rx_ip_errors",
         "127/8 source"),
        ("martian_src_our_own", bytes(udp(src=VICTIM_IP)), "dropped", "rx_ip_errors",
         "our own address as the source"),
        ("martian_src_multicast", bytes(udp(src="224.0.0.5")), "dropped", "rx_ip_errors",
         "multicast source"),
        ("martian_src_limited_broadcast", bytes(udp(src="255.255.255.255")), "dropped",
         "rx_ip_errors", "255.255.255.255 source"),
        ("martian_src_directed_broadcast", bytes(udp(src="192.0.2.255")), "dropped",
         "rx_ip_errors", "the port's own broadcast address as the source"),
        ("martian_src_class_e", bytes(udp(src="240.0.0.1")), "dropped", "rx_ip_errors",
         "240/4 source"),
    ]
    l4 = [
        ("zero_udp_checksum", bytes(udp(b"no checksum", udp_kw={"chksum": 0})), "delivered",
         "rx_delivered", "0: the sender computed none (RFC 768)"),
        ("bad_udp_checksum", bytes(udp(b"bad sum", udp_kw={"chksum": 0x1234})), "dropped",
         "csum_errors", "UDP checksum wrong"),
        ("udp_length_beyond_payload", udp_bad_length(400), "dropped", "rx_ip_errors",
         "UDP length 400 in a 14-byte segment"),
        ("udp_length_below_header", udp_bad_length(4), "dropped", "rx_ip_errors",
         "UDP length 4 < 8"),
        ("udp_length_below_payload", udp_short_length(), "delivered", "rx_delivered",
         "UDP length 12 in a 20-byte IP payload: the trailing bytes are ignored"),
        ("udp_no_receiver", bytes(udp(dport=7001)), "dropped", "rx_no_receiver",
         "nothing bound to 7001"),
        ("icmp_echo", bytes(echo()), "answered", "icmp_echo_replies", "echo request"),
        ("icmp_echo_bad_checksum", bytes(echo(chksum=0x1111)), "dropped", "csum_errors",
         "ICMP checksum wrong"),
        ("icmp_echo_from_limited_broadcast", bytes(echo(src="255.255.255.255")), "dropped",
         "rx_ip_errors", "martian source: never answered (RFC 1122 3.2.2.6)"),
        ("icmp_echo_to_broadcast", bytes(echo(dst="192.0.2.255", eth_dst="ff:ff:ff:ff:ff:ff")),
         "dropped", "rx_filtered", "icmp_echo_ignore_broadcasts (the default, as Linux)"),
        ("icmp_timestamp_request", bytes(eth() / IP(src=PEER_IP, dst=VICTIM_IP) /
                                         ICMP(type=13, ts_ori=0, ts_rx=0, ts_tx=0)),
         "dropped", "rx_unknown_proto", "not an echo request"),
        ("icmp_truncated", bytes(eth() / IP(src=PEER_IP, dst=VICTIM_IP, proto=1) /
                                 Raw(b"\x08\x00\xf7")), "dropped", "rx_unknown_proto",
         "3 bytes of ICMP"),
    ]
    vlan = [
        ("vlan_in_set", bytes(Ether(dst=VICTIM_MAC, src=PEER_MAC) / Dot1Q(vlan=43) /
                              IP(src=PEER_IP, dst=VICTIM_IP) / UDP(sport=5000, dport=UDP_PORT) /
                              b"vid 43"), "delivered", "rx_delivered", "VID 43 is in the set"),
        ("vlan_outside_set", bytes(Ether(dst=VICTIM_MAC, src=PEER_MAC) / Dot1Q(vlan=42) /
                                   IP(src=PEER_IP, dst=VICTIM_IP) /
                                   UDP(sport=5000, dport=UDP_PORT) / b"vid 42"),
         "dropped", "rx_filtered", "VID 42 is not in the set"),
        ("qinq_inner_in_set", bytes(Ether(dst=VICTIM_MAC, src=PEER_MAC) / Dot1AD(vlan=9) /
                                    Dot1Q(vlan=43) / IP(src=PEER_IP, dst=VICTIM_IP) /
                                    UDP(sport=5000, dport=UDP_PORT) / b"qinq 9/43"),
         "delivered", "rx_delivered", "802.1ad 9 then 802.1Q 43: the inner tag selects"),
        ("qinq_inner_outside_set", bytes(Ether(dst=VICTIM_MAC, src=PEER_MAC) / Dot1AD(vlan=9) /
                                         Dot1Q(vlan=42) / IP(src=PEER_IP, dst=VICTIM_IP) /
                                         UDP(sport=5000, dport=UDP_PORT) / b"qinq 9/42"),
         "dropped", "rx_filtered", "inner VID 42 is not in the set"),
        ("vlan_tag_truncated", bytes(Ether(dst=VICTIM_MAC, src=PEER_MAC, type=0x8100))
         + b"\x00\x2b", "dropped", "rx_malformed", "802.1Q tag cut after 2 bytes"),
    ]
    arps = [
        ("arp_request_for_us", bytes(arp()), "answered", "arp_replies", "who-has 192.0.2.2"),
        ("arp_request_for_another", bytes(arp(pdst="192.0.2.50")), "consumed", "rx_inband",
         "not for us: handed up for learning only"),
        ("arp_truncated", bytes(arp())[:14 + 20], "dropped", "rx_malformed",
         "20 bytes of ARP"),
        ("arp_hardware_length_8", with_bytes(arp(), 14 + 4, b"\x08"), "dropped",
         "rx_malformed", "hlen 8 (not Ethernet's 6)"),
        ("arp_protocol_length_16", with_bytes(arp(), 14 + 5, b"\x10"), "dropped",
         "rx_malformed", "plen 16 (not IPv4's 4)"),
        ("arp_not_ipv4", with_bytes(arp(), 14 + 2, b"\x86\xdd"), "dropped", "rx_malformed",
         "protocol type IPv6"),
    ]
    frags: list[tuple[str, bytes, str, str, str]] = []
    body = bytes(range(24))
    frags += [
        ("overlap_first", bytes(frag(0x101, 0, body[:16], True)), "consumed", "rx_reasm_held",
         "offset 0, 16 bytes"),
        ("overlap_partial", bytes(frag(0x101, 8, body[:16], True)), "dropped", "rx_reasm_fails",
         "bytes 8-24 over 0-16: the datagram is dropped (as Linux)"),
    ]
    whole = fragments(0x102, 40, 16)   # 48 bytes of UDP: 16 + 16 + 16
    frags += [
        ("dup_first", bytes(eth() / whole[0]), "consumed", "rx_reasm_held", "offset 0"),
        ("dup_first_again", bytes(eth() / whole[0]), "dropped", "rx_reasm_dups",
         "the same offset 0 again"),
        ("dup_middle", bytes(eth() / whole[1]), "consumed", "rx_reasm_held", "offset 16"),
        ("dup_middle_again", bytes(eth() / whole[1]), "dropped", "rx_reasm_dups",
         "offset 16 again"),
        ("dup_completes", bytes(eth() / whole[2]), "delivered", "rx_delivered",
         "the last fragment: the datagram is delivered once"),
    ]
    frags += [
        ("zero_length_fragment", bytes(frag(0x103, 8, b"", True)), "dropped", "rx_malformed",
         "no payload: refused at once, blocks nothing"),
        ("tiny_unaligned_fragment", bytes(frag(0x104, 0, b"abc", True)), "dropped",
         "rx_malformed", "3 bytes with MF: not a multiple of 8"),
        ("past_end_last", bytes(frag(0x105, 16, body[:8], False)), "consumed", "rx_reasm_held",
         "the last fragment fixes the end at 24"),
        ("past_end_beyond", bytes(frag(0x105, 24, body[:8], True)), "dropped", "rx_reasm_fails",
         "data past the end: the datagram is dropped (as Linux)"),
    ]
    # issue 9's defect 2: 65 507 bytes of UDP data whose first fragment carries 40 bytes of
    # options: 60 + 65 515 = 65 575 bytes reassembled, over 65 535
    big = fragments(0x106, 65507, 1440, first_options=b"\x01" * 40)
    for i, f in enumerate(big):
        last = i == len(big) - 1
        frags.append((f"oversize_{i:02d}", bytes(eth() / f),
                      "dropped" if last else "consumed",
                      "rx_reasm_fails" if last else "rx_reasm_held",
                      "65 575 bytes with the first header: dropped" if last else
                      f"fragment {i} of {len(big)} (first carries IHL 15)"))
    # a flood of first fragments over many ids from one source: it gets a quarter of the
    # reassembly buffers, no more
    pool = SETUP["reasm_poolsz"]
    share = pool // 4
    for i in range(share + 2):
        held = i < share
        frags.append((f"flood_one_{i:02d}", bytes(frag(0x200 + i, 0, body[:16], True)),
                      "consumed" if held else "dropped",
                      "rx_reasm_held" if held else "rx_reasm_fails",
                      f"new datagram {i + 1} from one source: a reassembly buffer taken" if held
                      else f"new datagram {i + 1} from one source: its {share} buffers "
                           f"(a quarter) are taken"))
    # ...then from many sources (last: every reassembly buffer stays taken until the 30 s
    # timeout); each sentinel after them shows unfragmented traffic still flows
    for i in range(pool - share + 4):
        held = i < pool - share
        frags.append((f"flood_{i:02d}", bytes(frag(0x300 + i, 0, body[:16], True,
                                                   src=f"192.0.2.{100 + i}")),
                      "consumed" if held else "dropped",
                      "rx_reasm_held" if held else "rx_nomem",
                      f"new datagram from source {i + 1}: a reassembly buffer taken" if held
                      else f"new datagram from source {i + 1}: the {pool} reassembly buffers "
                           "are all taken"))
    return {"l2.pcap": l2, "ipv4.pcap": ipv4, "l4.pcap": l4, "vlan.pcap": vlan,
            "arp.pcap": arps, "fragments.pcap": frags}


def main() -> None:
    expected = {"setup": SETUP, "frames": []}
    for name, cases in build().items():
        w = RawPcapWriter(os.path.join(HERE, name), linktype=1, sync=True)
        w.write_header(None)
        for index, (case, frame, outcome, counter, why) in enumerate(cases):
            # a fixed time stamp per frame: the script's output is deterministic
            w.write_packet(frame, sec=1700000000 + len(expected["frames"]), usec=0)
            expected["frames"].append({"pcap": name, "index": index, "case": case,
                                       "outcome": outcome, "counter": counter, "why": why})
        w.close()
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"{len(expected['frames'])} frames in {len(build())} pcap files")


if __name__ == "__main__":
    main()

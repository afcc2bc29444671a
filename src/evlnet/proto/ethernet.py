"""Ethernet and 802.1Q input: classify the frame, feed packet sockets, dispatch by EtherType."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.buffers import PacketBuffer

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
BROADCAST = b"\xff" * 6

# sockaddr_ll pkttype values
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, PACKET_OUTGOING = 0, 1, 2, 3, 4


class EthernetLayer:
    """Receive side of Ethernet II with one 802.1Q tag or a QinQ pair (the inner tag counts)."""

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack

    def input(self, port: "Port", buf: PacketBuffer) -> None:
        data = buf.data
        s = buf.start
        if buf.end - s < ETH_HLEN:
            port.counters.rx_malformed += 1
            buf.release()
            return
        ethertype = (data[s + 12] << 8) | data[s + 13]
        off = s + ETH_HLEN
        vid = port.vlan_id
        if ethertype == ETH_P_8021Q or ethertype == ETH_P_8021AD:
            if buf.end - off < 4:
                port.counters.rx_malformed += 1
                buf.release()
                return
            vid = ((data[off] << 8) | data[off + 1]) & 0x0FFF
            ethertype = (data[off + 2] << 8) | data[off + 3]
            off += 4
            if ethertype == ETH_P_8021Q:   # QinQ: the inner tag selects
                if buf.end - off < 4:
                    port.counters.rx_malformed += 1
                    buf.release()
                    return
                vid = ((data[off] << 8) | data[off + 1]) & 0x0FFF
                ethertype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        buf.vlan_id = vid
        buf.protocol = ethertype
        stack = self.stack
        if off - s > ETH_HLEN:
            if vid != port.vlan_id and vid not in stack.vlans:
                # EVL: tagged traffic outside the oob VLAN set is not diverted at all, so no
                # oob socket (packet sockets included) sees it
                port.counters.rx_filtered += 1
                buf.release()
                return
            # EVL pops the tag(s) in software: the MAC addresses move up against the inner
            # EtherType, and every consumer (packet sockets too) sees an untagged frame
            data[off - ETH_HLEN:off - 2] = data[s:s + 12]
            s = buf.start = off - ETH_HLEN
        # startswith(prefix, start) compares in place: no 6-byte slice allocated per frame
        if data.startswith(port.mac, s):
            pkttype = PACKET_HOST
        elif data[s] & 1:
            pkttype = PACKET_BROADCAST if data.startswith(BROADCAST, s) else PACKET_MULTICAST
        else:
            pkttype = PACKET_OTHERHOST
        buf.pkttype = pkttype

        packet = stack.packet
        if packet.listening and packet.input_frame(port, buf, ethertype, off):
            return                      # a packet socket took the frame
        if pkttype == PACKET_OTHERHOST:
            port.counters.rx_otherhost += 1
            buf.release()
            return
        if ethertype == ETH_P_IP:
            stack.ipv4.input(port, buf, off)
        elif ethertype == ETH_P_ARP:
            stack.arp.input(port, buf, off)
        else:
            proto = stack.protocols.by_ethertype.get(ethertype)
            if proto is not None:
                proto.input(port, buf, off)
            else:
                port.counters.rx_unknown_proto += 1
                buf.release()

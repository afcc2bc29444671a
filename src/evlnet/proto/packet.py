"""Packet sockets: raw Ethernet frames, per EtherType or all of them (ETH_P_ALL).

As in EVL, packet sockets see a frame before IPv4 does: every ETH_P_ALL listener gets a copy,
and the first listener of a specific EtherType takes the frame itself.
"""
from __future__ import annotations

import socket as _pysocket
from typing import TYPE_CHECKING

from ..constants import AF_PACKET, ETH_P_ALL, SOCK_RAW
from ..core.buffers import PacketBuffer
from .registry import Protocol

if TYPE_CHECKING:
    from ..core.port import Port
    from ..sockets.packet import PacketSocket


class PacketProtocol(Protocol):
    name = "packet"
    family = AF_PACKET
    sock_type = SOCK_RAW

    def __init__(self) -> None:
        super().__init__()
        self.taps: list["PacketSocket"] = []               # ETH_P_ALL listeners
        self.by_type: dict[int, list["PacketSocket"]] = {}  # EtherType -> listeners
        self.listening = False

    def accepts_proto(self, proto: int) -> bool:
        # *proto* is in network byte order, as for socket(2) and Python's socket module
        ethertype = _pysocket.ntohs(proto)
        return ethertype not in (0x8100, 0x88A8)   # VLAN tags are the stack's business

    def create_socket(self, family, sock_type, proto, flags):
        from ..sockets.packet import PacketSocket
        return PacketSocket(self.stack, family, sock_type, proto)

    def listen(self, sock: "PacketSocket", ethertype: int) -> None:
        if ethertype == ETH_P_ALL:
            self.taps = self.taps + [sock]               # copy-on-write: readers never lock
        elif ethertype:
            lst = self.by_type.get(ethertype, [])
            self.by_type = {**self.by_type, ethertype: lst + [sock]}
        self.listening = bool(self.taps or self.by_type)

    def unlisten(self, sock: "PacketSocket") -> None:
        self.taps = [s for s in self.taps if s is not sock]
        by_type = {}
        for t, lst in self.by_type.items():
            rest = [s for s in lst if s is not sock]
            if rest:
                by_type[t] = rest
        self.by_type = by_type
        self.listening = bool(self.taps or self.by_type)

    def input_frame(self, port: "Port", buf: PacketBuffer, ethertype: int, off: int) -> bool:
        """RX thread: deliver to packet sockets; True when one of them took the frame."""
        counters = port.counters
        for sock in self.taps:
            if sock.matches(port, buf):
                clone = port.rx_pool.take()
                if clone is None:
                    counters.rx_nomem += 1
                    continue
                n = buf.end - buf.start
                clone.data[0:n] = buf.data[buf.start:buf.end]
                clone.start, clone.end = 0, n
                clone.device_time = buf.device_time
                clone.queuing_time = buf.queuing_time
                clone.port = port
                clone.pkttype = buf.pkttype
                clone.protocol = ethertype
                clone.vlan_id = buf.vlan_id
                if not sock.queue.push(clone):
                    counters.rx_sock_full += 1
                    clone.release()
        listeners = self.by_type.get(ethertype)
        if listeners:
            for sock in listeners:
                if sock.matches(port, buf):
                    if not sock.queue.push(buf):
                        counters.rx_sock_full += 1
                        buf.release()
                    return True
        return False

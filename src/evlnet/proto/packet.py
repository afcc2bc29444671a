"""Packet sockets' control plane: who listens for which EtherType.

As in EVL, packet sockets see a frame before IPv4 does: every ETH_P_ALL listener gets a copy,
and the first listener of a specific EtherType takes the frame itself. That demultiplexing runs
in the compiled core; listening here publishes to the core's table.
"""
from __future__ import annotations

import socket as _pysocket
from typing import Any

from ..constants import AF_PACKET, ETH_P_ALL, SOCK_RAW
from ..sockets.packet import PacketSocket
from .registry import Protocol


class PacketProtocol(Protocol):
    name = "packet"
    family = AF_PACKET
    sock_type = SOCK_RAW

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[PacketSocket] = []

    def accepts_proto(self, proto: int) -> bool:
        # *proto* is in network byte order, as for socket(2) and Python's socket module
        ethertype = _pysocket.ntohs(proto)
        return ethertype not in (0x8100, 0x88A8)   # VLAN tags are the stack's business

    def create_socket(self, family: int, sock_type: int, proto: int, flags: int) -> Any:
        return PacketSocket(self.stack, family, sock_type, proto)

    def listen(self, sock: PacketSocket, ethertype: int) -> None:
        """*sock* receives *ethertype* frames (ETH_P_ALL: a copy of every frame)."""
        assert self.stack is not None, "a packet socket exists only on a registered protocol"
        port = sock.bound_port
        ifindex = port.ifindex if port is not None else 0
        self.stack.core.listen_packet(ETH_P_ALL if ethertype == ETH_P_ALL else ethertype,
                                      ifindex, sock.core_socket)
        self.listeners.append(sock)
        self.stack.tables_changed()

    def unlisten(self, sock: PacketSocket) -> None:
        if sock in self.listeners:
            assert self.stack is not None, "a packet socket exists only on a registered protocol"
            self.listeners.remove(sock)
            self.stack.core.unlisten_packet(sock.core_socket)
            self.stack.tables_changed()

    @property
    def listening(self) -> bool:
        return bool(self.listeners)

    @property
    def by_type(self) -> dict[int, list[PacketSocket]]:
        """Listeners of a specific EtherType (ETH_P_ALL taps excluded), by EtherType."""
        out: dict[int, list[PacketSocket]] = {}
        for sock in self.listeners:
            if sock.ethertype and sock.ethertype != ETH_P_ALL:
                out.setdefault(sock.ethertype, []).append(sock)
        return out

"""The protocol registry: every protocol the stack demultiplexes to, built-in or custom.

Built-in UDP and packet sockets register here exactly as a user's protocol does, so the registry
is the one place where the stack's couplings are declared (gVisor netstack's registration idea).
A protocol hooks in by EtherType (L2, after Ethernet/VLAN) or by IPv4 protocol number (L3), and
owns the socket (family, type, proto) triples it creates sockets for.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import oserror

#: evlnet.core.port.Port: a layer above this module, so referred to, not imported.
Port = Any
#: evlnet.core.stack.Stack: a layer above this module, so referred to, not imported.
Stack = Any


_P = TypeVar("_P", bound="Protocol")

#: Length of the Ethernet header in front of the frames handed to ``input_frame``.
ETH_HLEN = 14


@dataclass(frozen=True, slots=True)
class InbandPacket:
    """A received packet the core handed up to the in-band stage.

    ``frame`` is the Ethernet frame (VLAN tags removed) — or, for an IPv4 datagram the core
    reassembled, the datagram itself; ``frame[offset:]`` starts at the protocol's own header.
    """

    frame: bytes
    offset: int
    src_addr: int = 0          #: IPv4 source, for IP protocols
    src_mac: bytes = b""
    device_time: int = 0
    queuing_time: int = 0

    @property
    def payload(self) -> bytes:
        """The protocol's header and data (``frame[offset:]``)."""
        return self.frame[self.offset:]


class Protocol:
    """Base class for a protocol the stack can carry.

    Subclasses set ``name``, ``family``, ``sock_type`` and one of ``ethertype`` / ``ip_protocol``,
    and implement ``input_frame`` and ``create_socket``. The compiled core hands every frame of
    the protocol's EtherType or IP protocol up to the in-band stage, where ``input_frame`` runs
    (never on the oob threads).
    """

    name: str = "?"
    family: int = -1
    sock_type: int = -1
    ethertype: int | None = None
    ip_protocol: int | None = None

    def __init__(self) -> None:
        self.stack: "Stack | None" = None

    def bind_stack(self, stack: "Stack") -> None:
        """Called when the protocol is registered: the stack it serves becomes ``self.stack``."""
        self.stack = stack

    def accepts_proto(self, proto: int) -> bool:
        """Whether ``socket(family, type, proto)`` with this *proto* is ours."""
        return True

    def input_frame(self, port: "Port", pkt: InbandPacket) -> None:
        """In-band: one received packet of this protocol (see ``InbandPacket``). Deliver it to
        a socket (``sock.core_socket.deliver``) or drop it; an exception is counted in the port's
        ``rx_errors``. The default drops it."""

    def create_socket(self, family: int, sock_type: int, proto: int, flags: int) -> Any:
        """Make a socket of this protocol for ``Stack.socket(family, sock_type | flags,
        proto)``; *flags* are the ``SOCK_OOB``/``SOCK_NONBLOCK``/``SOCK_CLOEXEC`` bits. The
        default raises EPROTONOSUPPORT (a protocol without sockets)."""
        raise oserror(errno.EPROTONOSUPPORT, f"{self.name} has no sockets")


#: Handled by the stack itself (IPv4, ARP, 802.1Q/802.1ad tags; ICMP echo is answered by the
#: IPv4 layer): registering them would silently never be called, so they count as taken.
BUILTIN_ETHERTYPES = frozenset({0x0800, 0x0806, 0x8100, 0x88A8})
BUILTIN_IP_PROTOCOLS = frozenset({1})


class ProtocolRegistry:
    """Dispatch tables of one stack."""

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack
        self.by_ethertype: dict[int, Protocol] = {}
        self.by_ip_protocol: dict[int, Protocol] = {}
        self.socket_protocols: list[Protocol] = []

    def register(self, proto: _P) -> _P:
        """Add *proto* to the stack (returned as is); raises EEXIST if its EtherType/IP protocol
        is taken."""
        if proto.ethertype is not None and (proto.ethertype in self.by_ethertype
                                            or proto.ethertype in BUILTIN_ETHERTYPES):
            raise oserror(errno.EEXIST, f"EtherType {proto.ethertype:#06x} already registered")
        if proto.ip_protocol is not None and (proto.ip_protocol in self.by_ip_protocol
                                              or proto.ip_protocol in BUILTIN_IP_PROTOCOLS):
            raise oserror(errno.EEXIST, f"IP protocol {proto.ip_protocol} already registered")
        proto.bind_stack(self.stack)
        if proto.ethertype is not None:
            self.by_ethertype[proto.ethertype] = proto
        if proto.ip_protocol is not None:
            self.by_ip_protocol[proto.ip_protocol] = proto
        if proto.family >= 0:
            self.socket_protocols.append(proto)
        return proto

    def unregister(self, proto: Protocol) -> None:
        if proto.ethertype is not None and self.by_ethertype.get(proto.ethertype) is proto:
            del self.by_ethertype[proto.ethertype]
        if proto.ip_protocol is not None and self.by_ip_protocol.get(proto.ip_protocol) is proto:
            del self.by_ip_protocol[proto.ip_protocol]
        if proto in self.socket_protocols:
            self.socket_protocols.remove(proto)
        self.stack.publish_protocols()       # the core stops handing its frames up

    def find_socket_protocol(self, family: int, sock_type: int, proto: int) -> Protocol:
        """EVL's ``sock_oob_attach`` lookup: EAFNOSUPPORT / ESOCKTNOSUPPORT / EPROTONOSUPPORT."""
        of_family = [p for p in self.socket_protocols if p.family == family]
        if not of_family:
            raise oserror(errno.EAFNOSUPPORT, f"no oob protocol for address family {family}")
        of_type = [p for p in of_family if p.sock_type == sock_type]
        if not of_type:
            raise oserror(errno.ESOCKTNOSUPPORT,
                          f"socket type {sock_type} not supported by oob family {family}")
        for p in of_type:
            if p.accepts_proto(proto):
                return p
        raise oserror(errno.EPROTONOSUPPORT, f"oob protocol {proto} not supported")

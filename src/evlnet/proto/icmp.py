"""ICMP: echo requests are answered by the compiled core from the port's RX thread (as EVL's
newest kernel does: the reply goes back to the request's source IP and MAC without a routing
or neighbour lookup). User ICMP sockets are refused with ENOTSUPP, as in EVL."""
from __future__ import annotations

from typing import Any

from ..constants import AF_INET, IPPROTO_ICMP, SOCK_DGRAM
from ..errors import ENOTSUPP, oserror
from .registry import Protocol


class IcmpProtocol(Protocol):
    name = "icmp"
    family = AF_INET
    sock_type = SOCK_DGRAM

    def accepts_proto(self, proto: int) -> bool:
        return proto == IPPROTO_ICMP

    def create_socket(self, family: int, sock_type: int, proto: int, flags: int) -> Any:
        raise oserror(ENOTSUPP, "user ICMP packet I/O is not supported (as in EVL)")

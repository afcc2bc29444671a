"""ARP (RFC 826) for IPv4 over Ethernet, the only combination the stack resolves.

The packet is a fixed 28 bytes: hardware type, protocol type, address lengths, opcode, then the
sender's and target's MAC and IPv4 addresses. IPv4 addresses are kept as ints, like everywhere else.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import WireError
from .ethernet import ETH_ALEN, ETH_P_IP

ARP_REQUEST = 1
ARP_REPLY = 2
ARPHRD_ETHER = 1

# hwtype, ptype, hlen, plen, op, sender MAC, sender IP, target MAC, target IP
ARP_PACKET = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = 28
assert ARP_PACKET.size == ARP_LEN


@dataclass(frozen=True, slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP packet."""

    op: int
    sender_mac: bytes
    sender_ip: int
    target_mac: bytes
    target_ip: int

    @classmethod
    def parse(cls, buf) -> "ArpRepr":
        """Parse an ARP packet at the start of *buf* (trailing Ethernet padding is ignored)."""
        if len(buf) < ARP_LEN:
            raise WireError("truncated", f"{len(buf)} bytes, ARP needs {ARP_LEN}")
        (hwtype, ptype, hlen, plen, op,
         sha, spa, tha, tpa) = ARP_PACKET.unpack_from(buf, 0)
        if hwtype != ARPHRD_ETHER:
            raise WireError("bad_hwtype", f"ARP hardware type {hwtype}")
        if ptype != ETH_P_IP or hlen != ETH_ALEN or plen != 4:
            raise WireError("unsupported",
                            f"ARP ptype {ptype:#06x} hlen {hlen} plen {plen}")
        return cls(op, sha, int.from_bytes(spa, "big"), tha, int.from_bytes(tpa, "big"))

    def emit(self, buf, offset: int = 0) -> int:
        """Write the packet into the writable *buf* at *offset*; return the bytes written (28)."""
        if len(self.sender_mac) != ETH_ALEN or len(self.target_mac) != ETH_ALEN:
            raise ValueError("ARP hardware addresses must be 6 bytes")
        if len(buf) < offset + ARP_LEN:
            raise WireError("truncated", "output buffer too small for an ARP packet")
        try:
            ARP_PACKET.pack_into(buf, offset, ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4, self.op,
                                 self.sender_mac, self.sender_ip.to_bytes(4, "big"),
                                 self.target_mac, self.target_ip.to_bytes(4, "big"))
        except (struct.error, OverflowError) as exc:  # a field out of range
            raise ValueError(f"cannot emit {self!r}: {exc}") from None
        return ARP_LEN

    def to_bytes(self) -> bytes:
        out = bytearray(ARP_LEN)
        self.emit(out)
        return bytes(out)

"""IPv4 (RFC 791) headers and address helpers.

Addresses are plain ints throughout the stack (cheap to hash and compare, and the front cache keys
on them); these helpers convert to and from dotted quads and 4-byte network order. The codec parses
any header length (options are validated by the checksum, then skipped) but only emits the 20-byte
header without options.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import internet_checksum
from .errors import WireError

IPPROTO_ICMP = 1
IPPROTO_UDP = 17

IP_DF = 0x4000       # don't fragment
IP_MF = 0x2000       # more fragments
IP_OFFMASK = 0x1FFF  # fragment offset, in 8-byte units

IPV4_MIN_HLEN = 20
IPV4_MAX_DATAGRAM = 65535

INADDR_ANY = 0
INADDR_BROADCAST = 0xFFFFFFFF

# version/ihl, tos, total length, ident, flags/frag offset, ttl, protocol, checksum, src, dst
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_U16 = struct.Struct("!H")
_CHECKSUM_OFFSET = 10


def ip_to_int(s: str) -> int:
    """``"192.0.2.1"`` -> ``0xC0000201``. Only strict dotted quads: no leading zeros, no shorthand.

    Raises ValueError on anything else.
    """
    parts = s.split(".")
    if len(parts) != 4:
        raise ValueError(f"invalid IPv4 address {s!r}")
    n = 0
    for part in parts:
        # isdigit() alone accepts non-ASCII digits; a leading zero would be octal to inet_aton().
        if (not part or len(part) > 3 or not part.isascii() or not part.isdigit()
                or (part[0] == "0" and len(part) > 1)):
            raise ValueError(f"invalid IPv4 address {s!r}")
        octet = int(part)
        if octet > 255:
            raise ValueError(f"invalid IPv4 address {s!r}")
        n = (n << 8) | octet
    return n


def int_to_ip(n: int) -> str:
    """``0xC0000201`` -> ``"192.0.2.1"``."""
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"IPv4 address {n!r} out of range")
    return f"{n >> 24}.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def ip_to_bytes(addr: int | str) -> bytes:
    """An address as an int or a dotted quad -> 4 bytes in network order."""
    if isinstance(addr, str):
        addr = ip_to_int(addr)
    return addr.to_bytes(4, "big")


def bytes_to_int(b: bytes) -> int:
    """4 bytes in network order -> the address as an int."""
    if len(b) != 4:
        raise ValueError(f"an IPv4 address is 4 bytes, got {len(b)}")
    return int.from_bytes(b, "big")


def is_multicast(n: int) -> bool:
    """True for 224.0.0.0/4 (class D)."""
    return (n >> 28) == 0xE


def multicast_mac(n: int) -> bytes:
    """The Ethernet group address for multicast group *n*: 01:00:5e + its low 23 bits (RFC 1112)."""
    return b"\x01\x00\x5e" + (n & 0x7FFFFF).to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """An IPv4 header. ``frag_offset`` is in bytes (a multiple of 8), not 8-byte units."""

    src: int
    dst: int
    protocol: int
    payload_len: int
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    frag_offset: int = 0

    @property
    def header_len(self) -> int:
        """Length of the header emit() writes (never any options)."""
        return IPV4_MIN_HLEN

    @property
    def total_len(self) -> int:
        return IPV4_MIN_HLEN + self.payload_len

    @classmethod
    def parse(cls, buf, verify_checksum: bool = True) -> tuple["Ipv4Repr", int]:
        """Parse the header at the start of *buf*; return ``(repr, header_len)``.

        The payload is ``buf[header_len:header_len + repr.payload_len]``; *buf* may run past the
        datagram's total length (Ethernet pads short frames), which is not an error.
        """
        n = len(buf)
        if n < IPV4_MIN_HLEN:
            raise WireError("truncated", f"{n} bytes, IPv4 header needs {IPV4_MIN_HLEN}")
        (ver_ihl, tos, total_len, ident, frag,
         ttl, protocol, _csum, src, dst) = IPV4_HEADER.unpack_from(buf, 0)
        version = ver_ihl >> 4
        if version != 4:
            raise WireError("bad_version", f"IP version {version}")
        hlen = (ver_ihl & 0x0F) * 4
        if hlen < IPV4_MIN_HLEN or hlen > n:
            raise WireError("bad_ihl", f"header length {hlen} with {n} bytes available")
        if total_len < hlen or total_len > n:
            raise WireError("bad_length",
                            f"total length {total_len}, header {hlen}, {n} bytes available")
        # A correct header (options included) sums to all ones, so its checksum comes out 0.
        if verify_checksum and internet_checksum(memoryview(buf)[:hlen]) != 0:
            raise WireError("bad_checksum", "IPv4 header checksum")
        return cls(
            src=int.from_bytes(src, "big"),
            dst=int.from_bytes(dst, "big"),
            protocol=protocol,
            payload_len=total_len - hlen,
            ttl=ttl,
            tos=tos,
            ident=ident,
            dont_fragment=bool(frag & IP_DF),
            more_fragments=bool(frag & IP_MF),
            frag_offset=(frag & IP_OFFMASK) << 3,
        ), hlen

    def emit(self, buf, offset: int = 0) -> int:
        """Write the 20-byte header, checksum included, at *offset*; return 20.

        Only the header: the caller writes the payload after it.
        """
        total = IPV4_MIN_HLEN + self.payload_len
        if self.payload_len < 0 or total > IPV4_MAX_DATAGRAM:
            raise WireError("bad_length", f"payload length {self.payload_len}")
        if self.frag_offset & 7 or not 0 <= self.frag_offset <= IP_OFFMASK << 3:
            raise ValueError(f"fragment offset {self.frag_offset} is not a multiple of 8 in range")
        if len(buf) < offset + IPV4_MIN_HLEN:
            raise WireError("truncated", "output buffer too small for an IPv4 header")
        frag = self.frag_offset >> 3
        if self.dont_fragment:
            frag |= IP_DF
        if self.more_fragments:
            frag |= IP_MF
        try:
            IPV4_HEADER.pack_into(buf, offset, 0x45, self.tos, total, self.ident, frag,
                                  self.ttl, self.protocol, 0,
                                  self.src.to_bytes(4, "big"), self.dst.to_bytes(4, "big"))
        except (struct.error, OverflowError) as exc:  # a field out of range
            raise ValueError(f"cannot emit {self!r}: {exc}") from None
        csum = internet_checksum(memoryview(buf)[offset:offset + IPV4_MIN_HLEN])
        _U16.pack_into(buf, offset + _CHECKSUM_OFFSET, csum)
        return IPV4_MIN_HLEN

    def to_bytes(self) -> bytes:
        """The header alone (20 bytes)."""
        out = bytearray(IPV4_MIN_HLEN)
        self.emit(out)
        return bytes(out)

"""UDP (RFC 768) over IPv4.

The checksum covers a pseudo header (source, destination, protocol, UDP length) then the segment,
so parse and emit need the IPv4 addresses. A checksum field of 0 means "not computed" and is
accepted as is; a computed 0 is therefore sent as 0xFFFF.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import internet_checksum, pseudo_header_sum, udp_checksum
from .errors import WireError
from .ipv4 import IPPROTO_UDP

UDP_HLEN = 8
UDP_HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum
_U16 = struct.Struct("!H")
_CHECKSUM_OFFSET = 6
_MAX_LEN = 0xFFFF


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A UDP header. ``payload_len`` excludes the 8-byte header."""

    src_port: int
    dst_port: int
    payload_len: int

    @property
    def total_len(self) -> int:
        """The UDP length field: header plus payload."""
        return UDP_HLEN + self.payload_len

    @classmethod
    def parse(cls, buf, src: int, dst: int, verify_checksum: bool = True) -> "UdpRepr":
        """Parse the UDP segment *buf* (the IPv4 payload) sent from *src* to *dst*.

        The payload is ``buf[UDP_HLEN:UDP_HLEN + repr.payload_len]``.
        """
        n = len(buf)
        if n < UDP_HLEN:
            raise WireError("truncated", f"{n} bytes, UDP header needs {UDP_HLEN}")
        src_port, dst_port, length, csum = UDP_HEADER.unpack_from(buf, 0)
        if length < UDP_HLEN or length > n:
            raise WireError("bad_length", f"UDP length {length} with {n} bytes available")
        if verify_checksum and csum != 0:
            initial = pseudo_header_sum(src.to_bytes(4, "big"), dst.to_bytes(4, "big"),
                                        IPPROTO_UDP, length)
            # Summing the segment including its checksum field gives all ones when it is right.
            if internet_checksum(memoryview(buf)[:length], initial) != 0:
                raise WireError("bad_checksum", "UDP checksum")
        return cls(src_port, dst_port, length - UDP_HLEN)

    def emit(self, buf, offset: int, payload, src: int, dst: int) -> int:
        """Write header and *payload* (``payload_len`` bytes) at *offset*; return the bytes
        written."""
        length = UDP_HLEN + self.payload_len
        if len(payload) != self.payload_len:
            raise ValueError(f"payload is {len(payload)} bytes, repr says {self.payload_len}")
        if length > _MAX_LEN:
            raise WireError("bad_length", f"UDP length {length}")
        if len(buf) < offset + length:
            raise WireError("truncated", f"output buffer too small for a {length}-byte segment")
        try:
            UDP_HEADER.pack_into(buf, offset, self.src_port, self.dst_port, length, 0)
        except (struct.error, OverflowError) as exc:  # a field out of range
            raise ValueError(f"cannot emit {self!r}: {exc}") from None
        end = offset + length
        buf[offset + UDP_HLEN:end] = payload
        csum = udp_checksum(src.to_bytes(4, "big"), dst.to_bytes(4, "big"),
                            memoryview(buf)[offset:end])
        _U16.pack_into(buf, offset + _CHECKSUM_OFFSET, csum)
        return length

    def to_bytes(self, payload, src: int, dst: int) -> bytes:
        """The whole segment (header and payload)."""
        out = bytearray(UDP_HLEN + self.payload_len)
        self.emit(out, 0, payload, src, dst)
        return bytes(out)

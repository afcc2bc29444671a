"""ICMP (RFC 792) echo request/reply, which is all the stack answers.

ICMP has no length field: the message is the whole IPv4 payload, so callers pass exactly
``payload_len`` bytes (not trailing Ethernet padding, which would land in the echo payload).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import internet_checksum
from .errors import WireError

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8

ICMP_ECHO_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ICMP_ECHO_HLEN = 8
_U16 = struct.Struct("!H")
_CHECKSUM_OFFSET = 2
_ECHO_TYPES = (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST)


@dataclass(frozen=True, slots=True)
class IcmpEchoRepr:
    """An echo request (type 8) or reply (type 0) with its data."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes

    @property
    def total_len(self) -> int:
        return ICMP_ECHO_HLEN + len(self.payload)

    @classmethod
    def parse(cls, buf, verify_checksum: bool = True) -> "IcmpEchoRepr":
        """Parse the ICMP message that is all of *buf*."""
        if len(buf) < ICMP_ECHO_HLEN:
            raise WireError("truncated", f"{len(buf)} bytes, ICMP echo needs {ICMP_ECHO_HLEN}")
        # Checksum before type: a corrupt message is reported as corrupt, whatever its type says.
        if verify_checksum and internet_checksum(buf) != 0:
            raise WireError("bad_checksum", "ICMP checksum")
        icmp_type, code, _csum, ident, seq = ICMP_ECHO_HEADER.unpack_from(buf, 0)
        if icmp_type not in _ECHO_TYPES:
            raise WireError("unsupported", f"ICMP type {icmp_type}")
        return cls(icmp_type, code, ident, seq, bytes(buf[ICMP_ECHO_HLEN:]))

    def emit(self, buf, offset: int = 0) -> int:
        """Write the message, checksum included, at *offset*; return the bytes written."""
        end = offset + ICMP_ECHO_HLEN + len(self.payload)
        if len(buf) < end:
            raise WireError("truncated", "output buffer too small for the ICMP message")
        try:
            ICMP_ECHO_HEADER.pack_into(buf, offset, self.type, self.code, 0, self.ident, self.seq)
        except (struct.error, OverflowError) as exc:  # a field out of range
            raise ValueError(f"cannot emit {self!r}: {exc}") from None
        buf[offset + ICMP_ECHO_HLEN:end] = self.payload
        csum = internet_checksum(memoryview(buf)[offset:end])
        _U16.pack_into(buf, offset + _CHECKSUM_OFFSET, csum)
        return end - offset

    def to_bytes(self) -> bytes:
        out = bytearray(self.total_len)
        self.emit(out)
        return bytes(out)

"""The one exception the codecs raise: a ``ValueError`` that says *why* a packet was rejected.

Callers on the receive path count drops per reason (``WireError.reason``) instead of parsing
messages, so the set of reasons is small and fixed.
"""
from __future__ import annotations

#: Every value ``WireError.reason`` can take.
REASONS = frozenset({
    "truncated",     # fewer bytes than the header (or the output buffer) needs
    "bad_version",   # IP version field is not 4
    "bad_ihl",       # IPv4 header length below 5 words or past the end of the buffer
    "bad_checksum",  # a header/segment checksum does not verify
    "bad_length",    # a length field disagrees with the buffer
    "bad_hwtype",    # ARP hardware type is not Ethernet
    "unsupported",   # well-formed, but not something this stack handles
})


class WireError(ValueError):
    """A packet (or a value to emit) that a codec cannot accept.

    ``reason`` is one of :data:`REASONS`; the message adds detail for humans.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown WireError reason {reason!r}")
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)

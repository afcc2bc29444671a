"""Pure packet codecs (no I/O, no threads), in the style of smoltcp's ``wire`` module.

Each protocol has a frozen ``*Repr`` dataclass: a parsed, validated view of a header with
``parse`` (bytes -> Repr) and ``emit`` (Repr -> bytes written into a caller's buffer). Malformed
input raises :class:`WireError`, whose ``reason`` says why.
"""
from .errors import WireError

__all__ = ["WireError"]

"""Per-port statistics: EVL's ``struct evl_net_devstat`` plus evlnet's own drop counters.

Every frame the port loses is counted under a reason (names as lwIP/seastar use them), so no
packet disappears without a counter.
"""
from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: struct evl_net_devstat: 4 x u64, 6 x u32, then a u32 bitfield {oob_capable:1, oob_port:1};
#: 60 bytes padded to 64 by the u64 alignment (EVL_NDEVIOC_GETSTAT carries 64 bytes).
DEVSTAT = struct.Struct("=4Q7I4x")


class PortCounters:
    """Mutable counters updated on the data path (plain attribute increments)."""

    __slots__ = (
        "rx_packets", "rx_bytes", "tx_packets", "tx_bytes",
        "csum_errors", "rx_nomem", "tx_nomem",
        # evlnet's drop reasons (not in EVL's devstat)
        "rx_otherhost", "rx_malformed", "rx_ip_errors", "rx_no_receiver", "rx_sock_full",
        "rx_unknown_proto", "rx_reasm_fails", "rx_reasm_ok", "rx_filtered", "rx_inband",
        "rx_errors", "tx_errors", "tx_dropped_down", "tx_qdisc_drops", "icmp_echo_replies",
        "arp_replies",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class DevStat:
    """A snapshot of one port's statistics (what ``get_stats()`` returns)."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    skb_size: int = 0
    skb_free: int = 0
    skb_total: int = 0
    csum_errors: int = 0
    rx_nomem: int = 0
    tx_nomem: int = 0
    #: Whether the device moves frames straight from the oob threads (EVL: an oob-capable
    #: driver). ``no`` is not a failure: on Linux interfaces (AF_PACKET) frames cross the
    #: kernel's packet ring, as EVL relays them through in-band NAPI and the in-band xmit for a
    #: driver without oob support; the port works, and every per-packet decision is still made
    #: by the oob threads. The embedded virtual link is oob-capable. See ``capability_note``.
    oob_capable: bool = False
    oob_port: bool = False
    #: evlnet's extra drop counters and device/kernel counters, by name
    extra: dict[str, int] = field(default_factory=dict)

    def pack(self) -> bytes:
        """EVL's binary ``struct evl_net_devstat`` (64 bytes, native byte order)."""
        bits = (1 if self.oob_capable else 0) | (2 if self.oob_port else 0)
        return DEVSTAT.pack(self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes,
                            self.skb_size, self.skb_free, self.skb_total, self.csum_errors,
                            self.rx_nomem, self.tx_nomem, bits)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> DevStat:
        """Parse EVL's binary ``struct evl_net_devstat`` (the inverse of ``pack``)."""
        (rx_packets, rx_bytes, tx_packets, tx_bytes, skb_size, skb_free, skb_total, csum_errors,
         rx_nomem, tx_nomem, bits) = DEVSTAT.unpack_from(data)
        return cls(rx_packets, rx_bytes, tx_packets, tx_bytes, skb_size, skb_free, skb_total,
                   csum_errors, rx_nomem, tx_nomem, oob_capable=bool(bits & 1),
                   oob_port=bool(bits & 2))

    def as_dict(self) -> dict[str, Any]:
        """Every field by name, ``extra`` as a nested dict (JSON-ready)."""
        return asdict(self)

    def capability_note(self) -> str:
        """A plain-language reading of ``oob capability`` for tools to print beside the ``-Q``
        block (which stays byte for byte EVL's)."""
        if self.oob_capable:
            return ("oob capability: yes -- frames move between the device and the oob "
                    "threads directly")
        return ("oob capability: no -- not a failure: this device (a Linux interface, through "
                "AF_PACKET) has no oob driver, so frames cross the kernel's packet ring, as EVL "
                "relays them through the in-band stage for such drivers; the port works and "
                "the oob threads still handle every packet")

    def format_query(self, modifiers: str = "") -> str:
        """Render as ``evl net -Q[RrTtosfacx]`` prints it, byte for byte EVL's (so
        ``oob capability: no`` is printed bare; ``capability_note`` explains it)."""
        if not modifiers:
            return (f"oob capability: {'yes' if self.oob_capable else 'no'}\n"
                    f"    rx packets: {self.rx_packets}\n"
                    f"      rx bytes: {self.rx_bytes}\n"
                    f"    tx packets: {self.tx_packets}\n"
                    f"      tx bytes: {self.tx_bytes}\n"
                    f"      skb size: {self.skb_size}\n"
                    f"      skb free: {self.skb_free} / {self.skb_total}\n"
                    f"   csum errors: {self.csum_errors}\n"
                    f"      rx nomem: {self.rx_nomem}\n"
                    f"      tx nomem: {self.tx_nomem}")
        values = {
            "R": str(self.rx_packets), "r": str(self.rx_bytes),
            "T": str(self.tx_packets), "t": str(self.tx_bytes),
            "o": "yes" if self.oob_capable else "no", "s": str(self.skb_size),
            "f": str(self.skb_free), "a": str(self.skb_total), "c": str(self.csum_errors),
            "x": f"{self.rx_nomem} {self.tx_nomem}",
        }
        out = []
        for m in modifiers:
            if m not in values:
                raise ValueError(f"unknown query modifier {m!r} (use RrTtosfacx)")
            out.append(values[m])
        return " ".join(out)


DEVSTAT_FIELDS = [f.name for f in fields(DevStat) if f.name != "extra"]

"""Ethernet II framing, with 802.1Q VLAN tags and 802.1ad QinQ (two tags).

A frame is ``dst(6) src(6) type(2)``; each VLAN tag inserts ``TPID(2) TCI(2)`` in front of the real
EtherType, so with tags the 14-byte header's type field holds the outer TPID. ``EthernetRepr.vlans``
lists the tags outermost first. The FCS is never seen in user space and is not handled here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import WireError

ETH_ALEN = 6
ETH_HLEN = 14
VLAN_HLEN = 4
ETH_ZLEN = 60  # minimum frame length without FCS; drivers pad short frames to this

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

BROADCAST_MAC = b"\xff" * ETH_ALEN
ZERO_MAC = b"\0" * ETH_ALEN

ETH_HEADER = struct.Struct("!6s6sH")  # dst, src, ethertype (or outer TPID)
VLAN_TAG = struct.Struct("!HH")       # TCI, encapsulated ethertype (or inner TPID)

# TPIDs that announce a VLAN tag in an outer position.
_TAG_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def mac_to_str(b: bytes) -> str:
    """``b"\\xaa\\xbb..."`` -> ``"aa:bb:cc:dd:ee:ff"``."""
    return bytes(b).hex(":")


def mac_from_str(s: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or ``-`` separated, 1 or 2 hex digits a group) -> 6 bytes.

    Raises ValueError on anything else.
    """
    parts = s.split(":") if ":" in s else s.split("-")
    if len(parts) != ETH_ALEN:
        raise ValueError(f"invalid MAC address {s!r}")
    out = bytearray(ETH_ALEN)
    for i, part in enumerate(parts):
        # int(x, 16) alone would accept " f", "+f" or "0x": check the characters first.
        if not 1 <= len(part) <= 2 or not _HEXDIGITS.issuperset(part):
            raise ValueError(f"invalid MAC address {s!r}")
        out[i] = int(part, 16)
    return bytes(out)


def is_multicast_mac(b: bytes) -> bool:
    """True for a group address (I/G bit set); the broadcast address is one too."""
    return bool(b[0] & 0x01)


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One VLAN tag: 12-bit VLAN id, 3-bit priority, drop-eligible bit and the TPID announcing
    it."""

    vid: int
    pcp: int = 0
    dei: int = 0
    tpid: int = ETH_P_8021Q

    def __post_init__(self) -> None:
        if not 0 <= self.vid <= 0xFFF:
            raise ValueError(f"VLAN id {self.vid} out of range 0..4095")
        if not 0 <= self.pcp <= 7:
            raise ValueError(f"VLAN priority {self.pcp} out of range 0..7")
        if self.dei not in (0, 1):
            raise ValueError(f"VLAN DEI {self.dei} must be 0 or 1")
        if not 0 <= self.tpid <= 0xFFFF:
            raise ValueError(f"TPID {self.tpid:#x} out of range")

    @property
    def tci(self) -> int:
        """Tag control information: PCP(3) DEI(1) VID(12)."""
        return (self.pcp << 13) | (self.dei << 12) | self.vid

    @classmethod
    def from_tci(cls, tci: int, tpid: int = ETH_P_8021Q) -> "VlanTag":
        return cls(vid=tci & 0xFFF, pcp=tci >> 13, dei=(tci >> 12) & 1, tpid=tpid)


@dataclass(frozen=True, slots=True)
class EthernetRepr:
    """An Ethernet header. ``ethertype`` is the payload's type, after any VLAN tags."""

    dst: bytes
    src: bytes
    ethertype: int
    vlans: tuple[VlanTag, ...] = ()

    @property
    def header_len(self) -> int:
        return ETH_HLEN + VLAN_HLEN * len(self.vlans)

    @property
    def inner_vlan_id(self) -> int:
        """VLAN id of the innermost tag (the one the payload belongs to), or 0 when untagged."""
        return self.vlans[-1].vid if self.vlans else 0

    @classmethod
    def parse(cls, buf) -> tuple["EthernetRepr", int]:
        """Parse the header at the start of *buf*; return ``(repr, payload_offset)``.

        Recognises one tag (TPID 0x8100 or 0x88A8) and QinQ (either of those, then 0x8100).
        """
        n = len(buf)
        if n < ETH_HLEN:
            raise WireError("truncated", f"{n} bytes, Ethernet header needs {ETH_HLEN}")
        dst, src, ethertype = ETH_HEADER.unpack_from(buf, 0)
        if ethertype not in _TAG_TPIDS:
            return cls(dst, src, ethertype), ETH_HLEN

        offset = ETH_HLEN
        vlans = []
        tpid = ethertype
        # At most two tags: the outer one, then an inner 802.1Q tag (QinQ).
        while True:
            if n < offset + VLAN_HLEN:
                raise WireError("truncated", f"{n} bytes, VLAN tag needs {offset + VLAN_HLEN}")
            tci, ethertype = VLAN_TAG.unpack_from(buf, offset)
            vlans.append(VlanTag.from_tci(tci, tpid))
            offset += VLAN_HLEN
            if ethertype != ETH_P_8021Q or len(vlans) == 2:
                break
            tpid = ethertype
        return cls(dst, src, ethertype, tuple(vlans)), offset

    def emit(self, buf, offset: int = 0) -> int:
        """Write the header into the writable *buf* at *offset*; return the bytes written."""
        if len(self.dst) != ETH_ALEN or len(self.src) != ETH_ALEN:
            raise ValueError("Ethernet addresses must be 6 bytes")
        if not 0 <= self.ethertype <= 0xFFFF:
            raise ValueError(f"ethertype {self.ethertype:#x} out of range")
        size = self.header_len
        if len(buf) < offset + size:
            raise WireError("truncated", f"output buffer too small for a {size}-byte header")
        vlans = self.vlans
        try:
            ETH_HEADER.pack_into(buf, offset, self.dst, self.src,
                                 vlans[0].tpid if vlans else self.ethertype)
        except (struct.error, OverflowError) as exc:  # a field out of range
            raise ValueError(f"cannot emit {self!r}: {exc}") from None
        pos = offset + ETH_HLEN
        for i, tag in enumerate(vlans):
            # Each tag's "type" field names what follows it: the next tag's TPID or the payload.
            following = vlans[i + 1].tpid if i + 1 < len(vlans) else self.ethertype
            VLAN_TAG.pack_into(buf, pos, tag.tci, following)
            pos += VLAN_HLEN
        return size

    def to_bytes(self) -> bytes:
        out = bytearray(self.header_len)
        self.emit(out)
        return bytes(out)

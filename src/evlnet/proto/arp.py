"""ARP, control-plane side: learn neighbours into the front cache and send requests for solicit
and demoted sends.

The compiled core answers requests for our addresses from the port's RX thread and hands every
ARP frame up here (the in-band stage) to learn from. On Linux interfaces the kernel's ARP does
all of this and netlink feeds the front cache instead; EVL too leaves non-IP traffic, ARP
included, to the in-band stage.
"""
from __future__ import annotations

import errno
import struct
from typing import Any

from ..errors import oserror
from .registry import ETH_HLEN

#: evlnet.core.port.Port: a layer above this module, so referred to, not imported.
Port = Any
#: evlnet.core.stack.Stack: a layer above this module, so referred to, not imported.
Stack = Any


ARP_REQUEST = 1
ARP_REPLY = 2
_ARP = struct.Struct("!HHBBH6sI6sI")
_ETH = struct.Struct("!6s6sH")
BROADCAST = b"\xff" * 6


class ArpLayer:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def input(self, port: Port, frame: bytes, off: int = ETH_HLEN) -> None:
        """In-band: learn from an ARP frame the core received (and already answered)."""
        from ..core.frontcache import Neighbour
        if len(frame) - off < _ARP.size:
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, off)
        if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
            return
        ours = tpa in port.iface_unicast
        cache = self.stack.frontcache.neighbours
        known = cache.peek(spa) if spa else None
        if spa and (ours or known is not None or op == ARP_REPLY):
            if op == ARP_REPLY and not ours:
                return
            # as the kernel's ARP: traffic never changes a NUD_PERMANENT entry
            if known is None or not known.permanent:
                cache.learn(Neighbour(spa, bytes(sha), port))

    def send(self, port: Port, op: int, eth_dst: bytes, sender_ip: int, target_mac: bytes,
             target_ip: int) -> None:
        frame = bytearray(60)
        _ETH.pack_into(frame, 0, eth_dst, port.mac, 0x0806)
        _ARP.pack_into(frame, 14, 1, 0x0800, 6, 4, op, port.mac, sender_ip, target_mac, target_ip)
        port.transmit_frame(frame, nonblock=False)

    def request(self, port: Port, target_ip: int) -> None:
        """In-band: broadcast a who-has for *target_ip* from *port*."""
        src = port.iface.source_for(target_ip)
        if not src:
            raise oserror(errno.EADDRNOTAVAIL, f"{port.name} has no IPv4 address")
        self.send(port, ARP_REQUEST, BROADCAST, src, b"\0" * 6, target_ip)

"""ARP for virtual links, run in-band: answer requests for our addresses, learn neighbours into
the front cache, and send requests for solicit and demoted sends.

(On Linux interfaces the kernel's ARP does this and netlink feeds the front cache instead; EVL
too leaves all non-IP traffic, ARP included, to the in-band stage.)
"""
from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from ..core.buffers import PacketBuffer
from ..core.frontcache import Neighbour
from ..errors import oserror

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack

ARP_REQUEST = 1
ARP_REPLY = 2
_ARP = struct.Struct("!HHBBH6sI6sI")
_ETH = struct.Struct("!6s6sH")
BROADCAST = b"\xff" * 6


class ArpLayer:
    def __init__(self, stack: "Stack") -> None:
        self.stack = stack

    def input(self, port: "Port", buf: PacketBuffer, off: int) -> None:
        """RX thread: hand the frame to the in-band worker (ARP never runs on the oob stage)."""
        if port.iface.kind != "virtual":
            port.counters.rx_inband += 1   # the kernel handles ARP on Linux interfaces
            buf.release()
            return
        self.stack.inband.post(self._process, port, buf, off)

    def _process(self, port: "Port", buf: PacketBuffer, off: int) -> None:
        try:
            if buf.end - off < _ARP.size:
                port.counters.rx_malformed += 1
                return
            htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf.data, off)
            if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
                port.counters.rx_malformed += 1
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
            if op == ARP_REQUEST and ours and port.enabled:
                self.send(port, ARP_REPLY, bytes(sha), tpa, bytes(sha), spa)
                port.counters.arp_replies += 1
        finally:
            buf.release()

    def send(self, port: "Port", op: int, eth_dst: bytes, sender_ip: int, target_mac: bytes,
             target_ip: int, deadline_ns: int | None = None) -> None:
        buf = port.take_tx_buffer(deadline_ns is None, deadline_ns)
        data = buf.data
        _ETH.pack_into(data, 0, eth_dst, port.mac, 0x0806)
        _ARP.pack_into(data, 14, 1, 0x0800, 6, 4, op, port.mac, sender_ip, target_mac, target_ip)
        data[42:60] = bytes(18)
        buf.start = 0
        buf.end = 60
        port.transmit(buf)

    def request(self, port: "Port", target_ip: int) -> None:
        """In-band: broadcast a who-has for *target_ip* from *port*."""
        src = port.iface.source_for(target_ip)
        if not src:
            raise oserror(errno.EADDRNOTAVAIL, f"{port.name} has no IPv4 address")
        self.send(port, ARP_REQUEST, BROADCAST, src, b"\0" * 6, target_ip)

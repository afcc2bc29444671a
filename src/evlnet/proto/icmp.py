"""ICMP echo answered from the oob stage (as EVL's newest kernel does): the reply goes back to
the request's source IP and MAC without a routing or neighbour lookup. User ICMP sockets are
refused with ENOTSUPP, as in EVL."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..constants import AF_INET, IPPROTO_ICMP, SOCK_DGRAM
from ..core.buffers import PacketBuffer
from ..errors import ENOTSUPP, oserror
from ..wire.checksum import internet_checksum
from .registry import Protocol

if TYPE_CHECKING:
    from ..core.port import Port

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
_CSUM = struct.Struct("!H")


class IcmpProtocol(Protocol):
    name = "icmp"
    family = AF_INET
    sock_type = SOCK_DGRAM
    # dispatched by the IPv4 layer directly; no ip_protocol registration needed

    def accepts_proto(self, proto: int) -> bool:
        return proto == IPPROTO_ICMP

    def create_socket(self, family, sock_type, proto, flags):
        raise oserror(ENOTSUPP, "user ICMP packet I/O is not supported (as in EVL)")

    def input(self, port: "Port", buf: PacketBuffer, off: int, ihl: int = 20) -> None:
        stack = self.stack
        data = buf.data
        icmp = off + ihl
        counters = port.counters
        settings = stack.settings
        if (buf.end - icmp < 8 or data[icmp] != ICMP_ECHO_REQUEST or data[icmp + 1] != 0
                or settings.icmp_echo_ignore_all
                or (settings.icmp_echo_ignore_broadcasts and buf.pkttype != 0)):
            counters.rx_unknown_proto += 1     # not an echo request we answer
            buf.release()
            return
        if internet_checksum(buf.view[icmp:buf.end]) != 0:
            counters.csum_errors += 1
            buf.release()
            return
        length = buf.end - icmp
        s = buf.start
        src_mac = bytes(data[s + 6:s + 12])
        src = buf.src_addr
        dst = buf.dst_addr if buf.dst_addr in port.iface_unicast else port.iface.primary_address
        if 20 + length > port.mtu:
            self._reply_fragmented(port, buf, icmp, src_mac, dst, src)
            return
        out = port.tx_pool.take()
        if out is None:
            counters.tx_nomem += 1
            buf.release()
            return
        stack.ipv4.write_headers(out.data, src_mac, port.mac, dst, src, IPPROTO_ICMP, length,
                                 stack.ipv4.next_ident(), 0, 64, 0)
        od = out.data
        od[34:34 + length] = data[icmp:buf.end]
        od[34] = ICMP_ECHO_REPLY
        od[36:38] = b"\0\0"
        _CSUM.pack_into(od, 36, internet_checksum(out.view[34:34 + length]))
        out.start = 0
        out.end = max(34 + length, 60)
        if 34 + length < 60:
            od[34 + length:60] = bytes(60 - 34 - length)
        buf.release()
        try:
            port.transmit(out)
            counters.icmp_echo_replies += 1
        except OSError:
            pass   # counted by the port (tx_dropped_down / tx_qdisc_drops)

    def _reply_fragmented(self, port: "Port", buf: PacketBuffer, icmp: int, src_mac: bytes,
                          src: int, dst: int) -> None:
        """A reassembled request larger than the MTU: turn it into the reply in place and send
        it as IP fragments (as Linux does), never blocking for TX buffers."""
        data = buf.data
        data[icmp] = ICMP_ECHO_REPLY
        data[icmp + 2] = data[icmp + 3] = 0
        _CSUM.pack_into(data, icmp + 2, internet_checksum(buf.view[icmp:buf.end]))
        length = buf.end - icmp
        try:
            self.stack.ipv4.output_fragmented(port, src_mac, src, dst, IPPROTO_ICMP,
                                              [buf.view[icmp:buf.end]], length, 64, 0, True,
                                              None, None, 0, 0)
            port.counters.icmp_echo_replies += 1
        except OSError:
            pass   # counted by the port (tx_nomem / tx_dropped_down / tx_qdisc_drops)
        finally:
            buf.release()

"""UDP over IPv4: receive slots keyed by (address, port), checksum on both directions."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..constants import AF_INET, IPPROTO_UDP, SOCK_DGRAM
from ..core.buffers import PacketBuffer
from .registry import Protocol

if TYPE_CHECKING:
    from ..core.port import Port
    from ..sockets.base import ReceiveQueue

UDP_HDR = struct.Struct("!HHHH")
EPHEMERAL_FIRST, EPHEMERAL_LAST = 32768, 60999


def slot_key(addr: int, port: int) -> int:
    """One int per (address, port): cheaper to hash than a tuple on every received datagram."""
    return (port << 32) | addr


class UdpSlot:
    """A receive slot; several SO_REUSEPORT sockets share one slot and its queue (as EVL)."""

    __slots__ = ("queue", "owners", "reuseport")

    def __init__(self, queue: "ReceiveQueue", owner, reuseport: bool) -> None:
        self.queue = queue
        self.owners = [owner]
        self.reuseport = reuseport


class UdpProtocol(Protocol):
    name = "udp"
    family = AF_INET
    sock_type = SOCK_DGRAM
    ip_protocol = IPPROTO_UDP

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[int, UdpSlot] = {}
        self._next_ephemeral = EPHEMERAL_FIRST

    def accepts_proto(self, proto: int) -> bool:
        return proto in (0, IPPROTO_UDP)

    def create_socket(self, family, sock_type, proto, flags):
        from ..sockets.udp import UdpSocket
        proto = proto or IPPROTO_UDP
        kernel = self.stack.kernel
        # with Linux ports an oob socket is primarily a genuine kernel socket (EVL)
        ksock = kernel.new_kernel_socket(proto) if kernel is not None else None
        try:
            return UdpSocket(self.stack, family, sock_type, proto, kernel_sock=ksock)
        except BaseException:
            if ksock is not None:
                ksock.close()
            raise

    def pick_ephemeral(self, addr: int) -> int:
        # INADDR_ANY overlaps every address: it needs a port nobody is bound to
        used = {k >> 32 for k in list(self.slots)} if addr == 0 else ()
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            p = self._next_ephemeral
            self._next_ephemeral = p + 1 if p < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if (slot_key(addr, p) not in self.slots and slot_key(0, p) not in self.slots
                    and p not in used):
                return p
        return 0

    # -- RX (RX thread) -----------------------------------------------------------------------
    def input(self, port: "Port", buf: PacketBuffer, off: int) -> None:
        data = buf.data
        counters = port.counters
        if buf.end - off < 8:
            counters.rx_ip_errors += 1
            buf.release()
            return
        sport, dport, ulen, csum = UDP_HDR.unpack_from(data, off)
        if ulen < 8 or off + ulen > buf.end:
            counters.rx_ip_errors += 1
            buf.release()
            return
        end = off + ulen
        src = buf.src_addr
        dst = buf.dst_addr
        if csum:
            # pseudo header (addresses, protocol, UDP length) plus the segment; a correct one
            # sums to one's complement zero (0xFFFF or 0), i.e. to a multiple of 0xFFFF when the
            # segment is read as one big-endian integer (2**16 == 1 mod 0xFFFF, see checksum.py;
            # an odd segment is padded with a zero byte). Same test as checksum_add(...) in
            # (0xFFFF, 0), inlined.
            value = int.from_bytes(data[off:end], "big")
            if ulen & 1:
                value <<= 8
            if (value + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
                    + IPPROTO_UDP + ulen) % 0xFFFF:
                counters.csum_errors += 1
                buf.release()
                return
        slots = self.slots
        slot = slots.get((dport << 32) | dst)
        if slot is None:
            slot = slots.get(dport << 32)
            if slot is None:
                counters.rx_no_receiver += 1
                buf.release()
                return
        buf.start = off + 8
        buf.end = end
        buf.src_port = sport
        buf.dst_port = dport
        if not slot.queue.push(buf):
            counters.rx_sock_full += 1
            buf.release()

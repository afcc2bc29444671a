"""IPv4: header validation, local delivery check, reassembly on RX; header emission and
fragmentation on TX."""
from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from ..core.buffers import BufferPool, PacketBuffer
from ..wire.checksum import checksum_add, internet_checksum

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack

_now = time.monotonic_ns
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFMASK = 0x1FFF
IPV4_MIN_MTU = 68
MAX_DATAGRAM = 65535
#: version/ihl, tos, total length, id, flags+offset, ttl, protocol, checksum, src, dst (as ints)
IP_HDR = struct.Struct("!BBHHHBBHII")
ETH_HDR = struct.Struct("!6s6sH")
IP_CSUM = struct.Struct("!H")


class _Datagram:
    """Fragments of one datagram being reassembled."""

    __slots__ = ("frags", "total", "received", "first_seen")

    def __init__(self, now: int) -> None:
        self.frags: dict[int, tuple[PacketBuffer, int, int]] = {}   # offset -> (buf, data_off, len)
        self.total = -1            # payload length, known once the last fragment arrived
        self.received = 0
        self.first_seen = now


class Reassembler:
    """Per-port IP reassembly with a timeout and a bound on the buffers it may hold.

    Fragments stay in the RX buffers they arrived in; a complete datagram is copied into a buffer
    of the stack's reassembly pool (64 KiB each, preallocated) and then travels up like any packet.
    """

    def __init__(self, stack: "Stack", port: "Port") -> None:
        self.stack = stack
        self.port = port
        self.pending: dict[tuple[int, int, int, int], _Datagram] = {}
        self.held = 0

    def add(self, buf: PacketBuffer, off: int, ihl: int, src: int, dst: int, ident: int,
            proto: int, frag: int) -> tuple[PacketBuffer, int] | None:
        """Store a fragment; return (reassembled buffer, IP header offset) when complete."""
        counters = self.port.counters
        settings = self.stack.settings
        key = (src, dst, ident, proto)
        frag_off = (frag & IP_OFFMASK) * 8
        data_off = off + ihl
        length = buf.end - data_off
        more = frag & IP_MF
        if (more and length % 8) or frag_off + length > MAX_DATAGRAM - ihl:
            counters.rx_reasm_fails += 1
            buf.release()
            return None
        dg = self.pending.get(key)
        if dg is None:
            if len(self.pending) >= settings.ipfrag_max_datagrams:
                self._evict_oldest()
            dg = self.pending[key] = _Datagram(_now())
        if frag_off in dg.frags:          # duplicate: keep the first copy
            buf.release()
            return None
        while self.held >= settings.ipfrag_max_buffers and self.pending:
            if not self._evict_oldest(keep=key):
                break
        if self.held >= settings.ipfrag_max_buffers:
            # this datagram alone fills the bound: it cannot be completed within it
            buf.release()
            self._drop(key)
            return None
        dg.frags[frag_off] = (buf, data_off, length)
        self.held += 1
        dg.received += length
        if not more:
            dg.total = frag_off + length
        if dg.total < 0 or dg.received < dg.total:
            return None
        del self.pending[key]
        return self._assemble(dg, ihl)

    def _assemble(self, dg: _Datagram, ihl: int) -> tuple[PacketBuffer, int] | None:
        counters = self.port.counters
        pool: BufferPool = self.stack.reasm_pool
        out = pool.take()
        frags = sorted(dg.frags.items())
        ok = out is not None
        if ok:
            first_buf, first_off, _ = frags[0][1]
            hdr_start = first_off - ihl
            eth_start = first_buf.start
            # keep the MAC header too, so packet-level info (source MAC) stays available
            head = first_off - eth_start
            out.data[0:head] = first_buf.data[eth_start:first_off]
            expect = 0
            for offset, (fbuf, foff, flen) in frags:
                if offset != expect:    # hole or overlap: not a well-formed datagram
                    ok = False
                    break
                out.data[head + offset:head + offset + flen] = fbuf.data[foff:foff + flen]
                expect += flen
            if ok:
                out.start = 0
                out.end = head + dg.total
                ip = hdr_start - eth_start
                struct.pack_into("!HH", out.data, ip + 2, ihl + dg.total, 0)   # length, flags
                out.device_time = first_buf.device_time
                out.queuing_time = frags[-1][1][0].queuing_time
                out.port = self.port
                out.pkttype = first_buf.pkttype
                out.vlan_id = first_buf.vlan_id
                out.protocol = first_buf.protocol
        for _, (fbuf, _, _) in frags:
            fbuf.release()
        self.held -= len(frags)
        if not ok:
            counters.rx_reasm_fails += 1
            if out is not None:
                out.release()
            return None
        counters.rx_reasm_ok += 1
        return out, ip

    def _evict_oldest(self, keep=None) -> bool:
        victims = [k for k in self.pending if k != keep]
        if not victims:
            return False
        key = min(victims, key=lambda k: self.pending[k].first_seen)
        self._drop(key)
        return True

    def _drop(self, key) -> None:
        dg = self.pending.pop(key)
        for fbuf, _, _ in dg.frags.values():
            fbuf.release()
        self.held -= len(dg.frags)
        self.port.counters.rx_reasm_fails += 1

    def expire(self, now: int) -> None:
        limit = int(self.stack.settings.ipfrag_time * 1e9)
        for key in [k for k, dg in self.pending.items() if now - dg.first_seen > limit]:
            self._drop(key)

    def clear(self) -> None:
        for key in list(self.pending):
            self._drop(key)


class Ipv4Layer:
    """IPv4 input for one stack, and the output helpers its protocols use."""

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack
        self._ident = 0

    def next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    # -- RX -----------------------------------------------------------------------------------
    def input(self, port: "Port", buf: PacketBuffer, off: int) -> None:
        data = buf.data
        avail = buf.end - off
        counters = port.counters
        if avail < 20:
            counters.rx_ip_errors += 1
            buf.release()
            return
        vihl, _tos, tot, ident, frag, _ttl, proto, _csum, src, dst = IP_HDR.unpack_from(data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or ihl > avail or tot < ihl or tot > avail:
            counters.rx_ip_errors += 1
            buf.release()
            return
        # A correct header (even length, never all zero: version 4) sums to one's complement
        # zero, i.e. read as one big-endian integer it is a multiple of 0xFFFF (see checksum.py);
        # the same test as internet_checksum(...) != 0 without two calls and a memoryview.
        if int.from_bytes(data[off:off + ihl], "big") % 0xFFFF:
            counters.rx_ip_errors += 1
            buf.release()
            return
        if dst not in port.local_addrs:
            if (dst >> 28) != 14 or not self.stack.settings.accept_multicast:
                counters.rx_otherhost += 1
                buf.release()
                return
        buf.end = off + tot            # strip Ethernet padding
        buf.src_addr = src
        buf.dst_addr = dst
        if frag & (IP_MF | IP_OFFMASK):
            done = port.reassembler.add(buf, off, ihl, src, dst, ident, proto, frag)
            if done is None:
                return
            buf, off = done
            buf.src_addr = src
            buf.dst_addr = dst
        if proto == IPPROTO_UDP:
            self.stack.udp.input(port, buf, off + ihl)
        elif proto == IPPROTO_ICMP:
            self.stack.icmp.input(port, buf, off, ihl)
        else:
            handler = self.stack.protocols.by_ip_protocol.get(proto)
            if handler is not None:
                handler.input(port, buf, off + ihl)
            else:
                counters.rx_unknown_proto += 1
                buf.release()

    # -- TX -----------------------------------------------------------------------------------
    def write_headers(self, data, dst_mac: bytes, src_mac: bytes, src: int, dst: int, proto: int,
                      payload_len: int, ident: int, frag: int, ttl: int, tos: int) -> int:
        """Write Ethernet + IPv4 headers (checksum included) at 0; returns the L4 offset (34)."""
        ETH_HDR.pack_into(data, 0, dst_mac, src_mac, 0x0800)
        IP_HDR.pack_into(data, 14, 0x45, tos, 20 + payload_len, ident, frag, ttl, proto, 0, src, dst)
        IP_CSUM.pack_into(data, 24, internet_checksum(memoryview(data)[14:34]))
        return 34

    def output_fragmented(self, port: "Port", dst_mac: bytes, src: int, dst: int, proto: int,
                          pieces: list, total: int, ttl: int, tos: int, nonblock: bool,
                          deadline_ns: int | None, sock, tsflags: int, delivery_time: int) -> None:
        """Send an L4 segment (``pieces``, *total* bytes, header included) as IP fragments.

        Every fragment buffer is taken before any is queued, so a datagram is sent whole or not at
        all. The last fragment carries the socket reference: one TX timestamp record per datagram.
        """
        maxfrag = (port.mtu - 20) & ~7
        nfrags = (total + maxfrag - 1) // maxfrag
        bufs: list[PacketBuffer] = []
        try:
            for _ in range(nfrags):
                bufs.append(port.take_tx_buffer(nonblock, deadline_ns))
        except OSError:
            for b in bufs:
                b.release()
            raise
        ident = self.next_ident()
        # copy the segment stream into the fragments' payload areas
        it = iter(pieces)
        cur = memoryview(b"")
        for i, b in enumerate(bufs):
            frag_off = i * maxfrag
            flen = min(maxfrag, total - frag_off)
            more = IP_MF if i < nfrags - 1 else 0
            pos = self.write_headers(b.data, dst_mac, port.mac, src, dst, proto, flen, ident,
                                     more | (frag_off >> 3), ttl, tos)
            need = flen
            while need:
                if not len(cur):
                    cur = memoryview(next(it)).cast("B")
                    continue
                n = min(need, len(cur))
                b.data[pos:pos + n] = cur[:n]
                cur = cur[n:]
                pos += n
                need -= n
            if pos < 60:                  # a short last fragment: pad to the Ethernet minimum
                b.data[pos:60] = bytes(60 - pos)
                pos = 60
            b.start = 0
            b.end = pos
            b.tsflags = tsflags
            b.delivery_time = delivery_time
        bufs[-1].sock = sock
        for i, b in enumerate(bufs):
            try:
                port.transmit(b)
            except OSError:
                for rest in bufs[i + 1:]:
                    rest.release()
                raise


def segment_checksum_sum(pieces) -> int:
    """One's complement sum of a segment given as pieces of any length (odd ones included)."""
    total = 0
    odd = False
    for p in pieces:
        s = checksum_add(p)
        if odd:   # this piece starts at an odd offset: its bytes sit swapped in the 16-bit words
            s = ((s & 0xFF) << 8) | (s >> 8)
        total += s
        if len(p) & 1:
            odd = not odd
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total

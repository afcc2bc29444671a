"""``socket(AF_PACKET, SOCK_RAW | SOCK_OOB, proto)``: raw Ethernet frames on oob ports.

Addresses are Python's AF_PACKET tuples ``(ifname, proto[, pkttype[, hatype[, addr]]])``, with
*proto* in host byte order there, while the *proto* given to ``socket()`` is in network byte
order — both exactly as in Python's socket module.
"""
from __future__ import annotations

import errno
import socket as _pysocket


from ..core.buffers import PacketBuffer
from ..errors import oserror
from .base import OobSocket, ReceiveQueue

ETH_HLEN = 14


class PacketSocket(OobSocket):
    def __init__(self, stack, family, sock_type, proto, kernel_sock=None) -> None:
        super().__init__(stack, family, sock_type, proto, kernel_sock)
        self.ethertype = _pysocket.ntohs(proto)
        self.bound_port = None       # the Port frames are received from / sent on
        self.queue = ReceiveQueue(self.rcvbuf)
        if self.ethertype:
            stack.packet.listen(self, self.ethertype)

    def matches(self, port, buf: PacketBuffer) -> bool:
        bp = self.bound_port
        return bp is None or bp is port

    def _port_by_name(self, ifname, errcode: int):
        if not isinstance(ifname, str):
            raise oserror(errcode, f"bad interface name {ifname!r}")
        port = self.stack.ports.get(ifname)
        if port is None or not port.enabled:
            raise oserror(errcode, f"{ifname!r} is not an enabled oob port")
        return port

    def bind(self, address) -> None:
        """Bind to ``(ifname, proto)``: receive *proto* frames of that oob port only."""
        self._check_open()
        if not isinstance(address, tuple) or len(address) < 2:
            raise oserror(errno.EINVAL, "packet address must be (ifname, proto, ...)")
        ifname, proto = address[0], address[1]
        if not isinstance(proto, int) or not 0 <= proto <= 0xFFFF:
            raise oserror(errno.EINVAL, f"bad protocol {proto!r}")
        port = self._port_by_name(ifname, errno.EINVAL)
        stack = self.stack
        stack.packet.unlisten(self)
        self.bound_port = port
        if proto:
            self.ethertype = proto
        if self.ethertype:
            stack.packet.listen(self, self.ethertype)

    def getsockname(self):
        name = self.bound_port.name if self.bound_port else ""
        return (name, self.ethertype, 0, 1, b"")

    def _unbind(self) -> None:
        self.stack.packet.unlisten(self)
        self.queue.purge()
        self.queue.fail(errno.EBADF)

    def _receive_queue(self) -> ReceiveQueue:
        return self.queue

    def _port_down(self, port, err: int) -> None:
        if self.bound_port is None or self.bound_port is port:
            self.queue.fail(err)

    def _address_of(self, buf: PacketBuffer):
        s = buf.start
        port = buf.port
        real = port.device.real_device
        # EVL fills sll_ifindex with the real device's, also for a frame of a VLAN port
        name = real.name if real is not None and port.vlan_id else port.name
        return (name, buf.protocol, buf.pkttype, 1, bytes(buf.data[s + 6:s + 12]))

    def _send(self, views, total, address, nonblock, deadline, delivery_time) -> int:
        if address is not None:
            if not isinstance(address, tuple) or not address:
                raise oserror(errno.EINVAL, "packet address must be (ifname, proto, ...)")
            port = self._port_by_name(address[0], errno.ENXIO)
        elif self.bound_port is not None:
            port = self.bound_port
        else:
            raise oserror(errno.ENXIO, "no device: bind the socket or pass an address")
        if total < ETH_HLEN:
            raise oserror(errno.EINVAL, f"frame of {total} bytes has no full Ethernet header")
        if total - ETH_HLEN > port.mtu:
            raise oserror(errno.EMSGSIZE, f"frame of {total} bytes exceeds the MTU of {port.name}")
        port.check_sendable()
        buf = port.take_tx_buffer(nonblock, deadline)
        data = buf.data
        pos = 0
        for v in views:
            n = memoryview(v).nbytes
            data[pos:pos + n] = v
            pos += n
        buf.start = 0
        buf.end = pos
        buf.sock = self
        buf.tsflags = self.tsflags
        buf.delivery_time = delivery_time
        port.transmit(buf)
        return total

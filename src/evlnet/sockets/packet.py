"""``socket(AF_PACKET, SOCK_RAW | SOCK_OOB, proto)``: raw Ethernet frames on oob ports.

Addresses are Python's AF_PACKET tuples ``(ifname, proto[, pkttype[, hatype[, addr]]])``, with
*proto* in host byte order there, while the *proto* given to ``socket()`` is in network byte
order — both exactly as in Python's socket module.
"""
from __future__ import annotations

import errno
import socket as _pysocket

from ..errors import oserror
from .base import OobSocket

ETH_HLEN = 14


class PacketSocket(OobSocket):
    """An oob packet socket: whole Ethernet frames of one EtherType (``proto``; 0 = none until
    bound, ETH_P_ALL = every frame), received from and sent on enabled oob ports with
    ``oob_recvmsg``/``oob_sendmsg``. The address is Python's AF_PACKET tuple."""

    def __init__(self, stack, family, sock_type, proto, kernel_sock=None) -> None:
        super().__init__(stack, family, sock_type, proto, kernel_sock)
        self.ethertype = _pysocket.ntohs(proto)
        self.bound_port = None       # the Port frames are received from / sent on
        if self.ethertype:
            stack.packet.listen(self, self.ethertype)

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
        """``(ifname, ethertype, 0, 1, b"")``; ifname is "" while unbound."""
        name = self.bound_port.name if self.bound_port else ""
        return (name, self.ethertype, 0, 1, b"")

    def _unbind(self) -> None:
        self.stack.packet.unlisten(self)

    def port_down(self, port, err: int) -> None:
        """A port went down: wake blocked receivers with *err* when it is this socket's port
        (or the socket listens on every port)."""
        if self.bound_port is None or self.bound_port is port:
            super().port_down(port, err)

    def _recv(self, target, nonblock, deadline):
        n, length, port_id, protocol, pkttype, src_mac, dt, qt, delt = \
            self.core_socket.recv_frame_into(target, nonblock, deadline, self.busy_poll_us)
        port = self.stack.port_by_id(port_id)
        if port is None:
            name = ""
        else:
            real = port.device.real_device
            # EVL fills sll_ifindex with the real device's, also for a frame of a VLAN port
            name = real.name if real is not None and port.vlan_id else port.name
        return n, length, (name, protocol, pkttype, 1, src_mac), (dt, qt, delt)

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
        data = views[0] if len(views) == 1 else b"".join(bytes(v) for v in views)
        port.core.transmit(data, self.core_socket, self.tsflags, delivery_time, nonblock, deadline)
        return total

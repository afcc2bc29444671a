"""Genuine kernel sockets: the kernel bridge's socket part.

An oob UDP socket made while the stack has a bridge is also a kernel socket
(``new_kernel_socket``): binding reserves the address and port in the kernel, standard options go
through, in-band ``send``/``recv`` use the kernel's stack, and demoted datagrams (front-cache
misses) are sent with it (``demoted_send``), after which the route is learnt as EVL's
``ip_learn_oob_route()`` hook would. Sockets without one (made before the bridge existed) are
demoted through a raw IPv4 socket with their own source address and port.

Binding and closing also change what the ports divert: ``bind()`` and ``socket_closed()`` tell
the port filters (``port_filters.py``).
"""
from __future__ import annotations

import logging
import os
import socket
import struct

from ..errors import oserror
from . import rtnl
from .bridge_state import BridgeState, fmt_ip
from .port_filters import PortFilters

log = logging.getLogger("evlnet.linux")
_UDP_HDR = struct.Struct("!HHHH")
_IP_HDR = struct.Struct("!BBHHHBBHII")


class KernelSockets:
    """The genuine kernel sockets behind oob sockets (see the module docstring)."""

    def __init__(self, shared: BridgeState, filters: PortFilters) -> None:
        self._shared = shared
        self.stack = shared.stack
        self.counters = shared.counters
        self._filters = filters
        self._raw: socket.socket | None = None

    def release(self) -> None:
        """Close the raw IPv4 socket (when one was made)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass

    def new_kernel_socket(self, proto: int = socket.IPPROTO_UDP) -> socket.socket:
        """A genuine kernel UDP socket in the bridge's namespace."""
        self._shared.check_open()
        with self._shared.in_ns():
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, proto)

    def owns_socket(self, sock) -> bool:
        """Whether demoted datagrams of *sock* leave through the kernel's stack."""
        if getattr(sock, "kernel_socket", None) is not None:
            return True
        return not any(i.kind != "linux" for i in self.stack.interfaces.values())

    def bind(self, sock, addr: int, port: int) -> None:
        """Reserve (addr, port) in the kernel with the genuine socket, and divert it."""
        k = getattr(sock, "kernel_socket", None)
        if k is not None and self._kernel_knows(addr):
            try:
                k.bind((fmt_ip(addr), port))
            except OSError as exc:
                if exc.errno is None:
                    raise
                raise oserror(exc.errno, f"{fmt_ip(addr)}:{port}: {os.strerror(exc.errno)} "
                                         "(in the kernel)") from None
        if getattr(sock, "family", None) == socket.AF_INET:
            with self._shared.lock:
                self._filters.pending[sock] = (addr, port)
                self._filters.refresh()

    def _kernel_knows(self, addr: int) -> bool:
        if addr in (0, 0xFFFFFFFF):
            return True
        for iface in self.stack.interfaces.values():
            if any(a.address == addr for a in iface.addresses):
                return iface.kind == "linux"
        return True

    def connect(self, sock, addr: int, port: int) -> None:
        k = getattr(sock, "kernel_socket", None)
        if k is None:
            return
        try:
            k.connect((fmt_ip(addr), port))
        except OSError as exc:        # in-band send() falls back to sendto(remote)
            log.debug("kernel connect to %s:%d failed: %s", fmt_ip(addr), port, exc)

    def socket_closed(self, sock) -> None:
        with self._shared.lock:
            self._filters.pending.pop(sock, None)
            if getattr(sock, "local", None) is not None or hasattr(sock, "ethertype"):
                self._filters.refresh()

    def demoted_send(self, sock, payload: bytes, dst: int, dport: int) -> None:
        """In-band: send a datagram that missed the front cache through the kernel's stack."""
        stack = self.stack
        k = getattr(sock, "kernel_socket", None)
        try:
            if k is not None:
                k.sendto(payload, socket.MSG_DONTWAIT, (fmt_ip(dst), dport))
                self.counters.demoted_kernel += 1
            else:
                self._raw_send(sock, payload, dst, dport)
                self.counters.demoted_raw += 1
        except OSError as exc:
            stack.counters.tx_demote_failed += 1
            log.info("demoted datagram to %s:%d dropped: %s", fmt_ip(dst), dport, exc)
            return
        # what EVL's ip_learn_oob_route() does when the kernel routes through an oob port
        try:
            stack.resolve_route(dst, getattr(sock, "bound_device", None), True)
        except OSError:
            pass

    def _raw_send(self, sock, payload: bytes, dst: int, dport: int) -> None:
        from ..wire.checksum import checksum_add
        local = sock.local or (0, 0)
        src, sport = local
        if not src or src == 0xFFFFFFFF:
            src = rtnl.route_get(self._shared.rtnl_socket(), dst).prefsrc
        ulen = 8 + len(payload)
        pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + ulen
        seg = bytearray(_UDP_HDR.pack(sport, dport, ulen, 0) + payload)
        csum = ~checksum_add(memoryview(seg), pseudo) & 0xFFFF
        struct.pack_into("!H", seg, 6, csum or 0xFFFF)
        hdr = _IP_HDR.pack(0x45, getattr(sock, "tos", 0), 20 + ulen, 0,
                           0x4000 if ulen + 20 <= 1500 else 0, getattr(sock, "ttl", 64), 17, 0,
                           src, dst)
        if self._raw is None:
            with self._shared.in_ns():
                self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.IPPROTO_RAW)
        self._raw.sendto(hdr + bytes(seg), socket.MSG_DONTWAIT, (fmt_ip(dst), 0))

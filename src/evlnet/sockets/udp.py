"""``socket(AF_INET, SOCK_DGRAM | SOCK_OOB)``: oob UDP sockets."""
from __future__ import annotations

import errno
import socket as _pysocket
from typing import Any

from ..constants import UDP_MAX_PAYLOAD
from ..errors import oserror
from .base import OobSocket


def slot_key(addr: int, port: int) -> int:
    """One int per (address, port) binding."""
    return (port << 32) | addr


class UdpSlot:
    """A binding; several SO_REUSEPORT sockets share one slot and its queue (as EVL)."""

    __slots__ = ("owners", "reuseport")

    def __init__(self, owner: Any, reuseport: bool) -> None:
        self.owners = [owner]
        self.reuseport = reuseport

IP_TTL = _pysocket.IP_TTL
IP_TOS = _pysocket.IP_TOS
IPPROTO_IP = _pysocket.IPPROTO_IP
IP_MTU_DISCOVER = getattr(_pysocket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = 2
_ip_cache: dict[str, int] = {}


def inet_aton_int(host: Any, what: str = "address") -> int:
    """IPv4 text as ``inet_aton`` reads it -> int. EINVAL for anything else, whatever
    ``inet_aton`` raises (OSError; TypeError for a non-str; ValueError for an embedded NUL)."""
    try:
        return int.from_bytes(_pysocket.inet_aton(host), "big")
    except (OSError, TypeError, ValueError):
        raise oserror(errno.EINVAL, f"bad IPv4 {what} {host!r}") from None


def parse_inet_address(address: Any, what: str = "address") -> tuple[int, int]:
    """``(host, port)`` -> (IPv4 int, port). EINVAL for anything that is not an IPv4 address."""
    try:
        host, port = address
    except (TypeError, ValueError):
        raise oserror(errno.EINVAL, f"{what} must be a (host, port) tuple") from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise oserror(errno.EINVAL, f"bad port {port!r}")
    ip = _ip_cache.get(host)
    if ip is None:
        if host in ("", "0.0.0.0"):
            ip = 0
        elif host == "<broadcast>" or host == "broadcast":
            ip = 0xFFFFFFFF
        else:
            ip = inet_aton_int(host)
        if len(_ip_cache) < 4096:
            _ip_cache[host] = ip
    return ip, port


_ip_str_cache: dict[int, str] = {}


def format_ip(ip: int) -> str:
    """IPv4 int -> dotted quad; cached (bounded) since every received datagram reports one."""
    text = _ip_str_cache.get(ip)
    if text is None:
        text = _pysocket.inet_ntoa(ip.to_bytes(4, "big"))
        if len(_ip_str_cache) < 4096:
            _ip_str_cache[ip] = text
    return text


class UdpSocket(OobSocket):
    """An oob UDP socket. Bind/connect as with Python sockets; I/O with ``oob_sendmsg`` and
    ``oob_recvmsg`` (plus the conveniences ``oob_sendto``/``oob_recvfrom``)."""

    def __init__(self, stack, family, sock_type, proto, kernel_sock=None) -> None:
        super().__init__(stack, family, sock_type, proto, kernel_sock)
        self.local: tuple[int, int] | None = None       # bound (addr, port)
        self._slot: UdpSlot | None = None

    # -- addressing ---------------------------------------------------------------------------
    @property
    def remote(self) -> tuple[int, int] | None:
        """The connected ``(addr, port)`` as ints, None when not connected (kept in the core
        socket, which sends there on the fast path)."""
        port = self.core_socket.remote_port
        return (self.core_socket.remote_addr, port) if port else None

    def bind(self, address) -> None:
        """Bind to ``(host, port)``; host "" is INADDR_ANY, port 0 picks an ephemeral port."""
        self._check_open()
        addr, port = parse_inet_address(address)
        with self._lock:
            if self.local is not None:
                raise oserror(errno.EINVAL, "socket is already bound")
            self._bind_locked(addr, port)

    def _bind_locked(self, addr: int, port: int) -> None:
        stack = self.stack
        udp = stack.udp
        if addr and addr != 0xFFFFFFFF and not stack.is_local_address(addr):
            raise oserror(errno.EADDRNOTAVAIL, f"{format_ip(addr)} is not a local address")
        ephemeral = port == 0
        for _attempt in range(64 if ephemeral else 1):
            if ephemeral:
                port = udp.pick_ephemeral(addr)
                if port == 0:
                    raise oserror(errno.EADDRINUSE, "no ephemeral port left")
            key = slot_key(addr, port)
            slot = udp.slots.get(key)
            if slot is None:
                self._check_wildcard_overlap(udp, addr, port)
            elif not (self.reuseport and slot.reuseport):
                raise oserror(errno.EADDRINUSE, f"{format_ip(addr)}:{port} is in use")
            try:
                # Linux ports: the genuine kernel socket reserves the port in the kernel too,
                # and the port's input diversion starts taking its traffic
                stack.kernel_bind(self, addr, port)
            except OSError as exc:
                if ephemeral and exc.errno == errno.EADDRINUSE:
                    continue              # taken in the kernel by someone else: next one
                raise
            break
        else:
            raise oserror(errno.EADDRINUSE, "no ephemeral port free in the kernel")
        if slot is not None:
            slot.owners.append(self)
            self.core_socket.share_queue_of(slot.owners[0].core_socket)   # SO_REUSEPORT: one queue
        else:
            slot = UdpSlot(self, self.reuseport)
            udp.slots[key] = slot
            stack.core.bind_udp(addr, port, self.core_socket)     # the RX path delivers here now
        self._slot = slot
        self.local = (addr, port)
        self.core_socket.local_addr = addr
        self.core_socket.local_port = port

    def _check_wildcard_overlap(self, udp, addr: int, port: int) -> None:
        """Linux (and so EVL, whose in-band bind runs first): INADDR_ANY:port and addr:port
        overlap; EADDRINUSE unless both sides set SO_REUSEADDR, or both SO_REUSEPORT."""
        if addr == 0:
            others = [s for k, s in list(udp.slots.items()) if k >> 32 == port]
        else:
            wild = udp.slots.get(slot_key(0, port))
            others = [wild] if wild is not None else []
        for other in others:
            if self.reuseport and other.reuseport:
                continue
            if self.reuseaddr and all(o.reuseaddr for o in other.owners):
                continue
            raise oserror(errno.EADDRINUSE, f"port {port} is in use"
                          f"{' on another address' if addr == 0 else ' on INADDR_ANY'}")

    def connect(self, address) -> None:
        """Set the default destination (EDESTADDRREQ is raised on sends without one)."""
        self._check_open()
        addr, port = parse_inet_address(address)
        if addr == 0 or port == 0:
            raise oserror(errno.EINVAL, "cannot connect to a zero address or port")
        with self._lock:
            if self.local is None:
                self._bind_locked(0, 0)
        self.core_socket.remote_addr = addr
        self.core_socket.remote_port = port
        if self._kernel is not None:
            self.stack.kernel_connect(self, addr, port)

    def getsockname(self) -> tuple[str, int]:
        """The bound ``(address, port)``; ``("0.0.0.0", 0)`` while unbound."""
        if self.local is None:
            return ("0.0.0.0", 0)
        return (format_ip(self.local[0]), self.local[1])

    def getpeername(self) -> tuple[str, int]:
        """The connected ``(address, port)``; ENOTCONN when not connected."""
        if self.remote is None:
            raise oserror(errno.ENOTCONN, "socket is not connected")
        return (format_ip(self.remote[0]), self.remote[1])

    def _unbind(self) -> None:
        slot = self._slot
        if slot is None:
            return
        slot.owners.remove(self)
        self._slot = None
        local = self.local
        assert local is not None            # it has a slot: it is bound
        if not slot.owners:
            key = slot_key(*local)
            if self.stack.udp.slots.get(key) is slot:
                del self.stack.udp.slots[key]
                self.stack.core.bind_udp(local[0], local[1], None)
        else:
            # SO_REUSEPORT: the shared queue lives on with the other owners, who must not
            # see this socket's EBADF; this socket keeps a private queue.
            self.core_socket.private_queue()

    # -- oob I/O: the common argument shapes go straight to the core --------------------------
    def oob_sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None, *,
                    timeout: float | None = None, abs_timeout_ns: int | None = None) -> int:
        """Send one datagram gathered from *buffers* (EVL ``oob_sendmsg``); see
        ``OobSocket.oob_sendmsg``. The common shapes (one bytes/bytearray, a dotted-quad
        address, a front-cache hit) are checked and sent by the core without Python code."""
        if not ancdata and timeout is None and abs_timeout_ns is None and not self._closed:
            sent = self.core_socket.try_sendmsg(buffers, address, flags, self._nonblocking)
            if sent is not None:
                return sent
        return super().oob_sendmsg(buffers, ancdata, flags, address, timeout=timeout,
                                   abs_timeout_ns=abs_timeout_ns)

    def oob_recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0, *,
                         timeout: float | None = None, abs_timeout_ns: int | None = None):
        """Receive one datagram into writable *buffers*: ``(nbytes, ancdata, msg_flags,
        address)``; see ``OobSocket.oob_recvmsg_into``. One bytearray, no control buffer and
        a relative timeout are handled by the core without Python code."""
        if not ancbufsize and abs_timeout_ns is None and not self._closed:
            got = self.core_socket.try_recvmsg_into(buffers, flags, timeout, self._nonblocking,
                                                    self.busy_poll_us)
            if got is not None:
                return got
        return super().oob_recvmsg_into(buffers, ancbufsize, flags, timeout=timeout,
                                        abs_timeout_ns=abs_timeout_ns)

    def _recv(self, target, nonblock, deadline):
        n, length, addr, port, dt, qt, delt = self.core_socket.recv_into(
            target, nonblock, deadline, self.busy_poll_us)
        text = _ip_str_cache.get(addr)
        if text is None:
            text = format_ip(addr)
        return n, length, (text, port), (dt, qt, delt)

    # -- conveniences ---------------------------------------------------------------------------
    def oob_sendto(self, data, address, flags: int = 0, **kw) -> int:
        """``oob_sendmsg([data], (), flags, address)``: one datagram to *address*; *kw* takes
        ``timeout``/``abs_timeout_ns``. Returns the bytes sent (0 when demoted in-band)."""
        return self.oob_sendmsg([data], (), flags, address, **kw)

    def oob_send(self, data, flags: int = 0, **kw) -> int:
        """``oob_sendmsg([data], (), flags)`` to the connected peer (EDESTADDRREQ if none)."""
        return self.oob_sendmsg([data], (), flags, None, **kw)

    def oob_recvfrom(self, bufsize: int, flags: int = 0, **kw):
        """``oob_recvmsg`` without control data: ``(data, (address, port))``; *kw* takes
        ``timeout``/``abs_timeout_ns``."""
        data, _, _, addr = self.oob_recvmsg(bufsize, 0, flags, **kw)
        return data, addr

    # -- in-band I/O: the genuine kernel socket (Linux ports) ------------------------------------
    # EVL: "any oob-enabled socket is primarily a genuine socket"; send/recv on it use the
    # kernel's stack, which never sees the traffic the oob port diverts.
    def _genuine(self):
        self._check_open()
        if self._kernel is None:
            raise oserror(errno.EOPNOTSUPP, "in-band I/O needs a genuine kernel socket (oob "
                                            "sockets made while the stack has a Linux port)")
        return self._kernel

    def _inband_flags(self, flags: int) -> int:
        return flags | _pysocket.MSG_DONTWAIT if self._nonblocking else flags

    def send(self, data, flags: int = 0) -> int:
        """In-band send to the connected peer through the genuine kernel socket (Linux ports
        only: EOPNOTSUPP otherwise); the kernel's stack carries it, not the oob port."""
        k = self._genuine()
        if self.remote is None:
            raise oserror(errno.EDESTADDRREQ, "socket is not connected")
        return k.sendto(data, self._inband_flags(flags),
                        (format_ip(self.remote[0]), self.remote[1]))

    def sendto(self, data, flags_or_address, address=None) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``, in-band."""
        k = self._genuine()
        if address is None:
            flags, address = 0, flags_or_address
        else:
            flags = flags_or_address
        if self.local is None:         # bind through the stack: the oob side owns the port too
            with self._lock:
                if self.local is None:
                    self._bind_locked(0, 0)
        return k.sendto(data, self._inband_flags(flags), address)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """In-band receive from the genuine kernel socket (see ``send``). Datagrams the oob
        port diverts never arrive here: use ``oob_recvmsg`` for those."""
        return self._genuine().recv(bufsize, self._inband_flags(flags))

    def recvfrom(self, bufsize: int, flags: int = 0):
        """In-band ``recvfrom`` on the genuine kernel socket: ``(data, address)``."""
        return self._genuine().recvfrom(bufsize, self._inband_flags(flags))

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """In-band ``recv_into`` on the genuine kernel socket: bytes received."""
        return self._genuine().recv_into(buffer, nbytes, self._inband_flags(flags))

    def recvfrom_into(self, buffer, nbytes: int = 0, flags: int = 0):
        """In-band ``recvfrom_into`` on the genuine kernel socket: ``(nbytes, address)``."""
        return self._genuine().recvfrom_into(buffer, nbytes, self._inband_flags(flags))

    # -- options --------------------------------------------------------------------------------
    def _set_protocol_option(self, level, optname, value) -> bool:
        from .base import _int_value
        if level == IPPROTO_IP and optname == IP_TTL:
            v = _int_value(value)
            if not 1 <= v <= 255 and v != -1:
                raise oserror(errno.EINVAL, f"bad TTL {v}")
            self.core_socket.ttl = 64 if v == -1 else v
            return True
        if level == IPPROTO_IP and optname == IP_TOS:
            self.core_socket.tos = _int_value(value) & 0xFF
            return True
        if level == IPPROTO_IP and optname == IP_MTU_DISCOVER:
            self.core_socket.dont_fragment = _int_value(value) == IP_PMTUDISC_DO
            return True
        return False

    def _get_protocol_option(self, level, optname):
        if level == IPPROTO_IP and optname == IP_TTL:
            return self.core_socket.ttl
        if level == IPPROTO_IP and optname == IP_TOS:
            return self.core_socket.tos
        return None

    # -- send -----------------------------------------------------------------------------------
    def _send(self, views: list, total: int, address, nonblock: bool, deadline,
              delivery_time) -> int:
        if address is not None:
            dst, dport = parse_inet_address(address, "destination")
            if dst == 0 or dport == 0:
                raise oserror(errno.EINVAL, "zero destination address or port")
        elif self.remote is not None:
            dst, dport = self.remote
        else:
            raise oserror(errno.EDESTADDRREQ, "no destination address (connect or pass one)")
        if total > UDP_MAX_PAYLOAD:
            raise oserror(errno.EMSGSIZE,
                          f"{total} bytes exceed the UDP maximum of {UDP_MAX_PAYLOAD}")
        if not self.broadcast and self.stack.core.is_broadcast(dst):
            raise oserror(errno.EACCES, f"{format_ip(dst)} is a broadcast address: set "
                                        "SO_BROADCAST first (as Linux)")
        if self.local is None:
            with self._lock:
                if self.local is None:
                    self._bind_locked(0, 0)
        if len(views) == 1:
            data = views[0]
        else:
            data = b"".join(bytes(v) for v in views)
        n = self.core_socket.sendto(dst, dport, data, self.tsflags, nonblock, deadline)
        if n >= 0:
            return n
        # Front-cache miss: demote to the in-band stage (EVL's offload path).
        return self.stack.demote_udp(self, [data], total, dst, dport, nonblock)

    def send_resolved(self, route, dst_mac: bytes, views: list, total: int, dst: int, dport: int,
                      nonblock: bool, deadline, delivery_time: int) -> int:
        """In-band: send once route and neighbour are known (demoted datagrams)."""
        data = views[0] if len(views) == 1 else b"".join(bytes(v) for v in views)
        return self.core_socket.send_resolved(route.port.core, dst_mac, route.source, dst,
                                              dport, data, self.tsflags, nonblock, deadline)

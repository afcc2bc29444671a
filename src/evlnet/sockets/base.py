"""What every oob socket shares: the receive queue, deadlines, options and timestamping."""
from __future__ import annotations

import errno
import socket as _pysocket
import struct
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from ..constants import (
    EVL_SOCKOPT_RECVSZ,
    EVL_SOCKOPT_SENDSZ,
    EVL_SOCKOPT_TIMESTAMPING,
    EVL_SOF_TIMESTAMP_DEVICE,
    EVL_SOF_TIMESTAMP_QUEUING,
    EVL_SOF_TIMESTAMP_RX,
    EVL_SOF_TIMESTAMP_TX,
    EVL_SOF_TIMESTAMPS,
    MSG_DONTWAIT,
    MSG_TIMESTAMP,
    MSG_TRUNC,
    SO_TIMESTAMP_OOB,
    SOL_SOCKET,
)
from ..core.timestamps import IOTIMES, IOTIMES_SIZE, IoTimes
from ..datapath import _core
from ..errors import oserror

#: evlnet.core.stack.Stack: a layer above this module, so referred to, not imported.
Stack = Any


_now = time.monotonic_ns
_INT = struct.Struct("i")
SO_SNDBUF = _pysocket.SO_SNDBUF
SO_RCVBUF = _pysocket.SO_RCVBUF
SO_BINDTODEVICE = getattr(_pysocket, "SO_BINDTODEVICE", 25)
SO_REUSEADDR = _pysocket.SO_REUSEADDR
SO_REUSEPORT = getattr(_pysocket, "SO_REUSEPORT", 15)
SO_TYPE = _pysocket.SO_TYPE
SO_PROTOCOL = getattr(_pysocket, "SO_PROTOCOL", 38)
SO_DOMAIN = getattr(_pysocket, "SO_DOMAIN", 39)
SO_PRIORITY = getattr(_pysocket, "SO_PRIORITY", 12)
SO_ERROR = _pysocket.SO_ERROR
SO_BUSY_POLL = getattr(_pysocket, "SO_BUSY_POLL", 46)
SO_BROADCAST = _pysocket.SO_BROADCAST
#: Standard options every oob socket accepts and keeps (as a genuine socket would), whatever
#: the order of calls and whether or not it also has a kernel socket; the stack implements
#: SO_BROADCAST (broadcast sends need it, EACCES otherwise, as Linux), IP_TOS and IP_TTL.
STANDARD_OPTIONS = frozenset(
    [(_pysocket.SOL_SOCKET, getattr(_pysocket, name)) for name in (
        "SO_BROADCAST", "SO_KEEPALIVE", "SO_DONTROUTE", "SO_OOBINLINE", "SO_RCVLOWAT",
        "SO_SNDLOWAT", "SO_MARK", "SO_DEBUG", "SO_TIMESTAMP", "SO_TIMESTAMPNS")
     if hasattr(_pysocket, name)]
    + [(_pysocket.IPPROTO_IP, getattr(_pysocket, name)) for name in (
        "IP_RECVERR", "IP_PKTINFO", "IP_RECVTOS", "IP_RECVTTL", "IP_MULTICAST_TTL",
        "IP_MULTICAST_LOOP", "IP_FREEBIND", "IP_BIND_ADDRESS_NO_PORT")
       if hasattr(_pysocket, name)])
#: EVL's oob option ids at SOL_SOCKET and the option each one stands for.
EVL_OOB_OPTIONS = {EVL_SOCKOPT_RECVSZ: SO_RCVBUF, EVL_SOCKOPT_SENDSZ: SO_SNDBUF,
                   EVL_SOCKOPT_TIMESTAMPING: SO_TIMESTAMP_OOB}
# Linux: SOCK_MIN_RCVBUF = 2048 + sizeof(struct sk_buff) rounded; SOCK_MIN_SNDBUF = 2x that.
SOCK_MIN_RCVBUF = 2304
SOCK_MIN_SNDBUF = 4608
DEFAULT_BUF = 212992          # /proc/sys/net/core/[rw]mem_default on a stock kernel
#: What a queued datagram is charged against the receive buffer, on top of its bytes (about the
#: sk_buff overhead Linux charges), so SO_RCVBUF bounds a queue as it does on Linux.
RX_OVERHEAD = 512
# Plain ints: socket.MSG_* are IntFlag members, and every operator on one costs ~0.7 us.
_DONTWAIT = int(MSG_DONTWAIT)
_TIMESTAMP = int(MSG_TIMESTAMP)
_TRUNC = int(MSG_TRUNC)
RECV_FLAGS = _DONTWAIT | _TIMESTAMP
SEND_FLAGS = _DONTWAIT


def _receive_buffers(buffers: Any) -> list:
    """*buffers* (one writable bytes-like object or an iterable of them) as a list; EINVAL for
    anything that cannot be received into."""
    if isinstance(buffers, (bytes, bytearray, memoryview)):
        buffers = [buffers]
    try:
        out = list(buffers)
        for b in out:
            with memoryview(b) as view:
                if view.readonly:
                    raise TypeError("read-only")
    except TypeError:
        raise oserror(errno.EINVAL, "receive buffers must be writable bytes-like objects") from None
    return out


def deadline_from(timeout: float | None, abs_timeout_ns: int | None) -> int | None:
    """Turn a relative timeout (s) or EVL's absolute CLOCK_MONOTONIC ns into a deadline."""
    if abs_timeout_ns is not None:
        if not isinstance(abs_timeout_ns, int):
            raise oserror(errno.EINVAL, f"bad abs_timeout_ns {abs_timeout_ns!r}")
        return min(max(abs_timeout_ns, 0), (1 << 64) - 1)    # the past: time out at once
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or not timeout >= 0:     # not a number, < 0, NaN
        raise oserror(errno.EINVAL, f"bad timeout {timeout!r}")
    if timeout * 1e9 >= 1.8e19:           # beyond a u64 of ns (~584 years): forever
        return None
    return _now() + int(timeout * 1e9)


class OobSocket(ABC):
    """Common base of oob sockets. Subclasses implement ``_send``/``_recv_into`` and addressing.

    Timeouts: every blocking call takes ``timeout`` (seconds, relative, as Python's socket module)
    or ``abs_timeout_ns`` (EVL's form: an absolute CLOCK_MONOTONIC time in ns). Neither means wait
    forever, unless the socket is non-blocking (``setblocking(False)``), which implies
    ``MSG_DONTWAIT`` as an ``O_NONBLOCK`` fd does in EVL.
    """

    family: int
    type: int
    proto: int

    def __init__(self, stack: "Stack", family: int, sock_type: int, proto: int,
                 kernel_sock: _pysocket.socket | None = None) -> None:
        self.stack = stack
        self.family = family
        self.type = sock_type
        self.proto = proto
        self._kernel = kernel_sock
        #: the core half (``evlnet.datapath._core.Socket``): receive queue, TX timestamp ring,
        #: readiness fd, TX settings; protocols deliver into it and ports stamp TX records in it
        self.core_socket = _core.Socket(stack.core)
        self._closed = False
        self._nonblocking = False
        self.rcvbuf = DEFAULT_BUF
        self.sndbuf = DEFAULT_BUF
        self.tsflags = 0
        self.bound_device: str | None = None
        self.priority = 0
        self.busy_poll_us = stack.settings.busy_poll_us
        self.reuseaddr = False
        self.reuseport = False
        #: standard options kept for getsockopt (STANDARD_OPTIONS)
        self._options: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()     # serialises in-band state changes (bind/connect/close)
        stack.register_socket(self)

    # -- file-like ----------------------------------------------------------------------------
    def fileno(self) -> int:
        """The readiness descriptor: readable while a datagram (or, with TX timestamping, a TX
        record) is queued, so ``select``, ``selectors`` and asyncio's ``add_reader`` work; -1
        once closed."""
        return -1 if self._closed else self.core_socket.fileno()

    @property
    def broadcast(self) -> bool:
        """SO_BROADCAST: sends to a broadcast address are allowed (EACCES otherwise, as Linux).
        Kept in the core socket, which checks it on the fast path."""
        return self.core_socket.broadcast

    @broadcast.setter
    def broadcast(self, on: bool) -> None:
        self.core_socket.broadcast = on

    @property
    def kernel_socket(self) -> _pysocket.socket | None:
        """The genuine kernel socket (oob sockets made while the stack has a Linux port), or
        None: the kernel bridge binds and connects it alongside the oob side."""
        return self._kernel

    def kernel_fileno(self) -> int:
        """The genuine kernel socket's descriptor (oob sockets of a stack with Linux ports are
        also kernel sockets, as in EVL: in-band options and I/O go there); -1 without one."""
        return -1 if self._closed or self._kernel is None else self._kernel.fileno()

    def close(self) -> None:
        """Release everything the socket holds: queued buffers, its port binding, its fd."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _rx_stamping_update(self.tsflags, 0)
        self._unbind()
        self.stack.unregister_socket(self)
        self.core_socket.error = errno.EBADF     # blocked receivers and collectors get EBADF
        self.core_socket.purge()
        if self._kernel is not None:
            self._kernel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise oserror(errno.EBADF, "socket is closed")

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` makes every oob call behave as with ``MSG_DONTWAIT`` (EVL: an
        ``O_NONBLOCK`` fd): a receive with nothing queued, or a send with no free buffer,
        raises ``BlockingIOError`` (EWOULDBLOCK) instead of waiting."""
        self._nonblocking = not flag

    def getblocking(self) -> bool:
        """False after ``setblocking(False)``, as Python's ``socket.getblocking``."""
        return not self._nonblocking

    # -- subclass hooks -----------------------------------------------------------------------
    def _unbind(self) -> None:  # noqa: B027  (an optional hook: most sockets hold nothing)
        """Release what the socket holds in the stack (bindings, listenings)."""

    @abstractmethod
    def _recv(self, target: bytearray, nonblock: bool,
              deadline: int | None) -> tuple[int, int, Any, tuple[int, int, int]]:
        """Receive one datagram into *target*: ``(copied, length, address, (device_time,
        queuing_time, delivery_time))``."""

    @abstractmethod
    def _send(self, views: list, total: int, address: Any, nonblock: bool,
              deadline: int | None, delivery_time: int) -> int:
        """Build and queue one datagram of *total* bytes gathered from *views*."""

    # -- oob I/O ------------------------------------------------------------------------------
    def oob_sendmsg(self, buffers, ancdata=(), flags: int = 0, address=None, *,
                    timeout: float | None = None, abs_timeout_ns: int | None = None) -> int:
        """Send one datagram gathered from *buffers* (EVL ``oob_sendmsg``).

        Only ``MSG_DONTWAIT`` is accepted in *flags* (else EINVAL); *ancdata* must be empty.
        Returns the number of bytes sent — or 0 when the datagram was demoted to the in-band stage
        (a front-cache miss), where ``MSG_DONTWAIT`` callers get EINPROGRESS instead, as in EVL.
        """
        flags = int(flags)
        if flags & ~SEND_FLAGS:
            raise oserror(errno.EINVAL, f"oob_sendmsg accepts only MSG_DONTWAIT, got {flags:#x}")
        self._check_open()
        if ancdata:
            raise oserror(errno.EINVAL, "oob_sendmsg takes no control data")
        delivery_time = _now() if self.tsflags & EVL_SOF_TIMESTAMP_TX else 0
        nonblock = bool(flags & _DONTWAIT) or self._nonblocking
        deadline = deadline_from(timeout, abs_timeout_ns)
        if isinstance(buffers, (bytes, bytearray, memoryview)):
            views = [buffers]
        else:
            views = list(buffers)
        total = 0
        for v in views:
            total += memoryview(v).nbytes
        return self._send(views, total, address, nonblock, deadline, delivery_time)

    def oob_recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0, *,
                    timeout: float | None = None, abs_timeout_ns: int | None = None):
        """Receive one datagram (EVL ``oob_recvmsg``): ``(data, ancdata, msg_flags, address)``.

        With RX timestamping on and ``ancbufsize >= 24``, *ancdata* holds one
        ``(SOL_SOCKET, SO_TIMESTAMP_OOB, <24-byte evl_net_iotimes>)`` item (``IoTimes.unpack``);
        a non-zero ``ancbufsize`` below 24 is EINVAL, 0 means "no control buffer" (EVL: a NULL
        ``msg_control``). *ancdata* is empty when RX stamping is off or the datagram was queued
        before it was turned on (EVL: ``msg_controllen`` = 0).

        With ``flags & MSG_TIMESTAMP``, TX timestamp records are collected instead of data:
        *data* holds as many 24-byte records as *bufsize* has room for (``IoTimes.unpack_array``),
        *msg_flags* has ``MSG_TRUNC`` when records were lost to a ring overflow since the last
        collection. It blocks until a record is there (unless ``MSG_DONTWAIT``: EWOULDBLOCK), and
        fails with EINVAL when TX stamping is off or *bufsize* < 24.
        """
        if bufsize < 0:
            raise oserror(errno.EINVAL, "negative buffer size")
        out = bytearray(bufsize)
        n, anc, mflags, addr = self.oob_recvmsg_into([out], ancbufsize, flags,
                                                     timeout=timeout, abs_timeout_ns=abs_timeout_ns)
        return bytes(out[:n]), anc, mflags, addr

    def oob_recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0, *,
                         timeout: float | None = None, abs_timeout_ns: int | None = None):
        """Like ``oob_recvmsg`` but scatters into writable *buffers*: ``(nbytes, ancdata,
        msg_flags, address)``. Nothing is allocated for the payload."""
        if type(flags) is not int:
            flags = int(flags)
        if flags & ~RECV_FLAGS:
            raise oserror(errno.EINVAL,
                          f"oob_recvmsg accepts MSG_DONTWAIT|MSG_TIMESTAMP, got {flags:#x}")
        if ancbufsize < 0:
            raise oserror(errno.EINVAL, "negative control buffer size")
        if self._closed:
            raise oserror(errno.EBADF, "socket is closed")
        nonblock = bool(flags & _DONTWAIT) or self._nonblocking
        if timeout is None and abs_timeout_ns is None:
            deadline = None
        else:
            deadline = deadline_from(timeout, abs_timeout_ns)
        buffers = _receive_buffers(buffers)
        if flags & _TIMESTAMP:
            return self._collect_tx_timestamps(buffers, nonblock, deadline)
        ts = self.tsflags
        if ts & EVL_SOF_TIMESTAMP_RX and 0 < ancbufsize < IOTIMES_SIZE:
            raise oserror(errno.EINVAL, f"control buffer of {ancbufsize} bytes < {IOTIMES_SIZE}")
        if len(buffers) == 1 and type(buffers[0]) is bytearray:
            target = buffers[0]           # one bytearray, filled in place
            views = None
        else:
            views = [memoryview(b).cast("B") for b in buffers]
            target = bytearray(sum(len(v) for v in views))
        copied, length, address, times = self._recv(target, nonblock, deadline)
        if views is not None:
            _scatter(target, copied, views)
        mflags = _TRUNC if copied < length else 0
        anc = []
        ts = self.tsflags
        if ts & EVL_SOF_TIMESTAMP_RX and ancbufsize >= IOTIMES_SIZE and times[2]:
            anc.append((SOL_SOCKET, SO_TIMESTAMP_OOB, IOTIMES.pack(
                times[0] if ts & EVL_SOF_TIMESTAMP_DEVICE else 0,
                times[1] if ts & EVL_SOF_TIMESTAMP_QUEUING else 0,
                times[2])))
        return copied, anc, mflags, address

    # -- timestamps ---------------------------------------------------------------------------
    def _collect_tx_timestamps(self, buffers, nonblock: bool, deadline: int | None):
        """``oob_recvmsg(MSG_TIMESTAMP)``: move TX records into *buffers* (EVL
        ``evl_collect_socket_iots``); the records may straddle the buffers, as with an iovec."""
        if not self.tsflags & EVL_SOF_TIMESTAMP_TX:
            raise oserror(errno.EINVAL, "TX timestamping is off (SO_TIMESTAMP_OOB)")
        if len(buffers) == 1:
            out = buffers[0]
            views = None
        else:                                   # records may straddle the buffers (an iovec)
            views = [memoryview(b).cast("B") for b in buffers]
            out = bytearray(sum(map(len, views)) // IOTIMES_SIZE * IOTIMES_SIZE)
        if memoryview(out).nbytes < IOTIMES_SIZE:
            raise oserror(errno.EINVAL, f"buffer holds less than one {IOTIMES_SIZE}-byte record")
        if self._closed:
            raise oserror(errno.EBADF, "socket is closed")
        n, truncated = self.core_socket.collect_tx(out, nonblock, deadline)
        if views is not None:
            _scatter(out, n, views)
        return n, [], _TRUNC if truncated else 0, None

    def oob_collect_tx_timestamps(self, max_records: int = 16, flags: int = 0, *,
                                  timeout: float | None = None,
                                  abs_timeout_ns: int | None = None) -> tuple[list[IoTimes], bool]:
        """Collect up to *max_records* TX timestamp records: ``(records, truncated)``.

        The same as ``oob_recvmsg(24 * max_records, flags=MSG_TIMESTAMP | flags)`` followed by
        ``IoTimes.unpack_array``; *truncated* is True when records were lost to a ring overflow
        since the previous collection (``MSG_TRUNC``). *flags* may hold ``MSG_DONTWAIT``.
        """
        if max_records < 1:
            raise oserror(errno.EINVAL, "max_records must be at least 1")
        out = bytearray(max_records * IOTIMES_SIZE)
        n, _, mflags, _ = self.oob_recvmsg_into([out], 0, int(flags) | _TIMESTAMP, timeout=timeout,
                                                abs_timeout_ns=abs_timeout_ns)
        return IoTimes.unpack_array(memoryview(out)[:n]), bool(mflags & _TRUNC)

    # -- options ------------------------------------------------------------------------------
    def oob_setsockopt(self, level: int, optname: int, value) -> None:
        """EVL ``oob_setsockopt``: at SOL_SOCKET, SO_TIMESTAMP_OOB, SO_RCVBUF and SO_SNDBUF, and
        EVL's ids EVL_SOCKOPT_RECVSZ / _SENDSZ / _TIMESTAMPING for the same three (EINVAL for
        anything else, as EVL's oob ioctl)."""
        self._check_open()
        if level == SOL_SOCKET:
            optname = EVL_OOB_OPTIONS.get(optname, optname)
        if level == SOL_SOCKET and optname in (SO_TIMESTAMP_OOB, SO_RCVBUF, SO_SNDBUF):
            self._set_evl_option(optname, _int_value(value))
            return
        raise oserror(errno.EINVAL, f"oob option {level}/{optname} not handled by the oob stage")

    def oob_getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """EVL ``oob_getsockopt``; returns an int (or bytes when *buflen* is given)."""
        self._check_open()
        if level == SOL_SOCKET:
            optname = EVL_OOB_OPTIONS.get(optname, optname)
        if level == SOL_SOCKET and optname in (SO_TIMESTAMP_OOB, SO_RCVBUF, SO_SNDBUF):
            value = self._get_evl_option(optname)
            return _int_result(value, buflen)
        raise oserror(errno.EINVAL, f"oob option {level}/{optname} not handled by the oob stage")

    def setsockopt(self, level: int, optname: int, value, optlen: int | None = None) -> None:
        """In-band ``setsockopt``: EVL options are redirected to the oob stack; the rest go to
        the genuine kernel socket when there is one."""
        self._check_open()
        if level == SOL_SOCKET and optname in (SO_TIMESTAMP_OOB, SO_RCVBUF, SO_SNDBUF):
            self._set_evl_option(optname, _int_value(value))
            if optname != SO_TIMESTAMP_OOB and self._kernel is not None:
                self._kernel.setsockopt(level, optname, _int_value(value))
            return
        if level == SOL_SOCKET and optname == SO_BINDTODEVICE:
            name = bytes(value).rstrip(b"\0").decode() if not isinstance(value, str) else value
            if name and self.stack.find_interface(name) is None:
                raise oserror(errno.ENODEV, f"no interface {name!r}")
            self.bound_device = name or None
        elif level == SOL_SOCKET and optname == SO_REUSEADDR:
            self.reuseaddr = bool(_int_value(value))
        elif level == SOL_SOCKET and optname == SO_REUSEPORT:
            self.reuseport = bool(_int_value(value))
        elif level == SOL_SOCKET and optname == SO_BUSY_POLL:
            us = _int_value(value)
            if us < 0:
                raise oserror(errno.EINVAL, "negative busy-poll time")
            self.busy_poll_us = us
            return     # evlnet's own busy polling; the kernel socket keeps its setting
        elif level == SOL_SOCKET and optname == SO_PRIORITY:
            self.priority = _int_value(value)
        elif level == SOL_SOCKET and optname == SO_BROADCAST:
            self.broadcast = bool(_int_value(value))
            self._options[(level, optname)] = int(self.broadcast)
        elif (level, optname) in STANDARD_OPTIONS:
            self._options[(level, optname)] = _int_value(value)
        elif not self._set_protocol_option(level, optname, value):
            if self._kernel is None:
                raise oserror(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")
        if self._kernel is not None and optname != SO_BINDTODEVICE:
            if optlen is None:
                self._kernel.setsockopt(level, optname, value)
            else:
                self._kernel.setsockopt(level, optname, value, optlen)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """In-band ``getsockopt`` (see ``setsockopt``)."""
        self._check_open()
        if level == SOL_SOCKET and optname in (SO_TIMESTAMP_OOB, SO_RCVBUF, SO_SNDBUF):
            return _int_result(self._get_evl_option(optname), buflen)
        local = {SO_TYPE: self.type, SO_PROTOCOL: self.proto, SO_DOMAIN: self.family,
                 SO_REUSEADDR: int(self.reuseaddr), SO_REUSEPORT: int(self.reuseport),
                 SO_PRIORITY: self.priority, SO_ERROR: 0, SO_BUSY_POLL: self.busy_poll_us}
        if level == SOL_SOCKET and optname == SO_BINDTODEVICE:
            name = (self.bound_device or "").encode()
            return name + b"\0" if buflen else name
        if level == SOL_SOCKET and optname in local:
            return _int_result(local[optname], buflen)
        if (level, optname) in STANDARD_OPTIONS:
            return _int_result(self._options.get((level, optname), 0), buflen)
        value = self._get_protocol_option(level, optname)
        if value is not None:
            return _int_result(value, buflen)
        if self._kernel is not None:
            return (self._kernel.getsockopt(level, optname) if buflen is None
                    else self._kernel.getsockopt(level, optname, buflen))
        raise oserror(errno.ENOPROTOOPT, f"option {level}/{optname} not supported")

    def _set_protocol_option(self, level: int, optname: int, value) -> bool:
        return False

    def _get_protocol_option(self, level: int, optname: int):
        return None

    def _set_evl_option(self, optname: int, value: int) -> None:
        if optname == SO_TIMESTAMP_OOB:
            if value < 0 or value & ~EVL_SOF_TIMESTAMPS:
                raise oserror(errno.EINVAL, f"unknown SO_TIMESTAMP_OOB flags {value:#x}")
            with self._lock:
                if self._closed:
                    raise oserror(errno.EBADF, "socket is closed")
                _rx_stamping_update(self.tsflags, value)
                # EVL: setting the option installs a fresh ring (a full reset)
                self.core_socket.tsflags = value
                self.tsflags = value
            return
        if value < 0:
            raise oserror(errno.EINVAL, "negative buffer size")
        value = min(value, 0x7FFFFFFF // 2)
        if optname == SO_RCVBUF:           # Linux/EVL: doubled, with a floor
            self.rcvbuf = max(2 * value, SOCK_MIN_RCVBUF)
            self.core_socket.rcvbuf = self.rcvbuf
        else:
            self.sndbuf = max(2 * value, SOCK_MIN_SNDBUF)

    def _get_evl_option(self, optname: int) -> int:
        return {SO_TIMESTAMP_OOB: self.tsflags, SO_RCVBUF: self.rcvbuf,
                SO_SNDBUF: self.sndbuf}[optname]

    # -- port events --------------------------------------------------------------------------
    def port_down(self, port: Any, err: int) -> None:
        """A port this socket depends on went down: wake blocked receivers with *err*."""
        if not self._closed:
            self.core_socket.error = err

    def port_up(self) -> None:
        """A port came (back) up: clear the error ``port_down`` left (called by the stack)."""
        if not self._closed:
            self.core_socket.error = 0

    def purge_queue(self, port: Any = None) -> None:
        """Free queued datagrams (a disabled port's buffers go back to its pool)."""
        self.core_socket.purge()


def _rx_stamping_update(old_flags: int, new_flags: int) -> None:
    """A socket's SO_TIMESTAMP_OOB goes from *old_flags* to *new_flags* (0 when it closes):
    keep the core's process-wide count of RX-stamping sockets (EVL's
    ``evl_net_rx_timestamping``)."""
    delta = bool(new_flags & EVL_SOF_TIMESTAMP_RX) - bool(old_flags & EVL_SOF_TIMESTAMP_RX)
    if delta:
        _core.Stack.rx_stamping_add(delta)


def _scatter(src, n: int, views: list) -> None:
    """Copy the first *n* bytes of *src* across *views* in order."""
    mv = memoryview(src)
    pos = 0
    for v in views:
        if pos >= n:
            break
        k = min(len(v), n - pos)
        v[:k] = mv[pos:pos + k]
        pos += k


def _int_value(value) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        mv = memoryview(value)
    except TypeError:
        raise oserror(errno.EINVAL, "option value must be an int or bytes, not "
                                    f"{type(value).__name__}") from None
    if mv.nbytes < 4:
        raise oserror(errno.EINVAL, "option value shorter than an int")
    return _INT.unpack_from(mv)[0]


def _int_result(value: int, buflen: int | None):
    if buflen is None:
        return value
    if buflen < 4:
        raise oserror(errno.EINVAL, "option buffer shorter than an int")
    return _INT.pack(value)

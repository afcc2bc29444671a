"""What every oob socket shares: the receive queue, deadlines, options and timestamping."""
from __future__ import annotations

import errno
from abc import ABC, abstractmethod
import os
import socket as _pysocket
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..constants import (EVL_SOF_TIMESTAMP_DEVICE, EVL_SOF_TIMESTAMP_QUEUING, EVL_SOF_TIMESTAMP_RX,
                         EVL_SOF_TIMESTAMP_TX, EVL_SOF_TIMESTAMPS, MSG_DONTWAIT, MSG_TIMESTAMP,
                         MSG_TRUNC, SO_TIMESTAMP_OOB, SOL_SOCKET)
from ..core.buffers import Doorbell, PacketBuffer
from ..core.timestamps import IOTIMES, IOTIMES_SIZE, RX_STAMPING, IoTimes, TxTimestampRing
from ..errors import oserror

if TYPE_CHECKING:
    from ..core.stack import Stack

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


def deadline_from(timeout: float | None, abs_timeout_ns: int | None) -> int | None:
    """Turn a relative timeout (s) or EVL's absolute CLOCK_MONOTONIC ns into a deadline."""
    if abs_timeout_ns is not None:
        return int(abs_timeout_ns)
    if timeout is None:
        return None
    if timeout < 0:
        raise oserror(errno.EINVAL, "negative timeout")
    return _now() + int(timeout * 1e9)


class ReceiveQueue:
    """Datagrams waiting for ``oob_recvmsg``: a deque and a doorbell, bounded by SO_RCVBUF."""

    __slots__ = ("items", "bell", "rcvbuf", "queued", "error", "drops")

    def __init__(self, rcvbuf: int) -> None:
        self.items: deque[PacketBuffer] = deque()
        self.bell = Doorbell()
        self.rcvbuf = rcvbuf
        self.queued = 0
        self.error = 0
        self.drops = 0

    def push(self, buf: PacketBuffer) -> bool:
        """RX thread: queue *buf* or refuse it when the queue is full.

        Stamps RX ``delivery_time`` while any socket has RX stamping on (EVL marks a packet
        "timestamped" the same way); an unstamped datagram gets no control data on receive."""
        size = buf.end - buf.start + RX_OVERHEAD
        if self.queued + size > self.rcvbuf:
            self.drops += 1
            return False
        buf.delivery_time = _now() if RX_STAMPING.count else 0
        self.queued += size
        self.items.append(buf)
        self.bell.ring()
        return True

    def pop(self, nonblock: bool, deadline: int | None) -> PacketBuffer:
        items = self.items
        while True:
            try:
                buf = items.popleft()
            except IndexError:
                buf = None
            if buf is not None:
                self.queued -= buf.end - buf.start + RX_OVERHEAD
                if items:
                    self.bell.ring()     # let another waiter see the rest
                return buf
            if self.error:
                self.bell.ring()         # every waiter must see the error
                raise oserror(self.error, "oob port went down")
            if nonblock:
                raise oserror(errno.EWOULDBLOCK, "no datagram queued")
            if deadline is None:
                self.bell.wait(None)
            else:
                remaining = (deadline - _now()) / 1e9
                if remaining <= 0:
                    raise oserror(errno.ETIMEDOUT, "receive timed out")
                self.bell.wait(remaining)

    def fail(self, err: int) -> None:
        self.error = err
        self.bell.ring()

    def purge(self, port=None) -> None:
        keep = deque()
        while self.items:
            buf = self.items.popleft()
            if port is None or buf.port is port:
                self.queued -= buf.end - buf.start + RX_OVERHEAD
                buf.release()
            else:
                keep.append(buf)
        self.items.extend(keep)


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
        self._fd = kernel_sock.fileno() if kernel_sock is not None else os.eventfd(0, os.EFD_CLOEXEC)
        self._closed = False
        self._nonblocking = False
        self.rcvbuf = DEFAULT_BUF
        self.sndbuf = DEFAULT_BUF
        self.tsflags = 0
        self.tx_ring = TxTimestampRing()
        self._ts_bell = Doorbell()        # rung for MSG_TIMESTAMP collectors (see _ts_waiters)
        self._ts_waiters = 0              # collectors about to block: pushes ring only then
        self._ts_lock = threading.Lock()
        self.bound_device: str | None = None
        self.priority = 0
        self.busy_poll_us = stack.settings.busy_poll_us
        self.reuseaddr = False
        self.reuseport = False
        self._lock = threading.Lock()     # serialises in-band state changes (bind/connect/close)
        stack._register_socket(self)

    # -- file-like ----------------------------------------------------------------------------
    def fileno(self) -> int:
        """The descriptor (the genuine kernel socket's on Linux ports); -1 once closed."""
        return -1 if self._closed else self._fd

    def close(self) -> None:
        """Release everything the socket holds: queued buffers, its port binding, its fd."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            RX_STAMPING.update(self.tsflags, 0)
        self._unbind()
        self.stack._unregister_socket(self)
        self._ts_bell.ring()              # a blocked MSG_TIMESTAMP collector gets EBADF
        if self._kernel is not None:
            self._kernel.close()
        else:
            os.close(self._fd)

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
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise oserror(errno.EBADF, "socket is closed")

    def setblocking(self, flag: bool) -> None:
        self._nonblocking = not flag

    def getblocking(self) -> bool:
        return not self._nonblocking

    # -- subclass hooks -----------------------------------------------------------------------
    def _unbind(self) -> None: ...

    @abstractmethod
    def _receive_queue(self) -> ReceiveQueue:
        """The queue ``oob_recvmsg`` reads (may be shared, e.g. SO_REUSEPORT)."""

    @abstractmethod
    def _send(self, views: list, total: int, address: Any, nonblock: bool,
              deadline: int | None, delivery_time: int) -> int:
        """Build and queue one datagram of *total* bytes gathered from *views*."""

    @abstractmethod
    def _address_of(self, buf: PacketBuffer) -> Any:
        """The source address ``oob_recvmsg`` reports for a received buffer."""

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
            raise oserror(errno.EINVAL, f"oob_recvmsg accepts MSG_DONTWAIT|MSG_TIMESTAMP, got {flags:#x}")
        if ancbufsize < 0:
            raise oserror(errno.EINVAL, "negative control buffer size")
        if self._closed:
            raise oserror(errno.EBADF, "socket is closed")
        nonblock = bool(flags & _DONTWAIT) or self._nonblocking
        if timeout is None and abs_timeout_ns is None:
            deadline = None
        else:
            deadline = deadline_from(timeout, abs_timeout_ns)
        if isinstance(buffers, (bytearray, memoryview)):
            buffers = [buffers]
        if flags & _TIMESTAMP:
            return self._collect_tx_timestamps(buffers, nonblock, deadline)
        ts = self.tsflags
        if ts & EVL_SOF_TIMESTAMP_RX and 0 < ancbufsize < IOTIMES_SIZE:
            raise oserror(errno.EINVAL, f"control buffer of {ancbufsize} bytes < {IOTIMES_SIZE}")
        queue = self._receive_queue()
        if self.busy_poll_us and not nonblock and not queue.items:
            self._busy_poll(queue, deadline)
        buf = queue.pop(nonblock, deadline)
        try:
            start = buf.start
            length = buf.end - start
            if type(buffers) is list and len(buffers) == 1 and type(buffers[0]) is bytearray:
                # common case, one bytearray: a single slice assignment of equal length (the
                # bytearray is never resized), no memoryview cast and no loop
                b = buffers[0]
                copied = len(b)
                if copied > length:
                    copied = length
                b[:copied] = buf.view[start:start + copied]
            else:
                src = buf.view[start:buf.end]
                copied = 0
                for b in buffers:
                    mv = memoryview(b).cast("B")
                    n = min(len(mv), length - copied)
                    mv[:n] = src[copied:copied + n]
                    copied += n
                    if copied == length:
                        break
            mflags = _TRUNC if copied < length else 0
            anc = []
            ts = self.tsflags
            if ts & EVL_SOF_TIMESTAMP_RX and ancbufsize >= IOTIMES_SIZE and buf.delivery_time:
                anc.append((SOL_SOCKET, SO_TIMESTAMP_OOB, IOTIMES.pack(
                    buf.device_time if ts & EVL_SOF_TIMESTAMP_DEVICE else 0,
                    buf.queuing_time if ts & EVL_SOF_TIMESTAMP_QUEUING else 0,
                    buf.delivery_time)))
            address = self._address_of(buf)
        finally:
            buf.release()
        return copied, anc, mflags, address

    def _busy_poll(self, queue: ReceiveQueue, deadline: int | None) -> None:
        """Run the ports' RX processing from this thread until a datagram is queued, the
        socket's busy-poll budget is spent or the deadline passes (Linux SO_BUSY_POLL).

        Saves the two thread wake-ups (RX thread, then receiver) a datagram otherwise costs."""
        ports = [p for p in self.stack.ports.values() if p.busy_poll_capable]
        if not ports:
            return
        end = _now() + self.busy_poll_us * 1000
        if deadline is not None and deadline < end:
            end = deadline
        items = queue.items
        for port in ports:
            port.busy_poll_enter()
        try:
            while not items and not queue.error:
                for port in ports:
                    port.poll_rx()
                if items or _now() >= end:
                    return
        finally:
            for port in ports:
                port.busy_poll_exit()

    # -- timestamps ---------------------------------------------------------------------------
    def _push_tx_timestamp(self, device: int, queuing: int, delivery: int) -> None:
        """TX thread: one record per transmitted datagram (points not asked for are 0)."""
        ts = self.tsflags
        if not ts & EVL_SOF_TIMESTAMP_TX:
            return
        self.tx_ring.push(device if ts & EVL_SOF_TIMESTAMP_DEVICE else 0,
                          queuing if ts & EVL_SOF_TIMESTAMP_QUEUING else 0, delivery)
        if self._ts_waiters:        # read after the push: a collector registers before checking
            self._ts_bell.ring()

    def _collect_tx_timestamps(self, buffers, nonblock: bool, deadline: int | None):
        """``oob_recvmsg(MSG_TIMESTAMP)``: move TX records into *buffers* (EVL
        ``evl_collect_socket_iots``); the records may straddle the buffers, as with an iovec."""
        if not self.tsflags & EVL_SOF_TIMESTAMP_TX:
            raise oserror(errno.EINVAL, "TX timestamping is off (SO_TIMESTAMP_OOB)")
        if len(buffers) == 1:
            out = memoryview(buffers[0]).cast("B")
            views = None
            room = len(out) // IOTIMES_SIZE
        else:                                   # records may straddle the buffers (an iovec)
            views = [memoryview(b).cast("B") for b in buffers]
            room = sum(map(len, views)) // IOTIMES_SIZE
            out = bytearray(room * IOTIMES_SIZE)
        if room < 1:
            raise oserror(errno.EINVAL, f"buffer holds less than one {IOTIMES_SIZE}-byte record")
        bell = self._ts_bell
        while True:
            ring = self.tx_ring
            n, truncated = ring.pop_into(out, room)
            if n:
                if len(ring) and self._ts_waiters:
                    bell.ring()                       # more left for another collector
                if views is not None:
                    _scatter(out, n * IOTIMES_SIZE, views)
                return n * IOTIMES_SIZE, [], _TRUNC if truncated else 0, None
            if self._closed:
                bell.ring()                           # every blocked collector must see it
                raise oserror(errno.EBADF, "socket closed while collecting TX timestamps")
            if not self.tsflags & EVL_SOF_TIMESTAMP_TX:
                raise oserror(errno.EINVAL, "TX timestamping was turned off")
            if nonblock:
                raise oserror(errno.EWOULDBLOCK, "no TX timestamp queued")
            remaining = None
            if deadline is not None:
                remaining = (deadline - _now()) / 1e9
                if remaining <= 0:
                    raise oserror(errno.ETIMEDOUT, "no TX timestamp before the deadline")
            with self._ts_lock:
                self._ts_waiters += 1
            try:
                # Registered before this last look, so a push from now on rings the bell.
                if not (len(self.tx_ring) or self._closed
                        or not self.tsflags & EVL_SOF_TIMESTAMP_TX):
                    bell.wait(remaining)
            finally:
                with self._ts_lock:
                    self._ts_waiters -= 1

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
        """EVL ``oob_setsockopt``: SO_TIMESTAMP_OOB, SO_RCVBUF and SO_SNDBUF at SOL_SOCKET."""
        self._check_open()
        if level == SOL_SOCKET and optname in (SO_TIMESTAMP_OOB, SO_RCVBUF, SO_SNDBUF):
            self._set_evl_option(optname, _int_value(value))
            return
        raise oserror(errno.EINVAL, f"oob option {level}/{optname} not handled by the oob stage")

    def oob_getsockopt(self, level: int, optname: int, buflen: int | None = None):
        """EVL ``oob_getsockopt``; returns an int (or bytes when *buflen* is given)."""
        self._check_open()
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
                RX_STAMPING.update(self.tsflags, value)
                # EVL: setting the option installs a fresh ring (a full reset). Swapping the
                # object lets a TX thread that is pushing right now finish on the old one.
                self.tx_ring = TxTimestampRing()
                self.tsflags = value
            self._ts_bell.ring()          # blocked collectors re-check (EINVAL if TX went off)
            return
        if value < 0:
            raise oserror(errno.EINVAL, "negative buffer size")
        value = min(value, 0x7FFFFFFF // 2)
        if optname == SO_RCVBUF:           # Linux/EVL: doubled, with a floor
            self.rcvbuf = max(2 * value, SOCK_MIN_RCVBUF)
            q = self._receive_queue_or_none()
            if q is not None:
                q.rcvbuf = self.rcvbuf
        else:
            self.sndbuf = max(2 * value, SOCK_MIN_SNDBUF)

    def _receive_queue_or_none(self) -> ReceiveQueue | None:
        try:
            return self._receive_queue()
        except OSError:
            return None

    def _get_evl_option(self, optname: int) -> int:
        return {SO_TIMESTAMP_OOB: self.tsflags, SO_RCVBUF: self.rcvbuf,
                SO_SNDBUF: self.sndbuf}[optname]

    # -- port events --------------------------------------------------------------------------
    def _port_down(self, port, err: int) -> None:
        """A port this socket depends on went down: wake blocked receivers with *err*."""
        q = self._receive_queue_or_none()
        if q is not None:
            q.fail(err)

    def _port_up(self) -> None:
        q = self._receive_queue_or_none()
        if q is not None:
            q.error = 0


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
        raise oserror(errno.EINVAL, f"option value must be an int or bytes, not {type(value).__name__}")
    if mv.nbytes < 4:
        raise oserror(errno.EINVAL, "option value shorter than an int")
    return _INT.unpack_from(mv)[0]


def _int_result(value: int, buflen: int | None):
    if buflen is None:
        return value
    if buflen < 4:
        raise oserror(errno.EINVAL, "option buffer shorter than an int")
    return _INT.pack(value)

"""Packet buffers, the preallocated pools they live in, and the doorbell that wakes threads.

A ``PacketBuffer`` is allocated once, with its bytes, when its pool is built; the data path only
rewrites its fields. Taking from and giving back to a pool is a ``list.pop``/``list.append`` on a
preallocated list: atomic under the GIL, lock-free, and it allocates nothing.
"""
from __future__ import annotations

import errno
import threading
import time
from _thread import allocate_lock

from ..errors import oserror


class Doorbell:
    """A binary semaphore built on a raw lock: ``ring()`` never blocks and coalesces.

    Unlike ``threading.Condition`` it allocates nothing per wait, and a ring that happens before the
    wait is never lost (the lock stays released until a waiter takes it).
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def ring(self) -> None:
        lock = self._lock
        if lock.locked():     # cheap check first: raising on an already-rung bell costs ~1 us
            try:
                lock.release()
            except RuntimeError:  # rung by another thread meanwhile: coalesce
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a ring; True if rung, False on timeout (``timeout`` in seconds, None = forever)."""
        if timeout is None:
            return self._lock.acquire()
        if timeout <= 0:
            return self._lock.acquire(False)
        return self._lock.acquire(True, timeout)


class PacketBuffer:
    """One frame's worth of preallocated memory plus the metadata the stack carries with it.

    ``data``/``view`` hold the bytes; ``start`` and ``end`` delimit the meaningful part (headroom is
    kept in front for headers). The three ``*_time`` fields are EVL's iotimes points, in
    CLOCK_MONOTONIC nanoseconds, 0 when not taken.
    """

    __slots__ = (
        "data", "view", "start", "end", "pool",
        "device_time", "queuing_time", "delivery_time",
        "port", "sock", "tsflags",
        # receive-side demux results, filled by the protocol layers
        "src_addr", "src_port", "dst_addr", "dst_port", "pkttype", "protocol", "ifindex", "src_mac",
        "vlan_id",
    )

    def __init__(self, size: int, pool: "BufferPool | None" = None) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.pool = pool
        self.reset()

    def reset(self) -> None:
        self.start = 0
        self.end = 0
        self.device_time = 0
        self.queuing_time = 0
        self.delivery_time = 0
        self.port = None
        self.sock = None
        self.tsflags = 0
        self.src_addr = 0
        self.src_port = 0
        self.dst_addr = 0
        self.dst_port = 0
        self.pkttype = 0
        self.protocol = 0
        self.ifindex = 0
        self.src_mac = b""
        self.vlan_id = 0

    @property
    def length(self) -> int:
        return self.end - self.start

    def payload(self) -> memoryview:
        return self.view[self.start:self.end]

    def release(self) -> None:
        """Give the buffer back to its pool (no-op for a pool-less buffer)."""
        if self.pool is not None:
            self.pool.give(self)


class BufferPool:
    """A fixed set of ``count`` buffers of ``size`` bytes, allocated once.

    ``take()`` returns a buffer or None when the pool is empty (the caller decides whether to count
    a drop, wait, or fail). ``take_wait()`` blocks until one is given back or the deadline passes.
    """

    def __init__(self, count: int, size: int, name: str = "pool") -> None:
        self.name = name
        self.size = size
        self.total = count
        self._free: list[PacketBuffer] = [PacketBuffer(size, self) for _ in range(count)]
        self._all = tuple(self._free)
        self._waiters = 0
        self._cond = threading.Condition()
        self.closed = False

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> PacketBuffer | None:
        try:
            buf = self._free.pop()
        except IndexError:
            return None
        return buf

    def give(self, buf: PacketBuffer) -> None:
        buf.reset()
        self._free.append(buf)
        if self._waiters:
            with self._cond:
                self._cond.notify()

    def take_wait(self, deadline_ns: int | None) -> PacketBuffer:
        """Take a buffer, blocking until one is free; ``deadline_ns`` is absolute CLOCK_MONOTONIC.

        Raises ETIMEDOUT when the deadline passes and ENETDOWN when the pool is closed meanwhile.
        """
        buf = self.take()
        if buf is not None:
            return buf
        with self._cond:
            self._waiters += 1
            try:
                while True:
                    if self.closed:
                        raise oserror(errno.ENETDOWN, f"{self.name} was closed")
                    buf = self.take()
                    if buf is not None:
                        return buf
                    if deadline_ns is None:
                        self._cond.wait(0.1)
                        continue
                    remaining = (deadline_ns - time.monotonic_ns()) / 1e9
                    if remaining <= 0:
                        raise oserror(errno.ETIMEDOUT, f"no free buffer in {self.name}")
                    self._cond.wait(min(remaining, 0.1))
            finally:
                self._waiters -= 1

    def close(self) -> None:
        self.closed = True
        with self._cond:
            self._cond.notify_all()

    def owns(self, buf: PacketBuffer) -> bool:
        return buf.pool is self

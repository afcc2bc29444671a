"""EVL's three timestamp points per packet and the per-socket TX timestamp ring.

Times are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``). A point that was not requested
is 0. Binary layout: ``struct evl_net_iotimes`` = three ``__u64`` (24 bytes, native order).

Where the points are taken (as EVL's ``timestamping.c``, ``dev.c``, ``udp.c``, ``packet.c``):

- RX ``device_time``: the device backend hands the frame to the stack (``drivers/``);
  ``queuing_time``: the port's RX thread passes it to the protocol layer (``core/port.py``);
  ``delivery_time``: the protocol layer queues it on the socket (``ReceiveQueue.push``) — taken
  only while some socket has RX stamping on (``RX_STAMPING``), as EVL's global
  ``evl_net_rx_timestamping`` count; a datagram queued before that carries no stamps and
  ``oob_recvmsg`` returns no control data for it (EVL: ``msg_controllen`` = 0).
- TX ``delivery_time``: ``oob_sendmsg`` starts building the packet (``OobSocket.oob_sendmsg``);
  ``queuing_time``: the frame is queued to the qdisc (``Port.transmit``); ``device_time``: the TX
  thread hands it to the device (``Port._xmit``), which then pushes one record into the socket's
  ``TxTimestampRing``.
"""
from __future__ import annotations

import struct
import threading
from _thread import allocate_lock
from dataclasses import dataclass
from typing import Iterable

from ..constants import EVL_SOF_TIMESTAMP_RX, EVL_SOF_TIMESTAMP_TX, EVL_TX_TSRING_SIZE

IOTIMES = struct.Struct("=QQQ")
IOTIMES_SIZE = IOTIMES.size  # 24
_pack_into = IOTIMES.pack_into


@dataclass(frozen=True, slots=True)
class IoTimes:
    """One ``struct evl_net_iotimes`` record (monotonic ns; 0 = point not taken)."""

    device_time: int = 0
    queuing_time: int = 0
    delivery_time: int = 0

    def pack(self) -> bytes:
        """The 24-byte ``struct evl_net_iotimes``."""
        return IOTIMES.pack(self.device_time, self.queuing_time, self.delivery_time)

    @classmethod
    def unpack(cls, data) -> "IoTimes":
        """Parse one 24-byte record (e.g. the RX control data); ValueError if shorter."""
        size = memoryview(data).nbytes
        if size < IOTIMES_SIZE:
            raise ValueError(f"an evl_net_iotimes record is {IOTIMES_SIZE} bytes, got {size}")
        return cls(*IOTIMES.unpack_from(data, 0))

    @classmethod
    def unpack_array(cls, data) -> list["IoTimes"]:
        """Parse an array of records (as returned by a ``MSG_TIMESTAMP`` collection).

        ValueError if *data* is not a whole number of records."""
        size = memoryview(data).nbytes
        n, rest = divmod(size, IOTIMES_SIZE)
        if rest:
            raise ValueError(f"{size} bytes is not a whole number of {IOTIMES_SIZE}-byte records")
        return [cls(*t) for t in IOTIMES.iter_unpack(data)] if n else []

    @staticmethod
    def pack_array(records: Iterable["IoTimes"]) -> bytes:
        """The inverse of ``unpack_array``."""
        return b"".join(r.pack() for r in records)


class RxStampingUsers:
    """How many sockets have RX stamping on (EVL: the ``evl_net_rx_timestamping`` refcount).

    Read without a lock on the RX path (``count`` is a plain int); changed in-band when a socket
    sets ``SO_TIMESTAMP_OOB`` or closes. Process-wide, like EVL's (one per kernel).
    """

    __slots__ = ("count", "_lock")

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def update(self, old_flags: int, new_flags: int) -> None:
        """A socket's mask goes from *old_flags* to *new_flags* (0 when it closes)."""
        delta = bool(new_flags & EVL_SOF_TIMESTAMP_RX) - bool(old_flags & EVL_SOF_TIMESTAMP_RX)
        if delta:
            with self._lock:
                self.count += delta


RX_STAMPING = RxStampingUsers()


class TxTimestampRing:
    """A ring of 128 TX records per socket, filled by TX threads, drained by ``MSG_TIMESTAMP``.

    Storage is one preallocated bytearray; pushing packs into it in place (no allocation). As in
    EVL (``queue_iots_tx``), a full ring drops the new record and remembers the overflow, which
    the next successful collection reports (``MSG_TRUNC``) and clears. A short lock makes it
    safe for several TX threads (a socket may send through several ports) and collectors.
    """

    __slots__ = ("_buf", "_view", "_head", "_tail", "_lock", "capacity", "overflowed", "dropped")

    def __init__(self, capacity: int = EVL_TX_TSRING_SIZE) -> None:
        if capacity < 1:
            raise ValueError("a TX timestamp ring holds at least one record")
        self.capacity = capacity
        self._buf = bytearray(capacity * IOTIMES_SIZE)
        self._view = memoryview(self._buf)
        self._lock = allocate_lock()
        self.reset()

    def reset(self) -> None:
        """Empty the ring and forget any overflow."""
        with self._lock:
            self._head = 0     # records ever collected
            self._tail = 0     # records ever pushed
            self.overflowed = False
            self.dropped = 0   # records lost to overflows since the last reset

    def __len__(self) -> int:
        return self._tail - self._head

    def push(self, device: int, queuing: int, delivery: int) -> bool:
        """Add one record; False (and the overflow flag set) when the ring is full."""
        lock = self._lock
        lock.acquire()                # (cheaper than a with statement on this path)
        try:
            tail = self._tail
            if tail - self._head >= self.capacity:
                self.overflowed = True
                self.dropped += 1
                return False
            _pack_into(self._buf, (tail % self.capacity) * IOTIMES_SIZE, device, queuing, delivery)
            self._tail = tail + 1
            return True
        finally:
            lock.release()

    def pop_into(self, out, max_records: int) -> tuple[int, bool]:
        """Move up to *max_records* of the oldest records into *out* (writable, byte-addressed).

        Returns (records moved, overflow flag); a collection that moves records clears the flag.
        """
        with self._lock:
            head = self._head
            n = min(max_records, self._tail - head)
            if n <= 0:
                return 0, False
            cap = self.capacity
            first = head % cap
            chunk = min(n, cap - first)           # contiguous part before the wrap
            buf = self._view
            out[0:chunk * IOTIMES_SIZE] = buf[first * IOTIMES_SIZE:(first + chunk) * IOTIMES_SIZE]
            if chunk < n:
                out[chunk * IOTIMES_SIZE:n * IOTIMES_SIZE] = buf[0:(n - chunk) * IOTIMES_SIZE]
            self._head = head + n
            truncated = self.overflowed
            self.overflowed = False
            return n, truncated


__all__ = ["IoTimes", "IOTIMES", "IOTIMES_SIZE", "TxTimestampRing", "RxStampingUsers",
           "RX_STAMPING", "EVL_SOF_TIMESTAMP_RX", "EVL_SOF_TIMESTAMP_TX"]

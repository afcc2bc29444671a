"""EVL's three timestamp points per packet and the per-socket TX timestamp ring.

Times are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``). A point that was not requested
is 0. Binary layout: ``struct evl_net_iotimes`` = three ``__u64`` (24 bytes, native order).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from ..constants import (EVL_SOF_TIMESTAMP_DEVICE, EVL_SOF_TIMESTAMP_QUEUING, EVL_SOF_TIMESTAMP_RX,
                         EVL_SOF_TIMESTAMP_TX, EVL_TX_TSRING_SIZE)

IOTIMES = struct.Struct("=QQQ")
IOTIMES_SIZE = IOTIMES.size  # 24


@dataclass(frozen=True, slots=True)
class IoTimes:
    """One ``struct evl_net_iotimes`` record (monotonic ns; 0 = point not taken)."""

    device_time: int = 0
    queuing_time: int = 0
    delivery_time: int = 0

    def pack(self) -> bytes:
        return IOTIMES.pack(self.device_time, self.queuing_time, self.delivery_time)

    @classmethod
    def unpack(cls, data) -> "IoTimes":
        """Parse one 24-byte record."""
        return cls(*IOTIMES.unpack_from(data, 0))

    @classmethod
    def unpack_array(cls, data) -> list["IoTimes"]:
        """Parse an array of records (as returned by a ``MSG_TIMESTAMP`` collection)."""
        n = len(data) // IOTIMES_SIZE
        return [cls(*IOTIMES.unpack_from(data, i * IOTIMES_SIZE)) for i in range(n)]

    @staticmethod
    def pack_array(records: Iterable["IoTimes"]) -> bytes:
        return b"".join(r.pack() for r in records)


def rx_times(tsflags: int, device: int, queuing: int, delivery: int) -> tuple[int, int, int]:
    """Mask an RX packet's points by what the socket asked for (delivery is always kept)."""
    return (device if tsflags & EVL_SOF_TIMESTAMP_DEVICE else 0,
            queuing if tsflags & EVL_SOF_TIMESTAMP_QUEUING else 0,
            delivery)


class TxTimestampRing:
    """A ring of 128 TX records per socket, filled by the TX thread, drained by ``MSG_TIMESTAMP``.

    Storage is one preallocated bytearray; pushing packs into it in place (no allocation). When
    full, the oldest record is overwritten and the next collection reports ``MSG_TRUNC``.
    """

    __slots__ = ("_buf", "_head", "_count", "capacity", "overflowed")

    def __init__(self, capacity: int = EVL_TX_TSRING_SIZE) -> None:
        self.capacity = capacity
        self._buf = bytearray(capacity * IOTIMES_SIZE)
        self.reset()

    def reset(self) -> None:
        self._head = 0     # index of the oldest record
        self._count = 0
        self.overflowed = False

    def __len__(self) -> int:
        return self._count

    def push(self, device: int, queuing: int, delivery: int) -> None:
        tail = (self._head + self._count) % self.capacity
        IOTIMES.pack_into(self._buf, tail * IOTIMES_SIZE, device, queuing, delivery)
        if self._count == self.capacity:
            self._head = (self._head + 1) % self.capacity
            self.overflowed = True
        else:
            self._count += 1

    def pop_into(self, out, max_records: int) -> tuple[int, bool]:
        """Move up to *max_records* of the oldest records into *out* (writable, bytes).

        Returns (records moved, overflow flag); the flag is cleared by the collection.
        """
        n = min(max_records, self._count)
        buf = self._buf
        for i in range(n):
            src = ((self._head + i) % self.capacity) * IOTIMES_SIZE
            out[i * IOTIMES_SIZE:(i + 1) * IOTIMES_SIZE] = buf[src:src + IOTIMES_SIZE]
        self._head = (self._head + n) % self.capacity
        self._count -= n
        truncated = self.overflowed
        if n:
            self.overflowed = False
        return n, truncated


__all__ = ["IoTimes", "IOTIMES", "IOTIMES_SIZE", "TxTimestampRing", "rx_times",
           "EVL_SOF_TIMESTAMP_RX", "EVL_SOF_TIMESTAMP_TX"]

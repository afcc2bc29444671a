"""EVL's three timestamp points per packet and the per-socket TX timestamp ring.

Times are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``). A point that was not requested
is 0. Binary layout: ``struct evl_net_iotimes`` = three ``__u64`` (24 bytes, native order).

Where the points are taken, all in the compiled core (as EVL's ``timestamping.c``, ``dev.c``,
``udp.c``, ``packet.c``):

- RX ``device_time``: the device hands the frame over (the kernel's stamp on AF_PACKET, the copy
  on the virtual link; ``core/src/device``); ``queuing_time``: the port's RX thread passes it to
  the protocol layers (``rx.rs``); ``delivery_time``: it is queued on the socket
  (``SocketCore::push``) — taken only while some socket has RX stamping on, as EVL's global
  ``evl_net_rx_timestamping`` count; a datagram queued before that carries no stamps and
  ``oob_recvmsg`` returns no control data for it (EVL: ``msg_controllen`` = 0).
- TX ``delivery_time``: ``oob_sendmsg`` starts building the packet; ``queuing_time``: the frame
  is queued to the qdisc (``Port::transmit``); ``device_time``: it is handed to the device
  (``Port::xmit``), which then pushes one record into the socket's TX ring (128 records).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from ..constants import EVL_SOF_TIMESTAMP_RX, EVL_SOF_TIMESTAMP_TX

IOTIMES = struct.Struct("=QQQ")
IOTIMES_SIZE = IOTIMES.size  # 24


@dataclass(frozen=True, slots=True)
class IoTimes:
    """One ``struct evl_net_iotimes`` record (monotonic ns; 0 = point not taken)."""

    #: Bytes of one packed record: what a control buffer needs per record.
    SIZE: ClassVar[int] = IOTIMES_SIZE

    device_time: int = 0
    queuing_time: int = 0
    delivery_time: int = 0

    def pack(self) -> bytes:
        """The 24-byte ``struct evl_net_iotimes``."""
        return IOTIMES.pack(self.device_time, self.queuing_time, self.delivery_time)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> IoTimes:
        """Parse one 24-byte record (e.g. the RX control data); ValueError if shorter."""
        size = memoryview(data).nbytes
        if size < IOTIMES_SIZE:
            raise ValueError(f"an evl_net_iotimes record is {IOTIMES_SIZE} bytes, got {size}")
        return cls(*IOTIMES.unpack_from(data, 0))

    @classmethod
    def unpack_array(cls, data: bytes | bytearray | memoryview) -> list[IoTimes]:
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


__all__ = ["IoTimes", "IOTIMES", "IOTIMES_SIZE", "EVL_SOF_TIMESTAMP_RX", "EVL_SOF_TIMESTAMP_TX"]

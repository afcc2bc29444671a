"""The device interface every backend implements (virtual link, AF_PACKET, ...).

It is deliberately small, as smoltcp's ``phy::Device``: receive a batch, transmit one frame, and a
few facts (MAC, MTU, capabilities, link state). Everything else — queues, threads, pools,
protocols — lives above it in ``evlnet.core``.
"""
from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from typing import Callable

from ..core.buffers import BufferPool, PacketBuffer
from ..errors import oserror

ARPHRD_ETHER = 1


class DeviceStats:
    """Counters a device keeps itself (drops before the stack sees a frame)."""

    __slots__ = ("rx_nomem", "rx_dropped", "tx_errors", "kernel_drops", "kernel_freeze_q_cnt")

    def __init__(self) -> None:
        self.rx_nomem = 0       # frame lost: no free RX buffer
        self.rx_dropped = 0     # frame lost for another device reason (ring full, ...)
        self.tx_errors = 0      # transmit refused by the device
        self.kernel_drops = 0   # AF_PACKET: tp_drops reported by the kernel
        self.kernel_freeze_q_cnt = 0


class Device(ABC):
    """A network interface as the stack sees it.

    Lifecycle: ``attach(rx_pool)`` when a port is enabled on it, ``detach()`` when disabled.
    ``receive()`` is called only from the port's RX thread, ``transmit()`` from the TX thread or
    a run-to-completion sender (never concurrently: the port serialises transmits).
    """

    name: str
    ifindex: int
    mac: bytes
    mtu: int
    hatype: int = ARPHRD_ETHER
    #: True when frames move straight from the oob threads (EVL: IFF_OOB_CAPABLE).
    oob_capable: bool = True
    #: VLAN id when this is a VLAN device (frames on the wire are tagged), else 0.
    vlan_id: int = 0
    #: For a VLAN device, the device carrying its frames; else None.
    real_device: "Device | None" = None

    def __init__(self) -> None:
        self.stats = DeviceStats()
        #: called (from any thread) with True/False when the link goes up/down, or None when the
        #: interface disappears.
        self.on_link_change: Callable[[bool | None], None] | None = None

    @abstractmethod
    def attach(self, rx_pool: BufferPool) -> None:
        """Start delivering received frames into buffers taken from *rx_pool*."""

    @abstractmethod
    def detach(self) -> None:
        """Stop receiving; wake any thread blocked in ``receive()``; release kernel resources."""

    @abstractmethod
    def receive(self, batch: list[PacketBuffer], limit: int, timeout: float | None) -> int:
        """Append up to *limit* received frames to *batch*, waiting up to *timeout* seconds
        (None: until a frame arrives or ``wake()``; 0: never wait) for the first one. Returns
        how many were added. May be called from the port's RX thread and from busy-polling
        receivers; the port serialises consumers.

        Each buffer holds the frame, Ethernet header included, in ``data[start:end]`` and carries
        ``device_time``: the CLOCK_MONOTONIC ns at which the device handed it over. A frame that
        finds no free buffer is dropped and counted in ``stats.rx_nomem``.
        """

    @abstractmethod
    def transmit(self, frame: memoryview) -> None:
        """Put one complete Ethernet frame on the wire. Raises OSError(ENETDOWN) when down."""

    def wait_ready(self, timeout: float | None) -> None:
        """Optional (enables busy polling): block until a frame may be ready, ``wake()`` or the
        timeout, without consuming. Devices without it are only read by the RX thread (the port
        sees this base method is not overridden and never calls it)."""
        raise oserror(errno.EOPNOTSUPP, f"{self.name} cannot be busy-polled")

    @abstractmethod
    def wake(self) -> None:
        """Make a blocked ``receive()`` return early."""

    @abstractmethod
    def is_up(self) -> bool:
        """Whether the link is up (administratively and carrier)."""

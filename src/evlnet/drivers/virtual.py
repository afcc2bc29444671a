"""The embedded virtual link: two in-process Ethernet interfaces joined by a wire.

Needs no privileges and no kernel interface. A frame transmitted on one end is copied, as bytes,
into an RX buffer of the other end (the buffer pool of the port enabled there, as a NIC DMAs into
its driver's RX ring), stamped with ``device_time`` and queued for that port's RX thread. Frames
reaching an end with no port enabled, or whose link is down, are dropped and counted.

VLAN devices (``VirtualVlan``) sit on an end as Linux VLAN devices sit on a NIC: they tag on TX
and receive the frames of their VID with the tag removed.
"""
from __future__ import annotations

import errno
import itertools
import time
from collections import deque

from ..core.buffers import BufferPool, Doorbell, PacketBuffer
from ..errors import oserror
from .base import Device

_now = time.monotonic_ns
_ifindex = itertools.count(1000)
_mac_serial = itertools.count(1)

ETH_P_8021Q = 0x8100


def _make_mac() -> bytes:
    n = next(_mac_serial)
    # 02:... is a locally administered unicast address
    return bytes([0x02, 0x65, 0x76, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])


class _Receiver(Device):
    """RX side shared by a virtual end and its VLAN devices: a queue of filled pool buffers."""

    def __init__(self) -> None:
        super().__init__()
        self._rx_pool: BufferPool | None = None
        self._rxq: deque[PacketBuffer] = deque()
        self._bell = Doorbell()
        self.rx_frames_unclaimed = 0    # arrived with no port enabled here

    def attach(self, rx_pool: BufferPool) -> None:
        self._rx_pool = rx_pool

    def detach(self) -> None:
        self._rx_pool = None
        while self._rxq:
            self._rxq.popleft().release()
        self._bell.ring()

    def wake(self) -> None:
        self._bell.ring()

    def _deliver(self, frame, vlan_strip: bool = False) -> None:
        """Called on the sender's thread: copy *frame* into one of our RX buffers."""
        pool = self._rx_pool
        if pool is None or not self.is_up():
            self.rx_frames_unclaimed += 1
            return
        buf = pool.take()
        if buf is None:
            self.stats.rx_nomem += 1
            return
        if vlan_strip:   # drop the 4-byte tag after the two MAC addresses
            n = len(frame) - 4
            buf.data[0:12] = frame[0:12]
            buf.data[12:n] = frame[16:]
        else:
            n = len(frame)
            buf.data[0:n] = frame
        buf.start = 0
        buf.end = n
        buf.device_time = _now()
        self._rxq.append(buf)
        self._bell.ring()

    def wait_ready(self, timeout: float | None) -> None:
        """Block until a frame may be ready (or ``wake()``), without consuming anything."""
        if not self._rxq:
            self._bell.wait(timeout)

    def receive(self, batch: list[PacketBuffer], limit: int, timeout: float | None) -> int:
        rxq = self._rxq
        if not rxq and timeout != 0:
            self._bell.wait(timeout)
        n = 0
        while n < limit:
            try:
                batch.append(rxq.popleft())
            except IndexError:
                break
            n += 1
        return n


class VirtualInterface(_Receiver):
    """One end of a ``VirtualLink``."""

    oob_capable = True

    def __init__(self, name: str, mtu: int = 1500, mac: bytes | None = None) -> None:
        super().__init__()
        self.name = name
        self.ifindex = next(_ifindex)
        self.mac = mac or _make_mac()
        self.mtu = mtu
        self.peer: VirtualInterface | None = None
        self.vlans: dict[int, VirtualVlan] = {}
        self.admin_up = True
        self.tx_frames = 0

    def is_up(self) -> bool:
        return self.admin_up and self.peer is not None

    def set_up(self, up: bool) -> None:
        """Like ``ip link set <if> up|down``; tells ports and VLAN devices on it."""
        self.admin_up = up
        for dev in (self, *self.vlans.values()):
            if dev.on_link_change is not None:
                dev.on_link_change(up)

    def remove(self) -> None:
        """Like ``ip link del``: the interface disappears (ports on it are disabled)."""
        self.admin_up = False
        if self.peer is not None:
            self.peer.peer = None
            self.peer = None
        for dev in (self, *self.vlans.values()):
            if dev.on_link_change is not None:
                dev.on_link_change(None)

    def add_vlan(self, vid: int, name: str | None = None) -> "VirtualVlan":
        """Create a VLAN device on this end (``ip link add link <if> name <if>.<vid> type vlan``)."""
        if not 1 <= vid <= 4094:
            raise oserror(errno.EINVAL, f"VLAN id {vid} out of range 1-4094")
        dev = VirtualVlan(self, vid, name or f"{self.name}.{vid}")
        self.vlans[vid] = dev
        return dev

    def transmit(self, frame) -> None:
        if not self.admin_up:
            raise oserror(errno.ENETDOWN, f"{self.name} is down")
        peer = self.peer
        if peer is None:
            raise oserror(errno.ENETDOWN, f"{self.name} has no carrier")
        if len(frame) > self.mtu + 14 + 4:
            self.stats.tx_errors += 1
            raise oserror(errno.EMSGSIZE, f"frame of {len(frame)} bytes exceeds {self.name} MTU")
        self.tx_frames += 1
        peer._arrive(frame)

    def _arrive(self, frame) -> None:
        # Frames tagged with the VID of one of our VLAN devices go to it, untagged (as Linux does).
        if self.vlans and len(frame) >= 18 and frame[12] == 0x81 and frame[13] == 0x00:
            vid = ((frame[14] << 8) | frame[15]) & 0x0FFF
            vdev = self.vlans.get(vid)
            if vdev is not None:
                vdev._deliver(frame, vlan_strip=True)
                return
        self._deliver(frame)


class VirtualVlan(_Receiver):
    """A VLAN device on a virtual end: tags on TX, receives its VID untagged."""

    oob_capable = True

    def __init__(self, parent: VirtualInterface, vid: int, name: str) -> None:
        super().__init__()
        self.parent = parent
        self.real_device = parent
        self.vlan_id = vid
        self.name = name
        self.ifindex = next(_ifindex)
        self.mac = parent.mac
        self.mtu = parent.mtu
        self._tagged = bytearray(parent.mtu + 14 + 4)

    def is_up(self) -> bool:
        return self.parent.is_up()

    def transmit(self, frame) -> None:
        n = len(frame)
        out = self._tagged
        out[0:12] = frame[0:12]
        out[12:16] = bytes((0x81, 0x00, (self.vlan_id >> 8) & 0x0F, self.vlan_id & 0xFF))
        out[16:n + 4] = frame[12:]
        self.parent.transmit(memoryview(out)[:n + 4])


class VirtualLink:
    """Two ``VirtualInterface`` ends joined by a wire: ``link.a`` and ``link.b``."""

    def __init__(self, name_a: str = "vlink0", name_b: str = "vlink1", mtu: int = 1500) -> None:
        self.a = VirtualInterface(name_a, mtu)
        self.b = VirtualInterface(name_b, mtu)
        self.a.peer = self.b
        self.b.peer = self.a

    def __iter__(self):
        return iter((self.a, self.b))

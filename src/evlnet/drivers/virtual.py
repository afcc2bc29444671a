"""The embedded virtual link: two in-process Ethernet interfaces joined by a wire.

Needs no privileges and no kernel interface. The wire itself is in the compiled core
(``evlnet._core``): a frame transmitted on one end is copied, on the sender's thread, into an RX
buffer of the port enabled on the other end, stamped with ``device_time`` and queued for that
port's RX thread — no Python runs per frame. These classes are the control-plane handles: names,
addresses, link state, VLAN devices, and the test hooks (``inject``, ``set_tap``).

VLAN devices (``VirtualVlan``) sit on an end as Linux VLAN devices sit on a NIC: they tag on TX
and receive the frames of their VID with the tag removed.
"""
from __future__ import annotations

import errno
from collections.abc import Iterator

from ..datapath import _core
from ..errors import oserror
from .base import Device


class _CoreBacked(Device):
    """A device whose data path is a core device object (``self.core_device``)."""

    core_device: _core.VirtualEnd | _core.VirtualVlan

    def counters(self) -> dict[str, int]:
        """The device's own drop counters, by name."""
        return dict(self.core_device.counters())

    def transmit(self, frame: bytes | bytearray | memoryview) -> None:
        """Put one frame on the wire from Python (tests, tools); the oob path never calls this."""
        self.core_device.transmit(bytes(frame))


class VirtualInterface(_CoreBacked):
    """One end of a ``VirtualLink``."""

    oob_capable = True
    core_device: _core.VirtualEnd

    def __init__(self, core_end: _core.VirtualEnd) -> None:
        super().__init__()
        self.core_device = core_end
        self.name = core_end.name
        self.ifindex = core_end.ifindex
        self.mac = core_end.mac
        self.mtu = core_end.mtu
        self.vlans: dict[int, VirtualVlan] = {}
        # The core keeps the administrative state too but does not export it: mirrored here.
        self._admin_up = True
        self._removed = False

    def is_up(self) -> bool:
        return bool(self.core_device.is_up())

    @property
    def admin_up(self) -> bool:
        """The administrative state (``ip link set up|down``), whatever the carrier."""
        return self._admin_up

    def set_up(self, up: bool) -> None:
        """Like ``ip link set <if> up|down``; tells ports and VLAN devices on it."""
        self.core_device.set_up(up)
        if not self._removed:           # as the core: no-op once removed
            self._admin_up = up
        for dev in (self, *self.vlans.values()):
            if dev.on_link_change is not None:
                dev.on_link_change(up)

    def remove(self) -> None:
        """Like ``ip link del``: the interface disappears (ports on it are disabled)."""
        self.core_device.remove()
        self._removed = True
        self._admin_up = False
        for dev in (self, *self.vlans.values()):
            if dev.on_link_change is not None:
                dev.on_link_change(None)

    def add_vlan(self, vid: int, name: str | None = None) -> VirtualVlan:
        """Create a VLAN device on this end (``ip link add link <if> name <if>.<vid> type
        vlan``)."""
        if not 1 <= vid <= 4094:
            raise oserror(errno.EINVAL, f"VLAN id {vid} out of range 1-4094")
        dev = VirtualVlan(self, self.core_device.add_vlan(vid, name or f"{self.name}.{vid}"))
        self.vlans[vid] = dev
        return dev

    # -- test hooks ---------------------------------------------------------------------------
    def inject(self, frame: bytes | bytearray | memoryview) -> None:
        """Deliver *frame* to this end as if it came from the wire."""
        self.core_device.inject(bytes(frame))

    def set_tap(self, enabled: bool, passthrough: bool = True) -> None:
        """Record every frame arriving at this end (and deliver it too with *passthrough*)."""
        self.core_device.set_tap(enabled, passthrough)

    def take_tapped(self) -> list[bytes]:
        """The frames recorded since the last call."""
        return list(self.core_device.take_tapped())

    def wait_tapped(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for a recorded frame (GIL released)."""
        return bool(self.core_device.wait_tapped(timeout))


class VirtualVlan(_CoreBacked):
    """A VLAN device on a virtual end: tags on TX, receives its VID untagged."""

    oob_capable = True
    core_device: _core.VirtualVlan

    def __init__(self, parent: VirtualInterface, core_vlan: _core.VirtualVlan) -> None:
        super().__init__()
        self.core_device = core_vlan
        self.parent = parent
        self.real_device = parent
        self.vlan_id = core_vlan.vlan_id
        self.name = core_vlan.name
        self.ifindex = core_vlan.ifindex
        self.mac = parent.mac
        self.mtu = parent.mtu

    def is_up(self) -> bool:
        return bool(self.core_device.is_up())


class VirtualLink:
    """Two ``VirtualInterface`` ends joined by a wire: ``link.a`` and ``link.b``."""

    def __init__(self, name_a: str = "vlink0", name_b: str = "vlink1", mtu: int = 1500) -> None:
        a, b = _core.virtual_link(name_a, name_b, mtu)
        self.a = VirtualInterface(a)
        self.b = VirtualInterface(b)

    def __iter__(self) -> Iterator[VirtualInterface]:
        return iter((self.a, self.b))

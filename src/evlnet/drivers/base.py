"""What the control plane knows of a device (virtual link end, VLAN device, Linux interface).

The data path of every device lives in the compiled core (``core_device``): the port's RX and
TX threads call it directly, without Python. This class holds the facts the control plane needs
(name, index, MAC, MTU, VLAN, link state) and the link-change hook the stack installs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ..datapath import _core

    #: The core devices a port can be enabled on (what ``_core.Port`` accepts).
    CoreDevice: TypeAlias = _core.VirtualEnd | _core.VirtualVlan | _core.AfPacket

ARPHRD_ETHER = 1


class Device(ABC):
    """A network interface as the control plane sees it."""

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
    real_device: Device | None = None
    #: The core object the port's threads drive (``evlnet._core`` VirtualEnd, VirtualVlan,
    #: AfPacket).
    core_device: CoreDevice

    def __init__(self) -> None:
        #: called (from a control-plane thread) with True/False when the link goes up/down, or
        #: None when the interface disappears.
        self.on_link_change: Callable[[bool | None], None] | None = None

    @abstractmethod
    def is_up(self) -> bool:
        """Whether the link is up (administratively and carrier)."""

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """The device's own drop counters (before the stack sees a frame), by name."""

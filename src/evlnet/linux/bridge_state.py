"""What every part of the kernel bridge shares: its network namespace, its netlink request
socket, the table of enabled Linux ports (and the lock that guards it with the diversion state),
whether it is closed, its counters, and two small helpers.

``KernelBridge`` (``bridge.py``) makes one ``BridgeState`` and hands it to each of its parts —
``port_filters.py``, ``kernel_sockets.py``, ``routing.py``, ``monitor.py`` — so that they all see
the same namespace, socket and ports without reaching into the bridge or into one another.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._netns import inside
from ..core.interface import Interface
from ..drivers.afpacket import AfPacketDevice
from ..errors import oserror
from . import rtnl

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack


def fmt_ip(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def linux_device(owner: Interface | Port) -> AfPacketDevice:
    """The AF_PACKET device of a Linux interface or port (``open_interface`` made it)."""
    device = owner.device
    assert isinstance(device, AfPacketDevice), f"{owner.name} is not a Linux interface"
    return device


@dataclass
class BridgeCounters:
    events: int = 0                #: netlink notifications handled
    resyncs: int = 0               #: full resynchronisations after lost notifications
    neigh_learnt: int = 0
    neigh_dropped: int = 0
    route_updates: int = 0
    diversion_updates: int = 0     #: programs swapped (socket filter + tc filter)
    demoted_kernel: int = 0        #: demoted datagrams sent through genuine sockets
    demoted_raw: int = 0           #: ... through the raw IPv4 socket
    solicit_kicks: int = 0         #: NTF_USE requests


class BridgeState:
    """The state the bridge's parts share (see the module docstring)."""

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack
        self.counters = BridgeCounters()
        self.ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.lock = threading.RLock()             # diversion state and port tables
        self.ports: dict[int, "Port"] = {}        # ifindex -> enabled Linux port (copy on write)
        self.closed = False
        #: the netlink request socket (None once released); ``rtnl_socket()`` checks it
        self.nl: rtnl.RtnlSocket | None = None

    # -- namespace ------------------------------------------------------------------------------
    @contextmanager
    def in_ns(self) -> Iterator[None]:
        """Run the block with the calling thread in the bridge's network namespace."""
        with inside(self.ns_fd):
            yield

    def rtnl_socket(self) -> rtnl.RtnlSocket:
        """The netlink request socket; ESHUTDOWN once the bridge is closed."""
        if self.nl is None:
            raise oserror(errno.ESHUTDOWN, "the kernel bridge is closed")
        return self.nl

    # -- lifetime -------------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.closed:
            raise oserror(errno.ESHUTDOWN, "the kernel bridge is closed")

    def release(self) -> None:
        """Close the netlink request socket and the namespace fd (the parts close their own)."""
        nl, self.nl = self.nl, None
        if nl is not None:
            try:
                nl.close()
            except OSError:
                pass
        if self.ns_fd >= 0:
            os.close(self.ns_fd)
            self.ns_fd = -1

"""evlnet — an out-of-band network stack for stock Linux, modelled on EVL's: a compiled data
path (``evlnet._core``, Rust) whose threads never take the GIL, and this Python API.

The module-level functions act on a default stack, so programs read like EVL's C API::

    import evlnet
    port = evlnet.enable_port("veth0")
    s = evlnet.socket(evlnet.AF_INET, evlnet.SOCK_DGRAM | evlnet.SOCK_OOB)
    evlnet.solicit(s, ("192.0.2.2", 0), evlnet.EVL_NEIGH_PERMANENT)
    s.oob_sendmsg([b"hello"], address=("192.0.2.2", 9000))

Programs that run several stacks (tests, the embedded demo) make ``evlnet.Stack()`` instances.
"""
from __future__ import annotations

import threading
from typing import Any

from .constants import *  # noqa: F401,F403  (EVL's constants, with EVL's values)
from .constants import __dict__ as _c  # type: ignore[attr-defined]
from .core.frontcache import Neighbour, Route
from .core.port import Port
from .core.stack import Stack, StackSettings
from .core.stats import DevStat
from .core.timestamps import IoTimes
from .drivers.virtual import VirtualInterface, VirtualLink, VirtualVlan
from .linux.bridge import KernelBridge
from .proto.registry import Protocol

__version__ = "0.2.0"

Stack.kernel_bridge_factory = KernelBridge   # Linux ports: the kernel as in-band stage

_default: Stack | None = None
_default_lock = threading.Lock()


def default_stack() -> Stack:
    """The process-wide stack the module-level functions use (made on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Stack("evlnet")
        return _default


def enable_port(ifname: str, poolsz: int = 0, bufsz: int = 0) -> Port:
    """EVL ``evl_net_enable_port`` on the default stack."""
    return default_stack().enable_port(ifname, poolsz, bufsz)


def open_port(ifname: str) -> Port:
    """EVL ``evl_net_open_port`` on the default stack."""
    return default_stack().open_port(ifname)


def set_filter(port: Port | int, modpath: str | None) -> None:
    """EVL ``evl_net_set_filter`` on the default stack (see ``Stack.set_filter``)."""
    default_stack().set_filter(port, modpath)


def disable_port(port: Port | int) -> None:
    """EVL ``evl_net_disable_port`` on the default stack."""
    default_stack().disable_port(port)


def get_stats(port: Port | int) -> DevStat:
    """EVL ``evl_net_query_dev``: the port's statistics."""
    return default_stack().get_stats(port)


def socket(family: int, type: int, proto: int = 0) -> Any:
    """``socket(2)``: an oob socket when *type* has ``SOCK_OOB`` (on the default stack)."""
    return default_stack().socket(family, type, proto)


def solicit(sock: Any, peer: Any, flags: int = 0) -> None:
    """EVL ``evl_net_solicit``: pre-resolve *peer* into the front cache."""
    if not hasattr(sock, "stack"):
        import errno

        from .errors import oserror
        raise oserror(errno.EBADF, "not an oob socket")
    sock.stack.solicit(sock, peer, flags)


__all__ = [
    "Stack", "StackSettings", "Port", "DevStat", "IoTimes", "Route",
    "Neighbour", "Protocol", "VirtualLink",
    "VirtualInterface", "VirtualVlan", "default_stack", "enable_port", "open_port",
    "disable_port", "get_stats", "socket", "solicit",
] + [k for k in _c if k.isupper()]

"""Linux interfaces as oob ports: the kernel plays EVL's in-band stage (see bridge.py)."""
from __future__ import annotations

import os


def linux_interface_exists(ifname: str) -> bool:
    """Whether the calling thread's network namespace has an interface called *ifname*."""
    if not ifname or "/" in ifname or len(ifname) > 15:
        return False
    try:
        return os.path.exists(f"/sys/class/net/{ifname}") or bool(_if_nametoindex(ifname))
    except OSError:
        return False


def _if_nametoindex(ifname: str) -> int:
    import socket
    return socket.if_nametoindex(ifname)


def __getattr__(name):
    if name == "KernelBridge":
        from .bridge import KernelBridge
        return KernelBridge
    raise AttributeError(name)

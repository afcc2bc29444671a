"""Linux interfaces as oob ports: the kernel plays EVL's in-band stage (see bridge.py)."""
from __future__ import annotations


def linux_interface_exists(ifname: str) -> bool:
    """Whether the calling thread's network namespace has an interface called *ifname*.

    (``/sys/class/net`` shows the namespace /sys was mounted in, not the thread's, so only
    ``if_nametoindex`` — a socket ioctl in the thread's namespace — is asked.)
    """
    if not isinstance(ifname, str) or not ifname or "/" in ifname or len(ifname) > 15:
        return False
    try:
        return bool(_if_nametoindex(ifname))
    except (OSError, ValueError):
        return False


def _if_nametoindex(ifname: str) -> int:
    import socket
    return socket.if_nametoindex(ifname)


def __getattr__(name):
    if name == "KernelBridge":
        from .bridge import KernelBridge
        return KernelBridge
    raise AttributeError(name)

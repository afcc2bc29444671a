"""Linux interfaces as oob ports: the kernel plays EVL's in-band stage (see bridge.py).

``KernelBridge`` (``linux.bridge``) sits above the stack; the API layer (``evlnet``) hands it
to ``Stack`` as the factory of its kernel bridge, so the stack never imports it."""
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


"""``setns(2)`` for the calling thread (``os.setns`` exists only from Python 3.12)."""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = None


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace *fd* refers to; OSError on failure."""
    fn = getattr(os, "setns", None)
    if fn is not None:
        fn(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(ns_fd: int) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace *ns_fd*, then return it
    to where it was (a no-op when it is already there)."""
    here = os.stat("/proc/thread-self/ns/net")
    there = os.fstat(ns_fd)
    if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
        yield
        return
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(ns_fd)
        try:
            yield
        finally:
            setns(orig)
    finally:
        os.close(orig)

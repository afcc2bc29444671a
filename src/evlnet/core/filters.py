"""eBPF RX filters (EVL's ``evl_net_set_filter``): reading an object file into a verified program.

Where the program then runs is the port's business: in the core's RX path (the rbpf
interpreter) on a virtual link, in the kernel on a Linux port (``evlnet.linux.port_filters``).
See ``core/src/filter/`` for the verdicts, the verifier's rules and the context the program sees.
"""
from __future__ import annotations

import errno
import os

from ..datapath import _core
from ..errors import oserror

#: no filter object is anywhere near this big (the verifier takes at most 4096 instructions)
MAX_OBJECT_BYTES = 16 << 20


def load_program(modpath: str | os.PathLike[str]) -> _core.FilterProgram:
    """The first program of the eBPF object file *modpath*, verified.

    ENOENT when the file does not exist, EACCES when it cannot be read, EINVAL when it is not an
    eBPF object, holds no program, or holds one the verifier refuses (the message says why)."""
    path = os.fspath(modpath)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_OBJECT_BYTES + 1)
    except FileNotFoundError:
        raise oserror(errno.ENOENT, f"{path}: no such eBPF object file") from None
    except PermissionError:
        raise oserror(errno.EACCES, f"{path}: cannot read the eBPF object file") from None
    except IsADirectoryError:
        raise oserror(errno.EINVAL, f"{path}: a directory, not an eBPF object file") from None
    except OSError as exc:
        raise oserror(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise oserror(errno.EINVAL, f"{path}: too large for an eBPF object file")
    try:
        return _core.FilterProgram(data)
    except OSError as exc:
        raise oserror(exc.errno or errno.EINVAL, f"{path}: {exc.strerror or exc}") from None

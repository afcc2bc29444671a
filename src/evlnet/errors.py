"""One way to raise the stack's errors: an ``OSError`` with the right errno and a clear message."""
from __future__ import annotations

import errno as _errno
import os


def oserror(code: int, message: str | None = None) -> OSError:
    """Build an ``OSError`` for *code* (an ``errno`` value) with an explanatory message."""
    text = os.strerror(code)
    if message:
        text = f"{text}: {message}"
    return OSError(code, text)


# EVL's user-space ENOTSUPP (524) is not in Python's errno module; ENOTSUP is the portable one.
ENOTSUPP = 524
EWOULDBLOCK = _errno.EWOULDBLOCK

"""A client of a served stack's control endpoint (what ``evl-net`` uses).

``connect(name)`` finds the stack: by name, or the only one running. Requests raise the server's
error as an ``OSError`` with its errno and message.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import time
from typing import Any

from ..errors import oserror
from . import endpoint as ep

_UCRED = struct.Struct("3i")      # struct ucred: pid, uid, gid


class StackNotFound(OSError):
    """No served stack matches (none running, several and no name given, or a wrong name)."""


class RequestError(OSError):
    """The server's error reply: errno, message and the step that failed (``stage``)."""

    def __init__(self, err: int, message: str, stage: str | None = None) -> None:
        super().__init__(err, message)
        self.stage = stage


class ControlClient:
    """One connection to a served stack."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + 2.0
        try:
            while True:
                try:
                    self.sock.connect(path)
                    break
                except BlockingIOError:      # the server's backlog is full: it is busy
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
            # The server must be ours too: a stranger's socket (planted in a directory we
            # do not own) would otherwise get our requests and the files we pass to it.
            pid, uid, _ = _UCRED.unpack(self.sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.geteuid():
                raise oserror(errno.EACCES, f"{path} is served by uid {uid} (pid {pid}), not by "
                                            f"uid {os.geteuid()}")
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, cmd: str, fds: list[int] | None = None, **args: Any) -> None:
        """Send one request (with *fds* passed along, SCM_RIGHTS)."""
        msg = ep.encode({"cmd": cmd, "args": args})
        if fds:
            socket.send_fds(self.sock, [msg], fds)
        else:
            self.sock.send(msg)

    def receive(self, timeout: float | None = None) -> Any:
        """One reply: the result, or the server's error raised as OSError."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        data = self.sock.recv(ep.MAX_REPLY)
        if not data:
            raise oserror(errno.ECONNRESET, "the stack closed the connection")
        try:
            reply = json.loads(data)
        except ValueError:
            raise oserror(errno.EPROTO, "malformed reply from the stack") from None
        if not isinstance(reply, dict):
            raise oserror(errno.EPROTO, "malformed reply from the stack")
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("errno")
        msg = reply.get("error")
        stage = reply.get("stage")
        raise RequestError(err if isinstance(err, int) else errno.EIO,
                           msg if isinstance(msg, str) else "request failed",
                           stage if isinstance(stage, str) else None)

    def request(self, cmd: str, **args: Any) -> Any:
        """Send one request and return its result (OSError: the server's error)."""
        self.send(cmd, **args)
        return self.receive()


def running_stacks(directory: str | None = None) -> list[str]:
    """Names of the stacks whose servers answer (stale sockets left by a crash are skipped)."""
    directory = directory or ep.runtime_dir()
    out = []
    for name in ep.listed_stacks(directory):
        try:
            ControlClient(os.path.join(directory, name + ep.SUFFIX), timeout=2.0).close()
        except OSError as exc:
            if exc.errno == errno.EACCES:
                out.append(name)         # there, but not ours: say so when it is used
            continue
        out.append(name)
    return out


def connect(name: str | None = None, directory: str | None = None,
            timeout: float | None = 30.0) -> ControlClient:
    """Connect to the stack *name*, or to the only one running (StackNotFound otherwise)."""
    directory = directory or ep.runtime_dir()
    if os.path.lexists(directory):
        ep.check_private_dir(directory)     # EPERM: not ours, or open to others
    if name is None:
        names = running_stacks(directory)
        if not names:
            raise StackNotFound(errno.ENOENT, f"no evlnet stack is running (none served in "
                                              f"{directory}; start one with 'evl-net serve')")
        if len(names) > 1:
            raise StackNotFound(errno.EINVAL, f"several stacks are running ({', '.join(names)})"
                                              "; choose one with --stack NAME")
        name = names[0]
    path = ep.socket_path(name, directory)
    try:
        return ControlClient(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise StackNotFound(errno.ENOENT, f"no stack named {name!r} is running (no server on "
                                          f"{path})") from None
    except PermissionError:
        raise StackNotFound(errno.EACCES, f"stack {name!r} is not yours: permission denied "
                                          f"on {path}") from None

"""The control server: a stack served to other processes of the same user on a Unix socket.

``ControlServer(stack).start()`` binds ``<runtime dir>/<stack name>.sock`` (mode 0600 in a 0700
directory, see ``endpoint``) and serves it from a thread ``<stack>.control``; each connection
gets a thread of its own (at most ``MAX_CONNECTIONS``). Every peer's credentials are read with
``SO_PEERCRED``: a process of another user is refused (EACCES) before it can send anything.
Every request is validated (``endpoint.validate``) before it acts; whatever goes wrong with a
request — too large, not JSON, wrong types, an unknown command, a failing stack call, even a
bug — becomes an error reply, never an exception out of the server.

These threads are in-band (they hold the GIL while they work) and idle in ``poll``/``recvmsg``
with the GIL released, so an idle server wakes nobody.
"""
from __future__ import annotations

import array
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import AF_INET, EVL_NEIGH_MAYROUTE, EVL_NEIGH_PERMANENT, SOCK_DGRAM, SOCK_OOB, Stack
from ..errors import oserror
from . import endpoint as ep

log = logging.getLogger("evlnet.control")
_UCRED = struct.Struct("3i")      # struct ucred: pid, uid, gid
#: How long a refused connection is kept for its client's request to arrive, and how many are.
REFUSED_LINGER_S = 1.0
MAX_REFUSED_LINGERING = 64


class ControlServer:
    """Serves *stack* on its control endpoint until ``close()``."""

    def __init__(self, stack: Stack, directory: str | None = None,
                 name: str | None = None) -> None:
        self.stack = stack
        self.name = ep.check_name(name or stack.name)
        self.directory = directory or ep.runtime_dir()
        self.path = os.path.join(self.directory, self.name + ep.SUFFIX)
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._inode = -1
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(ep.MAX_CONNECTIONS)
        self._conns: set[socket.socket] = set()
        self._captures: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False
        #: requests served and refused, for tests and diagnostics
        self.counters = {"requests": 0, "errors": 0, "refused_peers": 0, "busy": 0}

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        """Bind the endpoint and start serving. EADDRINUSE when a live server already uses the
        name; a stale socket (its server died) is replaced."""
        ep.ensure_private_dir(self.directory)
        if os.path.lexists(self.path):
            if _alive(self.path):
                raise oserror(errno.EADDRINUSE, f"stack {self.name!r} is already served "
                                                f"({self.path})")
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)              # the socket file is created 0600
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.lstat(self.path).st_ino
        sock.listen(4 * ep.MAX_CONNECTIONS)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}.control",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving: no new connections, open ones closed, captures stopped, socket file
        removed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns, caps = list(self._conns), list(self._captures)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for cap in caps:
            cap.stop()
        deadline = time.monotonic() + 2.0     # let capture handlers send their last reply
        while self._captures and time.monotonic() < deadline:
            time.sleep(0.01)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            if self._sock is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)          # ours (not a successor's, after a takeover)
        except OSError:
            pass
        if self._sock is not None:
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> ControlServer:
        return self.start() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._sock is not None
        poller = select.poll()
        listen_fd = self._sock.fileno()
        poller.register(listen_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        # Refused connections, kept until the client's request arrives (or it hangs up, or a
        # second passes): closing a socket with an unread request resets the client's side,
        # which would then see ECONNRESET instead of the refusal it was sent.
        refused: dict[int, tuple[socket.socket, float]] = {}

        def let_go(fd: int) -> None:
            conn, _ = refused.pop(fd)
            poller.unregister(fd)
            conn.close()

        try:
            while not self._closed:
                events = poller.poll(REFUSED_LINGER_S * 1000 if refused else None)
                if any(fd == self._wake_r for fd, _ in events) or self._closed:
                    return
                now = time.monotonic()
                for fd, _ in events:
                    if fd in refused:
                        try:
                            refused[fd][0].recv(ep.MAX_REQUEST, socket.MSG_DONTWAIT)
                        except OSError:
                            pass
                        let_go(fd)
                for fd in [fd for fd, (_, until) in refused.items() if until <= now]:
                    let_go(fd)
                if not any(fd == listen_fd for fd, _ in events):
                    continue
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    continue
                try:
                    if not self._admit(conn):
                        if len(refused) < MAX_REFUSED_LINGERING:
                            refused[conn.fileno()] = (conn, now + REFUSED_LINGER_S)
                            poller.register(conn.fileno(), select.POLLIN)
                        else:
                            conn.close()
                except Exception:      # never let one connection stop the server
                    log.exception("%s: control connection failed", self.name)
                    conn.close()
        finally:
            for fd in list(refused):
                let_go(fd)

    def _admit(self, conn: socket.socket) -> bool:
        """Serve *conn* in a thread of its own, or send it the refusal (EACCES: another user;
        EBUSY: every slot taken) and return False: the caller closes it."""
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != os.geteuid():
            self.counters["refused_peers"] += 1
            log.warning("%s: refused control connection from uid %d (pid %d)", self.name, uid,
                        pid)
            _refuse(conn, ep.error_reply(errno.EACCES, f"stack {self.name!r} belongs to uid "
                                                       f"{os.geteuid()}; uid {uid} is refused"))
            return False
        if not self._slots.acquire(blocking=False):
            self.counters["busy"] += 1
            _refuse(conn, ep.error_reply(errno.EBUSY, "too many control connections"))
            return False
        with self._lock:
            self._conns.add(conn)
        threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}.control.{pid}",
                         daemon=True).start()
        return True

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(ep.IDLE_TIMEOUT)
            while not self._closed:
                try:
                    data, fds, truncated = _recv(conn)
                except (TimeoutError, OSError):
                    return
                if not data and not truncated:
                    return                                    # the client hung up
                try:
                    self._handle(conn, data, fds, truncated)
                finally:
                    for fd in fds:
                        os.close(fd)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._slots.release()

    def _handle(self, conn: socket.socket, data: bytes, fds: list[int], truncated: bool) -> None:
        self.counters["requests"] += 1
        try:
            if truncated:
                raise oserror(errno.EMSGSIZE, f"request larger than {ep.MAX_REQUEST} bytes")
            cmd, args = ep.validate(data)
            if cmd == "capture":
                self._capture(conn, args, fds)
                return
            if fds:
                raise oserror(errno.EINVAL, f"{cmd}: takes no file descriptor")
            reply = ep.ok_reply(self._dispatch(cmd, args))
        except OSError as exc:
            self.counters["errors"] += 1
            err = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else errno.EIO
            reply = ep.error_reply(err, exc.strerror or str(exc), getattr(exc, "stage", None))
        except Exception as exc:     # a bug must not take the stack down: report it
            self.counters["errors"] += 1
            log.exception("%s: control request failed", self.name)
            reply = ep.error_reply(errno.EIO, f"internal error: {type(exc).__name__}: {exc}")
        _send(conn, reply)

    # -- commands ---------------------------------------------------------------------------------
    def _dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        handler: Callable[[dict[str, Any]], Any] = getattr(self, f"_cmd_{cmd}")
        return handler(args)

    def _open_port(self, ifname: str) -> Any:
        """The enabled port of *ifname*; its failure is marked as the ``open`` stage."""
        try:
            return self.stack.open_port(ifname)
        except OSError as exc:
            exc.stage = "open"    # type: ignore[attr-defined]
            raise

    def _cmd_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        from .. import __version__
        st = self.stack
        return {"stack": self.name, "pid": os.getpid(), "version": __version__,
                "ports": sorted(n for n, p in st.ports.items() if p.enabled),
                "interfaces": sorted(st.interfaces)}

    def _cmd_enable(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self.stack.enable_port(args["ifname"], args.get("poolsz", 0),
                                      args.get("bufsz", 0))
        return {"ifname": port.name, "oob_capable": port.oob_capable}

    def _cmd_disable(self, args: dict[str, Any]) -> None:
        port = self._open_port(args["ifname"])
        self._stop_captures_of(port)
        self.stack.disable_port(port)

    def _cmd_query(self, args: dict[str, Any]) -> dict[str, Any]:
        port = self._open_port(args["ifname"])
        return self.stack.get_stats(port).as_dict()

    def _cmd_solicit(self, args: dict[str, Any]) -> None:
        flags = (EVL_NEIGH_PERMANENT if args.get("permanent") else 0) | \
                (EVL_NEIGH_MAYROUTE if args.get("mayroute") else 0)
        sock = self.stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        try:
            if args.get("ifname"):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                    args["ifname"].encode())
                except OSError as exc:
                    exc.stage = "bind"    # type: ignore[attr-defined]
                    raise
            self.stack.solicit(sock, (args["host"], 0), flags)
        finally:
            sock.close()

    def _cmd_set_filter(self, args: dict[str, Any]) -> None:
        port = self._open_port(args["ifname"])
        self.stack.set_filter(port, args.get("module"))

    def _cmd_set_vlans(self, args: dict[str, Any]) -> None:
        self.stack.set_vlans(args["spec"])

    def _cmd_get_vlans(self, args: dict[str, Any]) -> str:
        return self.stack.get_vlans()

    # -- capture ----------------------------------------------------------------------------------
    def _capture(self, conn: socket.socket, args: dict[str, Any], fds: list[int]) -> None:
        """Capture a port into the file the client passed (one fd, SCM_RIGHTS). Two replies:
        one when the capture runs, one when it ended (a bound reached, the port disabled, the
        client sent anything or hung up)."""
        if len(fds) != 1:
            raise oserror(errno.EBADF, "capture: pass exactly one open file (SCM_RIGHTS)")
        port = self._open_port(args["ifname"])
        cap = port.start_capture(fds[0], args.get("snaplen", 0), args.get("max_frames", 0),
                                 args.get("max_bytes", 0))
        handle = _Capture(cap, port)
        with self._lock:
            self._captures.add(handle)
        try:
            _send(conn, ep.ok_reply({"started": True, "ifname": port.name}))
            while not cap.wait(0.2):
                if self._closed or not port.enabled:
                    break
                ready, _, _ = select.select([conn], [], [], 0)
                if ready:             # the client shut its side (stop) or went away
                    break
            frames, nbytes, drops, rx, tx, err, _ = handle.stop()
        finally:
            with self._lock:
                self._captures.discard(handle)
        _send(conn, ep.ok_reply({"frames": frames, "bytes": nbytes, "drops": drops,
                                 "rx_frames": rx, "tx_frames": tx, "errno": err}))

    def _stop_captures_of(self, port: Any) -> None:
        with self._lock:
            caps = [c for c in self._captures if c.port is port]
        for c in caps:
            c.stop()


class _Capture:
    """A running capture and the port it captures."""

    def __init__(self, capture: Any, port: Any) -> None:
        self.capture = capture        # what Port.start_capture returned
        self.port = port

    def stop(self) -> tuple[int, int, int, int, int, int, bool]:
        return tuple(self.capture.stop())


def _alive(path: str) -> bool:
    """Whether a server answers on *path*."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _recv(conn: socket.socket) -> tuple[bytes, list[int], bool]:
    """One message: (data, fds passed with it, truncated?)."""
    fds = array.array("i")
    data, anc, flags, _ = conn.recvmsg(ep.MAX_REQUEST + 1, socket.CMSG_SPACE(4 * fds.itemsize))
    got: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    got.extend(fds)
    truncated = bool(flags & socket.MSG_TRUNC) or len(data) > ep.MAX_REQUEST
    return data, got, truncated


def _refuse(conn: socket.socket, reply: bytes) -> None:
    """Send the refusal and end our side: the client reads it, then end of file."""
    _send(conn, reply)
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _send(conn: socket.socket, reply: bytes) -> None:
    try:
        conn.send(reply)              # one message (SOCK_SEQPACKET)
    except OSError:
        pass                          # the client went away: nothing to tell it

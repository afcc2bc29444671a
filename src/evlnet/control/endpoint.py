"""What the control server and its clients share: where endpoints live, the wire format, the
limits and the request schema.

Endpoints are ``SOCK_SEQPACKET`` Unix sockets named ``<stack>.sock`` in an owner-only directory
(mode 0700, owned by the user, not a symlink):

* ``$EVLNET_RUNTIME_DIR`` when set (tests, several independent setups);
* ``/run/evlnet`` for root;
* ``$XDG_RUNTIME_DIR/evlnet`` for other users when set, else ``/tmp/evlnet-<uid>``.

One request or reply is one message: a JSON object encoded in UTF-8, at most
``MAX_REQUEST`` bytes for a request. A request is ``{"cmd": NAME, "args": {...}}``; a reply
``{"ok": true, "result": ...}`` or ``{"ok": false, "errno": N, "error": "message"}``. Nothing
is evaluated or unpickled: a request is checked against ``COMMANDS`` (names, types, ranges)
before anything acts on it.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any

from ..errors import oserror

#: Largest request accepted, in bytes (larger ones get an EMSGSIZE reply).
MAX_REQUEST = 8192
#: Largest reply a client accepts.
MAX_REPLY = 1 << 20
#: Concurrent connections a server serves; more get an EBUSY reply.
MAX_CONNECTIONS = 16
#: A connection idle this long (seconds) is closed by the server.
IDLE_TIMEOUT = 60.0
#: Stack names usable in a socket name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".sock"

_INT_MAX = (1 << 63) - 1
#: One argument: (accepted types, required, bound) — bound is a max length for strings and the
#: max value for ints (ints are >= 0).
_Arg = tuple[tuple[type, ...], bool, int]
_IFNAME: _Arg = ((str,), True, 15)

#: Every command, with its arguments. ``None`` is accepted where ``type(None)`` is listed.
COMMANDS: dict[str, dict[str, _Arg]] = {
    "hello": {},
    "enable": {"ifname": _IFNAME, "poolsz": ((int,), False, _INT_MAX),
               "bufsz": ((int,), False, _INT_MAX)},
    "disable": {"ifname": _IFNAME},
    "query": {"ifname": _IFNAME},
    "solicit": {"host": ((str,), True, 255), "ifname": ((str, type(None)), False, 15),
                "permanent": ((bool,), False, 1), "mayroute": ((bool,), False, 1)},
    "set_filter": {"ifname": _IFNAME, "module": ((str, type(None)), False, 4096)},
    "set_vlans": {"spec": ((str,), True, 1024)},
    "get_vlans": {},
    "capture": {"ifname": _IFNAME, "max_frames": ((int,), False, _INT_MAX),
                "max_bytes": ((int,), False, _INT_MAX), "snaplen": ((int,), False, 262144)},
}


def validate(message: bytes) -> tuple[str, dict[str, Any]]:
    """Parse and check one request; ``(command, arguments)`` or OSError (EMSGSIZE, EINVAL,
    EOPNOTSUPP for an unknown command)."""
    if len(message) > MAX_REQUEST:
        raise oserror(errno.EMSGSIZE, f"request larger than {MAX_REQUEST} bytes")
    try:
        req = json.loads(message.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise oserror(errno.EINVAL, "request is not a JSON object") from None
    if not isinstance(req, dict):
        raise oserror(errno.EINVAL, "request is not a JSON object")
    if set(req) - {"cmd", "args"}:
        raise oserror(errno.EINVAL, f"unknown request fields {sorted(set(req) - {'cmd', 'args'})}")
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        raise oserror(errno.EINVAL, "request has no command ('cmd' string)")
    schema = COMMANDS.get(cmd)
    if schema is None:
        raise oserror(errno.EOPNOTSUPP, f"unknown command {cmd[:64]!r}")
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise oserror(errno.EINVAL, "'args' must be an object")
    for name in args:
        if name not in schema:
            raise oserror(errno.EINVAL, f"{cmd}: unknown argument {str(name)[:64]!r}")
    for name, (types, required, bound) in schema.items():
        if name not in args:
            if required:
                raise oserror(errno.EINVAL, f"{cmd}: argument {name!r} missing")
            continue
        value = args[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise oserror(errno.EINVAL, f"{cmd}: argument {name!r} must be {want}")
        if isinstance(value, str) and (len(value) > bound or "\0" in value):
            raise oserror(errno.EINVAL, f"{cmd}: argument {name!r} too long or has NUL")
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= bound:
            raise oserror(errno.EINVAL, f"{cmd}: argument {name!r} out of range 0-{bound}")
    return cmd, args


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(obj: dict[str, Any]) -> bytes:
    """One message."""
    return json.dumps(obj, separators=(",", ":")).encode()


def error_reply(err: int, message: str, stage: str | None = None) -> bytes:
    """An error reply; *stage* names the step that failed when a client words it differently
    (``open``: the port is not enabled; ``bind``: SO_BINDTODEVICE refused)."""
    reply: dict[str, Any] = {"ok": False, "errno": int(err), "error": str(message)}
    if stage:
        reply["stage"] = stage
    return encode(reply)


def ok_reply(result: Any = None) -> bytes:
    return encode({"ok": True, "result": result})


# -- where endpoints live ---------------------------------------------------------------------

def runtime_dir() -> str:
    """The directory this user's endpoints live in (see the module doc)."""
    env = os.environ.get("EVLNET_RUNTIME_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/evlnet"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "evlnet")
    return f"/tmp/evlnet-{os.geteuid()}"


def check_private_dir(path: str) -> None:
    """EPERM unless *path* is a real directory owned by us with no access for others."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise oserror(errno.ENOTDIR, f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise oserror(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o077:
        raise oserror(errno.EPERM, f"{path} is open to other users (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}, want 0700)")


def ensure_private_dir(path: str) -> str:
    """Create *path* (mode 0700) if missing, then check it is private."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        pass
    check_private_dir(path)
    return path


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise oserror(errno.EINVAL, f"bad stack name {name!r} (letters, digits, '_.-', "
                                    "at most 64)")
    return name


def socket_path(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or runtime_dir(), check_name(name) + SUFFIX)


def listed_stacks(directory: str | None = None) -> list[str]:
    """Names of the endpoints present in the runtime directory (live or stale), sorted."""
    directory = directory or runtime_dir()
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for n in names:
        if n.endswith(SUFFIX) and NAME_RE.match(n[: -len(SUFFIX)]):
            try:
                if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode):
                    out.append(n[: -len(SUFFIX)])
            except OSError:
                continue
    return sorted(out)

"""A small rtnetlink client: the few requests and notifications the kernel bridge needs.

Why not pyroute2 here: pyroute2 0.9's synchronous ``IPRoute`` is bound to the thread that created
it (its asyncio loop is thread-local; used from another thread it warns and, as measured, loses
notifications), and it reads several notifications per ``recv`` into an internal queue, so its
socket cannot be ``poll()``-ed together with a stop eventfd without missing events. The bridge
needs requests from any thread (application threads solicit, the in-band worker sends demoted
datagrams, ``atexit`` removes filters) and a monitor that can be stopped, so it speaks netlink
itself: plain ``AF_NETLINK`` sockets, created in the bridge's network namespace and usable from
any thread afterwards, and a decoder for the handful of attributes it reads. cls_bpf's classic
bytecode attribute (``TCA_BPF_OPS``) is not encodable with pyroute2 either.

Everything is little-endian host order as rtnetlink wants (x86-64/arm64); addresses are ints.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

from ..errors import oserror

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

# message types
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

# flags
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

# multicast groups (legacy bitmask form, linux/rtnetlink.h)
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40

# links
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

# addresses
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4

# routes
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST = 1, 2, 3, 5
RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 6, 7, 8
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

# neighbours
NDA_DST, NDA_LLADDR = 1, 2
NUD_NONE = 0x00
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_VALID_FOR_OOB = NUD_REACHABLE | NUD_PERMANENT | NUD_NOARP
NTF_USE = 0x01

# traffic control
TCA_KIND, TCA_OPTIONS = 1, 2
TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS = 0xFFF2
TC_H_INGRESS_PARENT = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_INGRESS     # 0xfffffff2
TC_H_EGRESS_PARENT = (TC_H_CLSACT & 0xFFFF0000) | 0xFFF3
CLSACT_HANDLE = 0xFFFF0000
TCA_BPF_OPS_LEN, TCA_BPF_OPS, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 4, 5, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
ETH_P_ALL = 0x0003

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_TCMSG = struct.Struct("=BxxxiIII")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")


def ip_to_bytes(ip: int) -> bytes:
    return ip.to_bytes(4, "big")


def bytes_to_ip(raw) -> int:
    return int.from_bytes(bytes(raw[:4]), "big")


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return _NLATTR.pack(n, atype) + payload + b"\0" * (-n & 3)


def nested(atype: int, *attrs: bytes) -> bytes:
    return attr(atype | 0x8000, b"".join(attrs))


def parse_attrs(data, start: int = 0, end: int | None = None) -> dict[int, memoryview]:
    """Attributes of one level: type (flags masked) -> payload view. Last one wins."""
    mv = memoryview(data)
    end = len(mv) if end is None else end
    out: dict[int, memoryview] = {}
    off = start
    while off + 4 <= end:
        alen, atype = _NLATTR.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & 0x3FFF] = mv[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def _cstr(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


# --------------------------------------------------------------------------------------------
# decoded messages
# --------------------------------------------------------------------------------------------

@dataclass
class LinkMsg:
    deleted: bool
    ifindex: int
    flags: int
    ifname: str | None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)


@dataclass
class AddrMsg:
    deleted: bool
    ifindex: int
    prefixlen: int
    address: int


@dataclass
class RouteMsg:
    deleted: bool
    family: int
    rtype: int
    table: int
    dst: int
    dst_len: int
    oif: int
    gateway: int
    prefsrc: int


@dataclass
class NeighMsg:
    deleted: bool
    family: int
    ifindex: int
    state: int
    flags: int
    dst: int
    lladdr: bytes | None


def decode(mtype: int, body: memoryview):
    """Decode one rtnetlink message body (after the nlmsghdr); None for what we don't read."""
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        _fam, _type, ifindex, flags, _change = _IFINFOMSG.unpack_from(body, 0)
        a = parse_attrs(body, _IFINFOMSG.size)
        name = _cstr(a[IFLA_IFNAME]) if IFLA_IFNAME in a else None
        return LinkMsg(mtype == RTM_DELLINK, ifindex, flags, name)
    if mtype in (RTM_NEWADDR, RTM_DELADDR):
        family, plen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(body, 0)
        if family != socket.AF_INET:
            return None
        a = parse_attrs(body, _IFADDRMSG.size)
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if raw is None:
            return None
        return AddrMsg(mtype == RTM_DELADDR, ifindex, plen, bytes_to_ip(raw))
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = \
            _RTMSG.unpack_from(body, 0)
        a = parse_attrs(body, _RTMSG.size)
        if RTA_TABLE in a:
            table = _U32.unpack_from(a[RTA_TABLE])[0]
        return RouteMsg(
            mtype == RTM_DELROUTE, family, rtype, table,
            bytes_to_ip(a[RTA_DST]) if RTA_DST in a and family == socket.AF_INET else 0, dst_len,
            _U32.unpack_from(a[RTA_OIF])[0] if RTA_OIF in a else 0,
            bytes_to_ip(a[RTA_GATEWAY]) if RTA_GATEWAY in a and family == socket.AF_INET else 0,
            bytes_to_ip(a[RTA_PREFSRC]) if RTA_PREFSRC in a and family == socket.AF_INET else 0)
    if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
        family, ifindex, state, flags, _type = _NDMSG.unpack_from(body, 0)
        if family != socket.AF_INET:
            return None
        a = parse_attrs(body, _NDMSG.size)
        if NDA_DST not in a:
            return None
        ll = bytes(a[NDA_LLADDR]) if NDA_LLADDR in a else None
        return NeighMsg(mtype == RTM_DELNEIGH, family, ifindex, state, flags,
                        bytes_to_ip(a[NDA_DST]), ll)
    return None


# --------------------------------------------------------------------------------------------
# sockets
# --------------------------------------------------------------------------------------------

class RtnlSocket:
    """A NETLINK_ROUTE socket in the namespace of the thread that creates it.

    ``request()`` may be called from any thread (one request at a time, under a lock). A socket
    made with *groups* is a monitor: read it with ``read_events()`` after ``poll()``.
    """

    def __init__(self, groups: int = 0, rcvbuf: int = 4 << 20) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            except OSError:
                pass
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            except OSError:
                pass
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        self.groups = groups
        self._seq = 0
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- requests -------------------------------------------------------------------------------
    def request(self, mtype: int, flags: int, body: bytes, what: str = "netlink request",
                timeout: float = 5.0) -> list[tuple[int, memoryview]]:
        """Send one request and collect the answer: [(type, body)] (empty for a bare ACK).

        A negative error in the answer is raised as ``OSError(errno)`` with *what* in the text.
        """
        with self._lock:
            self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
            seq = self._seq
            msg = _NLMSGHDR.pack(16 + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body
            self.sock.settimeout(timeout)
            try:
                self.sock.send(msg)
                out: list[tuple[int, memoryview]] = []
                dump = bool(flags & NLM_F_DUMP) and mtype % 4 == 2   # RTM_GET* with DUMP
                while True:
                    data = memoryview(self.sock.recv(1 << 20))
                    off = 0
                    done = False
                    while off + 16 <= len(data):
                        mlen, rtype, rflags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                        if mlen < 16:
                            break
                        body_mv = data[off + 16:off + mlen]
                        off += (mlen + 3) & ~3
                        if rseq != seq:
                            continue                      # a stale answer
                        if rtype == NLMSG_ERROR:
                            err = -struct.unpack_from("=i", body_mv, 0)[0]
                            if err:
                                raise oserror(err, f"{what}: {os.strerror(err)}")
                            done = True                   # ACK
                            break
                        if rtype == NLMSG_DONE:
                            done = True
                            break
                        out.append((rtype, body_mv))
                        if not dump and not rflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                            done = True
                    if done:
                        return out
            except TimeoutError:
                raise oserror(errno.ETIMEDOUT, f"{what}: no answer from the kernel") from None
            finally:
                try:
                    self.sock.settimeout(None)
                except OSError:
                    pass

    # -- notifications --------------------------------------------------------------------------
    def read_events(self) -> list[tuple[int, memoryview]] | None:
        """Drain what is queued without blocking: [(type, body)]; None after an overrun (ENOBUFS:
        notifications were lost, the caller must resynchronise)."""
        out: list[tuple[int, memoryview]] = []
        while True:
            try:
                data = memoryview(self.sock.recv(1 << 20, socket.MSG_DONTWAIT))
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return None
                raise
            off = 0
            while off + 16 <= len(data):
                mlen, rtype, _f, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if mlen < 16:
                    break
                out.append((rtype, data[off + 16:off + mlen]))
                off += (mlen + 3) & ~3


# --------------------------------------------------------------------------------------------
# requests the bridge makes
# --------------------------------------------------------------------------------------------

@dataclass
class RouteAnswer:
    rtype: int
    oif: int
    gateway: int
    prefsrc: int


def route_get(nl: RtnlSocket, dst: int, oif: int = 0) -> RouteAnswer:
    """``ip route get <dst> [oif <oif>]``. Raises the kernel's error (ENETUNREACH, ...)."""
    body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, ip_to_bytes(dst))
    if oif:
        body += attr(RTA_OIF, _U32.pack(oif))
    for mtype, mbody in nl.request(RTM_GETROUTE, 0, body, "route lookup"):
        msg = decode(mtype, mbody)
        if isinstance(msg, RouteMsg):
            return RouteAnswer(msg.rtype, msg.oif, msg.gateway, msg.prefsrc)
    raise oserror(errno.ENETUNREACH, "route lookup: empty answer")


def neigh_dump(nl: RtnlSocket, ifindex: int = 0) -> list[NeighMsg]:
    body = _NDMSG.pack(socket.AF_INET, ifindex, 0, 0, 0)
    out = []
    for mtype, mbody in nl.request(RTM_GETNEIGH, NLM_F_DUMP, body, "neighbour dump"):
        msg = decode(mtype, mbody)
        if isinstance(msg, NeighMsg) and (not ifindex or msg.ifindex == ifindex):
            out.append(msg)
    return out


def neigh_get(nl: RtnlSocket, dst: int, ifindex: int) -> NeighMsg | None:
    for n in neigh_dump(nl, ifindex):
        if n.dst == dst:
            return n
    return None


def neigh_set(nl: RtnlSocket, dst: int, ifindex: int, state: int, lladdr: bytes | None = None,
              flags: int = 0) -> None:
    """``ip neigh replace``: create or update an entry (``flags=NTF_USE``: start resolving it)."""
    body = _NDMSG.pack(socket.AF_INET, ifindex, state, flags, 0) + attr(NDA_DST, ip_to_bytes(dst))
    if lladdr is not None:
        body += attr(NDA_LLADDR, lladdr)
    nl.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK, body, "neighbour update")


def neigh_del(nl: RtnlSocket, dst: int, ifindex: int) -> None:
    body = _NDMSG.pack(socket.AF_INET, ifindex, 0, 0, 0) + attr(NDA_DST, ip_to_bytes(dst))
    try:
        nl.request(RTM_DELNEIGH, NLM_F_ACK, body, "neighbour delete")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def addr_dump(nl: RtnlSocket, ifindex: int) -> list[tuple[int, int]]:
    """IPv4 (address, prefixlen) of *ifindex*, in the kernel's order (primary first)."""
    body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, ifindex)
    out = []
    for mtype, mbody in nl.request(RTM_GETADDR, NLM_F_DUMP, body, "address dump"):
        msg = decode(mtype, mbody)
        if isinstance(msg, AddrMsg) and msg.ifindex == ifindex:
            out.append((msg.address, msg.prefixlen))
    return out


def link_get(nl: RtnlSocket, ifindex: int) -> LinkMsg | None:
    """The link *ifindex*, or None when it does not exist."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
    try:
        for mtype, mbody in nl.request(RTM_GETLINK, 0, body, "link query"):
            msg = decode(mtype, mbody)
            if isinstance(msg, LinkMsg):
                return msg
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return None


def link_dump(nl: RtnlSocket) -> list[LinkMsg]:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return [m for t, b in nl.request(RTM_GETLINK, NLM_F_DUMP, body, "link dump")
            if isinstance(m := decode(t, b), LinkMsg)]


# -- tc: clsact qdisc and cls_bpf filters carrying classic BPF -------------------------------

@dataclass
class TcFilter:
    ifindex: int
    parent: int
    prio: int
    protocol: int
    handle: int
    kind: str
    ops: list[tuple[int, int, int, int]] = field(default_factory=list)
    name: str = ""           #: an eBPF program's TCA_BPF_NAME


def clsact_add(nl: RtnlSocket, ifindex: int) -> bool:
    """Add a clsact qdisc; False when one is already there."""
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + \
        attr(TCA_KIND, b"clsact\0")
    try:
        nl.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, body, "clsact qdisc")
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    return True


def clsact_del(nl: RtnlSocket, ifindex: int) -> None:
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + \
        attr(TCA_KIND, b"clsact\0")
    try:
        nl.request(RTM_DELQDISC, NLM_F_ACK, body, "clsact qdisc removal")
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def has_clsact(nl: RtnlSocket, ifindex: int) -> bool:
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, 0, 0)
    for _mtype, mbody in nl.request(RTM_GETQDISC, NLM_F_DUMP, body, "qdisc dump"):
        _fam, idx, _handle, parent, _info = _TCMSG.unpack_from(mbody, 0)
        a = parse_attrs(mbody, _TCMSG.size)
        if idx == ifindex and parent == TC_H_CLSACT and TCA_KIND in a \
                and _cstr(a[TCA_KIND]) == "clsact":
            return True
    return False


def _ops_bytes(ops) -> bytes:
    return b"".join(struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in ops)


def bpf_filter_set(nl: RtnlSocket, ifindex: int, prio: int, handle: int,
                   ops: list[tuple[int, int, int, int]], parent: int = TC_H_INGRESS_PARENT,
                   replace: bool = True) -> None:
    """Install (or atomically replace) a direct-action cls_bpf filter running classic BPF *ops*."""
    info = ((prio & 0xFFFF) << 16) | socket.htons(ETH_P_ALL)
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info) + \
        attr(TCA_KIND, b"bpf\0") + \
        nested(TCA_OPTIONS,
               attr(TCA_BPF_OPS_LEN, _U16.pack(len(ops))),
               attr(TCA_BPF_OPS, _ops_bytes(ops)),
               attr(TCA_BPF_FLAGS, _U32.pack(TCA_BPF_FLAG_ACT_DIRECT)))
    flags = NLM_F_CREATE | NLM_F_ACK | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    nl.request(RTM_NEWTFILTER, flags, body, "tc bpf filter")


def bpf_fd_filter_set(nl: RtnlSocket, ifindex: int, prio: int, handle: int, prog_fd: int,
                      name: str, parent: int = TC_H_INGRESS_PARENT) -> None:
    """Install (or atomically replace) a direct-action cls_bpf filter running the eBPF program
    *prog_fd*; *name* is what ``tc filter show`` prints (and how stale filters are found)."""
    info = ((prio & 0xFFFF) << 16) | socket.htons(ETH_P_ALL)
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info) + \
        attr(TCA_KIND, b"bpf\0") + \
        nested(TCA_OPTIONS,
               attr(TCA_BPF_FD, _U32.pack(prog_fd)),
               attr(TCA_BPF_NAME, name.encode() + b"\0"),
               attr(TCA_BPF_FLAGS, _U32.pack(TCA_BPF_FLAG_ACT_DIRECT)))
    nl.request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_ACK | NLM_F_REPLACE, body, "tc bpf filter")


def filter_del(nl: RtnlSocket, ifindex: int, prio: int, handle: int,
               parent: int = TC_H_INGRESS_PARENT, kind: str = "bpf") -> None:
    info = ((prio & 0xFFFF) << 16) | socket.htons(ETH_P_ALL)
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info) + \
        attr(TCA_KIND, kind.encode() + b"\0")
    try:
        nl.request(RTM_DELTFILTER, NLM_F_ACK, body, "tc filter removal")
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def filter_dump(nl: RtnlSocket, ifindex: int, parent: int = TC_H_INGRESS_PARENT
                ) -> list[TcFilter]:
    """The filters under *parent* of *ifindex* (for cls_bpf ones, the classic bytecode)."""
    body = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0)
    try:
        answer = nl.request(RTM_GETTFILTER, NLM_F_DUMP, body, "tc filter dump")
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP):
            return []                       # no clsact qdisc (or no such link)
        raise
    out = []
    for mtype, mbody in answer:
        if mtype != RTM_NEWTFILTER:
            continue
        _fam, idx, handle, par, info = _TCMSG.unpack_from(mbody, 0)
        a = parse_attrs(mbody, _TCMSG.size)
        kind = _cstr(a[TCA_KIND]) if TCA_KIND in a else ""
        f = TcFilter(idx, par, info >> 16, socket.ntohs(info & 0xFFFF), handle, kind)
        opts = a.get(TCA_OPTIONS)
        if kind == "bpf" and opts is not None:
            o = parse_attrs(opts)
            raw = o.get(TCA_BPF_OPS)
            if TCA_BPF_NAME in o:
                f.name = _cstr(o[TCA_BPF_NAME])
            if raw is not None:
                f.ops = [struct.unpack_from("=HBBI", raw, i) for i in range(0, len(raw) - 7, 8)]
        if handle:                           # the per-prio chain head has handle 0
            out.append(f)
    return out

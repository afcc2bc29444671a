"""A real Linux interface (veth, NIC, VLAN device) driven from user space through AF_PACKET.

The data path is in the compiled core (``evlnet._core.AfPacket``, ``core/src/device/afpacket.rs``):
an AF_PACKET socket bound to the interface with a TPACKET_V2 RX ring (the kernel hands each frame
over at once, stamped; ``PACKET_IGNORE_OUTGOING`` keeps our own transmits out; 802.1Q tags the
kernel moved into ``tp_vlan_tci`` are put back; ``CHECKSUM_PARTIAL`` frames from a local peer get
their UDP checksum cleared), ``send()`` for TX, and a wake-up eventfd — driven by the port's RX and
TX threads without Python. The kernel's software timestamps (CLOCK_REALTIME) are converted to
CLOCK_MONOTONIC.

This module is the control-plane side: the interface's facts (ifindex, MAC, MTU, ARPHRD type,
VLAN id and real device through one RTM_GETLINK), its link state (two ioctls, following renames),
the classic BPF socket filter the diversion installs, and the network namespace the ring's
socket must be created in.

Why ``oob_capable = False``: every frame goes through the kernel's in-band network stack — the
driver's NAPI softirq, ``netif_receive_skb``, the packet tap, the qdisc and ``dev_queue_xmit`` —
which can be delayed by any in-band activity. EVL only marks a device IFF_OOB_CAPABLE when its
driver moves frames straight from/to out-of-band context; this one never can.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._netns import inside
from ..datapath import _core
from ..errors import oserror
from .base import ARPHRD_ETHER, Device

__all__ = ["AfPacketDevice", "linux_interface_exists", "ARPHRD_LOOPBACK"]

log = logging.getLogger(__name__)

ETH_P_8021Q = 0x8100
ARPHRD_LOOPBACK = 772
SIOCGIFNAME = 0x8910
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFNAMSIZ = 16

# rtnetlink (linux/rtnetlink.h, linux/if_link.h)
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_VLAN_ID = 1
IFLA_VLAN_PROTOCOL = 5
NLA_TYPE_MASK = 0x3FFF


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _check_ifname(ifname: object) -> str:
    if not isinstance(ifname, str) or not 0 < len(ifname.encode()) < IFNAMSIZ or \
            "/" in ifname or "\0" in ifname or ifname.strip() != ifname:
        raise oserror(errno.EINVAL, f"invalid interface name {ifname!r}")
    return ifname


def linux_interface_exists(ifname: str) -> bool:
    """Whether *ifname* exists in the calling thread's network namespace."""
    try:
        _check_ifname(ifname)
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _ifreq(name: str, tail: bytes = b"") -> bytearray:
    req = bytearray(40)  # sizeof(struct ifreq)
    raw = name.encode()
    req[0:len(raw)] = raw
    req[16:16 + len(tail)] = tail
    return req


def _ioctl(fd: int, request: int, req: bytearray) -> bytearray:
    fcntl.ioctl(fd, request, req, True)
    return req


def _parse_attrs(data: bytes | memoryview, start: int, end: int) -> dict[int, memoryview]:
    attrs: dict[int, memoryview] = {}
    mv = memoryview(data)
    off = start
    while off + 4 <= end:
        alen, atype = struct.unpack_from("<HH", mv, off)
        if alen < 4 or off + alen > end:
            break
        attrs[atype & NLA_TYPE_MASK] = mv[off + 4:off + alen]
        off += (alen + 3) & ~3
    return attrs


def parse_link_message(msg: bytes) -> dict:
    """Decode the parts of an RTM_NEWLINK message this driver needs.

    Returns ``{"ifname", "kind", "link", "link_netnsid", "vlan_id", "vlan_protocol"}`` (missing
    ones None). *msg* starts with the nlmsghdr.
    """
    mlen, mtype = struct.unpack_from("<IH", msg, 0)
    if mtype == NLMSG_ERROR:
        code = -struct.unpack_from("<i", msg, 16)[0]
        raise oserror(code or errno.EIO, "RTM_GETLINK")
    if mtype != RTM_NEWLINK:
        raise oserror(errno.EPROTO, f"unexpected netlink message type {mtype}")
    attrs = _parse_attrs(msg, 16 + 16, min(mlen, len(msg)))  # nlmsghdr + ifinfomsg
    out: dict = dict(ifname=None, kind=None, link=None, link_netnsid=None, vlan_id=None,
                     vlan_protocol=None)
    if IFLA_IFNAME in attrs:
        out["ifname"] = bytes(attrs[IFLA_IFNAME]).split(b"\0", 1)[0].decode()
    if IFLA_LINK in attrs:
        out["link"] = struct.unpack_from("<I", attrs[IFLA_LINK])[0]
    if IFLA_LINK_NETNSID in attrs:
        out["link_netnsid"] = struct.unpack_from("<i", attrs[IFLA_LINK_NETNSID])[0]
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        inner = _parse_attrs(info, 0, len(info))
        if IFLA_INFO_KIND in inner:
            out["kind"] = bytes(inner[IFLA_INFO_KIND]).split(b"\0", 1)[0].decode()
        data = inner.get(IFLA_INFO_DATA)
        if data is not None and out["kind"] == "vlan":
            vattrs = _parse_attrs(data, 0, len(data))
            if IFLA_VLAN_ID in vattrs:
                out["vlan_id"] = struct.unpack_from("<H", vattrs[IFLA_VLAN_ID])[0]
            if IFLA_VLAN_PROTOCOL in vattrs:
                out["vlan_protocol"] = struct.unpack_from("!H", vattrs[IFLA_VLAN_PROTOCOL])[0]
    return out


def _query_link(ifindex: int) -> dict:
    """RTM_GETLINK for *ifindex* in the calling thread's namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as nl:
        nl.settimeout(2.0)
        nl.bind((0, 0))
        req = struct.pack("<IHHII", 32, RTM_GETLINK, NLM_F_REQUEST, 1, 0) + \
            struct.pack("<BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0)
        nl.send(req)
        return parse_link_message(nl.recv(65536))


# ---------------------------------------------------------------------------------------------
# the device
# ---------------------------------------------------------------------------------------------

class AfPacketDevice(Device):
    """A Linux interface whose frames the core moves through an AF_PACKET TPACKET_V2 ring.

    Construct it with the calling thread in the interface's network namespace; afterwards it may
    be used from any thread. ``real_ifname``/``real_ifindex`` name the parent of a VLAN device
    (``real_ifname`` is None if the parent lives in another namespace); ``real_device`` stays None
    unless the caller passes the parent's Device.
    """

    oob_capable = False   # in-band kernel data path, see the module docstring

    def __init__(self, ifname: str, rx_frames: int = 2048, *,
                 real_device: Device | None = None) -> None:
        super().__init__()
        _check_ifname(ifname)
        if rx_frames < 1:
            raise oserror(errno.EINVAL, "rx_frames must be >= 1")
        self.name = ifname
        self.rx_frames = rx_frames
        self.real_device = real_device
        self.real_ifname: str | None = None
        self.real_ifindex = 0
        self.vlan_id = 0
        self.vlan_protocol = 0
        self.link_kind: str | None = None
        self._ctl: socket.socket | None = None
        self._ns_fd = -1
        self._core: _core.AfPacket | None = None
        self._filter: list[tuple[int, int, int, int]] | None = None
        self._ebpf_filter: Any = None     #: a _core.KernelProgram attached instead of _filter
        self._link_state: bool | None = True
        try:
            self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._read_link_facts(ifname)
            self._ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._query_vlan()
            except OSError as exc:   # informational only
                log.debug("%s: RTM_GETLINK failed: %s", ifname, exc)
            self._open_core()        # EPERM without CAP_NET_RAW, at once
        except BaseException:
            self.close()
            raise

    # --- facts ------------------------------------------------------------------------------

    def _read_link_facts(self, ifname: str) -> None:
        assert self._ctl is not None
        fd = self._ctl.fileno()
        try:
            req = _ioctl(fd, SIOCGIFINDEX, _ifreq(ifname))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise oserror(errno.EINVAL,
                              f"no interface {ifname!r} in this network namespace") from None
            raise
        self.ifindex = struct.unpack_from("<i", req, 16)[0]
        req = _ioctl(fd, SIOCGIFHWADDR, _ifreq(ifname))
        self.hatype = struct.unpack_from("<H", req, 16)[0]
        self.mac = bytes(req[18:24])
        if self.hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
            raise oserror(errno.EINVAL, f"{ifname} is not an Ethernet interface "
                                        f"(ARPHRD {self.hatype})")
        req = _ioctl(fd, SIOCGIFMTU, _ifreq(ifname))
        self.mtu = struct.unpack_from("<i", req, 16)[0]

    def _query_vlan(self) -> None:
        info = _query_link(self.ifindex)
        self.link_kind = info["kind"]
        if info["kind"] != "vlan":
            return
        self.vlan_id = info["vlan_id"] or 0
        self.vlan_protocol = info["vlan_protocol"] or ETH_P_8021Q
        self.real_ifindex = info["link"] or 0
        if self.real_ifindex and info["link_netnsid"] is None:
            try:
                self.real_ifname = self._name_of(self.real_ifindex)
            except OSError:
                self.real_ifname = None

    def _name_of(self, ifindex: int) -> str:
        assert self._ctl is not None
        req = _ioctl(self._ctl.fileno(), SIOCGIFNAME, _ifreq("", struct.pack("<i", ifindex)))
        return bytes(req[:IFNAMSIZ]).split(b"\0", 1)[0].decode()

    @contextmanager
    def _in_own_netns(self) -> Iterator[None]:
        """Run the block with this thread in the device's namespace (no-op when already there)."""
        with inside(self._ns_fd):
            yield

    # --- the core device ----------------------------------------------------------------------

    def _open_core(self) -> _core.AfPacket:
        with self._in_own_netns():
            try:
                dev = _core.AfPacket(self.name, self.rx_frames)
            except PermissionError:
                raise oserror(errno.EPERM, "AF_PACKET sockets need CAP_NET_RAW: run as root or "
                                           "grant the capability (setcap cap_net_raw+ep)") from None
        dev.set_vlan_id(self.vlan_id)
        if self._ebpf_filter is not None:
            _core.attach_socket_filter(dev, self._ebpf_filter)
        elif self._filter is not None:
            dev.set_filter(self._filter)
        self._core = dev
        return dev

    @property
    def core_device(self) -> _core.AfPacket:  # type: ignore[override]
        """The core device the port's threads drive (re-opened after a ``release_core()``)."""
        if self._ctl is None:
            raise oserror(errno.EBADF, f"{self.name}: device closed")
        return self._core if self._core is not None else self._open_core()

    def release_core(self) -> None:
        """The port is gone: close the ring and its socket (a new port opens a fresh one)."""
        self._core = None

    def counters(self) -> dict[str, int]:
        return dict(self._core.counters()) if self._core is not None else {}

    def read_kernel_stats(self) -> tuple[int, int, int]:
        """Read (and thereby reset) the kernel's PACKET_STATISTICS: ``(tp_packets, tp_drops,
        tp_freeze_q_cnt)`` of this interval; the drops are added to the device's counters."""
        return self._core.read_kernel_stats() if self._core is not None else (0, 0, 0)

    # --- socket filter ---------------------------------------------------------------------

    def set_socket_filter(self, insns: list[tuple[int, int, int, int]]) -> None:
        """Attach a classic BPF program (``(code, jt, jf, k)`` tuples, as ``tcpdump -dd``) to the
        ring's socket; kept for the next ring. The kernel's verdict is the number of bytes to
        keep: 0 drops the frame."""
        prog = []
        for ins in insns:
            code, jt, jf, k = ins
            if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF
                    and -0x80000000 <= k <= 0xFFFFFFFF):
                raise oserror(errno.EINVAL, f"bad BPF instruction {ins!r}")
            prog.append((code, jt, jf, k & 0xFFFFFFFF))
        if not 0 < len(prog) <= 4096:
            raise oserror(errno.EINVAL, "a BPF program has 1..4096 instructions")
        if self._core is not None:
            self._core.set_filter(prog)
        self._filter = prog
        self._ebpf_filter = None

    def set_socket_ebpf_filter(self, program: Any) -> None:
        """Attach an eBPF socket filter (a ``_core.KernelProgram``, kept for the next ring)."""
        if self._core is not None:
            _core.attach_socket_filter(self._core, program)
        self._ebpf_filter = program

    def clear_socket_filter(self) -> None:
        """Remove the socket filter (every frame is received again)."""
        self._filter = None
        self._ebpf_filter = None
        if self._core is not None:
            self._core.clear_filter()

    # --- TX from Python ------------------------------------------------------------------------

    def transmit(self, frame: bytes | bytearray | memoryview) -> None:
        """Put one frame on the wire from Python (tests, tools); the oob path never calls this."""
        self.core_device.transmit(bytes(frame))

    # --- link state -----------------------------------------------------------------------

    def is_up(self) -> bool:
        ctl = self._ctl
        if ctl is None:
            return False
        try:
            name = self._name_of(self.ifindex)
            flags = struct.unpack_from("<H", _ioctl(ctl.fileno(), SIOCGIFFLAGS, _ifreq(name)),
                                       16)[0]
        except OSError:
            self._note_link(None)
            return False
        self.name = name
        up = bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
        self._note_link(up)
        return up

    def _note_link(self, state: bool | None) -> None:
        if self._core is not None:
            if state is None:
                self._core.set_link_gone()
            else:
                self._core.set_link_up(state)
        if state is self._link_state:
            return
        self._link_state = state
        cb = self.on_link_change
        if cb is not None:
            try:
                cb(state)
            except Exception:
                log.exception("%s: on_link_change callback failed", self.name)

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the ring, the control socket and the namespace fd; idempotent."""
        self._core = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1

    def __enter__(self) -> AfPacketDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        vlan = f" vlan {self.vlan_id} on {self.real_ifname}" if self.vlan_id else ""
        return (f"<AfPacketDevice {self.name} ifindex {self.ifindex} "
                f"{':'.join(f'{b:02x}' for b in self.mac)} mtu {self.mtu}{vlan}>")

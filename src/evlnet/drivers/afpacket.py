"""A real Linux interface (veth, NIC, VLAN device) driven from user space through AF_PACKET.

Design
======

RX — one ``AF_PACKET``/``SOCK_RAW`` socket bound to the interface with an mmap RX ring, in one of
  two layouts chosen by ``ring=`` (the kernel copies every frame of the interface — ETH_P_ALL,
  minus what the optional classic-BPF socket filter rejects — into the ring, stamped):

  ``ring="v2"`` (default) — **TPACKET_V2**: fixed frame slots, each with its own ``tp_status``.
    The kernel hands a slot to user space (``TP_STATUS_USER``) and wakes ``poll()`` as soon as
    the frame is copied; ``receive()`` copies it out and gives the slot back at once. Lowest
    latency: no timer between the frame and the reader.
  ``ring="v3"`` — **TPACKET_V3**: fixed *blocks* packed with variable-size frames; a block goes to
    user space (one status word, one wake-up) only when it is full or when ``tp_retire_blk_tov``
    (``retire_tov_ms``, >= 1 ms) expires, so a lone frame waits ~1 ms in its half-filled block.
    ``receive()`` walks the ready blocks and gives a block back when its last frame is copied (a
    block may stay half consumed across calls when *limit* stops the walk). Slightly cheaper per
    frame under load; a ring of N blocks holds only N frames under sparse traffic.

  Both modes share one walk (``_drain``): the ring position is the index of the next status word
  in a ``memoryview.cast("I")`` of the mmap (V2: ``tp_status`` of the next slot; V3:
  ``block_status`` of the current block); only where the next header is and how a slot is given
  back differ, the copy into a pool buffer, VLAN tag reinsertion, drop counting and timestamp
  conversion are common. A slot still owned by the kernel is never read (the kernel writes the
  frame, then ``smp_wmb()``, then the status; x86 keeps our loads in order).

  Measured on this VM (veth between two namespaces, kernel 6.18, HZ=250, 2 vCPUs, Python 3.11,
  one run with load average 3-4 from concurrent jobs, so tails are noisy), 18-byte UDP datagrams
  one at a time (2000-3000 per row) from a kernel socket in the peer namespace, us, p50 / p99::

                                                   v2                     v3
      sendto() -> device_time                      3.0 / 5.3              9.8 / 110
      sendto() -> receive() returns:
        same thread, receive(timeout=1)            6.7 / 32               998 / 2120
        receiver thread asleep in receive(0.2)     31 / 716               702 / 1270
        sender in another process, receiver:
          asleep in receive(0.2)                   48 / 305               574 / 1200
          busy-polling receive(0)                  18 / 52                633 / 4920
      UDP echo RTT, kernel socket <-> echo loop on the device (receive, swap, transmit):
        kernel <-> kernel (Python sockets)         31-50 / 150-2240 (two runs)
        echo asleep in receive(0.2)                53 / 210               725 / 4640
        echo busy-polling receive(0)               33 / 3030 (*)          728 / 4290
      receive() in bursts of 1000 (batches of 64)  1.50 us/frame (64 B)   1.31
                                                   1.82 (1442 B)          1.59
      empty busy poll: poll_ready() / receive(b, 64, 0)   91 / 153 ns     98 / 144 ns

  (*) a spinning Python thread shares 2 vCPUs with the peer and the softirqs: its tail is the
  scheduler's. A quieter run gave bursts of 1.06 / 1.98 (v2) and 0.95 / 1.63 (v3) us/frame.
  Hence the default: V2 removes the ~1 ms retire-timer wait and costs ~10-15% per frame under
  load; choose ``ring="v3"`` for throughput-bound capture where latency does not matter.

  Sizing: slots of ``2**k`` bytes holding the ring header + ``min(mtu + 22, pool buffer size)``
  (V2: ``2**k >= 80 + snap``, 2 KiB at MTU 1500 with 2 KiB buffers; V3: ``2**k >= 144 + snap``),
  ``block_frames`` (8) slots per block (16 KiB) and ``ceil(rx_frames / block_frames)`` blocks:
  ``rx_frames=2048`` pins 4 MiB in both modes. V2 holds ``rx_frames`` frames whatever the
  traffic; V3 holds ``block_nr`` (256) frames under sparse traffic (one per retired block) and ~100
  minimum-size frames per block under load. Frames larger than a pool buffer, or truncated by
  the kernel, are dropped and counted in ``stats.rx_dropped``.

  Busy polling and concurrency — ``poll_ready()`` reads the status word at the current position
  (no syscall, no lock). ``receive(batch, limit, timeout=0)`` (the default timeout) never blocks:
  with nothing ready it returns 0 after that one read; with a frame ready it *tries* the ring lock
  and returns 0 at once if another thread is walking the ring. ``receive()`` with a timeout (the
  port's RX thread) walks the ring under the same lock but releases it around its ``poll()``
  sleep, so application threads can busy-poll (run to completion, like ``SO_BUSY_POLL``) while the
  RX thread sleeps; whoever takes the lock first gets the frames, each exactly once. A sleeper
  woken by a frame that a poller took goes back to sleep (not counted as a spurious wake-up). Only
  one thread at a time sleeps in ``poll()`` (a second lock, which ``detach()`` also takes so that
  no fd is closed under a sleeper). ``wake()``/``detach()`` write an eventfd in the poll set. No
  syscall is made while frames are ready.

  ``PACKET_IGNORE_OUTGOING`` keeps the frames we (and the kernel) transmit on the interface out of
  the ring. 802.1Q: on a VLAN device frames arrive untagged (the kernel strips the tag); on any
  other device the kernel moves a tag into ``tp_vlan_tci`` and ``receive()`` puts it back into the
  frame, as libpcap does, so the stack sees the frame as it was on the wire. Frames a local stack
  sent with ``CHECKSUM_PARTIAL`` (veth/tap peers; ``TP_STATUS_CSUMNOTREADY``) carry only the
  pseudo-header sum in their L4 checksum: see ``_clear_partial_udp_csum``.

  ``device_time``: the kernel stamps each frame (``tp_sec``/``tp_nsec``, CLOCK_REALTIME; the
  software RX timestamp, or the time of the copy into the ring when net timestamping is off). It is
  converted to CLOCK_MONOTONIC with an offset ``REALTIME - MONOTONIC`` sampled (best of 5
  bracketing reads, ~100 ns error) at ``attach()`` and re-sampled by ``receive()`` once a second,
  so clock steps are followed within 1 s and NTP slewing (<= 500 ppm) adds < 0.5 ms error. The
  result is clamped to the monotonic time at which ``receive()`` collected the frame, so it never
  lies in the future, and to the previous frame's ``device_time``, so it never goes backwards
  (stamps taken on different CPUs, or an offset re-sample, could otherwise reorder them by a few
  microseconds).

TX — ``transmit()`` is one ``os.write()`` on a second AF_PACKET socket bound to the interface
  (protocol 0: it receives nothing). Measured from Python on this VM (veth, kernel 6.18, 2 vCPUs,
  20k frames x 25 paired rounds, ns per frame, median)::

      frame size    send()   os.write()                            TX ring V2 / V3 + kick (*)
      64 B          2045     1976   faster in 18/25 paired rounds  3200 / 3310
      1400 B        2148     2119   faster in 21/25 paired rounds  3390 / 3560

  (*) earlier measurement, same VM ("kick" = frame + tp_len + TP_STATUS_SEND_REQUEST written into
  the mmap slot, then ``send(b"", MSG_DONTWAIT)``). With ``PACKET_QDISC_BYPASS`` both calls cost
  the same within +-3% (veth has no qdisc: noqueue).

  Both are the same ``packet_sendmsg()``; ``os.write()`` skips ``socket.send``'s timeout
  handling (~50 ns). Most of the ~2 us is the kernel: veth delivers to the peer's RX path
  synchronously (softirq on return from the syscall); ``os.write`` to /dev/null costs 0.35 us.
  ``transmit()`` adds ~0.25 us over a bare ``os.write`` (the TX lock, taken with explicit
  acquire/release: a ``with`` costs twice as much). A TX ring needs one ``send()`` per frame to
  kick the kernel when frames go out one at a time, plus the status/length writes from Python, so
  it loses; it would only pay off with many frames queued per kick.

  ``PACKET_QDISC_BYPASS`` (``qdisc_bypass=True``) brings nothing measurable on veth (noqueue),
  drops the qdisc's back-pressure, and — verified with tcpdump — hides our frames from the taps
  of the *sending* interface (``dev_queue_xmit_nit`` is skipped: tcpdump there sees 0 of 20),
  while the peer, and its taps, still get every frame. So it is off by default.
  ENETDOWN/ENXIO/ENODEV from the kernel (interface down or gone) are raised as ENETDOWN; other
  errors count ``stats.tx_errors`` and are re-raised with their errno. The socket is blocking: a
  send can only wait when the socket's send buffer is full of frames still queued in the qdisc.

Link state — ``is_up()`` is two ioctls on a control socket (``SIOCGIFNAME`` by ifindex, so a
  renamed interface is followed and a removed one noticed, then ``SIOCGIFFLAGS``): up means
  ``IFF_UP`` and ``IFF_RUNNING`` (the latter follows carrier/operstate; linkwatch may report a NIC's
  carrier loss up to ~1 s late). Both ioctls run under RCU, never under the RTNL lock. When the
  interface goes down or disappears the kernel sets ENETDOWN on the RX socket; ``receive()`` sees
  POLLERR, clears it (``SO_ERROR``, so the next poll does not spin), reports the new state through
  ``on_link_change`` (False, or None when the interface is gone) and returns what it has (0).
  A link coming back, or a carrier change, raises no socket event: ``on_link_change`` reports
  those from the next ``is_up()`` call (the stack's link monitor polls it or watches netlink).

Facts — ifindex, MAC, ARPHRD type and MTU come from ioctls at construction (MTU and MAC again at
  ``attach()``); VLAN devices are recognised with one RTM_GETLINK (kind ``vlan``, IFLA_VLAN_ID,
  IFLA_LINK = the real device), which sets ``vlan_id``, ``real_ifindex`` and ``real_ifname``.

Namespaces — all sockets are created in the network namespace of the thread that constructs the
  device and keep working from any thread afterwards. The device keeps an fd of that namespace so
  that ``attach()`` after ``detach()`` can re-create its sockets there. (``/sys/class/net`` and
  ``/proc/net`` show the namespace of the mount / of the main thread, so nothing here reads them.)

Why ``oob_capable = False``: every frame goes through the kernel's in-band network stack — the
  driver's NAPI softirq, ``netif_receive_skb``, the packet tap, the qdisc and ``dev_queue_xmit`` —
  which can be delayed by any in-band activity. EVL only marks a device IFF_OOB_CAPABLE when its
  driver moves frames straight from/to out-of-band context; this one never can.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..core.buffers import BufferPool, PacketBuffer
from ..errors import oserror
from .base import ARPHRD_ETHER, Device
from .._netns import inside

__all__ = ["AfPacketDevice", "linux_interface_exists", "ARPHRD_LOOPBACK"]

log = logging.getLogger(__name__)

# --- linux/if_packet.h, linux/if_ether.h, linux/sockios.h (offsets checked with gcc, x86_64) ---
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TPACKET_ALIGNMENT = 16
TPACKET2_HDRLEN = 52           # TPACKET_ALIGN(sizeof(tpacket2_hdr)=32) + sizeof(sockaddr_ll)=20
TPACKET3_HDRLEN = 68           # TPACKET_ALIGN(sizeof(tpacket3_hdr)=48) + sizeof(sockaddr_ll)=20
BLK_HDR_LEN = 48               # sizeof(struct tpacket_block_desc), priv area 0
ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
ETH_HLEN = 14
ARPHRD_LOOPBACK = 772

SIOCGIFNAME = 0x8910
SIOCGIFFLAGS = 0x8913
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFNAMSIZ = 16
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

# struct tpacket_block_desc: u32 version, u32 offset_to_priv, tpacket_hdr_v1 hdr @8
#   hdr: u32 block_status @8, u32 num_pkts @12, u32 offset_to_first_pkt @16, u32 blk_len @20,
#        u64 seq_num @24, ts_first_pkt @32, ts_last_pkt @40
BLK_STATUS_OFF = 8
BLK_NUM_OFF = 12
# struct tpacket3_hdr: u32 tp_next_offset @0, tp_sec @4, tp_nsec @8, tp_snaplen @12, tp_len @16,
#   tp_status @20, u16 tp_mac @24, u16 tp_net @26, hv1 {u32 tp_rxhash @28, u32 tp_vlan_tci @32,
#   u16 tp_vlan_tpid @36, u16 pad}, u8 tp_padding[8]   (sizeof 48)
_T3_HDR = struct.Struct("<IIIIIIH")
_T3_VLAN = struct.Struct("<IH")      # tp_vlan_tci, tp_vlan_tpid at offset 32
T3_VLAN_OFF = 32
# struct tpacket2_hdr: u32 tp_status @0, tp_len @4, tp_snaplen @8, u16 tp_mac @12, u16 tp_net @14,
#   u32 tp_sec @16, u32 tp_nsec @20, u16 tp_vlan_tci @24, u16 tp_vlan_tpid @26, u8 tp_padding[4] @28
#   (sizeof 32); frame slot k of the ring starts at k * frame_size (block_size % frame_size == 0)
_T2_HDR = struct.Struct("<IIIHHII")
_T2_VLAN = struct.Struct("<HH")      # tp_vlan_tci, tp_vlan_tpid at offset 24
T2_VLAN_OFF = 24
_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")
_VLAN_TAG = struct.Struct("!HH")

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

_mono = time.monotonic_ns
_write = os.write
_clock_gettime_ns = time.clock_gettime_ns
_CLOCK_REALTIME = time.CLOCK_REALTIME
_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC


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


def _clear_partial_udp_csum(bv: memoryview, size: int) -> None:
    """A frame the kernel flags TP_STATUS_CSUMNOTREADY (CHECKSUM_PARTIAL: sent by a local stack
    over veth/tap, never on a wire) carries only the pseudo-header sum in its UDP checksum. For
    IPv4/UDP, set the field to 0 ("no checksum", RFC 768) so the stack does not drop a datagram
    whose integrity the kernel vouches for. (Added by the kernel-bridge work.)"""
    off = 14
    if size >= 18 and bv[12] == 0x81 and bv[13] == 0x00:     # one 802.1Q tag put back
        off = 18
    if size < off + 28 or bv[off - 2] != 0x08 or bv[off - 1] != 0x00 or bv[off + 9] != 17:
        return
    if (bv[off + 6] & 0x1F) or bv[off + 7]:                  # not the first fragment
        return
    udp = off + (bv[off] & 0x0F) * 4
    if udp + 8 <= size:
        bv[udp + 6] = 0
        bv[udp + 7] = 0


def _tpacket_align(x: int) -> int:
    return (x + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _no_buffer() -> None:
    return None


def _realtime_offset_ns() -> int:
    """REALTIME - MONOTONIC, from the tightest of 5 MONO/REAL/MONO brackets."""
    best_width = None
    best = 0
    for _ in range(5):
        m1 = _clock_gettime_ns(_CLOCK_MONOTONIC)
        r = _clock_gettime_ns(_CLOCK_REALTIME)
        m2 = _clock_gettime_ns(_CLOCK_MONOTONIC)
        if best_width is None or m2 - m1 < best_width:
            best_width = m2 - m1
            best = r - ((m1 + m2) >> 1)
    return best




class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


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
    """A Linux interface driven through AF_PACKET (TPACKET_V2 or V3 RX ring, ``os.write()`` TX).

    ``ring="v2"`` (default): per-frame ring, ~10 us from the wire to ``receive()``; ``ring="v3"``:
    block ring, ~10% cheaper per frame under load but a lone frame waits ``retire_tov_ms``
    (``block_frames`` and ``retire_tov_ms`` only shape V3 blocks; ``block_frames`` also sets the
    V2 block size). ``receive(..., timeout=0)`` and ``poll_ready()`` are cheap, syscall-free busy
    polls that any thread may call while the port's RX thread sleeps in ``receive()``.

    Construct it with the calling thread in the interface's network namespace; afterwards it may
    be used from any thread. ``real_ifname``/``real_ifindex`` name the parent of a VLAN device
    (``real_ifname`` is None if the parent lives in another namespace); ``real_device`` stays None
    unless the caller passes the parent's Device.
    """

    oob_capable = False   # in-band kernel data path, see the module docstring

    def __init__(self, ifname: str, rx_frames: int = 2048, *, ring: str = "v2",
                 block_frames: int = 8, retire_tov_ms: int = 1, qdisc_bypass: bool = False,
                 real_device: Device | None = None) -> None:
        super().__init__()
        _check_ifname(ifname)
        if ring not in ("v2", "v3"):
            raise oserror(errno.EINVAL, f"ring must be 'v2' or 'v3', not {ring!r}")
        if rx_frames < 1 or block_frames < 1 or not 0 < retire_tov_ms < 1000:
            raise oserror(errno.EINVAL, "rx_frames/block_frames must be >= 1, retire_tov_ms 1..999")
        self.name = ifname
        self.ring = ring
        self.rx_frames = rx_frames
        self.block_frames = block_frames
        self.retire_tov_ms = retire_tov_ms
        self.qdisc_bypass = qdisc_bypass
        self.real_device = real_device
        self.real_ifname: str | None = None
        self.real_ifindex = 0
        self.vlan_id = 0
        self.vlan_protocol = 0
        self.link_kind: str | None = None
        self.kernel_packets = 0          # accumulated tp_packets (includes tp_drops)

        self._ctl: socket.socket | None = None
        self._ns_fd = -1
        self._rx_sock: socket.socket | None = None
        self._tx_sock: socket.socket | None = None
        self._mm: mmap.mmap | None = None
        self._mv: memoryview | None = None
        self._mv32: memoryview | None = None   # the ring as u32 words: status words by index
        self._tx_fd = -1
        self._efd = -1
        self._poller: select.poll | None = None
        self._pool: BufferPool | None = None
        self._filter: list[tuple[int, int, int, int]] | None = None
        # _rx_lock: held while walking the ring (never across a sleep); busy pollers only try it.
        # _wait_lock: held by the one receive() that sleeps in poll() (fds must stay open).
        # detach() takes _wait_lock, then _rx_lock, then _tx_lock, to tear down.
        self._rx_lock = threading.Lock()
        self._wait_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._closing = False
        self._link_state: bool | None = True
        self._link_event = False
        self._consumed = 0          # ring walks that took frames: a wake-up was not spurious
        # ring position: the u32 index of the status word to look at next (V2: tp_status of the
        # next frame; V3: block_status of the current block), advanced by _idx_step and wrapped
        # from _idx_end to _idx_first. V3 also keeps the frames left in a half-consumed block.
        self._idx = 0
        self._idx_step = 0
        self._idx_end = 0
        self._idx_first = 0
        self._pkt_left = 0
        self._pkt_off = 0
        self._block_size = 0
        self._block_nr = 0
        self._frame_size = 0
        self._frame_nr = 0
        self._rt_offset = 0
        self._rt_offset_at = 0
        self._last_time = 0

        try:
            self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._read_link_facts(ifname)
            self._ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._query_vlan()
            except OSError as exc:   # informational only
                log.debug("%s: RTM_GETLINK failed: %s", ifname, exc)
            self._rx_sock = self._packet_socket(0)   # EPERM check; bound at attach()
            self._tx_sock = self._open_tx()
            self._tx_fd = self._tx_sock.fileno()
        except BaseException:
            self.close()
            raise

    # --- construction helpers ---------------------------------------------------------------

    def _read_link_facts(self, ifname: str) -> None:
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
        req = _ioctl(self._ctl.fileno(), SIOCGIFNAME, _ifreq("", struct.pack("<i", ifindex)))
        return bytes(req[:IFNAMSIZ]).split(b"\0", 1)[0].decode()

    def _packet_socket(self, proto: int) -> socket.socket:
        try:
            return socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
        except PermissionError:
            raise oserror(errno.EPERM, "AF_PACKET sockets need CAP_NET_RAW: run as root or grant "
                                       "the capability (setcap cap_net_raw+ep)") from None

    def _open_tx(self) -> socket.socket:
        sock = self._packet_socket(0)        # protocol 0: receives nothing
        try:
            if self.qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            sock.bind((self._current_name(), 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def _current_name(self) -> str:
        """The interface's name now (follows renames); ENODEV when it is gone."""
        try:
            name = self._name_of(self.ifindex)
        except OSError as exc:
            raise oserror(errno.ENODEV, f"interface {self.name} (ifindex {self.ifindex}) is gone"
                          ) from exc
        self.name = name
        return name

    @contextmanager
    def _in_own_netns(self) -> Iterator[None]:
        """Run the block with this thread in the device's namespace (no-op when already there)."""
        with inside(self._ns_fd):
            yield

    # --- lifecycle ------------------------------------------------------------------------

    def attach(self, rx_pool: BufferPool) -> None:
        if self._ctl is None:
            raise oserror(errno.EBADF, f"{self.name}: device closed")
        if self._mm is not None:
            raise oserror(errno.EBUSY, f"{self.name}: already attached")
        name = self._current_name()
        fd = self._ctl.fileno()
        self.mtu = struct.unpack_from("<i", _ioctl(fd, SIOCGIFMTU, _ifreq(name)), 16)[0]
        self.mac = bytes(_ioctl(fd, SIOCGIFHWADDR, _ifreq(name))[18:24])
        # ready before the ring is bound: a busy poller may walk it as soon as it exists
        self._pool = rx_pool
        self._rt_offset = _realtime_offset_ns()
        self._rt_offset_at = _mono()
        try:
            with self._in_own_netns():
                if self._rx_sock is None:
                    self._rx_sock = self._packet_socket(0)
                if self._tx_sock is None:
                    self._tx_sock = self._open_tx()
                self._tx_fd = self._tx_sock.fileno()
            # frames longer than a pool buffer would be dropped anyway: no need to ring them whole
            self._setup_ring(name, min(self.mtu + ETH_HLEN + 8, rx_pool.size))
            self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            poller = select.poll()
            poller.register(self._rx_sock.fileno(), select.POLLIN | select.POLLERR)
            poller.register(self._efd, select.POLLIN)
            self._poller = poller
        except BaseException:
            self._teardown()
            self._pool = None
            raise
        self._closing = False
        self._link_state = True

    def _setup_ring(self, name: str, snap: int) -> None:
        sock = self._rx_sock
        v2 = self.ring == "v2"
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2 if v2 else TPACKET_V3)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if self._filter is not None:
            self._attach_filter(sock, self._filter)
        # the kernel puts L3 at TPACKET_ALIGN(hdrlen + 16) (V2: 80, V3: 96), the frame 14 bytes
        # before it; a V2 frame slot must fit that + the longest frame we want (snap), a V3 block
        # must fit the block header + that + snap
        if v2:
            frame = _pow2_at_least(_tpacket_align(TPACKET2_HDRLEN + 16) + snap)
        else:
            frame = _pow2_at_least(_tpacket_align(TPACKET3_HDRLEN + 16) + snap + BLK_HDR_LEN)
        block = max(mmap.PAGESIZE, _pow2_at_least(frame * self.block_frames))
        per_block = block // frame
        block_nr = max(2, -(-self.rx_frames // per_block))
        if v2:                     # struct tpacket_req
            req = struct.pack("<4I", block, block_nr, frame, per_block * block_nr)
        else:                      # struct tpacket_req3
            req = struct.pack("<7I", block, block_nr, frame, per_block * block_nr,
                              self.retire_tov_ms, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._block_size, self._block_nr, self._frame_size = block, block_nr, frame
        self._frame_nr = per_block * block_nr
        self._mm = mmap.mmap(sock.fileno(), block * block_nr, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._mv = memoryview(self._mm)
        self._mv32 = self._mv.cast("I")
        if v2:                     # tp_status of frame k: word k * frame / 4
            self._idx_first, self._idx_step = 0, frame >> 2
        else:                      # block_status of block k: word (k * block + 8) / 4
            self._idx_first, self._idx_step = BLK_STATUS_OFF >> 2, block >> 2
        self._idx_end = (block * block_nr) >> 2
        self._idx = self._idx_first
        self._pkt_left = self._pkt_off = 0
        sock.bind((name, ETH_P_ALL))   # bind last: the ring and filter are in place first

    def detach(self) -> None:
        """Stop receiving, wake a blocked ``receive()``, unmap the ring and close the sockets.

        Idempotent. The control socket (``is_up()``) and the namespace fd stay until ``close()``
        so that the device can be attached again.
        """
        self._closing = True
        self.wake()
        # a receive() sleeping in poll() holds _wait_lock: woken, it returns; one walking the ring
        # holds _rx_lock; both see _closing (or _mm None) afterwards and return 0
        with self._wait_lock, self._rx_lock, self._tx_lock:
            self._teardown()
        self._pool = None

    def _teardown(self) -> None:
        if self._rx_sock is not None and self._mm is not None:
            try:
                self.read_kernel_stats()
            except OSError:
                pass
        if self._mv32 is not None:
            mv32, self._mv32 = self._mv32, None     # poll_ready() sees None (or a released view)
            mv32.release()
        if self._mv is not None:
            self._mv.release()
            self._mv = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._poller = None
        self._tx_fd = -1
        for attr in ("_rx_sock", "_tx_sock"):
            sock = getattr(self, attr)
            if sock is not None:
                setattr(self, attr, None)
                sock.close()
        with self._wake_lock:
            if self._efd >= 0:
                os.close(self._efd)
                self._efd = -1
        self._pkt_left = 0

    def close(self) -> None:
        """``detach()`` and release the control socket and namespace fd; idempotent."""
        self.detach()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1

    def __enter__(self) -> "AfPacketDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_ctl", None) is not None or getattr(self, "_mm", None) is not None:
                self.close()
        except Exception:
            pass

    # --- RX -------------------------------------------------------------------------------

    def poll_ready(self) -> bool:
        """Whether a frame is ready at the current ring position (no syscall, no lock, ~0.1 us).

        Meant for busy polling: ``if dev.poll_ready(): dev.receive(batch, limit, 0)``. A True may
        be stale by the time ``receive()`` runs (another consumer took the frame) and a frame
        may land right after a False; False when the device is not attached. In V3 mode a frame
        is only "ready" once its block is retired (full, or ``retire_tov_ms`` expired).
        """
        try:
            return self._pkt_left > 0 or self._mv32[self._idx] & TP_STATUS_USER != 0
        except (TypeError, ValueError):     # detached: _mv32 None, or released under our feet
            return False

    def receive(self, batch: list[PacketBuffer], limit: int, timeout: float | None = 0) -> int:
        """Append up to *limit* received frames to *batch*; returns how many.

        ``timeout=0`` (the default) never blocks: a busy poll. When nothing is ready it costs one
        status-word read through the mmap (no syscall, no lock); when another thread is walking
        the ring it returns 0 at once rather than wait for it. ``timeout > 0`` or None (forever)
        waits in ``poll()`` for the first frame, ``wake()`` or a link event, without holding the
        ring lock, so concurrent busy pollers keep consuming meanwhile (and may take the frame
        that woke it: it then goes back to sleep until its deadline). Any number of threads may
        call it concurrently; each frame is delivered exactly once, in ring order per walk.
        """
        if limit <= 0:
            return 0
        try:
            ready = self._pkt_left or self._mv32[self._idx] & TP_STATUS_USER
        except (TypeError, ValueError):                    # detached
            return 0
        if ready:
            lock = self._rx_lock
            if lock.acquire(False):          # else somebody else is walking the ring right now
                try:
                    n = 0 if self._mm is None or self._closing else self._drain(batch, limit)
                finally:
                    lock.release()
                if n:
                    return n
        if timeout is not None and timeout <= 0:
            return 0                                       # busy poll: never wait
        deadline = None if timeout is None else _mono() + int(timeout * 1e9)
        if not self._acquire(self._wait_lock, deadline):
            return 0
        try:
            if self._mm is None or self._closing:
                return 0
            n = self._wait_and_drain(batch, limit, deadline)
        finally:
            self._wait_lock.release()
        if self._link_event:
            # outside the locks: on_link_change may well detach() the device
            self._link_event = False
            self.is_up()
        return n

    def wait_ready(self, timeout: float | None) -> None:
        """Sleep until a frame is ready at the ring position, ``wake()``, a link event or the
        timeout, consuming nothing (the port's RX thread waits here without holding its consumer
        lock, so busy-polling receivers stay free to take frames meanwhile)."""
        if self.poll_ready():
            return
        deadline = None if timeout is None else _mono() + int(timeout * 1e9)
        if not self._acquire(self._wait_lock, deadline):
            return
        try:
            if self._mm is None or self._closing or self.poll_ready():
                return
            ms = None if deadline is None else max(0, -(-(deadline - _mono()) // 1_000_000))
            events = self._poller.poll(ms)
            woken = False
            for fd, ev in events:
                if fd == self._efd:
                    try:
                        os.eventfd_read(self._efd)
                    except BlockingIOError:
                        pass
                    woken = True
                elif ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    self._socket_error()
                    woken = True
            if events and not woken and not self.poll_ready():
                # POLLIN with nothing at our position: resynchronise, and never spin
                with self._rx_lock:
                    resynced = self._mm is not None and self._resync()
                if not resynced:
                    self._pause(deadline)
        finally:
            self._wait_lock.release()
        if self._link_event:
            self._link_event = False
            self.is_up()

    @staticmethod
    def _acquire(lock, deadline: int | None) -> bool:
        if deadline is None:
            return lock.acquire()
        if lock.acquire(False):
            return True
        left = deadline - _mono()
        return left > 0 and lock.acquire(True, left / 1e9)

    def _locked_drain(self, batch: list[PacketBuffer], limit: int, deadline: int | None) -> int:
        """_drain() under _rx_lock (waiting for a busy poller to finish its walk)."""
        lock = self._rx_lock
        if not lock.acquire(False):
            # a poller walks the ring; it releases the lock within one batch. Past the deadline
            # we still wait a little (a poller holds it for microseconds): the frames are there.
            if not self._acquire(lock, deadline) and not lock.acquire(True, 0.01):
                return 0
        try:
            if self._mm is None or self._closing:
                return 0
            return self._drain(batch, limit)
        finally:
            lock.release()

    def _wait_and_drain(self, batch: list[PacketBuffer], limit: int, deadline: int | None) -> int:
        """Called with _wait_lock held (the fds stay open), _rx_lock free."""
        n = self._locked_drain(batch, limit, deadline)
        if n:
            return n
        sock_fd = self._rx_sock.fileno()
        poll = self._poller.poll
        efd = self._efd
        spurious = 0
        while True:
            if deadline is None:
                ms = None
            else:
                left = deadline - _mono()
                if left <= 0:
                    return self._locked_drain(batch, limit, deadline)
                ms = -(-left // 1_000_000)       # round up: never return before the deadline
            consumed = self._consumed
            events = poll(ms)                     # the ring lock is free: pollers go on
            if not events:
                continue                          # re-check the deadline
            stop = False
            for fd, ev in events:
                if fd == efd:
                    try:
                        os.eventfd_read(efd)
                    except BlockingIOError:
                        pass
                    stop = True
                elif fd == sock_fd and ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    self._socket_error()
                    stop = True
            n = self._locked_drain(batch, limit, deadline)
            if n or stop or self._closing:
                return n
            if self._consumed != consumed:
                spurious = 0                      # a busy poller took what woke us: not spurious
                continue
            # POLLIN without a ready frame at our position: resynchronise, and never spin
            spurious += 1
            if spurious > 1:
                with self._rx_lock:
                    resynced = self._mm is not None and self._resync()
                if not resynced:
                    self._pause(deadline)

    def _socket_error(self) -> None:
        """Clear the socket's pending error (else poll() spins on POLLERR); have receive() look at
        the link once it has released its locks."""
        try:
            err = self._rx_sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            err = 0
        log.debug("%s: RX socket error %s", self.name, os.strerror(err) if err else err)
        self._link_event = True

    def _resync(self) -> bool:
        """Jump to the oldest frame (V2) / block (V3) owned by user space, if any (defensive: the
        kernel and we walk the ring in the same order, this should not happen). Under _rx_lock."""
        if self._pkt_left:
            return False
        mm = self._mm
        best = None
        if self.ring == "v2":
            for off in range(0, self._frame_nr * self._frame_size, self._frame_size):
                status, _, _, _, _, sec, nsec = _T2_HDR.unpack_from(mm, off)
                if status & TP_STATUS_USER and (best is None or (sec, nsec) < best[0]):
                    best = ((sec, nsec), off)
        else:
            for off in range(0, self._block_nr * self._block_size, self._block_size):
                if _U32.unpack_from(mm, off + BLK_STATUS_OFF)[0] & TP_STATUS_USER:
                    seq = struct.unpack_from("<Q", mm, off + 24)[0]
                    if best is None or seq < best[0]:
                        best = (seq, off + BLK_STATUS_OFF)
        if best is None or best[1] >> 2 == self._idx:
            return False
        self._idx = best[1] >> 2
        return True

    def _pause(self, deadline: int | None) -> None:
        ms = 1 if deadline is None else max(0, min(1, -(-(deadline - _mono()) // 1_000_000)))
        p = select.poll()
        p.register(self._efd, select.POLLIN)
        p.poll(ms)

    def _drain(self, batch: list[PacketBuffer], limit: int) -> int:
        """Copy up to *limit* ready frames out of the ring and give their slots back (V2: each
        frame; V3: each block once its last frame is copied). Under _rx_lock; no syscall.

        One loop for both layouts: only where the next header is and how a slot is given back
        differ; the copy, VLAN tag reinsertion, drop counting and timestamps are shared.
        """
        mv32 = self._mv32
        idx = self._idx
        left = self._pkt_left
        if not left and not mv32[idx] & TP_STATUS_USER:
            return 0
        mm = self._mm
        mv = self._mv
        stats = self.stats
        pool = self._pool
        take = pool.take if pool is not None else _no_buffer
        v2 = self.ring == "v2"
        if v2:
            hdr_unpack = _T2_HDR.unpack_from
            vlan_unpack = _T2_VLAN.unpack_from
            vlan_off = T2_VLAN_OFF
        else:
            hdr_unpack = _T3_HDR.unpack_from
            vlan_unpack = _T3_VLAN.unpack_from
            vlan_off = T3_VLAN_OFF
        blk_unpack = _U32x2.unpack_from
        step = self._idx_step
        end = self._idx_end
        first_idx = self._idx_first
        off = self._pkt_off
        nxt = 0
        now = _mono()
        if now - self._rt_offset_at > 1_000_000_000:
            self._rt_offset = _realtime_offset_ns()
            self._rt_offset_at = now
        rt_offset = self._rt_offset
        last_time = self._last_time
        n = 0
        try:
            while n < limit:
                if v2:
                    if not mv32[idx] & TP_STATUS_USER:
                        break
                    off = idx << 2
                    status, length, snaplen, mac, _, sec, nsec = hdr_unpack(mm, off)
                else:
                    if not left:
                        if not mv32[idx] & TP_STATUS_USER:
                            break
                        blk_off = (idx << 2) - BLK_STATUS_OFF
                        left, off = blk_unpack(mm, blk_off + BLK_NUM_OFF)
                        off += blk_off
                        if not left:                   # empty retired block: give it back
                            mv32[idx] = TP_STATUS_KERNEL
                            idx += step
                            if idx >= end:
                                idx = first_idx
                            continue
                    nxt, sec, nsec, snaplen, length, status, mac = hdr_unpack(mm, off)
                tagged = status & TP_STATUS_VLAN_VALID
                size = snaplen + 4 if tagged else snaplen
                buf = None
                if snaplen < length:
                    stats.rx_dropped += 1              # truncated by the ring
                else:
                    buf = take()
                    if buf is None:
                        stats.rx_nomem += 1
                    elif size > len(buf.data):
                        stats.rx_dropped += 1          # larger than a pool buffer
                        buf.release()
                        buf = None
                if buf is not None:
                    start = off + mac
                    bv = buf.view
                    if tagged:
                        tci, tpid = vlan_unpack(mm, off + vlan_off)
                        if not status & TP_STATUS_VLAN_TPID_VALID or not tpid:
                            tpid = ETH_P_8021Q
                        bv[0:12] = mv[start:start + 12]
                        _VLAN_TAG.pack_into(bv, 12, tpid, tci & 0xFFFF)
                        bv[16:size] = mv[start + 12:start + snaplen]
                    else:
                        bv[0:snaplen] = mv[start:start + snaplen]
                    buf.start = 0
                    buf.end = size
                    if status & TP_STATUS_CSUMNOTREADY:
                        _clear_partial_udp_csum(bv, size)
                    t = sec * 1_000_000_000 + nsec - rt_offset
                    if t > now:
                        t = now
                    elif t < last_time:
                        t = last_time
                    buf.device_time = last_time = t
                    batch.append(buf)
                    n += 1
                if v2:                                 # frame copied: slot back to the kernel
                    mv32[idx] = TP_STATUS_KERNEL
                    idx += step
                    if idx >= end:
                        idx = first_idx
                else:
                    left -= 1
                    if left:
                        off += nxt
                    else:                              # block consumed: back to the kernel
                        mv32[idx] = TP_STATUS_KERNEL
                        idx += step
                        if idx >= end:
                            idx = first_idx
        finally:
            self._last_time = last_time
            if idx != self._idx or left != self._pkt_left:
                self._consumed += 1
            self._idx = idx
            self._pkt_left = left
            self._pkt_off = off
        return n

    def wake(self) -> None:
        with self._wake_lock:
            if self._efd >= 0:
                os.eventfd_write(self._efd, 1)

    # --- socket filter ---------------------------------------------------------------------

    def set_socket_filter(self, insns: list[tuple[int, int, int, int]]) -> None:
        """Attach a classic BPF program (``(code, jt, jf, k)`` tuples, as ``tcpdump -dd``).

        Kept across ``detach()``/``attach()``. Frames already in the ring when the program is
        replaced are still delivered. The kernel's verdict is the number of bytes to keep: 0
        drops the frame; use ``0x40000`` (or ``0xffffffff``) to keep whole frames.
        """
        prog = []
        for ins in insns:
            code, jt, jf, k = ins
            if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF
                    and -0x80000000 <= k <= 0xFFFFFFFF):
                raise oserror(errno.EINVAL, f"bad BPF instruction {ins!r}")
            prog.append((code, jt, jf, k & 0xFFFFFFFF))
        if not 0 < len(prog) <= 4096:
            raise oserror(errno.EINVAL, "a BPF program has 1..4096 instructions")
        if self._rx_sock is not None:
            self._attach_filter(self._rx_sock, prog)
        self._filter = prog

    def clear_socket_filter(self) -> None:
        """Remove the socket filter (every frame is received again)."""
        self._filter = None
        sock = self._rx_sock
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError as exc:
                if exc.errno != errno.ENOENT:   # no filter attached
                    raise

    @staticmethod
    def _attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
        arr = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
        fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        except OSError as exc:
            raise oserror(exc.errno, "the kernel rejected the BPF program") from None

    # --- statistics -----------------------------------------------------------------------

    def read_kernel_stats(self) -> tuple[int, int, int]:
        """Read (and thereby reset) the kernel's PACKET_STATISTICS for the RX socket.

        Adds them to ``stats.kernel_drops``/``stats.kernel_freeze_q_cnt`` and ``kernel_packets``
        and returns this interval's ``(tp_packets, tp_drops, tp_freeze_q_cnt)``; ``tp_packets``
        counts the dropped frames too.
        """
        sock = self._rx_sock
        if sock is None:
            return (0, 0, 0)
        # struct tpacket_stats_v3 (V3) or struct tpacket_stats (V2, 8 bytes: no tp_freeze_q_cnt)
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops = _U32x2.unpack_from(raw)
        freeze = _U32.unpack_from(raw, 8)[0] if len(raw) >= 12 else 0
        self.kernel_packets += packets
        self.stats.kernel_drops += drops
        self.stats.kernel_freeze_q_cnt += freeze
        return packets, drops, freeze

    # --- TX -------------------------------------------------------------------------------

    def transmit(self, frame: memoryview) -> None:
        # os.write() on the bound socket's fd: the same packet_sendmsg() as send(), ~50 ns less
        # Python overhead. The lock (explicit acquire/release: half the cost of a with) keeps
        # detach() from closing the fd, whose number could be reused, during the write.
        lock = self._tx_lock
        lock.acquire()
        try:
            fd = self._tx_fd
            if fd < 0:
                raise oserror(errno.ENETDOWN, f"{self.name}: device not attached")
            try:
                _write(fd, frame)
                return
            except OSError as exc:
                code = exc.errno
        finally:
            lock.release()
        if code in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
            self.is_up()
            raise oserror(errno.ENETDOWN, f"{self.name} is down")
        self.stats.tx_errors += 1
        raise oserror(code, f"transmit on {self.name}")

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
        if state is self._link_state:
            return
        self._link_state = state
        cb = self.on_link_change
        if cb is not None:
            try:
                cb(state)
            except Exception:
                log.exception("%s: on_link_change callback failed", self.name)

    def __repr__(self) -> str:
        vlan = f" vlan {self.vlan_id} on {self.real_ifname}" if self.vlan_id else ""
        return (f"<AfPacketDevice {self.name} ifindex {self.ifindex} "
                f"{':'.join(f'{b:02x}' for b in self.mac)} mtu {self.mtu}{vlan}>")

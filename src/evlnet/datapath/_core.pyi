"""The compiled core (``core/``, Rust + PyO3): the per-packet path, outside the GIL.

This stub is the seam between the core and the Python control plane; it follows
``core/src/python/``, which is the only Rust module that knows about Python.

Conventions of the seam:

* IPv4 addresses are host-order ``int``; ports, EtherTypes and VLAN ids are ``int``.
* Times (``*_time``, ``deadline_ns``) are CLOCK_MONOTONIC nanoseconds (``monotonic_ns()``);
  ``deadline_ns=None`` waits for ever, ``timeout`` arguments are seconds.
* Arguments typed ``bytes`` only take ``bytes`` (PyO3 ``&[u8]``); payloads take any contiguous
  buffer; receive buffers must be writable and contiguous (bytes are copied into them).
* Sequence arguments (PyO3 ``Vec``) take a list or tuple, not a set or an iterator.
* The core's failures raise ``OSError(errno, message)``; blocking calls release the GIL only
  to wait.
* Every class is final (no ``subclass`` in the ``#[pyclass]``).
"""

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, final

__all__ = [
    "__version__", "Stack", "Port", "Capture", "Socket", "VirtualEnd", "VirtualVlan",
    "AfPacket", "virtual_link", "monotonic_ns", "threads_outside_gil", "FilterProgram",
    "KernelProgram", "KernelCounters", "set_port_filter", "attach_socket_filter",
    "kernel_floor_program", "TcxLink",
]

__version__: str

_Payload: TypeAlias = bytes | bytearray | memoryview
"""Bytes to send: ``bytes`` are read in place, other buffers copied once."""

_RecvBuffer: TypeAlias = bytearray | memoryview
"""A writable, C-contiguous buffer a receive copies into (at most its length)."""

_Counters: TypeAlias = list[tuple[str, int]]
"""Counters as ``(name, value)`` pairs (``dict(...)`` them)."""

_InbandKind: TypeAlias = Literal["arp", "ethertype", "ip", "link", "vanished", "skipped"]

_InbandEvent: TypeAlias = tuple[int, _InbandKind, int, int, bytes | None, int, bytes, int, int]
"""``(port_id, kind, arg, offset, frame, src_addr, src_mac, device_time, queuing_time)``."""

_RecvResult: TypeAlias = tuple[int, int, int, int, int, int, int]
"""``(copied, length, src_addr, src_port, device_time, queuing_time, delivery_time)``."""

_FrameResult: TypeAlias = tuple[int, int, int, int, int, bytes, int, int, int]
"""``(copied, length, port_id, protocol, pkttype, src_mac, device_time, queuing_time,
delivery_time)``."""

_Device: TypeAlias = VirtualEnd | VirtualVlan | AfPacket
"""The core devices a port can be enabled on."""

# -- stack ---------------------------------------------------------------------------------------

@final
class Stack:
    """The core half of one ``evlnet.Stack``: demultiplexer, front cache, in-band queue."""

    def __new__(cls, name: str) -> Stack:
        """A new stack core named *name* (for its threads)."""

    def configure(
        self, icmp_echo_ignore_all: bool, icmp_echo_ignore_broadcasts: bool,
        accept_multicast: bool, rx_wait_in_device: bool = True,
    ) -> None:
        """Set the stack-wide switches the RX path reads (ICMP echo answering, multicast, and
        whether blocked receivers wait in the device themselves)."""

    def set_broadcasts(self, addrs: Sequence[int]) -> None:
        """Publish the broadcast addresses of the enabled ports (sends to one need
        SO_BROADCAST; 255.255.255.255 always is one)."""

    def is_broadcast(self, addr: int) -> bool:
        """Whether *addr* is a broadcast address of the stack (255.255.255.255 always is)."""

    def publish_frontcache(
        self, routes: Sequence[tuple[int, int, int, int, bool]],
        neighbours: Sequence[tuple[int, bytes]],
    ) -> None:
        """Publish a new front cache: routes ``(dst, port_id, gateway, source, dead)``,
        neighbours ``(address, mac)``; EINVAL if a MAC is not 6 bytes."""

    def bind_udp(self, addr: int, port: int, sock: Socket | None) -> None:
        """Bind a UDP ``(addr, port)`` to *sock*'s queue (``None`` unbinds it)."""

    def listen_packet(self, ethertype: int, ifindex: int, sock: Socket) -> None:
        """Make packet socket *sock* receive *ethertype* (3: ETH_P_ALL) on *ifindex* (0: any)."""

    def unlisten_packet(self, sock: Socket) -> None:
        """Stop every ``listen_packet`` of *sock*."""

    def set_inband_protocols(self, ethertypes: Sequence[int], ip_protocols: Sequence[int]) -> None:
        """Set the EtherTypes and IP protocols whose frames go up to Python (custom protocols)."""

    def set_vlans(self, vids: Sequence[int]) -> None:
        """Set EVL's oob VLAN set (``/sys/class/evl/net/vlans``): tagged frames of these VIDs
        are taken in."""

    @staticmethod
    def rx_stamping_add(delta: int) -> None:
        """Add *delta* (+1/-1) to the process-wide count of sockets with RX timestamping on."""

    @staticmethod
    def rx_stamping_count() -> int:
        """The process-wide count of sockets with RX timestamping on."""

    def next_event(self, timeout: float | None = None) -> _InbandEvent | None:
        """The next event for the in-band stage, waiting up to *timeout* s (None: until one
        comes or ``wake()``); None if none came.

        ``kind`` is ``"arp"``, ``"ethertype"`` (``arg``: the EtherType), ``"ip"`` (``arg``: the
        IP protocol), ``"link"`` (``arg``: 1 up, 0 down) or ``"vanished"``; ``frame[offset:]`` is
        the protocol's header. An event without a frame (link changes) has ``frame=None`` and a
        zero MAC and times.
        """

    def wake(self) -> None:
        """Wake a thread waiting in ``next_event``."""

    @property
    def inband_drops(self) -> int:
        """Events lost because the in-band queue was full."""

# -- devices -------------------------------------------------------------------------------------

@final
class VirtualEnd:
    """One end of an embedded virtual link (made by ``virtual_link``, not constructible)."""

    @property
    def name(self) -> str:
        """The interface name."""

    @property
    def ifindex(self) -> int:
        """The interface index (unique in the process, from 1000)."""

    @property
    def mac(self) -> bytes:
        """The 6-byte MAC address."""

    @property
    def mtu(self) -> int:
        """The link MTU."""

    def is_up(self) -> bool:
        """Whether the end is up (administratively, and the wire is not cut)."""

    def set_up(self, up: bool) -> None:
        """``ip link set <end> up|down``."""

    def remove(self) -> None:
        """``ip link del <end>``: the end goes down for good."""

    def add_vlan(self, vid: int, name: str) -> VirtualVlan:
        """Create VLAN device *name* for *vid* on this end."""

    def transmit(self, frame: bytes) -> None:
        """Put *frame* on the wire from Python (tests, tools)."""

    def inject(self, frame: bytes) -> None:
        """Deliver *frame* to this end as if it came from the wire."""

    def set_tap(self, enabled: bool, passthrough: bool) -> None:
        """Record the frames arriving here (and deliver them too with *passthrough*)."""

    def take_tapped(self) -> list[bytes]:
        """The frames recorded since the last call."""

    def wait_tapped(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for a recorded frame (GIL released)."""

    def counters(self) -> _Counters:
        """The device's counters."""

    def hold_tx(self, closed: bool) -> None:
        """Test hook: close (``True``) or open the TX gate (transmits wait inside the device)."""

    def tx_held(self) -> int:
        """Test hook: transmits that waited at the gate."""

@final
class VirtualVlan:
    """A VLAN device on a virtual end (made by ``VirtualEnd.add_vlan``, not constructible)."""

    @property
    def name(self) -> str:
        """The interface name."""

    @property
    def ifindex(self) -> int:
        """The interface index (unique in the process, from 1000)."""

    @property
    def vlan_id(self) -> int:
        """The VLAN id (1-4094) it tags with."""

    def is_up(self) -> bool:
        """Whether the end under it is up."""

    def transmit(self, frame: bytes) -> None:
        """Put *frame* on the wire, tagged, from Python (tests, tools)."""

    def counters(self) -> _Counters:
        """The device's counters."""

def virtual_link(name_a: str, name_b: str, mtu: int) -> tuple[VirtualEnd, VirtualEnd]:
    """``(a, b)``: the two ends of a new virtual link."""

@final
class AfPacket:
    """A Linux interface through an AF_PACKET TPACKET_V2 ring (opened in the caller's netns)."""

    def __new__(cls, ifname: str, rx_frames: int) -> AfPacket:
        """Open *ifname* with an RX ring of *rx_frames* frames (EPERM without CAP_NET_RAW)."""

    @property
    def ifindex(self) -> int:
        """The kernel interface index."""

    @property
    def mac(self) -> bytes:
        """The hardware address (re-read at ``attach``)."""

    @property
    def mtu(self) -> int:
        """The interface MTU."""

    @property
    def hatype(self) -> int:
        """The ARPHRD_* hardware type."""

    @property
    def ring_geometry(self) -> tuple[int, int]:
        """``(frame size, frames)`` of the RX ring."""

    def is_up(self) -> bool:
        """Whether the link is up, as the control plane last reported it."""

    def attach(self, count: int, size: int) -> None:
        """Driver tests: attach an RX pool of *count* buffers of *size* bytes."""

    def detach(self) -> None:
        """Driver tests: detach and free the RX pool of ``attach``."""

    def receive(self, limit: int, timeout: float | None = None) -> list[tuple[bytes, int]]:
        """Driver tests: up to *limit* ``(frame, device_time)``, waiting up to *timeout* s
        (``None``: until one arrives or ``wake()``), GIL released."""

    def ready(self) -> bool:
        """Whether a frame is waiting in the ring (one memory read)."""

    def wake(self) -> None:
        """Wake a thread waiting in ``receive``."""

    def pool_free(self) -> int:
        """Driver tests: free buffers of the pool of ``attach`` (0 if none)."""

    def fileno(self) -> int:
        """The AF_PACKET socket's file descriptor."""

    def set_vlan_id(self, vid: int) -> None:
        """Record the VID of a Linux VLAN device (the control plane reads it from netlink)."""

    def set_link_up(self, up: bool) -> None:
        """Tell the device its link went up or down (from rtnetlink)."""

    def set_link_gone(self) -> None:
        """Tell the device its interface disappeared."""

    def set_filter(self, prog: Sequence[tuple[int, int, int, int]]) -> None:
        """Attach a classic BPF socket filter of ``(code, jt, jf, k)`` instructions."""

    def clear_filter(self) -> None:
        """Detach the socket filter."""

    def read_kernel_stats(self) -> tuple[int, int, int]:
        """``(tp_packets, tp_drops, tp_freeze_q_cnt)`` since the last read."""

    def transmit(self, frame: bytes) -> None:
        """Send *frame* on the interface from Python (tests, tools)."""

    def counters(self) -> _Counters:
        """The device's counters."""

# -- ports ---------------------------------------------------------------------------------------

@final
class Port:
    """An enabled port: the core's RX/TX threads, pools, qdisc and counters for one device."""

    def __new__(
        cls, stack: Stack, id: int, name: str, device: _Device, poolsz: int, bufsz: int,
        rx_poolsz: int, qdisc: str = "oob_fifo", reasm_poolsz: int = 16,
        ipfrag_max_datagrams: int = 64, ipfrag_time: float = 30.0,
        busy_poll_defer_us: int = 2000, tx_direct: bool = True,
        tx_stream_handoff: bool = True,
    ) -> Port:
        """Enable port *id* on *device* and add it to *stack* (EINVAL: not a core device)."""

    @property
    def id(self) -> int:
        """The port id (the stack's ``port_by_id`` key)."""

    def set_addresses(self, unicast: Sequence[int], local: Sequence[int]) -> None:
        """Set the interface's unicast addresses and every destination the port accepts."""

    def set_link(self, up: bool) -> None:
        """Record a link change seen by the control plane (sends need the link up)."""

    @property
    def enabled(self) -> bool:
        """False once ``shutdown`` ran."""

    @property
    def link_up(self) -> bool:
        """Whether the link is up, as last set."""

    def shutdown(self, stack: Stack, drain: float) -> None:
        """Remove the port from *stack* and stop it (queued frames leave first, up to *drain* s),
        GIL released."""

    @property
    def threads_alive(self) -> bool:
        """Whether the port's RX or TX thread still runs."""

    def counters(self) -> _Counters:
        """Counters by name (port and device)."""

    def pools(self) -> tuple[int, int, int, int, int]:
        """``(tx_size, tx_total, tx_free, rx_total, rx_free)``."""

    def reassembly(self) -> tuple[int, int, int]:
        """``(pending, pool_total, pool_free)``: datagrams in reassembly and its pool."""

    def transmit(
        self, frame: _Payload, sock: Socket | None = None, tsflags: int = 0,
        delivery_time: int = 0, nonblock: bool = True, deadline_ns: int | None = None,
    ) -> int:
        """Send one complete frame built in-band (padded to 60 bytes); returns its unpadded
        length.

        Raises ENETDOWN, EWOULDBLOCK (TX pool empty), ETIMEDOUT or EMSGSIZE. TX records go to
        *sock* when *tsflags* asks for them.
        """

    def set_realtime(
        self, cpus: Sequence[int] | None = None, fifo_priority: int | None = None,
    ) -> list[tuple[Literal["rx", "tx"], Literal["affinity", "sched_fifo"], int]]:
        """Pin the RX and TX threads to *cpus* and/or run them SCHED_FIFO at *fifo_priority*:
        ``(thread, lever, errno)`` per lever, errno 0 where applied (refusals are not raised)."""

    def start_capture(
        self, fd: int, snaplen: int = 0, max_frames: int = 0, max_bytes: int = 0,
        queue_len: int = 1024,
    ) -> Capture:
        """Capture the port's oob RX and TX frames into the pcap file open for writing on *fd*
        (a duplicate is written; the caller closes its own). *snaplen* 0 keeps whole frames;
        *max_frames*/*max_bytes* 0 set no bound; *queue_len* frames may wait for the writer
        thread (more are counted as drops). EBUSY: a capture already runs on this port; EINVAL:
        bad sizes; EBADF or the write's errno: the file cannot be written."""

    def pause_rx_thread(self, paused: bool) -> bool:
        """Test hook: park the RX thread (only busy pollers consume) or release it; returns
        whether it is parked now."""

    @property
    def rx_thread_parked(self) -> bool:
        """Test hook: whether the RX thread is parked by ``pause_rx_thread``."""

    @property
    def qdisc_len(self) -> int:
        """Frames waiting in the qdisc."""

    @property
    def direct_tx(self) -> bool:
        """Whether senders may transmit from their own thread (qdisc bypass, ``tx_direct``)."""

    def poll_rx(self) -> int:
        """Busy poll once from the calling thread: frames processed (0 when nothing is ready or
        another consumer has the device)."""

_CaptureStats: TypeAlias = tuple[int, int, int, int, int, int, bool]
"""``(frames, bytes, drops, rx_frames, tx_frames, errno, finished)``."""

@final
class Capture:
    """A running capture of one port (``Port.start_capture``); a writer thread of the core
    writes the file. Dropping the handle stops it."""

    def stop(self) -> _CaptureStats:
        """Stop: queued frames are written and the file flushed (GIL released); final stats."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* s (None: forever), GIL released, for the capture to end by
        itself (a bound reached or a write error); True if it has."""

    def stats(self) -> _CaptureStats:
        """Frames and bytes written, drops (writer behind), RX/TX frames accepted, the errno of a
        failed write (0: none), whether it is over."""

# -- sockets -------------------------------------------------------------------------------------

@final
class Socket:
    """The core half of an oob socket: its queue, TX record ring, readiness fd, TX settings.

    ``len(sock)`` is the number of queued datagrams, so an idle socket is falsy: test
    ``is None``, not truth.
    """

    local_addr: int
    """The bound address (0 or 0xFFFFFFFF: the route's source)."""
    local_port: int
    """The bound UDP port (the source port of sends)."""
    ttl: int
    """IP_TTL of sends."""
    tos: int
    """IP_TOS of sends."""
    dont_fragment: bool
    """IP_MTU_DISCOVER: set DF on sends (EMSGSIZE rather than fragments)."""
    broadcast: bool
    """SO_BROADCAST (the one copy: the Python socket's ``broadcast`` reads it here)."""
    bound_port: int | None
    """SO_BINDTODEVICE as a port id (``None``: any)."""
    remote_addr: int
    """The connected peer's address (0: not connected)."""
    remote_port: int
    """The connected peer's port (0: not connected)."""
    rcvbuf: int
    """SO_RCVBUF: the queue's limit in bytes."""
    tsflags: int
    """SO_TIMESTAMP_OOB flags; setting them installs a fresh TX record ring."""
    error: int
    """The pending error (ENETDOWN, EBADF...; 0: none); setting it wakes every waiter."""

    def __new__(cls, stack: Stack) -> Socket:
        """A socket core with a private queue on *stack*."""

    def share_queue_of(self, other: Socket) -> None:
        """Share *other*'s queue (SO_REUSEPORT owners of one binding)."""

    def private_queue(self) -> None:
        """Use a private queue again (after leaving a shared binding)."""

    def fileno(self) -> int:
        """The readiness fd: readable while a datagram, a TX record or an error is pending."""

    def __len__(self) -> int:
        """Datagrams queued."""

    def purge(self, port_id: int | None = None) -> None:
        """Free the queued datagrams (today all of them, even with a *port_id*)."""

    def recv_into(
        self, buffer: _RecvBuffer, nonblock: bool = False, deadline_ns: int | None = None,
        busy_poll_us: int = 0,
    ) -> _RecvResult:
        """Receive one datagram into *buffer* (busy polling the ports for *busy_poll_us*)."""

    def recv_frame_into(
        self, buffer: _RecvBuffer, nonblock: bool = False, deadline_ns: int | None = None,
        busy_poll_us: int = 0,
    ) -> _FrameResult:
        """Receive one frame into *buffer* (packet sockets)."""

    def deliver(
        self, stack: Stack, port_id: int, data: bytes, src_addr: int = 0, src_port: int = 0,
        src_mac: bytes | None = None, protocol: int = 0,
    ) -> bool:
        """Queue *data* from an in-band protocol handler; False when over SO_RCVBUF or no
        buffer is free (both counted on the port)."""

    def try_sendmsg(
        self, buffers: object, address: object, flags: object, nonblocking: bool,
    ) -> int | None:
        """``oob_sendmsg`` for the common shapes (one bytes, bytearray or contiguous byte
        memoryview alone or in a one-item list, a dotted-quad ``(host, port)`` or None on a
        connected socket, flags 0 or MSG_DONTWAIT, bound, a front-cache hit, no broadcast
        without SO_BROADCAST): the bytes sent; None for anything else (the caller takes the
        general path)."""

    def try_recvmsg_into(
        self, buffers: object, flags: object, timeout: object, nonblocking: bool,
        busy_poll_us: int,
    ) -> tuple[int, list[Any], int, tuple[str, int]] | None:
        """``oob_recvmsg_into`` for the common shapes (one bytearray alone or in a one-item
        list, flags 0 or MSG_DONTWAIT, a timeout of None or seconds >= 0): ``(nbytes, [],
        msg_flags, (host, port))``; None for anything else (the caller takes the general
        path)."""

    def sendto(
        self, dst: int, dport: int, data: _Payload, tsflags: int = 0, nonblock: bool = False,
        deadline_ns: int | None = None,
    ) -> int:
        """Send a UDP datagram through the front cache (the oob fast path): the bytes sent, or
        -1 on a miss or a route off ``bound_port`` (the caller demotes it to the in-band stage)."""

    def send_resolved(
        self, port: Port, dst_mac: bytes, source: int, dst: int, dport: int, data: _Payload,
        tsflags: int = 0, nonblock: bool = False, deadline_ns: int | None = None,
    ) -> int:
        """Send a UDP datagram once route and neighbour are known (demoted sends); the bytes
        sent."""

    def collect_tx(
        self, buffer: _RecvBuffer, nonblock: bool = False, deadline_ns: int | None = None,
    ) -> tuple[int, bool]:
        """``oob_recvmsg(MSG_TIMESTAMP)``: 24-byte TX records into *buffer*, ``(bytes,
        truncated)``."""

    @property
    def tx_records(self) -> int:
        """TX records waiting."""

    @property
    def tx_records_dropped(self) -> int:
        """TX records lost to ring overflows since SO_TIMESTAMP_OOB was last set."""

    @property
    def waiters(self) -> int:
        """Threads blocked in a receive or a TX record collection right now."""

# -- the module ----------------------------------------------------------------------------------

def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns, as the core reads it (the clock of every core time)."""

def threads_outside_gil() -> int:
    """Python threads inside the core with the GIL released (waiting, or in a device call);
    evlnet's exit hook waits for none to be left. 0 in a forked child."""

# -- eBPF RX filters (core/src/python/filter.rs) ------------------------------------------------

@final
class FilterProgram:
    """The first program of an eBPF object file, verified (OSError EINVAL otherwise)."""

    def __new__(cls, data: bytes) -> FilterProgram:
        """Parse the ELF object *data* and verify its first program."""

    @property
    def section(self) -> str:
        """The ELF section the program came from."""

    @property
    def insn_count(self) -> int:
        """Instructions in the program."""

    @property
    def stack_depth(self) -> int:
        """Stack bytes the program uses."""

    def time_vm(self, frame: bytes, runs: int, interpreted: bool = False) -> tuple[int, float]:
        """Benchmark hook: run the program *runs* times on *frame* in the VM (JIT-compiled
        where the RX path would run it so, or interpreted when *interpreted*):
        ``(verdict, ns per run)``, verdict -1 when a run faulted."""
    @property
    def jitted(self) -> bool:
        """Whether the RX path runs this program JIT-compiled, else interpreted."""

    def kernel_load(
        self, hook: str, vids: list[int], counters: KernelCounters, name: str
    ) -> KernelProgram:
        """Load into the kernel for *hook* ("socket" or "tc"), the VLAN verdict accepting
        *vids*, the tc program counting into *counters*."""

@final
class KernelProgram:
    """A program loaded into the kernel: its fd."""

    def fileno(self) -> int:
        """The program's fd (-1 once closed)."""

    def close(self) -> None:
        """Close the fd (the kernel keeps the program while a hook uses it)."""

    def test_run(self, frame: bytes, repeat: int) -> tuple[int, int]:
        """Benchmark hook: BPF_PROG_TEST_RUN: ``(return value, ns per run)`` as the kernel
        measured it."""

@final
class TcxLink:
    """A tc ingress program attached by a tcx link (Linux 6.6+): detached when closed,
    collected, or when the process dies."""

    def __new__(cls, program: KernelProgram, ifindex: int) -> TcxLink:
        """Attach *program* (loaded for "tc") at *ifindex*'s tcx ingress."""

    def update(self, program: KernelProgram) -> None:
        """Swap the attached program for *program*, atomically."""

    def close(self) -> None:
        """Detach the program."""

@final
class KernelCounters:
    """The per-CPU counters map of a Linux port's kernel filter."""

    def __new__(cls) -> KernelCounters:
        """Make the map (bpf BPF_MAP_CREATE)."""

    def read(self) -> list[tuple[str, int]]:
        """dropped, invalid, skipped, accepted: summed over the CPUs."""

def set_port_filter(port: Port, program: FilterProgram | None = None) -> None:
    """Run *program* in the port's RX path (None: no filter there)."""

def kernel_floor_program(hook: str) -> KernelProgram:
    """Benchmark hook: a program that only returns, for "xdp", "tc" or "socket"."""

def attach_socket_filter(dev: AfPacket, program: KernelProgram) -> None:
    """Attach a kernel program as the AF_PACKET socket's filter (SO_ATTACH_BPF)."""

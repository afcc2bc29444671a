"""The stack: interfaces, ports, sockets, the front cache, protocols and the in-band worker.

One ``Stack`` is one EVL network stack (EVL keeps one per network namespace). Module-level
functions in ``evlnet`` use a default instance, so programs read like the C API; tests and
programs that need two stacks make their own.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import socket as _pysocket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..constants import (
    AF_INET,
    EVL_DEFAULT_POOLSZ,
    EVL_MAX_BUFSZ,
    EVL_MAX_POOLSZ,
    EVL_NEIGH_FLAGS,
    EVL_NEIGH_MAYROUTE,
    EVL_NEIGH_PERMANENT,
    PAGE_SIZE,
    SOCK_OOB,
)
from ..datapath import _core
from ..drivers.afpacket import linux_interface_exists
from ..drivers.base import Device
from ..errors import oserror
from ..proto.arp import ArpLayer
from ..proto.icmp import IcmpProtocol
from ..proto.packet import PacketProtocol
from ..proto.registry import InbandPacket, Protocol, ProtocolRegistry
from ..proto.udp import UdpProtocol
from ..sockets.udp import inet_aton_int
from ..wire.ethernet import ETH_P_ARP
from .filters import load_program
from .frontcache import FrontCache, Neighbour, Route
from .inband import InbandWorker
from .interface import Address, Interface
from .port import Port
from .stats import DevStat

log = logging.getLogger("evlnet.stack")

#: Stacks not closed yet, with the process that made them. An ``atexit`` hook closes them: a
#: stack left open at interpreter exit has daemon threads waiting inside the core with the GIL
#: released, and CPython ends a thread that wakes up during finalization with ``pthread_exit``,
#: whose forced unwinding through the core's frames aborts the process ("FATAL: exception not
#: rethrown", exit status 134).
_open_stacks: "weakref.WeakKeyDictionary[Stack, int]" = weakref.WeakKeyDictionary()


#: how long the exit hook waits for the threads it woke to leave the core (seconds)
EXIT_WAIT_S = 1.0


def _close_open_stacks() -> None:
    """``atexit``: close every stack this process left open (not a forked child's copies),
    then let every thread woken out of the core take the GIL back before the interpreter
    finalizes. CPython 3.11 ends a thread that takes the GIL during finalization with
    ``pthread_exit``, and that forced unwinding through the core's frames aborts the process
    (python/cpython#87135): such a thread must be back in Python first."""
    for stack, pid in list(_open_stacks.items()):
        if pid != os.getpid():
            continue
        try:
            stack.close()
        except Exception:
            log.exception("%s: closing at exit failed", stack.name)
    deadline = time.monotonic() + EXIT_WAIT_S
    while _core.threads_outside_gil() and time.monotonic() < deadline:
        time.sleep(0.001)          # hands the GIL over


atexit.register(_close_open_stacks)
_SOCK_FLAGS = (SOCK_OOB | getattr(_pysocket, "SOCK_NONBLOCK", 0o4000)
               | getattr(_pysocket, "SOCK_CLOEXEC", 0o2000000))
_now = time.monotonic_ns
BROADCAST_MAC = b"\xff" * 6
#: demoted datagrams kept per unresolved next hop (Linux: neigh unres_qlen)
UNRESOLVED_QLEN = 64


@dataclass
class StackSettings:
    """Stack-wide tunables (EVL keeps most of them in /sys/class/evl/net). Changing one at run
    time takes effect at once: the ones the data path reads are pushed to the core."""

    solicit_timeout: float = 5.0          #: EVL ipv4_solicit_timeout, seconds
    qdisc: str = "oob_fifo"
    rx_poolsz: int = 1024                 #: RX buffers per port (EVL leaves these to the driver)
    ipfrag_time: float = 30.0             #: reassembly timeout (Linux IP_FRAG_TIME)
    ipfrag_max_datagrams: int = 64        #: datagrams in reassembly at once, per port
    #: 64 KiB buffers per port that datagrams are reassembled in (fragments are copied in as
    #: they arrive, so no RX buffer is ever held by reassembly)
    reasm_poolsz: int = 16
    icmp_echo_ignore_all: bool = False
    icmp_echo_ignore_broadcasts: bool = True
    accept_multicast: bool = False
    #: Run-to-completion TX: a sender transmits in its own thread when the FIFO is empty.
    tx_direct: bool = True
    #: With ``tx_direct``: a sender streaming datagrams back to back (8 in a row, each within
    #: 3 µs of the last) hands them to the port's TX thread, which transmits on another CPU
    #: while the sender builds the next; requests and periodic traffic stay run-to-completion.
    tx_stream_handoff: bool = True
    #: Busy polling for receivers, in µs (Linux SO_BUSY_POLL; per socket with SO_BUSY_POLL):
    #: a blocked oob_recvmsg polls the ports from its own thread this long before sleeping.
    busy_poll_us: int = 0
    #: A blocked receiver waits in its port's device and processes frames itself (the RX thread
    #: parked meanwhile): one thread wake-up per datagram instead of two. The port is the one
    #: its last datagram came from; only while it is that port's only blocked receiver and no
    #: receiver busy-polls it (else it waits on its socket and the RX thread delivers).
    rx_wait_in_device: bool = True
    #: How long a port's RX thread stays parked after the last busy poller left, in µs.
    busy_poll_defer_us: int = 2000
    #: EVL's strict rule on Linux ports: accept nothing without an eBPF filter or a VLAN set.
    strict_diversion: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        hook = self.__dict__.get("_on_change")
        if hook is not None and name in _CORE_SETTINGS:
            hook()


#: Settings the core's data path reads (pushed to it whenever they change).
_CORE_SETTINGS = frozenset({"icmp_echo_ignore_all", "icmp_echo_ignore_broadcasts",
                            "accept_multicast", "rx_wait_in_device"})


@dataclass
class StackCounters:
    tx_demoted: int = 0          #: datagrams sent through the in-band stage (front-cache miss)
    tx_demote_failed: int = 0    #: demoted datagrams that could not be resolved and were dropped


@dataclass
class StaticRoute:
    network: int
    prefixlen: int
    gateway: int
    ifname: str | None

    def contains(self, ip: int) -> bool:
        mask = (0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF if self.prefixlen else 0
        return (ip & mask) == self.network


def parse_cidr(text: str) -> tuple[int, int]:
    addr, _, plen = text.partition("/")
    try:
        ip = inet_aton_int(addr)
        prefix = int(plen) if plen else 32
    except (OSError, ValueError):
        raise oserror(errno.EINVAL, f"bad IPv4 prefix {text!r}") from None
    if not 0 <= prefix <= 32:
        raise oserror(errno.EINVAL, f"bad prefix length in {text!r}")
    return ip, prefix


def parse_vlan_list(spec: str) -> set[int]:
    """EVL's ``vlans`` syntax: ``42-45,100``; empty clears. VIDs 0, 1 and 4095 are EINVAL."""
    out: set[int] = set()
    spec = spec.strip()
    if not spec:
        return out
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise oserror(errno.EINVAL, f"bad VLAN list {spec!r}") from None
        if a > b:
            raise oserror(errno.EINVAL, f"bad VLAN range {part!r}")
        for vid in range(a, b + 1):
            if vid in (0, 1) or vid >= 4095:
                raise oserror(errno.EINVAL,
                              f"VLAN id {vid} cannot be used (0, 1, 4095 are reserved)")
            out.add(vid)
    return out


def format_vlan_list(vids: set[int]) -> str:
    out, ordered = [], sorted(vids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


class Stack:
    """An evlnet network stack."""

    #: Makes the stack's kernel bridge (Linux ports): ``evlnet.linux.bridge.KernelBridge``,
    #: installed by the ``evlnet`` package (the bridge is a layer above the stack).
    kernel_bridge_factory: Callable[[Stack], Any] | None = None

    def __init__(self, name: str = "evlnet", **settings: Any) -> None:
        self.name = name
        self.settings = StackSettings(**settings)
        self.counters = StackCounters()
        self.interfaces: dict[str, Interface] = {}
        self.ports: dict[str, Port] = {}
        self.routes: list[StaticRoute] = []
        self.vlans: frozenset[int] = frozenset()
        #: the core half: demux tables, front cache snapshot, ports, the in-band event queue
        self.core = _core.Stack(name)
        self._apply_settings()
        self.settings.__dict__["_on_change"] = self._apply_settings
        self._fc_lock = threading.Lock()
        self.frontcache = FrontCache(on_change=self._publish_frontcache)
        self.protocols = ProtocolRegistry(self)
        self.arp = ArpLayer(self)
        self.udp = self.protocols.register(UdpProtocol())
        self.packet = self.protocols.register(PacketProtocol())
        self.icmp = self.protocols.register(IcmpProtocol())
        self._next_port_id = 1
        self._ports_by_id: dict[int, Port] = {}
        #: datagrams demoted while their next hop is being resolved (Linux: the neighbour's
        #: arp_queue), next hop -> [(deadline, sock, payload, dst, dport)]
        self._unresolved: dict[int, list] = {}
        self.frontcache.neighbours.on_learn.append(self._neighbour_learnt)
        self.inband = InbandWorker(name, periodic=self._inband_tick,
                                   periodic_needed=lambda: bool(self._unresolved))
        #: the Linux bridge (a KernelBridge), made when a Linux port is enabled
        self.kernel: Any = None
        self._sockets: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._lock = threading.RLock()     # in-band configuration changes
        self._closed = False
        # Frames and events the core hands up to the in-band stage (ARP, custom protocols).
        self._events = threading.Thread(target=self._event_loop, name=f"{name}.events",
                                        daemon=True)
        self._events.start()
        _open_stacks[self] = os.getpid()

    def _apply_settings(self) -> None:
        st = self.settings
        self.core.configure(st.icmp_echo_ignore_all, st.icmp_echo_ignore_broadcasts,
                            st.accept_multicast, st.rx_wait_in_device)
        self.tables_changed()

    def tables_changed(self) -> None:
        """What the ports accept changed (settings, protocols, packet listeners): Linux ports
        recompute their diversion at once (rather than on a timer)."""
        kernel = getattr(self, "kernel", None)
        if kernel is not None:
            kernel.refresh_diversion()

    def _publish_frontcache(self) -> None:
        """In-band: the front cache changed; publish a new snapshot to the core (serialised, so
        an older snapshot never overwrites a newer one)."""
        with self._fc_lock:
            fc = self.frontcache
            routes = [(r.destination, r.port.id, r.gateway, r.source, not r.port.enabled)
                      for r in fc.routes]
            neighbours = [(n.address, n.mac) for n in fc.neighbours]
            self.core.publish_frontcache(routes, neighbours)

    def refresh_broadcasts(self) -> None:
        """The broadcast addresses of the enabled ports (limited and directed), for the
        SO_BROADCAST check on sends."""
        out = {0xFFFFFFFF}
        for port in self.ports.values():
            out |= port.local_addrs - port.iface_unicast
        self.core.set_broadcasts(sorted(out))

    def port_by_id(self, port_id: int) -> Port | None:
        """The port with core id *port_id* (also after it was disabled), or None."""
        return self._ports_by_id.get(port_id)

    def _event_loop(self) -> None:
        """``<stack>.events``: frames the core hands up (ARP to learn from, custom protocols).
        Never on the oob path: the core only queues them."""
        while not self._closed:
            # no periodic wake-up: a thread that wakes while receivers spin can be preempted
            # holding the GIL, which stalls them for a scheduler slice (close() wakes it)
            ev = self.core.next_event()
            if ev is None:
                continue
            port_id, kind, arg, offset, frame, src_addr, src_mac, dt, qt = ev
            port = self._ports_by_id.get(port_id)
            if port is None or frame is None:
                continue
            try:
                if kind == "skipped":
                    self._skipped_frame(port, frame)
                    continue
                if kind == "arp":
                    self.arp.input(port, frame, offset)
                    continue
                if kind == "ethertype":
                    proto = self.protocols.by_ethertype.get(arg)
                else:
                    proto = self.protocols.by_ip_protocol.get(arg)
                if proto is None:          # unregistered meanwhile
                    port.inband_counters["inband_unknown_proto"] += 1
                    continue
                proto.input_frame(port, InbandPacket(frame, offset, src_addr, src_mac, dt, qt))
            except Exception:   # a faulty (custom) handler must not stop the in-band stage
                port.inband_counters["inband_errors"] += 1
                log.exception("%s: in-band handler for %s failed", self.name, kind)

    def _skipped_frame(self, port: Port, frame: bytes) -> None:
        """A frame the RX filter left to the in-band stage (EVL_RX_SKIP). On a Linux port the
        kernel got it too; on a virtual link this is the in-band stage: ARP is learnt from, custom
        EtherTypes go to their protocol, anything else has no in-band taker and is counted."""
        try:
            if port.iface.kind != "virtual" or len(frame) < 14:
                return
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == ETH_P_ARP:
                self.arp.input(port, frame, 14)
                return
            proto = self.protocols.by_ethertype.get(ethertype)
            if proto is None:
                port.inband_counters["inband_no_taker"] += 1
                return
            proto.input_frame(port, InbandPacket(frame, 14, 0, frame[6:12], 0, 0))
        finally:       # last: once it counts, the frame's handling is over
            port.inband_counters["inband_filter_skipped"] += 1

    # -- eBPF RX filters ----------------------------------------------------------------------
    def set_filter(self, port: Port | int, modpath: str | os.PathLike[str] | None) -> None:
        """EVL ``evl_net_set_filter``: install the first program of the eBPF object file
        *modpath* as *port*'s RX filter (``None`` removes it).

        The program returns EVL's verdict: EVL_RX_DROP (0) frees and counts the frame,
        EVL_RX_ACCEPT (1) gives it to the oob stack, EVL_RX_SKIP (2) leaves it to the in-band
        stage, EVL_RX_VLAN (3) applies the VLAN rule (tagged IPv4 with a VID of the stack's
        set); any other value drops and counts it. A filter takes precedence over the VLAN set.
        A new filter replaces the old one at once; frames already queued to sockets stay. On a
        Linux port the program runs in the kernel (dropped and skipped frames never reach user
        space); on a virtual link in the core's RX path.

        EBADF: *port* is not an enabled port; ENOENT, EACCES: the file; EINVAL: not an eBPF
        object, no program, or one the verifier refuses; the kernel's own errors as they come.
        """
        self._check_open()
        p = self._port_of(port)
        program = None if modpath is None else load_program(modpath)
        if p.iface.kind == "virtual":
            _core.set_port_filter(p.core, program)
        else:
            self._kernel_bridge().set_user_filter(p, program)
        p.filter_path = None if modpath is None else os.fspath(modpath)

    # -- interfaces ---------------------------------------------------------------------------
    def add_interface(self, device: Device, *addresses: str) -> Interface:
        """Make a virtual device (``VirtualLink`` end, ``VirtualVlan``) known to this stack."""
        with self._lock:
            if device.name in self.interfaces:
                raise oserror(errno.EEXIST, f"interface {device.name} already exists")
            iface = Interface(device.name, device, "virtual")
            self.interfaces[device.name] = iface
        for a in addresses:
            self.add_address(device.name, a)
        return iface

    def add_address(self, ifname: str, cidr: str) -> None:
        """``ip addr add <cidr> dev <ifname>`` for a virtual interface."""
        iface = self.interfaces.get(ifname)
        if iface is None:
            raise oserror(errno.ENODEV, f"no interface {ifname!r}")
        ip, prefix = parse_cidr(cidr)
        iface.addresses.append(Address(ip, prefix))
        port = self.ports.get(ifname)
        if port is not None:
            port.refresh_addresses()

    def add_route(self, destination: str, via: str | None = None, dev: str | None = None) -> None:
        """``ip route add <destination> [via <gw>] [dev <if>]`` in the stack's own table."""
        net, prefix = parse_cidr(destination)
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0
        gw = parse_cidr(via)[0] if via else 0
        if dev is not None and dev not in self.interfaces:
            raise oserror(errno.ENODEV, f"no interface {dev!r}")
        self.routes.append(StaticRoute(net & mask, prefix, gw, dev))
        self.routes.sort(key=lambda r: -r.prefixlen)

    def find_interface(self, ifname: str) -> Interface | None:
        """A known interface: virtual ones, then Linux ones (opened through the kernel bridge)."""
        iface = self.interfaces.get(ifname)
        if iface is not None:
            return iface
        # a stack serves one network namespace: the bridge's once there is one
        exists = (self.kernel.interface_exists(ifname) if self.kernel is not None
                  else linux_interface_exists(ifname))
        if not exists:
            return None
        return self._kernel_bridge().open_interface(ifname)

    def _kernel_bridge(self):
        if self.kernel is None:
            if Stack.kernel_bridge_factory is None:
                raise oserror(errno.ENODEV, "Linux interfaces need evlnet.linux (import evlnet)")
            self.kernel = Stack.kernel_bridge_factory(self)
        return self.kernel

    def is_local_address(self, ip: int) -> bool:
        """Whether *ip* (an IPv4 address as an int) is an address of one of the stack's
        interfaces (what a UDP socket may bind to)."""
        return any(a.address == ip for i in self.interfaces.values() for a in i.addresses)

    # -- ports --------------------------------------------------------------------------------
    def enable_port(self, ifname: str, poolsz: int = 0, bufsz: int = 0) -> Port:
        """Enable the oob port of *ifname* (EVL ``evl_net_enable_port``); returns its handle.

        *poolsz* buffers of *bufsz* bytes are preallocated for TX (0: 2048 buffers; one page,
        raised to hold the MTU plus headers, rounded up to whole pages). EINVAL for an unknown
        interface, poolsz > 32768 or bufsz > 4 pages. Enabling an enabled port returns it.
        """
        if not isinstance(ifname, str) or not ifname:
            raise oserror(errno.EINVAL, f"bad interface name {ifname!r}")
        if poolsz < 0 or poolsz > EVL_MAX_POOLSZ:
            raise oserror(errno.EINVAL, f"pool size {poolsz} out of range 0-{EVL_MAX_POOLSZ}")
        if bufsz < 0 or bufsz > EVL_MAX_BUFSZ:
            raise oserror(errno.EINVAL, f"buffer size {bufsz} out of range 0-{EVL_MAX_BUFSZ}")
        with self._lock:
            self._check_open()
            port = self.ports.get(ifname)
            if port is not None and port.enabled:
                return port
            iface = self.find_interface(ifname)
            if iface is None:
                raise oserror(errno.EINVAL, f"{ifname!r} is not a network interface")
            if not iface.device.is_up():
                raise oserror(errno.ENETDOWN, f"{ifname} is down")
            poolsz = poolsz or EVL_DEFAULT_POOLSZ
            need = iface.device.mtu + 14 + 4
            size = max(bufsz or PAGE_SIZE, need)
            size = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
            if size > EVL_MAX_BUFSZ:
                raise oserror(errno.EINVAL, f"MTU of {ifname} needs buffers above {EVL_MAX_BUFSZ}")
            for stale in [r for r in self.frontcache.routes
                          if r.port.name == ifname and not r.port.enabled]:
                self.frontcache.routes.forget(stale.destination)   # tombstones of a disabled port
            port_id = self._next_port_id
            self._next_port_id += 1
            port = Port(self, iface, port_id, poolsz, size, self.settings.rx_poolsz)
            self.ports[ifname] = port
            self._ports_by_id[port_id] = port
            self.refresh_broadcasts()
            if self.kernel is not None and iface.kind == "linux":
                try:
                    self.kernel.port_enabled(port)
                except BaseException:
                    del self.ports[ifname]
                    port.shutdown()
                    raise
            for sock in list(self._sockets):
                sock.port_up()
            return port

    def open_port(self, ifname: str) -> Port:
        """The enabled port of *ifname* (EINVAL if unknown or not enabled)."""
        port = self.ports.get(ifname)
        if port is None or not port.enabled:
            raise oserror(errno.EINVAL, f"{ifname!r} has no enabled oob port")
        return port

    def _port_of(self, port: Any) -> Port:
        if isinstance(port, Port) and self.ports.get(port.name) is port:
            return port
        if isinstance(port, int):
            for p in self.ports.values():
                if p.fileno() == port and port >= 0:
                    return p
        raise oserror(errno.EBADF, f"{port!r} is not an enabled port of this stack")

    def disable_port(self, port: Port | int) -> None:
        """Disable a port: in-flight TX buffers leave first, then oob traffic stops (senders get
        ENETDOWN, blocked receivers wake with it). A second call is a no-op."""
        if isinstance(port, Port) and port.stack is self and not port.enabled \
                and self.ports.get(port.name) is not port:
            return                         # already disabled
        with self._lock:
            port = self._port_of(port)
            del self.ports[port.name]
            self.refresh_broadcasts()
            # Neighbours go; routes stay as tombstones pointing at the disabled port, so that
            # senders get ENETDOWN rather than a silent demotion (dropped on re-enable/flush).
            self.frontcache.neighbours.purge_port(port)
            port.shutdown()
            self._publish_frontcache()          # routes through it are tombstones now
            self.wake_receivers(port, errno.ENETDOWN)
            for sock in list(self._sockets):
                sock.purge_queue(port)
            if self.kernel is not None and port.iface.kind == "linux":
                self.kernel.port_disabled(port)

    def get_stats(self, port: Port | int) -> DevStat:
        """The port's statistics (EVL ``evl_net_query_dev``); EBADF if not a port."""
        return self._port_of(port).stats()

    def interface_vanished(self, port: Port) -> None:
        """In-band, when *port*'s interface disappeared: disable the port (if still enabled),
        purge its routes and neighbours from the front cache (as EVL on NETDEV_GOING_DOWN) and
        forget a Linux interface. Called by the port; not needed by applications."""
        if self.ports.get(port.name) is port:
            self.disable_port(port)
        self.frontcache.purge_port(port)        # EVL: NETDEV_GOING_DOWN purges routes too
        if port.iface.kind == "linux":
            self.interfaces.pop(port.name, None)

    def wake_receivers(self, port: Port, err: int) -> None:
        """Wake sockets whose traffic depends on *port* with *err* (ENETDOWN)."""
        others = [p for p in self.ports.values() if p is not port and p.enabled and p.link_up]
        for sock in list(self._sockets):
            local = getattr(sock, "local", None)
            if local is not None:
                addr = local[0]
                if addr and addr not in port.iface_unicast:
                    continue
                if not addr and others:
                    continue
            sock.port_down(port, err)

    def port_back_up(self, port: Port) -> None:
        """*port*'s link came back: clear the ENETDOWN left on the sockets it had woken."""
        for sock in list(self._sockets):
            local = getattr(sock, "local", None)
            if local is not None and local[0] and local[0] not in port.iface_unicast:
                continue
            if getattr(sock, "bound_port", None) not in (None, port):
                continue
            sock.port_up()

    # -- sockets ------------------------------------------------------------------------------
    def socket(self, family: int, type: int, proto: int = 0):
        """``socket(family, type, proto)``: an oob socket when *type* has SOCK_OOB, else a plain
        kernel socket. EAFNOSUPPORT / ESOCKTNOSUPPORT / EPROTONOSUPPORT as EVL."""
        self._check_open()
        if not type & SOCK_OOB:
            return _pysocket.socket(family, type, proto)
        base = type & ~_SOCK_FLAGS
        protocol = self.protocols.find_socket_protocol(family, base, proto)
        sock = protocol.create_socket(family, base, proto, type & _SOCK_FLAGS)
        if type & getattr(_pysocket, "SOCK_NONBLOCK", 0o4000):
            sock.setblocking(False)
        return sock

    def register_protocol(self, proto: Protocol) -> Protocol:
        """Add a custom protocol (by EtherType or IPv4 protocol number) with its sockets. Its
        frames go up from the core to ``proto.input_frame`` on the in-band stage."""
        self.protocols.register(proto)
        self.publish_protocols()
        return proto

    def publish_protocols(self) -> None:
        """Tell the core the EtherTypes and IPv4 protocol numbers of the registered custom
        protocols (it hands their frames up to the in-band stage), and let Linux ports
        recompute what they divert. ``register_protocol`` and unregistering call it."""
        self.core.set_inband_protocols(sorted(self.protocols.by_ethertype),
                                       sorted(self.protocols.by_ip_protocol))
        self.tables_changed()

    def register_socket(self, sock) -> None:
        """Track *sock* (weakly): port changes wake or purge it, ``close()`` closes it. Oob
        sockets call it when they are made; applications do not."""
        self._sockets.add(sock)

    def unregister_socket(self, sock) -> None:
        """Forget *sock* (it is closing); Linux ports stop diverting its traffic. Oob sockets
        call it from ``close()``."""
        self._sockets.discard(sock)
        if self.kernel is not None:
            self.kernel.socket_closed(sock)

    def kernel_bind(self, sock, addr: int, port: int) -> None:
        """*sock* was bound to *addr*:*port* (ints): with Linux ports, reserve them in the kernel
        with the socket's genuine kernel socket and divert that traffic to the ports. A no-op
        without Linux ports. Oob UDP sockets call it from ``bind()``."""
        if self.kernel is not None:
            self.kernel.bind(sock, addr, port)

    def kernel_connect(self, sock, addr: int, port: int) -> None:
        """*sock* was connected to *addr*:*port* (ints): with Linux ports, connect its genuine
        kernel socket too (its in-band sends go there). A no-op without Linux ports. Oob UDP
        sockets call it from ``connect()``."""
        if self.kernel is not None:
            self.kernel.connect(sock, addr, port)

    # -- routing and solicitation (in-band) ---------------------------------------------------
    def _port_for_interface(self, ifname: str) -> Port:
        port = self.ports.get(ifname)
        if port is None or not port.enabled:
            raise oserror(errno.ENODEV, f"{ifname} has no enabled oob port")
        return port

    def resolve_route(self, dst: int, bound_device: str | None, mayroute: bool) -> Route:
        """In-band route lookup, learnt into the front cache (EVL: ip_route_output + learn)."""
        cached = self.frontcache.routes.peek(dst)
        if cached is not None and cached.port.enabled and (mayroute or not cached.gateway):
            return cached
        if dst == 0xFFFFFFFF:                     # limited broadcast: the bound or first port
            if bound_device:
                port = self._port_for_interface(bound_device)
            else:
                candidates = [p for p in self.ports.values() if p.enabled and p.iface.addresses]
                if not candidates:
                    raise oserror(errno.ENODEV, "no oob port with an address for broadcast")
                port = candidates[0]
            route = Route(dst, port, 0, port.iface.primary_address)
            self.frontcache.routes.learn(route)
            return route
        found = self._route_virtual(dst, bound_device, mayroute)
        if found is not None:
            route = found
        else:
            if self.kernel is None:
                raise oserror(errno.ENETUNREACH, f"no route to {_fmt(dst)}")
            route = self.kernel.resolve_route(dst, bound_device, mayroute)
        self.frontcache.routes.learn(route)
        return route

    def _route_virtual(self, dst: int, bound_device: str | None, mayroute: bool) -> Route | None:
        # connected routes first (longest prefix), then static routes
        best: tuple[int, Interface, Address] | None = None
        for iface in list(self.interfaces.values()):
            if iface.kind != "virtual":     # Linux interfaces: the kernel's routing decides
                continue
            if bound_device and iface.name != bound_device:
                continue
            for a in iface.addresses:
                if a.contains(dst) and (best is None or a.prefixlen > best[0]):
                    best = (a.prefixlen, iface, a)
        if best is not None:
            _, iface, a = best
            port = self._port_for_interface(iface.name)
            return Route(dst, port, 0, a.address)
        for r in self.routes:
            if not r.contains(dst):
                continue
            if r.gateway and not mayroute:
                raise oserror(errno.ENETUNREACH,
                              f"{_fmt(dst)} is reached through a gateway (EVL_NEIGH_MAYROUTE)")
            if r.gateway:
                via = self._route_virtual(r.gateway, r.ifname or bound_device, False)
                if via is None:
                    raise oserror(errno.ENETUNREACH, f"gateway {_fmt(r.gateway)} unreachable")
                return Route(dst, via.port, r.gateway, via.source)
            if r.ifname:
                port = self._port_for_interface(r.ifname)
                return Route(dst, port, 0, port.iface.source_for(dst))
        return None

    def resolve_neighbour(self, route: Route, deadline_ns: int, permanent: bool) -> Neighbour:
        """In-band: the next hop's MAC, resolving it (ARP) if needed, into the front cache."""
        cache = self.frontcache.neighbours
        hop = route.next_hop
        port = route.port
        if hop == 0xFFFFFFFF or any(hop == a.broadcast and a.prefixlen < 31
                                    for a in port.iface.addresses):
            neigh = Neighbour(hop, BROADCAST_MAC, port, True)
            cache.learn(neigh)
            return neigh
        if (hop >> 28) == 14:   # multicast: MAC derived from the group
            mac = bytes((0x01, 0x00, 0x5E, (hop >> 16) & 0x7F, (hop >> 8) & 0xFF, hop & 0xFF))
            neigh = Neighbour(hop, mac, port, True)
            cache.learn(neigh)
            return neigh
        neigh = cache.peek(hop)
        if neigh is None or neigh.port is not port:
            if port.iface.kind == "linux":
                neigh = self.kernel.solicit_neighbour(route, deadline_ns, permanent)
            else:
                self.arp.request(port, hop)
                next_retry = _now() + 1_000_000_000
                while True:
                    neigh = cache.wait_for(hop, min(deadline_ns, next_retry))
                    if neigh is not None or _now() >= deadline_ns:
                        break
                    self.arp.request(port, hop)         # ARP retries once a second
                    next_retry = _now() + 1_000_000_000
                if neigh is None:
                    raise oserror(errno.ETIMEDOUT, f"{_fmt(hop)} did not answer ARP")
        if permanent and not neigh.permanent:
            if port.iface.kind == "linux":
                self.kernel.make_permanent(neigh)
            neigh = Neighbour(neigh.address, neigh.mac, neigh.port, True)
            cache.learn(neigh)
        return neigh

    def solicit(self, sock: Any, peer: Any, flags: int = 0) -> None:
        """Pre-resolve the route and MAC of *peer* into the front cache (EVL
        ``evl_net_solicit``). In-band; waits up to the solicit timeout (ETIMEDOUT).

        *peer* is an ``(address, port)`` tuple or an address string ("broadcast" is accepted).
        """
        from ..sockets.base import OobSocket
        if not isinstance(sock, OobSocket) or sock.closed or sock.stack is not self:
            raise oserror(errno.EBADF, "not an oob socket of this stack")
        if sock.family != AF_INET:
            raise oserror(errno.EAFNOSUPPORT, "solicitation is for IPv4 sockets")
        if not isinstance(flags, int) or flags & ~EVL_NEIGH_FLAGS:
            raise oserror(errno.EINVAL, f"unknown solicit flags {flags!r}")
        dst = _peer_address(peer)
        deadline = _now() + int(self.settings.solicit_timeout * 1e9)
        if sock.bound_device:      # EVL: ENODEV when the SO_BINDTODEVICE device is no oob port
            self._port_for_interface(sock.bound_device)
        route = self.resolve_route(dst, sock.bound_device, bool(flags & EVL_NEIGH_MAYROUTE))
        self.resolve_neighbour(route, deadline, bool(flags & EVL_NEIGH_PERMANENT))

    def demote_udp(self, sock, views: list, total: int, dst: int, dport: int,
                   nonblock: bool) -> int:
        """A front-cache miss: hand a copy of the datagram to the in-band worker, which resolves
        the peer and sends it (EVL's offload path). Returns 0, or EINPROGRESS under DONTWAIT."""
        payload = b"".join(bytes(v) for v in views)
        self.counters.tx_demoted += 1
        self.inband.post(self._send_demoted, sock, payload, dst, dport)
        if nonblock:
            raise oserror(errno.EINPROGRESS, f"{_fmt(dst)} is not in the front cache "
                                             "(solicit it first); sent in-band")
        return 0

    def _send_demoted(self, sock, payload: bytes, dst: int, dport: int) -> None:
        """In-band: send a demoted datagram, parking it if its next hop is not resolved yet.

        Never blocks the in-band worker (ARP replies are processed on the same thread)."""
        try:
            if self.kernel is not None and self.kernel.owns_socket(sock):
                self.kernel.demoted_send(sock, payload, dst, dport)
                return
            route = self.resolve_route(dst, sock.bound_device, True)
            hop = route.next_hop
            neigh = self.frontcache.neighbours.peek(hop)
            if neigh is None and (hop == 0xFFFFFFFF or (hop >> 28) == 14 or any(
                    hop == a.broadcast for a in route.port.iface.addresses if a.prefixlen < 31)):
                neigh = self.resolve_neighbour(route, _now(), False)
            if neigh is not None:
                sock.send_resolved(route, neigh.mac, [payload], len(payload), dst, dport,
                                   False, _now() + int(self.settings.solicit_timeout * 1e9), 0)
                return
            waiting = self._unresolved.setdefault(hop, [])
            if len(waiting) >= UNRESOLVED_QLEN:
                waiting.pop(0)
                self.counters.tx_demote_failed += 1
            deadline = _now() + int(self.settings.solicit_timeout * 1e9)
            waiting.append((deadline, sock, payload, dst, dport))
            if len(waiting) == 1:
                self.arp.request(route.port, hop)
        except OSError as exc:
            self.counters.tx_demote_failed += 1
            log.info("demoted datagram to %s dropped: %s", _fmt(dst), exc)

    def _neighbour_learnt(self, neigh: Neighbour) -> None:
        if neigh.address in self._unresolved:
            self.inband.post(self._flush_unresolved, neigh.address)

    def _flush_unresolved(self, hop: int) -> None:
        for _deadline, sock, payload, dst, dport in self._unresolved.pop(hop, []):
            if sock.closed:
                self.counters.tx_demote_failed += 1
                continue
            self._send_demoted(sock, payload, dst, dport)

    def _inband_tick(self) -> None:
        """In-band, a few times a second: retry ARP, drop demoted datagrams that expired."""
        now = _now()
        for hop, waiting in list(self._unresolved.items()):
            alive = [w for w in waiting if w[0] > now]
            self.counters.tx_demote_failed += len(waiting) - len(alive)
            if not alive:
                self._unresolved.pop(hop, None)
                continue
            self._unresolved[hop] = alive
            route = self.frontcache.routes.peek(alive[0][3])
            if route is not None and route.port.enabled:
                try:
                    self.arp.request(route.port, hop)
                except OSError:
                    pass

    # -- settings -----------------------------------------------------------------------------
    def flush_routes(self) -> None:
        """Empty the route front cache (EVL ``ipv4_flush_routes``)."""
        self.frontcache.flush_routes()

    def flush_neighbours(self) -> None:
        """Empty the neighbour front cache (EVL ``ipv4_flush_arp``)."""
        self.frontcache.flush_neighbours()

    def set_solicit_timeout(self, seconds: float) -> None:
        """How long ``solicit`` waits for the peer's ARP answer (EVL's ``ipv4_solicit_timeout``,
        default 5 s), also how long a demoted datagram waits for its next hop. EINVAL unless
        *seconds* > 0."""
        if not seconds > 0:
            raise oserror(errno.EINVAL, "solicit timeout must be > 0")
        self.settings.solicit_timeout = float(seconds)

    def set_vlans(self, spec: str) -> None:
        """Set the oob VLAN id set (EVL ``/sys/class/evl/net/vlans``), e.g. ``"42-45,100"``."""
        self.vlans = frozenset(parse_vlan_list(spec))
        self.core.set_vlans(sorted(self.vlans))
        if self.kernel is not None:
            self.kernel.vlans_changed()

    def get_vlans(self) -> str:
        """The oob VLAN id set in the form ``set_vlans`` takes (``"42-45,100"``; ``""`` when
        empty), as EVL's ``/sys/class/evl/net/vlans`` reads."""
        return format_vlan_list(set(self.vlans))

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise oserror(errno.ESHUTDOWN, f"stack {self.name} is closed")

    def close(self) -> None:
        """Close every socket, disable every port, stop the in-band worker."""
        if self._closed:
            return
        for sock in list(self._sockets):
            sock.close()
        for port in list(self.ports.values()):
            self.disable_port(port)
        if self.kernel is not None:
            self.kernel.close()
        self.inband.stop()
        self._closed = True
        self.core.wake()
        if threading.current_thread() is not self._events:
            self._events.join(5.0)
        # The disabled ports were kept for in-flight events; a closed stack has none. Keeping
        # them kept their devices, so an AF_PACKET socket (and its ring) stayed open, and with
        # it the network namespace it lives in, as long as the closed Stack object lived.
        self._ports_by_id.clear()
        _open_stacks.pop(self, None)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(ip: int) -> str:
    return _pysocket.inet_ntoa(ip.to_bytes(4, "big"))


def _peer_address(peer: Any) -> int:
    if isinstance(peer, tuple):
        peer = peer[0] if peer else None
    if peer in ("broadcast", "<broadcast>"):
        return 0xFFFFFFFF
    if not isinstance(peer, str):
        raise oserror(errno.EINVAL, f"bad peer {peer!r}")
    ip = inet_aton_int(peer, "peer")
    if ip == 0:
        raise oserror(errno.EINVAL, "peer 0.0.0.0")
    return ip

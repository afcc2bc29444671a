"""The kernel bridge: Linux interfaces as oob ports, with the Linux kernel as EVL's in-band stage.

A ``Stack`` creates one ``KernelBridge`` the first time a Linux interface name is used. The
bridge lives in the **network namespace of the thread that created it** and serves that namespace
only, as EVL keeps its oob state per namespace (``struct net.oob``): its netlink sockets, the
ports' AF_PACKET devices and the genuine sockets are all made there, so they keep working when
called from threads that live elsewhere. What it provides:

Ports — ``open_interface()`` wraps the interface in an ``AfPacketDevice`` (kind "linux") with the
  kernel's IPv4 addresses; ``port_enabled()`` installs input diversion (see ``diversion.py``) and
  loads the kernel's neighbours of the interface into the front cache; ``port_disabled()`` removes
  every trace (tc filter, clsact qdisc when we made it). An ``atexit`` hook does the same for
  ports still enabled when the process exits, and a new bridge first removes the filters a dead
  evlnet process left behind.

Front cache fed by the kernel — a daemon thread (``<stack>.netlink``, in-band) listens to
  RTMGRP_NEIGH|LINK|IPV4_IFADDR|IPV4_ROUTE, as EVL's ARP cache listens to NETEVENT_NEIGH_UPDATE:
  REACHABLE/PERMANENT/NOARP neighbours of oob ports are cached; STALE, DELAY, PROBE, FAILED and
  deleted ones are dropped at once (``ip neigh del`` takes effect in about a millisecond); any
  IPv4 route change flushes the routes learnt for Linux ports; address changes update the port
  (``refresh_addresses()``) and its diversion; link changes go to the device's ``is_up()``, which
  reports them through ``on_link_change`` (False: senders get ENETDOWN and receivers wake; None,
  the interface was deleted: the port is disabled in-band and can be enabled again when an
  interface of that name comes back). Lost notifications (ENOBUFS) trigger a full resync.

Routing and solicitation — ``resolve_route()`` asks the kernel (RTM_GETROUTE): ENODEV when it
  routes through an interface that is no oob port, ENETUNREACH when a gateway is needed without
  EVL_NEIGH_MAYROUTE or there is no route. ``solicit_neighbour()`` makes the kernel resolve the
  next hop itself (RTM_NEWNEIGH with NTF_USE, after deleting a STALE/DELAY/PROBE/FAILED entry as
  EVL forces stale entries to NUD_NONE) and waits until the monitor has cached the answer
  (ETIMEDOUT at the deadline); ``make_permanent()`` turns the kernel entry PERMANENT.

Genuine sockets — an oob UDP socket made while the stack has a bridge is also a kernel socket
  (``new_kernel_socket``): binding reserves the address and port in the kernel, standard options
  go through, in-band ``send``/``recv`` use the kernel's stack, and demoted datagrams (front-cache
  misses) are sent with it (``demoted_send``), after which the route is learnt as EVL's
  ``ip_learn_oob_route()`` hook would. Sockets without one (made before the bridge existed) are
  demoted through a raw IPv4 socket with their own source address and port.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.frontcache import Neighbour, Route
from ..core.interface import Address, Interface
from ..datapath import _core
from ..drivers.afpacket import AfPacketDevice
from ..errors import oserror
from . import diversion as dv
from . import rtnl
from .bridge_state import BridgeState, fmt_ip, linux_device
from .routing import KernelRouting

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack

log = logging.getLogger("evlnet.linux")
_NOT_DIVERTED = {0x0800, 0x0806, 0x8100, 0x88A8}   # IPv4 and ARP by rule; VLAN tags by the kernel
_UDP_HDR = struct.Struct("!HHHH")
_IP_HDR = struct.Struct("!BBHHHBBHII")

_bridges: "weakref.WeakSet[KernelBridge]" = weakref.WeakSet()
_atexit_registered = False


class _PortDiversion:
    __slots__ = ("port", "tc", "rule", "user", "user_vids", "kernel_progs", "link")

    def __init__(self, port: "Port", tc: dv.TcDiversion) -> None:
        self.port = port
        self.tc = tc
        self.rule: dv.DiversionRule | None = None
        #: the user's eBPF RX filter (a _core.FilterProgram): replaces the rule while set
        self.user: Any = None
        self.user_vids: tuple[int, ...] | None = None
        #: the kernel programs installed for it: (tc, socket or None when run in the VM)
        self.kernel_progs: tuple[Any, Any] = (None, None)
        #: the tcx link running the filter's tc program (None: none, or a clsact filter)
        self.link: Any = None


class KernelBridge:
    """The Linux side of one stack (see the module docstring)."""

    def __init__(self, stack: "Stack") -> None:
        self._shared = shared = BridgeState(stack)
        self.stack = stack
        self.counters = shared.counters
        self._routing = KernelRouting(shared)
        self._divert: dict[int, _PortDiversion] = {}
        self._pending: dict[Any, tuple[int, int]] = {}   # sock -> (addr, port) being bound
        self._was_up: dict[int, bool] = {}        # ifindex -> link state last seen by the monitor
        self._raw: socket.socket | None = None
        self._mon: rtnl.RtnlSocket | None = None
        self._stop_fd = -1
        try:
            shared.nl = rtnl.RtnlSocket()
            self._mon = rtnl.RtnlSocket(rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_LINK |
                                        rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV4_ROUTE)
            self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            self._release()
            raise
        try:
            dv.cleanup_stale(shared.nl)
        except OSError as exc:
            log.warning("could not look for stale diversion filters: %s", exc)
        self._thread = threading.Thread(target=self._monitor, name=f"{stack.name}.netlink",
                                        daemon=True)
        self._thread.start()
        _register(self)

    @property
    def nl(self) -> rtnl.RtnlSocket | None:
        """The netlink request socket (None once the bridge is closed)."""
        return self._shared.nl

    # -- interfaces -----------------------------------------------------------------------------
    def open_interface(self, ifname: str) -> Interface:
        """The stack's Interface for Linux interface *ifname* (made once, kind "linux")."""
        self._shared.check_open()
        with self._shared.in_ns():
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise oserror(errno.EINVAL, f"no interface {ifname!r} in this network namespace") \
                    from None
        stack = self.stack
        with self._shared.lock:
            iface = stack.interfaces.get(ifname)
            if iface is not None:
                if iface.kind != "linux" or iface.device.ifindex == ifindex:
                    return iface
                # an interface of that name was deleted and re-created: start afresh
                if stack.ports.get(ifname) is None:
                    stack.interfaces.pop(ifname, None)
                    linux_device(iface).close()
                else:
                    return iface
            with self._shared.in_ns():
                device = AfPacketDevice(ifname)
            try:
                # nothing is diverted until port_enabled() computes the rule: the ring stays empty
                device.set_socket_filter(self._program(dv.DiversionRule(), socket_side=True))
                addrs = [Address(a, p)
                         for a, p in rtnl.addr_dump(self._shared.rtnl_socket(), device.ifindex)]
            except BaseException:
                device.close()
                raise
            iface = Interface(ifname, device, "linux", addrs)
            stack.interfaces[ifname] = iface
            return iface

    def interface_exists(self, ifname: str) -> bool:
        with self._shared.in_ns():
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                return False
        return True

    # -- ports ----------------------------------------------------------------------------------
    def port_enabled(self, port: "Port") -> None:
        """Install diversion for *port* and load the kernel's neighbours into the front cache."""
        self._shared.check_open()
        with self._shared.lock:
            ifindex = port.ifindex
            state = _PortDiversion(port, dv.TcDiversion(self._shared.rtnl_socket(), ifindex))
            self._divert[ifindex] = state
            self._shared.ports = {**self._shared.ports, ifindex: port}
            self._was_up[ifindex] = True
            try:
                self._refresh_addresses(port.iface)
                self._apply(state)
            except OSError as exc:
                self._forget_port(port)
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                    raise
                raise oserror(exc.errno, f"{port.name}: input diversion failed ({exc}); it "
                                         "needs tc clsact and cls_bpf (CONFIG_NET_SCH_INGRESS, "
                                         "CONFIG_NET_CLS_BPF)") from None
            except BaseException:
                self._forget_port(port)
                raise
            # a VLAN port changes what its parent port accepts
            if port.device.vlan_id:
                self._refresh_diversion()
        self._routing.sync_neighbours(port)
        port.device.is_up()

    def port_disabled(self, port: "Port") -> None:
        """Remove *port*'s diversion (tc filter, clsact qdisc we made) and forget it."""
        with self._shared.lock:
            self._forget_port(port)
            if port.device.vlan_id:
                self._refresh_diversion()
        device = linux_device(port)
        try:
            device.set_socket_filter(self._program(dv.DiversionRule(), socket_side=True))
        except OSError:
            pass
        gone = self.nl is None or rtnl.link_get(self.nl, port.ifindex) is None
        if gone:            # the interface was deleted: a new one of that name starts afresh
            iface = self.stack.interfaces.get(port.name)
            if iface is port.iface:
                self.stack.interfaces.pop(port.name, None)
            device.close()

    def _forget_port(self, port: "Port") -> None:
        state = self._divert.get(port.ifindex)
        if state is not None and state.port is port:
            del self._divert[port.ifindex]
            if state.link is not None:
                state.link.close()
                state.link = None
            try:
                state.tc.remove()
            except OSError as exc:
                log.warning("%s: could not remove the diversion filter: %s", port.name, exc)
        if self._shared.ports.get(port.ifindex) is port:
            ports = dict(self._shared.ports)
            del ports[port.ifindex]
            self._shared.ports = ports
        self._routing.purge_routes(port)

    # -- diversion ------------------------------------------------------------------------------
    def rule_for_port(self, port: "Port") -> dv.DiversionRule:
        """What *port* takes from the kernel now (see ``diversion.py``)."""
        stack = self.stack
        settings = stack.settings
        vlans = stack.vlans
        device = port.device
        all_ipv4 = False
        tagged: tuple[int, ...] = ()
        if device.vlan_id:
            all_ipv4 = device.vlan_id in vlans
        elif vlans:
            # VIDs with a VLAN device port on this interface are diverted on that device
            own = {p.device.vlan_id for p in self._shared.ports.values()
                   if p.device.vlan_id and getattr(p.device, "real_ifindex", 0) == port.ifindex}
            tagged = tuple(sorted(set(vlans) - own))
        if settings.strict_diversion:
            return dv.DiversionRule(all_ipv4=all_ipv4, tagged_vids=tagged)
        local = port.local_addrs
        udp: dict[int, set[int]] = {}
        targets: Iterable[int]
        bindings = [(key & 0xFFFFFFFF, key >> 32, slot.owners[0] if slot.owners else None)
                    for key, slot in list(stack.udp.slots.items())]
        for sock, (addr, p) in list(self._pending.items()):
            if sock.closed or sock.local is not None:
                self._pending.pop(sock, None)
            else:
                bindings.append((addr, p, sock))
        for addr, p, owner in bindings:
            dev = getattr(owner, "bound_device", None)
            if dev and dev != port.name:
                continue
            if addr == 0:
                targets = local
            elif addr in local:
                targets = (addr,)
            else:
                continue
            udp.setdefault(p, set()).update(targets)
        icmp: set[int] = set()
        if not settings.icmp_echo_ignore_all:
            icmp = set(port.iface_unicast)
            if not settings.icmp_echo_ignore_broadcasts:
                icmp |= local
        frags = set().union(*udp.values()) if udp else set()
        ethertypes = set(stack.protocols.by_ethertype)
        for et, socks in list(stack.packet.by_type.items()):
            if any(getattr(s, "bound_port", None) in (None, port) for s in socks):
                ethertypes.add(et)
        ethertypes -= _NOT_DIVERTED
        return dv.DiversionRule(
            udp=tuple((p, tuple(sorted(a))) for p, a in sorted(udp.items())),
            icmp_echo=tuple(sorted(icmp)), fragments=tuple(sorted(frags)),
            ethertypes=tuple(sorted(ethertypes)), all_ipv4=all_ipv4, tagged_vids=tagged)

    @staticmethod
    def _program(rule: dv.DiversionRule, socket_side: bool):
        if socket_side:
            return dv.build_program(rule, dv.SOCKET_ACCEPT, dv.SOCKET_PASS)
        return dv.build_program(rule, dv.TC_ACT_SHOT, dv.TC_ACT_UNSPEC)

    def _apply(self, state: _PortDiversion, force: bool = False) -> None:
        """Swap *state*'s programs if its rule changed. Called with ``_lock`` held.

        Order: the ring first accepts the union of the old and new rules, then tc switches to the
        new rule, then the ring narrows to it — so a frame is never dropped by tc without reaching
        the ring (at worst, during the swap, both get it)."""
        rule = self.rule_for_port(state.port)
        if rule == state.rule and not force:
            return
        device = linux_device(state.port)
        old = state.rule
        if old is not None and old != rule:
            device.set_socket_filter(self._program(_union(old, rule), socket_side=True))
        else:
            device.set_socket_filter(self._program(rule, socket_side=True))
        state.tc.install(self._program(rule, socket_side=False))
        device.set_socket_filter(self._program(rule, socket_side=True))
        state.rule = rule
        self.counters.diversion_updates += 1

    # -- user eBPF RX filters -------------------------------------------------------------------
    def set_user_filter(self, port: "Port", program: Any) -> None:
        """Install the user's eBPF RX filter *program* on Linux *port* (None: back to the
        default diversion). See ``core/src/filter/kernel.rs``.

        The swap: the ring first takes every frame and the core judges them with the new program
        in the VM; then tc switches (what the kernel's stack gets); then the ring's socket filter
        switches to the in-kernel program and the VM stops. So no frame the new tc program takes
        away from the kernel misses the ring, and whatever the VM refuses meanwhile is counted.
        A program the kernel refuses as a socket filter (direct packet access is not allowed
        there) keeps running in the VM, behind an accept-all ring; tc still runs it in-kernel."""
        self._shared.check_open()
        with self._shared.lock:
            state = self._divert.get(port.ifindex)
            if state is None or state.port is not port:
                raise oserror(errno.EBADF, f"{port.name} is not an enabled port")
            device = linux_device(port)
            if program is None:
                _core.set_port_filter(port.core, program)   # filter off before the rule is back
                self._install_accept_all(device)
                if state.link is not None:    # first, so that nothing is diverted and missed
                    state.link.close()
                    state.link = None
                state.user = None
                state.user_vids = None
                self._apply(state, force=True)
                state.kernel_progs = (None, None)
                return
            vids = tuple(sorted(self.stack.vlans))
            name = dv.ebpf_marker()
            try:
                if port.kernel_filter_counters is None:
                    port.kernel_filter_counters = _core.KernelCounters()
                tc_prog = kernel_load(program, "tc", vids, port.kernel_filter_counters, name)
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise                                # the verifier's EACCES/EINVAL...
                # no CAP_BPF: the program runs in the core's VM only, behind an accept-all ring;
                # the kernel's stack keeps getting what the default rule leaves it
                log.warning("%s: the kernel refuses eBPF programs (%s): the filter runs in the "
                            "core's VM, in-band traffic follows the default diversion",
                            port.name, exc.strerror)
                _core.set_port_filter(port.core, program)
                self._install_accept_all(device)
                state.user = None
                self._apply(state, force=True)
                self._install_accept_all(device)
                state.user = program
                state.user_vids = vids
                state.kernel_progs = (None, None)
                return
            try:
                sock_prog = kernel_load(program, "socket", vids, port.kernel_filter_counters,
                                        name)
            except OSError as exc:
                log.info("%s: the kernel refuses the filter as a socket filter (%s); it runs in "
                         "the core's VM behind an accept-all ring", port.name, exc.strerror)
                sock_prog = None
            _core.set_port_filter(port.core, program)
            self._install_accept_all(device)
            try:
                self._attach_tc(state, tc_prog, name)
            except OSError:
                # the old state back: the previous filter's programs, or the default rule
                if state.user is None:
                    _core.set_port_filter(port.core, None)
                    self._apply(state, force=True)
                else:
                    self._reinstall_user(state)
                raise
            if sock_prog is not None:
                device.set_socket_ebpf_filter(sock_prog)
                _core.set_port_filter(port.core, None)
            state.user = program
            state.user_vids = vids
            state.kernel_progs = (tc_prog, sock_prog)
            state.rule = None
            self.counters.diversion_updates += 1

    def _attach_tc(self, state: _PortDiversion, tc_prog: Any, name: str) -> None:
        """Run *tc_prog* at the port's tc ingress: through a tcx link (Linux 6.6+; it goes with
        the process, even a killed one), else as the clsact filter evlnet's diversion uses
        (then a killed process leaves it until the next evlnet start removes it)."""
        if state.link is not None:
            state.link.update(tc_prog)
            return
        try:
            with self._shared.in_ns():    # the kernel reads the ifindex in the caller's netns
                state.link = _core.TcxLink(tc_prog, state.port.ifindex)
        except OSError as exc:
            log.info("%s: no tcx (%s): the filter runs as a clsact filter", state.port.name,
                     exc.strerror)
            if not state.tc.installed:
                state.tc.install(self._program(dv.DiversionRule(), socket_side=False))
            rtnl.bpf_fd_filter_set(self._shared.rtnl_socket(), state.port.ifindex, dv.TC_PRIO,
                                   dv.TC_HANDLE, tc_prog.fileno(), name)
            return
        # the link runs before clsact filters: the default diversion's filter (and the clsact
        # qdisc, when evlnet made it) can go, so that nothing of ours outlives the process
        state.tc.remove()

    def _reinstall_user(self, state: _PortDiversion) -> None:
        tc_prog, sock_prog = state.kernel_progs
        if tc_prog is None:                       # VM only (no CAP_BPF)
            _core.set_port_filter(state.port.core, state.user)
            return
        self._attach_tc(state, tc_prog, dv.ebpf_marker())
        if sock_prog is not None:
            linux_device(state.port).set_socket_ebpf_filter(sock_prog)
            _core.set_port_filter(state.port.core, None)
        else:
            _core.set_port_filter(state.port.core, state.user)

    def _install_accept_all(self, device: AfPacketDevice) -> None:
        device.set_socket_filter([(dv.BPF_RET | dv.BPF_K, 0, 0, dv.SOCKET_ACCEPT)])

    def _refresh_diversion(self) -> None:
        with self._shared.lock:
            for state in list(self._divert.values()):
                if state.user is not None and state.kernel_progs[0] is None:
                    # VM only (no CAP_BPF): tc follows the default rule, the ring takes all
                    try:
                        self._apply(state)
                    finally:
                        self._install_accept_all(linux_device(state.port))
                    continue
                if state.user is not None:
                    # the user's filter decides; only the VLAN set reaches its programs
                    if tuple(sorted(self.stack.vlans)) != state.user_vids:
                        try:
                            self.set_user_filter(state.port, state.user)
                        except OSError as exc:
                            log.warning("%s: filter update failed: %s", state.port.name, exc)
                    continue
                try:
                    self._apply(state)
                except OSError as exc:
                    if exc.errno == errno.ENODEV or not state.port.link_up:
                        log.debug("%s: diversion update failed: %s", state.port.name, exc)
                    else:
                        log.warning("%s: diversion update failed: %s", state.port.name, exc)

    def refresh_diversion(self) -> None:
        """Recompute what every port accepts (after changing stack settings by hand)."""
        self._refresh_diversion()

    def vlans_changed(self) -> None:
        self._refresh_diversion()

    # -- sockets --------------------------------------------------------------------------------
    def new_kernel_socket(self, proto: int = socket.IPPROTO_UDP) -> socket.socket:
        """A genuine kernel UDP socket in the bridge's namespace."""
        self._shared.check_open()
        with self._shared.in_ns():
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, proto)

    def owns_socket(self, sock) -> bool:
        """Whether demoted datagrams of *sock* leave through the kernel's stack."""
        if getattr(sock, "_kernel", None) is not None:
            return True
        return not any(i.kind != "linux" for i in self.stack.interfaces.values())

    def bind(self, sock, addr: int, port: int) -> None:
        """Reserve (addr, port) in the kernel with the genuine socket, and divert it."""
        k = getattr(sock, "_kernel", None)
        if k is not None and self._kernel_knows(addr):
            try:
                k.bind((fmt_ip(addr), port))
            except OSError as exc:
                if exc.errno is None:
                    raise
                raise oserror(exc.errno, f"{fmt_ip(addr)}:{port}: {os.strerror(exc.errno)} "
                                         "(in the kernel)") from None
        if getattr(sock, "family", None) == socket.AF_INET:
            with self._shared.lock:
                self._pending[sock] = (addr, port)
                self._refresh_diversion()

    def _kernel_knows(self, addr: int) -> bool:
        if addr in (0, 0xFFFFFFFF):
            return True
        for iface in self.stack.interfaces.values():
            if any(a.address == addr for a in iface.addresses):
                return iface.kind == "linux"
        return True

    def connect(self, sock, addr: int, port: int) -> None:
        k = getattr(sock, "_kernel", None)
        if k is None:
            return
        try:
            k.connect((fmt_ip(addr), port))
        except OSError as exc:        # in-band send() falls back to sendto(remote)
            log.debug("kernel connect to %s:%d failed: %s", fmt_ip(addr), port, exc)

    def socket_closed(self, sock) -> None:
        with self._shared.lock:
            self._pending.pop(sock, None)
            if getattr(sock, "local", None) is not None or hasattr(sock, "ethertype"):
                self._refresh_diversion()

    def demoted_send(self, sock, payload: bytes, dst: int, dport: int) -> None:
        """In-band: send a datagram that missed the front cache through the kernel's stack."""
        stack = self.stack
        k = getattr(sock, "_kernel", None)
        try:
            if k is not None:
                k.sendto(payload, socket.MSG_DONTWAIT, (fmt_ip(dst), dport))
                self.counters.demoted_kernel += 1
            else:
                self._raw_send(sock, payload, dst, dport)
                self.counters.demoted_raw += 1
        except OSError as exc:
            stack.counters.tx_demote_failed += 1
            log.info("demoted datagram to %s:%d dropped: %s", fmt_ip(dst), dport, exc)
            return
        # what EVL's ip_learn_oob_route() does when the kernel routes through an oob port
        try:
            stack.resolve_route(dst, getattr(sock, "bound_device", None), True)
        except OSError:
            pass

    def _raw_send(self, sock, payload: bytes, dst: int, dport: int) -> None:
        from ..wire.checksum import checksum_add
        local = sock.local or (0, 0)
        src, sport = local
        if not src or src == 0xFFFFFFFF:
            src = rtnl.route_get(self._shared.rtnl_socket(), dst).prefsrc
        ulen = 8 + len(payload)
        pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + ulen
        seg = bytearray(_UDP_HDR.pack(sport, dport, ulen, 0) + payload)
        csum = ~checksum_add(memoryview(seg), pseudo) & 0xFFFF
        struct.pack_into("!H", seg, 6, csum or 0xFFFF)
        hdr = _IP_HDR.pack(0x45, getattr(sock, "tos", 0), 20 + ulen, 0,
                           0x4000 if ulen + 20 <= 1500 else 0, getattr(sock, "ttl", 64), 17, 0,
                           src, dst)
        if self._raw is None:
            with self._shared.in_ns():
                self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.IPPROTO_RAW)
        self._raw.sendto(hdr + bytes(seg), socket.MSG_DONTWAIT, (fmt_ip(dst), 0))

    # -- routes and neighbours (routing.py) -----------------------------------------------------
    def resolve_route(self, dst: int, bound_device: str | None, mayroute: bool) -> Route:
        return self._routing.resolve_route(dst, bound_device, mayroute)

    def solicit_neighbour(self, route: Route, deadline_ns: int, permanent: bool) -> Neighbour:
        return self._routing.solicit_neighbour(route, deadline_ns, permanent)

    def make_permanent(self, neigh: Neighbour) -> None:
        self._routing.make_permanent(neigh)

    # -- monitor (in-band daemon thread) --------------------------------------------------------
    def _monitor(self) -> None:
        mon = self._mon
        if mon is None:               # closed (and released) before this thread ran
            return
        poller = select.poll()
        poller.register(mon.fileno(), select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        while not self._shared.closed:
            try:
                # no timer: what sends no netlink notification (packet sockets, custom
                # protocols, settings) refreshes the diversion when it changes (Stack)
                ready = poller.poll()
                if any(fd == self._stop_fd for fd, _ in ready):
                    break
                if ready:
                    events = mon.read_events()
                    if events is None:
                        self._resync()
                    else:
                        for mtype, body in events:
                            self._event(mtype, body)
            except Exception:   # the monitor must survive anything; it is the cache's only feed
                if self._shared.closed:
                    break
                log.exception("netlink monitor")
                time.sleep(0.05)

    def _event(self, mtype: int, body) -> None:
        msg = rtnl.decode(mtype, body)
        if msg is None:
            return
        self.counters.events += 1
        if isinstance(msg, rtnl.NeighMsg):
            port = self._shared.ports.get(msg.ifindex)
            if port is not None:
                self._routing.neigh_event(port, msg)
        elif isinstance(msg, rtnl.RouteMsg):
            if msg.family == socket.AF_INET:
                self._routing.revalidate_routes()
        elif isinstance(msg, rtnl.AddrMsg):
            self._addr_event(msg.ifindex)
        elif isinstance(msg, rtnl.LinkMsg):
            self._link_event(msg)

    def _addr_event(self, ifindex: int) -> None:
        for iface in list(self.stack.interfaces.values()):
            if iface.kind == "linux" and iface.device.ifindex == ifindex:
                try:
                    self._refresh_addresses(iface)
                except OSError as exc:
                    log.debug("address refresh of %s failed: %s", iface.name, exc)
                port = self._shared.ports.get(ifindex)
                if port is not None:
                    port.refresh_addresses()
                    self._refresh_diversion()
        self._routing.revalidate_routes()

    def _refresh_addresses(self, iface: Interface) -> None:
        addrs = [Address(a, p)
                 for a, p in rtnl.addr_dump(self._shared.rtnl_socket(), iface.device.ifindex)]
        iface.addresses[:] = addrs
        port = self.stack.ports.get(iface.name)
        if port is not None and port.iface is iface:
            port.refresh_addresses()

    def _link_event(self, msg: rtnl.LinkMsg) -> None:
        port = self._shared.ports.get(msg.ifindex)
        if port is not None:
            port.device.is_up()            # reports a change through on_link_change
            up = port.link_up
            if up and not self._was_up.get(msg.ifindex, True):
                self._link_restored(port)
            self._was_up[msg.ifindex] = up
            return
        if msg.deleted:                    # an opened interface that is no port went away
            for name, iface in list(self.stack.interfaces.items()):
                if iface.kind == "linux" and iface.device.ifindex == msg.ifindex \
                        and self.stack.ports.get(name) is None:
                    self.stack.interfaces.pop(name, None)
                    linux_device(iface).close()

    def _link_restored(self, port: "Port") -> None:
        """The link is back: what was kept while it was down is replaced by the kernel's view."""
        cache = self.stack.frontcache.neighbours
        for neigh in list(cache):
            if neigh.port is port:
                cache.forget(neigh.address)
        self._routing.purge_routes(port)
        self._routing.sync_neighbours(port)

    def _resync(self) -> None:
        """Notifications were lost: reload everything from the kernel."""
        self.counters.resyncs += 1
        cache = self.stack.frontcache.neighbours
        for port in list(self._shared.ports.values()):
            for neigh in list(cache):
                if neigh.port is port:
                    cache.forget(neigh.address)
            self._routing.sync_neighbours(port)
            port.device.is_up()
            try:
                self._refresh_addresses(port.iface)
            except OSError:
                pass
        self._routing.purge_routes()
        self._refresh_diversion()

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove all diversion, stop the monitor, release sockets and devices."""
        if self._shared.closed:
            return
        self._remove_all_diversion()
        self._shared.closed = True
        if self._stop_fd >= 0:
            os.eventfd_write(self._stop_fd, 1)
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        for name, iface in list(self.stack.interfaces.items()):
            if iface.kind == "linux" and self.stack.ports.get(name) is None:
                self.stack.interfaces.pop(name, None)
                linux_device(iface).close()
        self._release()
        _bridges.discard(self)

    def _remove_all_diversion(self) -> None:
        with self._shared.lock:
            for ifindex, state in list(self._divert.items()):
                try:
                    state.tc.remove()
                except OSError as exc:
                    log.warning("ifindex %d: diversion filter removal failed: %s", ifindex, exc)
            self._divert.clear()

    def _release(self) -> None:
        for attr in ("_mon", "_raw"):
            s = getattr(self, attr, None)
            if s is not None:
                setattr(self, attr, None)
                try:
                    s.close()
                except OSError:
                    pass
        if self._stop_fd >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1
        self._shared.release()

    def diversion_filters(self) -> list[tuple[int, tuple[int, int]]]:
        """evlnet's tc filters in this namespace: [(ifindex, (pid, start time))]."""
        return dv.list_filters(self._shared.rtnl_socket())


def kernel_load(program: Any, hook: str, vids: tuple[int, ...], counters: Any, name: str) -> Any:
    """Load *program* into the kernel for *hook* (tests replace this to play a process without
    CAP_BPF)."""
    return program.kernel_load(hook, list(vids), counters, name)


def _union(a: dv.DiversionRule, b: dv.DiversionRule) -> dv.DiversionRule:
    udp: dict[int, set[int]] = {}
    for p, addrs in a.udp + b.udp:
        udp.setdefault(p, set()).update(addrs)
    return dv.DiversionRule(
        udp=tuple((p, tuple(sorted(s))) for p, s in sorted(udp.items())),
        icmp_echo=tuple(sorted(set(a.icmp_echo) | set(b.icmp_echo))),
        fragments=tuple(sorted(set(a.fragments) | set(b.fragments))),
        ethertypes=tuple(sorted(set(a.ethertypes) | set(b.ethertypes))),
        all_ipv4=a.all_ipv4 or b.all_ipv4,
        tagged_vids=tuple(sorted(set(a.tagged_vids) | set(b.tagged_vids))))


def _register(bridge: KernelBridge) -> None:
    global _atexit_registered
    _bridges.add(bridge)
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True


def _at_exit() -> None:
    """Nothing may stay in the kernel after the process exits: remove every diversion filter."""
    for bridge in list(_bridges):
        try:
            bridge._remove_all_diversion()
        except Exception:
            pass

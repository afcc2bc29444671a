"""Input diversion and user eBPF RX filters on Linux ports: what a port takes from the kernel.

Each enabled Linux port has a ``PortDiversion``: its tc hook (``diversion.TcDiversion``) and what
runs there and in its AF_PACKET ring's socket filter. ``rule_for_port()`` computes what the port
takes now (its oob bindings, ICMP echo, custom EtherTypes, the VLAN set; see ``diversion.py``);
``apply()`` swaps both hooks' programs without dropping a frame on the way; ``refresh()`` does it
for every port when what the rule depends on changed (a binding, a setting, a VLAN, an address).

``set_user_filter()`` replaces the rule by the user's eBPF program: in the kernel at the same two
hooks (tc through a tcx link when the kernel has tcx, else as a clsact filter), or in the core's
VM when the kernel refuses it.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..datapath import _core
from ..drivers.afpacket import AfPacketDevice
from ..errors import oserror
from . import diversion as dv
from . import rtnl
from .bridge_state import BridgeState, linux_device

if TYPE_CHECKING:
    from ..core.port import Port

log = logging.getLogger("evlnet.linux")
_NOT_DIVERTED = {0x0800, 0x0806, 0x8100, 0x88A8}   # IPv4 and ARP by rule; VLAN tags by the kernel


class PortDiversion:
    """One enabled Linux port's input: its tc hook and the rule installed there and in its ring,
    or the user's filter that replaces the rule and the kernel programs running it."""

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


def diversion_program(rule: dv.DiversionRule, socket_side: bool):
    """*rule*'s classic BPF program for the ring's socket filter (*socket_side*) or for tc."""
    if socket_side:
        return dv.build_program(rule, dv.SOCKET_ACCEPT, dv.SOCKET_PASS)
    return dv.build_program(rule, dv.TC_ACT_SHOT, dv.TC_ACT_UNSPEC)


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


class PortFilters:
    """The diversion and user filters of the bridge's Linux ports (see the module docstring).

    *kernel_load* loads an eBPF program into the kernel (the bridge passes its ``kernel_load``,
    which tests replace to play a process without CAP_BPF)."""

    def __init__(self, shared: BridgeState, kernel_load: Callable[..., Any]) -> None:
        self._shared = shared
        self.stack = shared.stack
        self.counters = shared.counters
        self._kernel_load = kernel_load
        self._divert: dict[int, PortDiversion] = {}
        #: sockets being bound, diverted before the stack's binding exists: sock -> (addr, port)
        self.pending: dict[Any, tuple[int, int]] = {}

    # -- ports ----------------------------------------------------------------------------------
    def add_port(self, port: "Port") -> PortDiversion:
        """Track *port*'s diversion (nothing is installed until ``apply()``)."""
        state = PortDiversion(port, dv.TcDiversion(self._shared.rtnl_socket(), port.ifindex))
        self._divert[port.ifindex] = state
        return state

    def remove_port(self, port: "Port") -> None:
        """Remove *port*'s diversion or filter from the kernel (tcx link, tc filter, clsact
        qdisc we made) and forget it."""
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

    def remove_all(self) -> None:
        """Remove every port's tc filter (close, and the ``atexit`` hook)."""
        with self._shared.lock:
            for ifindex, state in list(self._divert.items()):
                try:
                    state.tc.remove()
                except OSError as exc:
                    log.warning("ifindex %d: diversion filter removal failed: %s", ifindex, exc)
            self._divert.clear()

    def diversion_filters(self) -> list[tuple[int, tuple[int, int]]]:
        """evlnet's tc filters in this namespace: [(ifindex, (pid, start time))]."""
        return dv.list_filters(self._shared.rtnl_socket())

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
        for sock, (addr, p) in list(self.pending.items()):
            if sock.closed or sock.local is not None:
                self.pending.pop(sock, None)
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

    def apply(self, state: PortDiversion, force: bool = False) -> None:
        """Swap *state*'s programs if its rule changed. Called with the bridge lock held.

        Order: the ring first accepts the union of the old and new rules, then tc switches to the
        new rule, then the ring narrows to it — so a frame is never dropped by tc without reaching
        the ring (at worst, during the swap, both get it)."""
        rule = self.rule_for_port(state.port)
        if rule == state.rule and not force:
            return
        device = linux_device(state.port)
        old = state.rule
        if old is not None and old != rule:
            device.set_socket_filter(diversion_program(_union(old, rule), socket_side=True))
        else:
            device.set_socket_filter(diversion_program(rule, socket_side=True))
        state.tc.install(diversion_program(rule, socket_side=False))
        device.set_socket_filter(diversion_program(rule, socket_side=True))
        state.rule = rule
        self.counters.diversion_updates += 1


    def refresh(self) -> None:
        """Recompute what every port accepts (a user filter is reloaded when the VLAN set it was
        loaded with changed)."""
        with self._shared.lock:
            for state in list(self._divert.values()):
                if state.user is not None and state.kernel_progs[0] is None:
                    # VM only (no CAP_BPF): tc follows the default rule, the ring takes all
                    try:
                        self.apply(state)
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
                    self.apply(state)
                except OSError as exc:
                    if exc.errno == errno.ENODEV or not state.port.link_up:
                        log.debug("%s: diversion update failed: %s", state.port.name, exc)
                    else:
                        log.warning("%s: diversion update failed: %s", state.port.name, exc)

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
                self.apply(state, force=True)
                state.kernel_progs = (None, None)
                return
            vids = tuple(sorted(self.stack.vlans))
            name = dv.ebpf_marker()
            try:
                if port.kernel_filter_counters is None:
                    port.kernel_filter_counters = _core.KernelCounters()
                tc_prog = self._kernel_load(program, "tc", vids, port.kernel_filter_counters, name)
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
                self.apply(state, force=True)
                self._install_accept_all(device)
                state.user = program
                state.user_vids = vids
                state.kernel_progs = (None, None)
                return
            try:
                sock_prog = self._kernel_load(program, "socket", vids, port.kernel_filter_counters,
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
                    self.apply(state, force=True)
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

    def _attach_tc(self, state: PortDiversion, tc_prog: Any, name: str) -> None:
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
                state.tc.install(diversion_program(dv.DiversionRule(), socket_side=False))
            rtnl.bpf_fd_filter_set(self._shared.rtnl_socket(), state.port.ifindex, dv.TC_PRIO,
                                   dv.TC_HANDLE, tc_prog.fileno(), name)
            return
        # the link runs before clsact filters: the default diversion's filter (and the clsact
        # qdisc, when evlnet made it) can go, so that nothing of ours outlives the process
        state.tc.remove()

    def _reinstall_user(self, state: PortDiversion) -> None:
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

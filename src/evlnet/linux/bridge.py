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

Each of the other jobs has its own module; ``KernelBridge`` owns one object per job and its
methods (the ones ``Stack`` calls) delegate to them:

- ``port_filters.py`` — input diversion (``rule_for_port()``, ``refresh_diversion()``,
  ``vlans_changed()``, ``diversion_filters()``) and the user's eBPF RX filters
  (``set_user_filter()``);
- ``kernel_sockets.py`` — genuine kernel sockets (``new_kernel_socket()``, ``owns_socket()``,
  ``bind()``, ``connect()``, ``socket_closed()``, ``demoted_send()``);
- ``routing.py`` — routes and neighbours from the kernel (``resolve_route()``,
  ``solicit_neighbour()``, ``make_permanent()``);
- ``monitor.py`` — the ``<stack>.netlink`` thread: the kernel's notifications of neighbours,
  links, addresses and routes, applied to the front cache, the ports and their diversion;
- ``bridge_state.py`` — what they all share: the namespace, the netlink request socket, the
  enabled ports and their lock, the counters.

Imports go one way: ``bridge`` imports the parts; ``monitor`` uses ``routing`` and
``port_filters``, ``kernel_sockets`` uses ``port_filters``, all use ``bridge_state``; no part
imports the bridge or reaches into another's private names.
"""
from __future__ import annotations

import atexit
import errno
import logging
import socket
import weakref
from typing import TYPE_CHECKING, Any

from ..core.frontcache import Neighbour, Route
from ..core.interface import Address, Interface
from ..drivers.afpacket import AfPacketDevice
from ..errors import oserror
from . import diversion as dv
from . import rtnl
from .bridge_state import BridgeState, linux_device
from .kernel_sockets import KernelSockets
from .monitor import NetlinkMonitor
from .port_filters import PortFilters, diversion_program
from .routing import KernelRouting

if TYPE_CHECKING:
    from ..core.port import Port
    from ..core.stack import Stack

log = logging.getLogger("evlnet.linux")

_bridges: "weakref.WeakSet[KernelBridge]" = weakref.WeakSet()
_atexit_registered = False


class KernelBridge:
    """The Linux side of one stack (see the module docstring)."""

    def __init__(self, stack: "Stack") -> None:
        self._shared = shared = BridgeState(stack)
        self.stack = stack
        self.counters = shared.counters
        self._routing = KernelRouting(shared)
        # kernel_load is looked up at each call, so that tests can replace bridge.kernel_load
        self._filters = PortFilters(shared, lambda *args: kernel_load(*args))
        self._sockets = KernelSockets(shared, self._filters)
        self._monitor = NetlinkMonitor(shared, self._routing, self._filters)
        try:
            shared.nl = rtnl.RtnlSocket()
            self._monitor.open()
        except BaseException:
            self._release()
            raise
        try:
            dv.cleanup_stale(shared.nl)
        except OSError as exc:
            log.warning("could not look for stale diversion filters: %s", exc)
        self._monitor.start()
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
                device.set_socket_filter(diversion_program(dv.DiversionRule(), socket_side=True))
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
            state = self._filters.add_port(port)
            self._shared.ports = {**self._shared.ports, ifindex: port}
            self._monitor.was_up[ifindex] = True
            try:
                self._monitor.refresh_addresses(port.iface)
                self._filters.apply(state)
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
                self._filters.refresh()
        self._routing.sync_neighbours(port)
        port.device.is_up()

    def port_disabled(self, port: "Port") -> None:
        """Remove *port*'s diversion (tc filter, clsact qdisc we made) and forget it."""
        with self._shared.lock:
            self._forget_port(port)
            if port.device.vlan_id:
                self._filters.refresh()
        device = linux_device(port)
        try:
            device.set_socket_filter(diversion_program(dv.DiversionRule(), socket_side=True))
        except OSError:
            pass
        gone = self.nl is None or rtnl.link_get(self.nl, port.ifindex) is None
        if gone:            # the interface was deleted: a new one of that name starts afresh
            iface = self.stack.interfaces.get(port.name)
            if iface is port.iface:
                self.stack.interfaces.pop(port.name, None)
            device.close()

    def _forget_port(self, port: "Port") -> None:
        self._filters.remove_port(port)
        if self._shared.ports.get(port.ifindex) is port:
            ports = dict(self._shared.ports)
            del ports[port.ifindex]
            self._shared.ports = ports
        self._routing.purge_routes(port)

    # -- diversion and user eBPF RX filters (port_filters.py) -----------------------------------
    def rule_for_port(self, port: "Port") -> dv.DiversionRule:
        return self._filters.rule_for_port(port)

    def set_user_filter(self, port: "Port", program: Any) -> None:
        self._filters.set_user_filter(port, program)

    def refresh_diversion(self) -> None:
        """Recompute what every port accepts (after changing stack settings by hand)."""
        self._filters.refresh()

    def vlans_changed(self) -> None:
        self._filters.refresh()

    def diversion_filters(self) -> list[tuple[int, tuple[int, int]]]:
        """evlnet's tc filters in this namespace: [(ifindex, (pid, start time))]."""
        return self._filters.diversion_filters()

    # -- genuine kernel sockets (kernel_sockets.py) ---------------------------------------------
    def new_kernel_socket(self, proto: int = socket.IPPROTO_UDP) -> socket.socket:
        return self._sockets.new_kernel_socket(proto)

    def owns_socket(self, sock) -> bool:
        return self._sockets.owns_socket(sock)

    def bind(self, sock, addr: int, port: int) -> None:
        self._sockets.bind(sock, addr, port)

    def connect(self, sock, addr: int, port: int) -> None:
        self._sockets.connect(sock, addr, port)

    def socket_closed(self, sock) -> None:
        self._sockets.socket_closed(sock)

    def demoted_send(self, sock, payload: bytes, dst: int, dport: int) -> None:
        self._sockets.demoted_send(sock, payload, dst, dport)

    # -- routes and neighbours (routing.py) -----------------------------------------------------
    def resolve_route(self, dst: int, bound_device: str | None, mayroute: bool) -> Route:
        return self._routing.resolve_route(dst, bound_device, mayroute)

    def solicit_neighbour(self, route: Route, deadline_ns: int, permanent: bool) -> Neighbour:
        return self._routing.solicit_neighbour(route, deadline_ns, permanent)

    def make_permanent(self, neigh: Neighbour) -> None:
        self._routing.make_permanent(neigh)

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove all diversion, stop the monitor, release sockets and devices."""
        if self._shared.closed:
            return
        self._remove_all_diversion()
        self._shared.closed = True
        self._monitor.stop()
        for name, iface in list(self.stack.interfaces.items()):
            if iface.kind == "linux" and self.stack.ports.get(name) is None:
                self.stack.interfaces.pop(name, None)
                linux_device(iface).close()
        self._release()
        _bridges.discard(self)

    def _remove_all_diversion(self) -> None:
        self._filters.remove_all()

    def _release(self) -> None:
        self._monitor.release()
        self._sockets.release()
        self._shared.release()


def kernel_load(program: Any, hook: str, vids: tuple[int, ...], counters: Any, name: str) -> Any:
    """Load *program* into the kernel for *hook* (tests replace this to play a process without
    CAP_BPF)."""
    return program.kernel_load(hook, list(vids), counters, name)


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

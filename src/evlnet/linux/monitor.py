"""The rtnetlink monitor: the kernel bridge's in-band thread that keeps the front cache fed.

A daemon thread (``<stack>.netlink``, in-band) listens to RTMGRP_NEIGH|LINK|IPV4_IFADDR|IPV4_ROUTE,
as EVL's ARP cache listens to NETEVENT_NEIGH_UPDATE: neighbour notifications of oob ports go to
``routing.py`` (REACHABLE/PERMANENT/NOARP neighbours are cached; STALE, DELAY, PROBE, FAILED and
deleted ones are dropped at once: ``ip neigh del`` takes effect in about a millisecond); any IPv4
route change revalidates the routes learnt for Linux ports; address changes update the port
(``refresh_addresses()``) and its diversion; link changes go to the device's ``is_up()``, which
reports them through ``on_link_change`` (False: senders get ENETDOWN and receivers wake; None,
the interface was deleted: the port is disabled in-band and can be enabled again when an
interface of that name comes back). Lost notifications (ENOBUFS) trigger a full resync.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

from ..core.interface import Address, Interface
from . import rtnl
from .bridge_state import BridgeState, linux_device
from .port_filters import PortFilters
from .routing import KernelRouting

if TYPE_CHECKING:
    from ..core.port import Port

log = logging.getLogger("evlnet.linux")


class NetlinkMonitor:
    """The netlink notifications of the bridge's namespace, applied to the stack (see the module
    docstring)."""

    def __init__(self, shared: BridgeState, routing: KernelRouting,
                 filters: PortFilters) -> None:
        self._shared = shared
        self.stack = shared.stack
        self.counters = shared.counters
        self._routing = routing
        self._filters = filters
        self.was_up: dict[int, bool] = {}         # ifindex -> link state last seen by the monitor
        self._mon: rtnl.RtnlSocket | None = None
        self._stop_fd = -1
        self._thread: threading.Thread | None = None

    # -- lifetime -------------------------------------------------------------------------------
    def open(self) -> None:
        """Make the notification socket and the stop eventfd (``release()`` closes them)."""
        self._mon = rtnl.RtnlSocket(rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_LINK |
                                    rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV4_ROUTE)
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{self.stack.name}.netlink",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake the thread (the bridge is marked closed first) and wait for it, unless called
        from it."""
        if self._stop_fd >= 0:
            os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(2.0)

    def release(self) -> None:
        mon, self._mon = self._mon, None
        if mon is not None:
            try:
                mon.close()
            except OSError:
                pass
        if self._stop_fd >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
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
                    self.refresh_addresses(iface)
                except OSError as exc:
                    log.debug("address refresh of %s failed: %s", iface.name, exc)
                port = self._shared.ports.get(ifindex)
                if port is not None:
                    port.refresh_addresses()
                    self._filters.refresh()
        self._routing.revalidate_routes()

    def refresh_addresses(self, iface: Interface) -> None:
        """Reload *iface*'s IPv4 addresses from the kernel (its port's too, when enabled)."""
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
            if up and not self.was_up.get(msg.ifindex, True):
                self._link_restored(port)
            self.was_up[msg.ifindex] = up
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
                self.refresh_addresses(port.iface)
            except OSError:
                pass
        self._routing.purge_routes()
        self._filters.refresh()

"""Routes and neighbours learnt from the kernel: the kernel bridge's routing part.

The front cache of a Linux port is fed by the kernel, not by evlnet's own ARP:

- ``resolve_route()`` asks the kernel (RTM_GETROUTE): ENODEV when it routes through an interface
  that is no oob port, ENETUNREACH when a gateway is needed without EVL_NEIGH_MAYROUTE or there
  is no route. The stack learns the answer.
- ``solicit_neighbour()`` makes the kernel resolve the next hop itself (RTM_NEWNEIGH with
  NTF_USE, after deleting a STALE/DELAY/PROBE/FAILED entry as EVL forces stale entries to
  NUD_NONE) and waits until the monitor has cached the answer (ETIMEDOUT at the deadline);
  ``make_permanent()`` turns the kernel entry PERMANENT.
- ``neigh_event()`` is where the kernel's neighbours reach the front cache (from the monitor,
  ``monitor.py``, and from ``sync_neighbours()``): REACHABLE/PERMANENT/NOARP ones are cached, with
  their on-link route; anything else is dropped at once.
- ``purge_routes()`` and ``revalidate_routes()`` forget or re-ask the routes learnt for Linux
  ports when a port goes or the kernel's routing changes.
"""
from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING

from ..core.frontcache import Neighbour, Route
from ..errors import oserror
from . import rtnl
from .bridge_state import BridgeState, fmt_ip

if TYPE_CHECKING:
    from ..core.port import Port

log = logging.getLogger("evlnet.linux")
_now = time.monotonic_ns
#: How often solicit re-kicks the kernel's resolution while it waits for a neighbour (kernel
#: ARP gives up after ~3 s: mcast_solicit x retrans_time).
SOLICIT_RETRY_NS = 1_000_000_000
#: Routes re-asked from the kernel one by one after a routing change; more are flushed.
REVALIDATE_MAX = 256


class KernelRouting:
    """The kernel's routes and neighbours for the stack's front cache (see the module
    docstring)."""

    def __init__(self, shared: BridgeState) -> None:
        self._shared = shared
        self.stack = shared.stack
        self.counters = shared.counters

    def resolve_route(self, dst: int, bound_device: str | None, mayroute: bool) -> Route:
        """The kernel's route to *dst*, as an oob Route (not cached here: the stack learns it)."""
        self._shared.check_open()
        oif = 0
        if bound_device:
            port = self.stack.ports.get(bound_device)
            if port is None or not port.enabled or port.iface.kind != "linux":
                raise oserror(errno.ENODEV, f"{bound_device} is not an enabled oob port")
            oif = port.ifindex
        try:
            ans = rtnl.route_get(self._shared.rtnl_socket(), dst, oif)
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.EACCES,
                             errno.EPERM):
                raise oserror(errno.ENETUNREACH, f"no route to {fmt_ip(dst)}") from None
            raise
        if ans.rtype in (rtnl.RTN_UNREACHABLE, rtnl.RTN_PROHIBIT, rtnl.RTN_BLACKHOLE):
            raise oserror(errno.ENETUNREACH, f"no route to {fmt_ip(dst)}")
        port = self._shared.ports.get(ans.oif)
        if ans.rtype == rtnl.RTN_LOCAL or port is None or not port.enabled:
            name = self._ifname(ans.oif)
            raise oserror(errno.ENODEV, f"{fmt_ip(dst)} is routed through {name}, "
                                        "which is not an oob port")
        if ans.gateway and not mayroute:
            raise oserror(errno.ENETUNREACH, f"{fmt_ip(dst)} is reached through gateway "
                                             f"{fmt_ip(ans.gateway)} (EVL_NEIGH_MAYROUTE)")
        source = ans.prefsrc or port.iface.source_for(dst)
        return Route(dst, port, ans.gateway, source)

    def _ifname(self, ifindex: int) -> str:
        try:
            link = rtnl.link_get(self._shared.rtnl_socket(), ifindex) if ifindex else None
        except OSError:
            link = None
        return link.ifname if link is not None and link.ifname else f"ifindex {ifindex}"

    def solicit_neighbour(self, route: Route, deadline_ns: int, permanent: bool) -> Neighbour:
        """Have the kernel resolve *route*'s next hop (ARP) and wait for the front cache to learn
        it from the monitor. ETIMEDOUT at *deadline_ns*."""
        self._shared.check_open()
        hop = route.next_hop
        port = route.port
        cache = self.stack.frontcache.neighbours
        kick_at = 0
        while True:
            neigh = cache.peek(hop)
            if neigh is not None and neigh.port is port:
                return neigh
            now = _now()
            if now >= kick_at:
                neigh = self._kick(hop, port)
                if neigh is not None:
                    return neigh
                kick_at = now + SOLICIT_RETRY_NS
            if now >= deadline_ns:
                raise oserror(errno.ETIMEDOUT, f"{fmt_ip(hop)} did not answer ARP on {port.name}")
            cache.wait_for(hop, min(deadline_ns, kick_at))

    def _kick(self, hop: int, port: "Port") -> Neighbour | None:
        """Look at the kernel's entry: use it when valid, else (re)start its resolution."""
        nl = self._shared.rtnl_socket()
        entry = rtnl.neigh_get(nl, hop, port.ifindex)
        if entry is not None and entry.state & rtnl.NUD_VALID_FOR_OOB and entry.lladdr:
            neigh = Neighbour(hop, entry.lladdr, port, bool(entry.state & rtnl.NUD_PERMANENT))
            self.stack.frontcache.neighbours.learn(neigh)
            return neigh
        if entry is not None and entry.state & rtnl.NUD_INCOMPLETE:
            return None                   # being resolved: wait
        if entry is not None and entry.state & (rtnl.NUD_STALE | rtnl.NUD_DELAY | rtnl.NUD_PROBE |
                                                rtnl.NUD_FAILED):
            rtnl.neigh_del(nl, hop, port.ifindex)     # EVL: stale -> NUD_NONE, then probe
        rtnl.neigh_set(nl, hop, port.ifindex, rtnl.NUD_NONE, None, rtnl.NTF_USE)
        self.counters.solicit_kicks += 1
        return None

    def make_permanent(self, neigh: Neighbour) -> None:
        """``ip neigh replace <ip> lladdr <mac> nud permanent`` on the port's interface."""
        self._shared.check_open()
        rtnl.neigh_set(self._shared.rtnl_socket(), neigh.address, neigh.port.ifindex,
                       rtnl.NUD_PERMANENT, neigh.mac)

    def sync_neighbours(self, port: "Port") -> None:
        try:
            entries = rtnl.neigh_dump(self._shared.rtnl_socket(), port.ifindex)
        except OSError as exc:
            log.warning("%s: neighbour dump failed: %s", port.name, exc)
            return
        for e in entries:
            self.neigh_event(port, e)

    def neigh_event(self, port: "Port", msg: rtnl.NeighMsg) -> None:
        cache = self.stack.frontcache.neighbours
        if not msg.deleted and msg.state & rtnl.NUD_VALID_FOR_OOB and msg.lladdr \
                and len(msg.lladdr) == 6:
            cache.learn(Neighbour(msg.dst, msg.lladdr, port, bool(msg.state & rtnl.NUD_PERMANENT)))
            self.counters.neigh_learnt += 1
            self._learn_on_link_route(port, msg.dst)
            return
        if not port.link_up:
            # the kernel flushes a downed link's neighbours; keeping ours until the link is back
            # makes senders fail with ENETDOWN instead of being demoted (resynced when it is up)
            return
        entry = cache.peek(msg.dst)
        if entry is not None and entry.port is port:
            cache.forget(msg.dst)
            self.counters.neigh_dropped += 1

    def _learn_on_link_route(self, port: Port, dst: int) -> None:
        """The kernel resolved *dst* on *port* (an in-band ping, a kernel socket, solicit):
        learn the on-link route too, so oob sends to it take the fast path without solicit (EVL
        learns routes from the in-band side)."""
        routes = self.stack.frontcache.routes
        if routes.peek(dst) is not None:
            return
        for a in port.iface.addresses:
            if a.contains(dst) and dst != a.broadcast:
                routes.learn(Route(dst, port, 0, a.address))
                self.counters.route_updates += 1
                return

    def purge_routes(self, port: "Port | None" = None) -> None:
        """Forget the routes learnt for *port* (None: for every Linux port whose link is up;
        a downed port keeps its routes so that its senders get ENETDOWN)."""
        routes = self.stack.frontcache.routes
        for route in list(routes):
            p = route.port
            if port is None:
                if getattr(p, "iface", None) is None or p.iface.kind != "linux" or not p.link_up:
                    continue
            elif p is not port:
                continue
            routes.forget(route.destination)
        self.counters.route_updates += 1

    def revalidate_routes(self) -> None:
        """The kernel's routing changed: ask it again for every route learnt for a Linux port
        and keep, replace or forget each one, so that senders whose route did not change stay on
        the fast path. (Beyond REVALIDATE_MAX cached routes, they are simply flushed.)"""
        routes = self.stack.frontcache.routes
        learnt = [r for r in list(routes) if getattr(r.port, "iface", None) is not None
                  and r.port.iface.kind == "linux" and r.port.link_up]
        if len(learnt) > REVALIDATE_MAX:
            self.purge_routes()
            return
        for old in learnt:
            try:
                new = self.resolve_route(old.destination, None, bool(old.gateway))
            except OSError:
                routes.forget(old.destination)
                continue
            if (new.port, new.gateway, new.source) != (old.port, old.gateway, old.source):
                routes.learn(new)
        self.counters.route_updates += 1

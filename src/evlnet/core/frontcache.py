"""EVL's front cache, control-plane side: the route and neighbour information the oob path needs.

Writers are in-band only: the stack's own ARP and routing table on virtual links, or the netlink
feeder for Linux interfaces. Every change publishes a whole new immutable snapshot to the
compiled core (``on_change``), where oob senders read it with one atomic load and never wait.
The dicts here are the in-band copy (solicit waits on them, tools list them).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class Route:
    """How to reach one destination: the output port, the next hop and our source address."""

    __slots__ = ("destination", "port", "gateway", "source")

    def __init__(self, destination: int, port: Any, gateway: int, source: int) -> None:
        self.destination = destination  # IPv4 as int
        self.port = port                # the oob Port that sends
        self.gateway = gateway          # next hop as int, 0 when on-link
        self.source = source            # preferred source address as int

    @property
    def next_hop(self) -> int:
        """The address the frame goes to on the link: the gateway, else the destination."""
        return self.gateway or self.destination

    def __repr__(self) -> str:
        from ..wire.ipv4 import int_to_ip
        gw = f" via {int_to_ip(self.gateway)}" if self.gateway else ""
        return (f"Route({int_to_ip(self.destination)}{gw} dev {getattr(self.port, 'name', '?')}"
                f" src {int_to_ip(self.source)})")


class Neighbour:
    """A resolved link-layer address."""

    __slots__ = ("address", "mac", "port", "permanent")

    def __init__(self, address: int, mac: bytes, port: Any, permanent: bool = False) -> None:
        self.address = address
        self.mac = mac
        self.port = port
        self.permanent = permanent

    def __repr__(self) -> str:
        from ..wire.ethernet import mac_to_str
        from ..wire.ipv4 import int_to_ip
        perm = " PERMANENT" if self.permanent else ""
        return f"Neighbour({int_to_ip(self.address)} lladdr {mac_to_str(self.mac)}{perm})"


class _Cache:
    """Shared mechanics: a dict read lock-free, written in-band, with waiters for solicit."""

    def __init__(self) -> None:
        self._entries: dict[int, Any] = {}
        self._changed = threading.Condition()
        #: called after every change (the stack publishes a snapshot to the core)
        self.on_change: Callable[[], None] | None = None

    def _published(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def lookup(self, key: int):
        """Oob-safe read: one dict lookup, no lock."""
        return self._entries.get(key)

    #: in-band code reads the same way
    peek = lookup

    def _store(self, key: int, entry: Any) -> None:
        self._entries[key] = entry
        self._published()
        with self._changed:
            self._changed.notify_all()

    def forget(self, key: int) -> None:
        if self._entries.pop(key, None) is not None:
            self._published()
            with self._changed:
                self._changed.notify_all()

    def flush(self) -> None:
        self._entries.clear()
        self._published()

    def purge_port(self, port: Any) -> None:
        for key, entry in list(self._entries.items()):
            if entry.port is port:
                self._entries.pop(key, None)
        self._published()

    def wait_for(self, key: int, deadline_ns: int) -> Any:
        """In-band: block until *key* is cached or the deadline passes; returns the entry or
        None."""
        with self._changed:
            while True:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
                remaining = (deadline_ns - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.05))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._entries.values()))


class RouteCache(_Cache):
    """Destination IPv4 (int) -> Route."""

    def learn(self, route: Route) -> None:
        self._store(route.destination, route)


class NeighbourCache(_Cache):
    """Next-hop IPv4 (int) -> Neighbour."""

    def __init__(self) -> None:
        super().__init__()
        #: in-band callbacks run after a neighbour is learnt (flush datagrams waiting for it)
        self.on_learn: list = []

    def learn(self, neighbour: Neighbour) -> None:
        old = self._entries.get(neighbour.address)
        if old is not None and old.permanent and not neighbour.permanent \
                and old.mac == neighbour.mac:
            return  # EVL: a permanent state is never downgraded
        self._store(neighbour.address, neighbour)
        for callback in self.on_learn:
            callback(neighbour)


class FrontCache:
    """The pair of caches one stack owns; *on_change* publishes them to the core."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.routes = RouteCache()
        self.neighbours = NeighbourCache()
        self.routes.on_change = on_change
        self.neighbours.on_change = on_change

    def flush_routes(self) -> None:
        self.routes.flush()

    def flush_neighbours(self) -> None:
        self.neighbours.flush()

    def purge_port(self, port: Any) -> None:
        self.routes.purge_port(port)
        self.neighbours.purge_port(port)

"""The stack's view of one network interface: its device and its IPv4 addresses."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..drivers.base import Device


@dataclass
class Address:
    address: int      # IPv4 as int
    prefixlen: int

    @property
    def netmask(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF if self.prefixlen else 0

    @property
    def network(self) -> int:
        return self.address & self.netmask

    @property
    def broadcast(self) -> int:
        return self.network | (~self.netmask & 0xFFFFFFFF)

    def contains(self, ip: int) -> bool:
        return (ip & self.netmask) == self.network


@dataclass
class Interface:
    """An interface the stack knows: ``kind`` is "virtual" (ours) or "linux" (the kernel's)."""

    name: str
    device: Device
    kind: str = "virtual"
    addresses: list[Address] = field(default_factory=list)

    @property
    def primary_address(self) -> int:
        return self.addresses[0].address if self.addresses else 0

    def source_for(self, ip: int) -> int:
        """Our address on the subnet of *ip*, else the primary address."""
        for a in self.addresses:
            if a.contains(ip):
                return a.address
        return self.primary_address

    def local_addresses(self) -> set[int]:
        """Addresses a frame may be sent to and still be ours (unicast and broadcast)."""
        out: set[int] = {0xFFFFFFFF}
        for a in self.addresses:
            out.add(a.address)
            if a.prefixlen < 31:
                out.add(a.broadcast)
        return out

"""UDP sockets' control plane: bindings keyed by (address, port) and ephemeral ports.

The per-datagram work (checksums, demultiplexing to the socket queue, headers on TX) is in the
compiled core; a binding made here is published to the core's demux table."""
from __future__ import annotations

from ..constants import AF_INET, IPPROTO_UDP, SOCK_DGRAM
from ..sockets.udp import UdpSlot, UdpSocket, slot_key
from .registry import Protocol

EPHEMERAL_FIRST, EPHEMERAL_LAST = 32768, 60999


class UdpProtocol(Protocol):
    name = "udp"
    family = AF_INET
    sock_type = SOCK_DGRAM
    ip_protocol = IPPROTO_UDP

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[int, UdpSlot] = {}
        self._next_ephemeral = EPHEMERAL_FIRST

    def accepts_proto(self, proto: int) -> bool:
        return proto in (0, IPPROTO_UDP)

    def create_socket(self, family, sock_type, proto, flags):
        proto = proto or IPPROTO_UDP
        kernel = self.stack.kernel
        # with Linux ports an oob socket is primarily a genuine kernel socket (EVL)
        ksock = kernel.new_kernel_socket(proto) if kernel is not None else None
        try:
            return UdpSocket(self.stack, family, sock_type, proto, kernel_sock=ksock)
        except BaseException:
            if ksock is not None:
                ksock.close()
            raise

    def pick_ephemeral(self, addr: int) -> int:
        # INADDR_ANY overlaps every address: it needs a port nobody is bound to
        used = {k >> 32 for k in list(self.slots)} if addr == 0 else ()
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            p = self._next_ephemeral
            self._next_ephemeral = p + 1 if p < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if (slot_key(addr, p) not in self.slots and slot_key(0, p) not in self.slots
                    and p not in used):
                return p
        return 0

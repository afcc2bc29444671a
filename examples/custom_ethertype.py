"""A custom oob protocol: "beacon" frames on the IEEE local experimental EtherType 0x88B5.

It shows the protocol registration API: a ``Protocol`` subclass hooks into the stack by
EtherType, and owns the sockets created with ``socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, 0x88B5)``.
The compiled core hands every beacon frame up to the in-band stage (``input_frame``), which
queues it on the socket's core queue; sends go out through the port's TX path.
A beacon frame is Ethernet + a 2-byte channel number + payload; sockets bind to a channel and
send to ``(mac, channel)``.

Run it: ``python examples/custom_ethertype.py`` (no root; two stacks on the virtual link).
"""
from __future__ import annotations

import errno
import struct

import evlnet
from evlnet import AF_OOB, SOCK_DGRAM, SOCK_OOB
from evlnet.errors import oserror
from evlnet.proto.registry import InbandPacket
from evlnet.sockets.base import OobSocket

ETH_P_BEACON = 0x88B5
_HDR = struct.Struct("!6s6sHH")      # dst, src, EtherType, channel


class BeaconSocket(OobSocket):
    def __init__(self, stack, family, sock_type, proto, protocol: "BeaconProtocol") -> None:
        super().__init__(stack, family, sock_type, proto)
        self.protocol = protocol
        self.channel: int | None = None
        self.port = None

    def bind(self, address) -> None:
        """Bind to ``(ifname, channel)``."""
        ifname, channel = address
        if not 0 < channel < 0x10000 or channel in self.protocol.channels:
            raise oserror(errno.EADDRINUSE if channel in self.protocol.channels else errno.EINVAL,
                          f"channel {channel}")
        self.port = self.stack.open_port(ifname)
        self.channel = channel
        self.protocol.channels[channel] = self

    def _unbind(self) -> None:
        if self.channel is not None:
            self.protocol.channels.pop(self.channel, None)

    def _recv(self, target, nonblock, deadline):
        # the socket's queue lives in the core; its entries carry the sender's MAC
        n, length, _port, _proto, _pkttype, src_mac, dt, qt, delt = \
            self.core_socket.recv_frame_into(target, nonblock, deadline)
        return n, length, (src_mac, self.channel), (dt, qt, delt)

    def _send(self, views, total, address, nonblock, deadline, delivery_time) -> int:
        if address is None or self.port is None:
            raise oserror(errno.EDESTADDRREQ, "bind, then send to (mac, channel)")
        mac, channel = address
        port = self.port
        port.check_sendable()
        if total + _HDR.size - 14 > port.mtu:
            raise oserror(errno.EMSGSIZE, "beacon larger than the MTU")
        frame = _HDR.pack(mac, port.mac, ETH_P_BEACON, channel) + b"".join(bytes(v) for v in views)
        port.transmit_frame(frame, self.core_socket, self.tsflags, nonblock, deadline)
        return total


class BeaconProtocol(evlnet.Protocol):
    name = "beacon"
    family = AF_OOB
    sock_type = SOCK_DGRAM
    ethertype = ETH_P_BEACON

    def __init__(self) -> None:
        super().__init__()
        self.channels: dict[int, BeaconSocket] = {}
        self.dropped = 0

    def accepts_proto(self, proto: int) -> bool:
        return proto in (0, ETH_P_BEACON)

    def create_socket(self, family, sock_type, proto, flags):
        return BeaconSocket(self.stack, family, sock_type, proto, self)

    def input_frame(self, port, pkt: InbandPacket) -> None:
        """In-band (the core hands beacon frames up): queue the payload on the channel's socket.
        ``pkt.payload`` starts with the channel number."""
        body = pkt.payload
        if len(body) < 2:
            self.dropped += 1
            return
        sock = self.channels.get((body[0] << 8) | body[1])
        # minimum-size frames are padded: the payload length is not carried, keep it as is
        if sock is None or not sock.core_socket.deliver(self.stack.core, port.id, body[2:],
                                                  src_mac=pkt.src_mac, protocol=ETH_P_BEACON):
            self.dropped += 1


def main() -> None:
    link = evlnet.VirtualLink("bx0", "bx1")
    with evlnet.Stack("a") as a, evlnet.Stack("b") as b:
        a.add_interface(link.a)
        b.add_interface(link.b)
        a.register_protocol(BeaconProtocol())
        b.register_protocol(BeaconProtocol())
        a.enable_port("bx0")
        b.enable_port("bx1")
        tx = a.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, ETH_P_BEACON)
        rx = b.socket(AF_OOB, SOCK_DGRAM | SOCK_OOB, ETH_P_BEACON)
        tx.bind(("bx0", 7))
        rx.bind(("bx1", 7))
        tx.oob_sendmsg([b"beacon #1" + bytes(40)], address=(link.b.mac, 7))
        data, _, _, (mac, channel) = rx.oob_recvmsg(1500, timeout=2)
        print(f"received {data[:9]!r} on channel {channel} from {mac.hex(':')}")


if __name__ == "__main__":
    main()

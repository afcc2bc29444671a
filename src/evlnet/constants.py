"""EVL's constants, with EVL's values (``uapi/evl/net/socket-abi.h``, ``bpf-abi.h``, ``net.h``)."""
from __future__ import annotations

import socket as _socket

# Socket creation -----------------------------------------------------------------------------
SOCK_OOB = 0x40000000          #: type flag asking for oob services (EVL: O_OOB)
AF_OOB = PF_OOB = 46           #: family multiplexing EVL-specific (and custom) protocols
AF_INET = _socket.AF_INET
AF_PACKET = getattr(_socket, "AF_PACKET", 17)
SOCK_DGRAM = _socket.SOCK_DGRAM
SOCK_RAW = _socket.SOCK_RAW
IPPROTO_UDP = 17
IPPROTO_ICMP = 1
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800

# Message flags -------------------------------------------------------------------------------
MSG_DONTWAIT = int(_socket.MSG_DONTWAIT)   # 0x40 (plain ints: enum flag arithmetic costs ~0.7 us)
MSG_TRUNC = int(_socket.MSG_TRUNC)         # 0x20
MSG_TIMESTAMP = 0x2000                 #: EVL: MSG_ERRQUEUE, collect TX timestamps

# Socket options ------------------------------------------------------------------------------
SOL_SOCKET = _socket.SOL_SOCKET
SO_TIMESTAMP_OOB = 1024
#: EVL's own option ids for oob_setsockopt/oob_getsockopt at SOL_SOCKET (socket-abi.h enum):
#: the receive and send buffer sizes (Linux SO_RCVBUF/SO_SNDBUF rules) and SO_TIMESTAMP_OOB.
EVL_SOCKOPT_RECVSZ = 0
EVL_SOCKOPT_SENDSZ = 1
EVL_SOCKOPT_TIMESTAMPING = 2
EVL_SOF_TIMESTAMP_RX = 1 << 0
EVL_SOF_TIMESTAMP_TX = 1 << 1
EVL_SOF_TIMESTAMP_DEVICE = 1 << 2
EVL_SOF_TIMESTAMP_QUEUING = 1 << 3
EVL_SOF_TIMESTAMPS = (EVL_SOF_TIMESTAMP_RX | EVL_SOF_TIMESTAMP_TX
                      | EVL_SOF_TIMESTAMP_DEVICE | EVL_SOF_TIMESTAMP_QUEUING)

# Solicitation --------------------------------------------------------------------------------
EVL_NEIGH_PERMANENT = 0x1
#: EVL's newest kernel has it but its numeric value was not found in the sources; 0x2 is ours.
EVL_NEIGH_MAYROUTE = 0x2
EVL_NEIGH_FLAGS = EVL_NEIGH_PERMANENT | EVL_NEIGH_MAYROUTE

# eBPF RX verdicts ----------------------------------------------------------------------------
EVL_RX_DROP = 0
EVL_RX_ACCEPT = 1
EVL_RX_SKIP = 2
EVL_RX_VLAN = 3

# Ports and pools (kernel/evl/net/dev.c) -------------------------------------------------------
PAGE_SIZE = 4096
EVL_DEFAULT_POOLSZ = 2048
EVL_MAX_POOLSZ = 32768
EVL_MAX_BUFSZ = 4 * PAGE_SIZE
#: Room reserved for Ethernet + one VLAN tag in front of an MTU-sized payload.
EVL_BUF_HEADROOM = 14 + 4

# Timestamp ring ------------------------------------------------------------------------------
EVL_TX_TSRING_SIZE = 128

# UDP -----------------------------------------------------------------------------------------
UDP_MAX_PAYLOAD = 65507   #: 65535 - 20 (IPv4) - 8 (UDP)
LATMUS_NET_PORT = 59059

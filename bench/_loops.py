"""The measured loops, one per data path, written the same way so that only the path differs.

Every loop binds its callables to locals, keeps its buffers preallocated, checks the clock once
per batch of ``BATCH`` operations (throughput) or once per round trip (latency), and is bounded in
count and in time. RTT samples go into a preallocated ``array('q')`` and are turned into a
histogram after the loop, so the histogram costs nothing inside the measured window.

Paths: ``kernel_*`` (Python ``socket`` on kernel UDP sockets), ``evlnet_*`` (the public evlnet
socket API: ``oob_sendmsg`` / ``oob_recvmsg_into``), ``raw_*`` (AF_PACKET ``send``/``recv_into``
of prebuilt frames).
"""
from __future__ import annotations

import struct
import time
from socket import MSG_DONTWAIT

from _frames import PAYLOAD_OFF

now_ns = time.perf_counter_ns      # CLOCK_MONOTONIC on Linux
SEQ = struct.Struct("<Q")
#: The sequence number of the chunk-end probe (evlnet and raw): no echo comes back; it tells the
#: echo to stop busy polling at once, so that it never spins while the other paths' chunks run.
CHUNK_END = (1 << 64) - 1
BATCH = 64
#: a reply later than this counts as lost
RTT_TIMEOUT = 1.0
#: receive timeout of the throughput loops (how late a window may end when traffic stops)
RX_POLL = 0.1


# ------------------------------------------------------------------------------------------
# round trips: returns (samples recorded, lost, last sequence number)
# ------------------------------------------------------------------------------------------

def kernel_rtt(sock, peer, payload: bytearray, rbuf: bytearray, samples, n: int, seq: int,
               deadline_ns: int) -> tuple[int, int, int]:
    """*sock* is a blocking kernel UDP socket with SO_RCVTIMEO = RTT_TIMEOUT."""
    send = sock.sendto
    recv = sock.recv_into
    pack = SEQ.pack_into
    unpack = SEQ.unpack_from
    now = now_ns
    got = lost = 0
    for _ in range(n):
        seq += 1
        pack(payload, 0, seq)
        t0 = now()
        send(payload, peer)
        while True:
            try:
                recv(rbuf)
            except (BlockingIOError, TimeoutError):
                lost += 1
                break
            if unpack(rbuf, 0)[0] == seq:      # else a late reply to an earlier probe
                samples[got] = now() - t0
                got += 1
                break
        if t0 > deadline_ns:
            break
    return got, lost, seq


def evlnet_rtt(sock, peer, payload: bytearray, rbuf: bytearray, samples, n: int, seq: int,
               deadline_ns: int) -> tuple[int, int, int]:
    send = sock.oob_sendmsg
    recv = sock.oob_recvmsg_into
    sbufs = [payload]
    rbufs = [rbuf]
    pack = SEQ.pack_into
    unpack = SEQ.unpack_from
    now = now_ns
    timeout = RTT_TIMEOUT
    got = lost = 0
    for _ in range(n):
        seq += 1
        pack(payload, 0, seq)
        t0 = now()
        send(sbufs, address=peer)
        while True:
            try:
                recv(rbufs, timeout=timeout)
            except (BlockingIOError, TimeoutError):
                lost += 1
                break
            if unpack(rbuf, 0)[0] == seq:
                samples[got] = now() - t0
                got += 1
                break
        if t0 > deadline_ns:
            break
    pack(payload, 0, CHUNK_END)
    send(sbufs, address=peer)
    return got, lost, seq


def raw_rtt(sock, frame: bytearray, rbuf: bytearray, samples, n: int, seq: int,
            deadline_ns: int) -> tuple[int, int, int]:
    """*sock*: AF_PACKET socket whose BPF filter passes only the echoes. Busy polls
    (``MSG_DONTWAIT`` receives in a loop) as evlnet's client does: Python's own floor."""
    send = sock.send
    recv = sock.recv_into
    pack = SEQ.pack_into
    unpack = SEQ.unpack_from
    now = now_ns
    off = PAYLOAD_OFF
    dontwait = MSG_DONTWAIT
    timeout_ns = int(RTT_TIMEOUT * 1e9)
    got = lost = 0
    for _ in range(n):
        seq += 1
        pack(frame, off, seq)
        t0 = now()
        send(frame)
        while True:
            try:
                recv(rbuf, 0, dontwait)
            except BlockingIOError:
                if now() - t0 > timeout_ns:
                    lost += 1
                    break
                continue
            if unpack(rbuf, off)[0] == seq:
                samples[got] = now() - t0
                got += 1
                break
        if t0 > deadline_ns:
            break
    pack(frame, off, CHUNK_END)
    send(frame)
    return got, lost, seq


# ------------------------------------------------------------------------------------------
# transmit as fast as possible for `seconds`: returns (sent, errors, elapsed ns)
# ------------------------------------------------------------------------------------------

def kernel_tx(sock, peer, payload, seconds: float) -> tuple[int, int, int]:
    send = sock.sendto
    now = now_ns
    sent = errors = 0
    t0 = now()
    end = t0 + int(seconds * 1e9)
    batch = range(BATCH)
    while True:
        for _ in batch:
            try:
                send(payload, peer)
            except OSError:
                errors += 1
        sent += BATCH
        if now() >= end:
            break
    return sent - errors, errors, now() - t0


def evlnet_tx(sock, peer, payload, seconds: float) -> tuple[int, int, int]:
    send = sock.oob_sendmsg
    sbufs = [payload]
    now = now_ns
    sent = errors = 0
    t0 = now()
    end = t0 + int(seconds * 1e9)
    batch = range(BATCH)
    while True:
        for _ in batch:
            try:
                send(sbufs, address=peer)
            except OSError:
                errors += 1
        sent += BATCH
        if now() >= end:
            break
    return sent - errors, errors, now() - t0


def raw_tx(sock, frame, seconds: float) -> tuple[int, int, int]:
    send = sock.send
    now = now_ns
    sent = errors = 0
    t0 = now()
    end = t0 + int(seconds * 1e9)
    batch = range(BATCH)
    while True:
        for _ in batch:
            try:
                send(frame)
            except OSError:
                errors += 1
        sent += BATCH
        if now() >= end:
            break
    return sent - errors, errors, now() - t0


# ------------------------------------------------------------------------------------------
# receive for `seconds`: returns (received, elapsed ns)
# ------------------------------------------------------------------------------------------

def kernel_rx(sock, rbuf, seconds: float) -> tuple[int, int]:
    """Kernel UDP socket or AF_PACKET socket, blocking with SO_RCVTIMEO = RX_POLL."""
    recv = sock.recv_into
    now = now_ns
    count = 0
    t0 = now()
    end = t0 + int(seconds * 1e9)
    batch = range(BATCH)
    while True:
        for _ in batch:
            try:
                recv(rbuf)
            except (BlockingIOError, TimeoutError):
                break
            count += 1
        if now() >= end:
            break
    return count, now() - t0


raw_rx = kernel_rx


def evlnet_rx(sock, rbuf, seconds: float) -> tuple[int, int]:
    recv = sock.oob_recvmsg_into
    rbufs = [rbuf]
    timeout = RX_POLL
    now = now_ns
    count = 0
    t0 = now()
    end = t0 + int(seconds * 1e9)
    batch = range(BATCH)
    while True:
        for _ in batch:
            try:
                recv(rbufs, timeout=timeout)
            except (BlockingIOError, TimeoutError):
                break
            count += 1
        if now() >= end:
            break
    return count, now() - t0


# ------------------------------------------------------------------------------------------
# echo servers (run in a thread until `stop` is set)
# ------------------------------------------------------------------------------------------

def kernel_echo(sock, stop) -> int:
    """Blocking kernel UDP socket with SO_RCVTIMEO (so *stop* is polled)."""
    buf = bytearray(2048)
    mv = memoryview(buf)
    recv = sock.recvfrom_into
    send = sock.sendto
    n_echoed = 0
    while not stop.is_set():
        try:
            n, addr = recv(buf)
        except (BlockingIOError, TimeoutError):
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        send(mv[:n], addr)
        n_echoed += 1
    return n_echoed


def evlnet_echo(sock, stop) -> int:
    """Echo loop. Busy polls (the socket's SO_BUSY_POLL budget) only while traffic flows: the
    client's chunk-end probe (or an idle timeout) stops the spinning until the next datagram, so
    it never steals the CPU from the other paths' chunks (the first datagram after a pause wakes
    it from a blocking wait)."""
    import socket as _socket
    so_busy_poll = getattr(_socket, "SO_BUSY_POLL", 46)
    busy = sock.getsockopt(_socket.SOL_SOCKET, so_busy_poll)
    idle = False
    buf = bytearray(2048)
    mv = memoryview(buf)
    rbufs = [buf]
    recv = sock.oob_recvmsg_into
    send = sock.oob_sendmsg
    n_echoed = 0
    while not stop.is_set():
        try:
            n, _, _, addr = recv(rbufs, timeout=0.2)
        except (BlockingIOError, TimeoutError):
            if busy and not idle:
                sock.setsockopt(_socket.SOL_SOCKET, so_busy_poll, 0)
                idle = True
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        if n >= SEQ.size and SEQ.unpack_from(buf, 0)[0] == CHUNK_END:
            if busy and not idle:
                sock.setsockopt(_socket.SOL_SOCKET, so_busy_poll, 0)
                idle = True
            continue
        if idle:
            sock.setsockopt(_socket.SOL_SOCKET, so_busy_poll, busy)
            idle = False
        send([mv[:n]], address=addr)
        n_echoed += 1
    return n_echoed


def raw_echo(sock, stop) -> int:
    """AF_PACKET socket with a BPF filter passing only the probes (``SO_RCVTIMEO`` set); swaps
    MACs/IPs/ports. Busy polls while traffic flows, as evlnet's echo does, and waits in a
    blocking receive after the client's chunk-end probe or an idle ``RTT_TIMEOUT``."""
    from _frames import swap_udp_reply
    buf = bytearray(2048)
    mv = memoryview(buf)
    recv = sock.recv_into
    send = sock.send
    unpack = SEQ.unpack_from
    off = PAYLOAD_OFF
    now = now_ns
    idle_ns = int(RTT_TIMEOUT * 1e9)
    spinning = False
    last = 0
    n_echoed = 0
    while not stop.is_set():
        try:
            n = recv(buf, 0, MSG_DONTWAIT) if spinning else recv(buf)
        except (BlockingIOError, TimeoutError):
            if spinning and now() - last > idle_ns:
                spinning = False
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        if n >= off + SEQ.size and unpack(buf, off)[0] == CHUNK_END:
            spinning = False
            continue
        spinning = True
        last = now()
        swap_udp_reply(buf, n)
        send(mv[:n])
        n_echoed += 1
    return n_echoed

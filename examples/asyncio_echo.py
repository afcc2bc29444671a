"""oob sockets under asyncio: an echo server driven by ``loop.add_reader``.

An oob socket's ``fileno()`` is readable while a datagram is queued (the core keeps an eventfd
in step with the socket's receive queue), so ``select``, ``selectors`` and asyncio's
``add_reader`` wait for oob traffic without a thread. Readers then drain the queue with
``MSG_DONTWAIT``.

Run it: ``python examples/asyncio_echo.py`` (no root; two stacks on the virtual link).
"""
from __future__ import annotations

import asyncio

import evlnet
from evlnet import AF_INET, EVL_NEIGH_PERMANENT, MSG_DONTWAIT, SOCK_DGRAM, SOCK_OOB

SERVER_IP, CLIENT_IP, PORT = "192.0.2.2", "192.0.2.1", 6000


async def echo_server(sock, stop: asyncio.Event) -> int:
    """Echo every datagram back until *stop* is set; returns how many were echoed."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(sock, ready.set)            # fileno(): readable while datagrams wait
    echoed = 0
    try:
        while not stop.is_set():
            await ready.wait()
            ready.clear()
            while True:                          # drain what is queued, never block the loop
                try:
                    data, _, _, peer = sock.oob_recvmsg(2048, flags=MSG_DONTWAIT)
                except BlockingIOError:
                    break
                sock.oob_sendmsg([data], address=peer)
                echoed += 1
    finally:
        loop.remove_reader(sock)
    return echoed


async def client(sock, count: int) -> list[bytes]:
    """Send *count* requests, awaiting each reply through the event loop too."""
    loop = asyncio.get_running_loop()
    replies = []
    for i in range(count):
        sock.oob_sendmsg([b"request %d" % i], address=(SERVER_IP, PORT))
        ready = loop.create_future()
        loop.add_reader(sock, lambda f=ready: f.done() or f.set_result(None))
        try:
            await asyncio.wait_for(ready, 5)
        finally:
            loop.remove_reader(sock)
        replies.append(sock.oob_recvmsg(2048, flags=MSG_DONTWAIT)[0])
    return replies


async def run(count: int = 5) -> tuple[list[bytes], int]:
    link = evlnet.VirtualLink("aio0", "aio1")
    with evlnet.Stack("aio-client") as a, evlnet.Stack("aio-server") as b:
        a.add_interface(link.a, f"{CLIENT_IP}/24")
        b.add_interface(link.b, f"{SERVER_IP}/24")
        a.enable_port(link.a.name)
        b.enable_port(link.b.name)
        server = b.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        server.bind((SERVER_IP, PORT))
        cli = a.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        cli.bind((CLIENT_IP, 0))
        a.solicit(cli, (SERVER_IP, 0), EVL_NEIGH_PERMANENT)
        b.solicit(server, (CLIENT_IP, 0), EVL_NEIGH_PERMANENT)
        stop = asyncio.Event()
        serving = asyncio.create_task(echo_server(server, stop))
        replies = await client(cli, count)
        stop.set()
        cli.oob_sendmsg([b"bye"], address=(SERVER_IP, PORT))      # wake the server's wait
        echoed = await asyncio.wait_for(serving, 5)
        return replies, echoed


def main() -> None:
    replies, echoed = asyncio.run(run())
    for r in replies:
        print(r.decode())
    print(f"server echoed {echoed} datagrams")


if __name__ == "__main__":
    main()

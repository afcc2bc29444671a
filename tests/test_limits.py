"""Limits (issue 9): many sockets and ports on one stack at once, on the virtual link.

Already covered elsewhere (not repeated here): TX pool exhaustion with ``tx_nomem``, blocking
with a timeout (ETIMEDOUT) and MSG_DONTWAIT (EWOULDBLOCK) in
``test_core_ports.py::test_pool_exhaustion_dontwait_timeout_and_wait_for_buffer``; a full
socket receive queue counted in ``rx_sock_full`` in ``test_core_sockets.py``; the reassembly
memory bound in ``test_core_protocols.py::test_reassembly_memory_bound``.
"""
from __future__ import annotations

import os

from virtual_fixtures import stacks, unique, wait_until  # noqa: F401

from evlnet import AF_INET, SOCK_DGRAM, SOCK_OOB, VirtualLink

PORTS = 8
SOCKETS = 1000


def _subnet(i: int) -> tuple[str, str]:
    """Port *i*'s addresses on the A and B sides: 192.0.2.(32i+1) and .(32i+2), /27 each."""
    return f"192.0.2.{32 * i + 1}", f"192.0.2.{32 * i + 2}"


def test_thousand_sockets_on_eight_ports(stacks):
    """1 000 UDP sockets spread over 8 ports of one stack, all bound at once: each gets the
    datagram sent to it (all are sent before any is read), and nothing is lost or counted."""
    A, B = stacks("A"), stacks("B")
    ports_a, ports_b = [], []
    for i in range(PORTS):
        link = VirtualLink(unique("la"), unique("lb"))
        a_ip, b_ip = _subnet(i)
        A.add_interface(link.a, f"{a_ip}/27")
        B.add_interface(link.b, f"{b_ip}/27")
        ports_a.append(A.enable_port(link.a.name))
        ports_b.append(B.enable_port(link.b.name))
    assert len(B.ports) == PORTS
    senders = []
    for i in range(PORTS):
        s = A.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        s.bind((_subnet(i)[0], 0))
        A.solicit(s, (_subnet(i)[1], 0))
        senders.append(s)
    receivers = []
    for n in range(SOCKETS):
        i = n % PORTS
        r = B.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        r.bind((_subnet(i)[1], 20000 + n))
        receivers.append(r)
    try:
        expected = []
        for n in range(SOCKETS):
            i = n % PORTS
            payload = b"sock%04d" % n + os.urandom(8)
            assert senders[i].oob_sendto(payload, (_subnet(i)[1], 20000 + n)) == len(payload)
            expected.append(payload)
        got = 0
        for n, r in enumerate(receivers):
            data, _, _, peer = r.oob_recvmsg(100, timeout=5)
            assert data == expected[n], f"socket {n} got {data!r}"
            assert peer[0] == _subnet(n % PORTS)[0]
            got += 1
        delivered = [B.get_stats(p).extra["rx_delivered"] for p in ports_b]
        print(f"\n{SOCKETS} sockets on {PORTS} ports: {got} datagrams received, "
              f"per port {delivered}")
        assert got == SOCKETS
        assert delivered == [SOCKETS // PORTS] * PORTS
        for p in ports_b:
            st = B.get_stats(p)
            drops = {k: v for k, v in st.extra.items()
                     if k in ("rx_sock_full", "rx_no_receiver", "rx_nomem") and v}
            assert drops == {} and st.rx_nomem == 0, drops
            assert wait_until(lambda p=p: B.get_stats(p).extra["rx_skb_free"] ==
                              B.get_stats(p).extra["rx_skb_total"])
    finally:
        for s in senders + receivers:
            s.close()

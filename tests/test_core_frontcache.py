"""The front cache: solicit, permanent neighbours, gateways, demotion to the in-band stage."""
from __future__ import annotations

import errno
import socket as pysocket

import pytest
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    G_IP,
    NOBODY_IP,
    extra,
    ip2int,
    make_pair,
    pair,
    raises_errno,
    stacks,
    unique,
    wait_until,
)

import evlnet
from evlnet import (
    AF_INET,
    AF_PACKET,
    ETH_P_ALL,
    EVL_NEIGH_MAYROUTE,
    EVL_NEIGH_PERMANENT,
    MSG_DONTWAIT,
    SOCK_DGRAM,
    SOCK_OOB,
    SOCK_RAW,
    SOL_SOCKET,
    VirtualLink,
)

SO_BINDTODEVICE = getattr(pysocket, "SO_BINDTODEVICE", 25)
FAR_NET = "203.0.113.0/24"
FAR_IP = "203.0.113.5"


def test_solicit_fills_route_and_neighbour(pair):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    cache = p.A.frontcache
    assert cache.routes.peek(ip2int(B_IP)) is None
    assert cache.neighbours.peek(ip2int(B_IP)) is None
    p.A.solicit(sa, (B_IP, 4242), 0)                   # the port number is unused
    route = cache.routes.peek(ip2int(B_IP))
    assert route.port is p.pa and route.gateway == 0 and route.source == ip2int(A_IP)
    neigh = cache.neighbours.peek(ip2int(B_IP))
    assert neigh.mac == p.link.b.mac and neigh.port is p.pa and not neigh.permanent
    evlnet.solicit(sa, B_IP)                           # module level, address as a string
    # the fast path is taken now: DONTWAIT sends are not demoted
    sb = p.udp(p.B, (B_IP, 6000))
    assert sa.oob_sendmsg([b"fast"], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 4
    assert sb.oob_recvmsg(10, timeout=5)[0] == b"fast"
    assert p.A.counters.tx_demoted == 0


def test_solicit_permanent(pair):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    p.A.solicit(sa, (B_IP, 0), EVL_NEIGH_PERMANENT)
    neigh = p.A.frontcache.neighbours.peek(ip2int(B_IP))
    assert neigh.permanent and neigh.mac == p.link.b.mac
    # B asking for A makes A see B's ARP again: a permanent entry is never downgraded
    sb = p.udp(p.B, (B_IP, 0))
    p.B.solicit(sb, (A_IP, 0))
    assert p.A.frontcache.neighbours.peek(ip2int(B_IP)).permanent
    p.A.solicit(sa, (B_IP, 0))                         # nor by a plain solicit
    assert p.A.frontcache.neighbours.peek(ip2int(B_IP)).permanent
    # an existing non-permanent entry is upgraded
    assert not p.B.frontcache.neighbours.peek(ip2int(A_IP)).permanent
    p.B.solicit(sb, (A_IP, 0), EVL_NEIGH_PERMANENT)
    assert p.B.frontcache.neighbours.peek(ip2int(A_IP)).permanent


@pytest.fixture
def routed(stacks):
    """A on a link to a gateway G (a third stack answering ARP); 203.0.113.0/24 is behind G."""
    link = VirtualLink(unique("ra"), unique("rg"))
    A, G = stacks("A"), stacks("G")
    A.add_interface(link.a, f"{A_IP}/24")
    G.add_interface(link.b, f"{G_IP}/24")
    pa, pg = A.enable_port(link.a.name), G.enable_port(link.b.name)
    A.add_route(FAR_NET, via=G_IP)
    return link, A, G, pa, pg


def test_solicit_through_gateway_needs_mayroute(routed):
    link, A, G, pa, pg = routed
    sa = A.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    with raises_errno(errno.ENETUNREACH):
        A.solicit(sa, (FAR_IP, 0))
    with raises_errno(errno.ENETUNREACH):
        A.solicit(sa, (FAR_IP, 0), EVL_NEIGH_PERMANENT)
    assert A.frontcache.routes.peek(ip2int(FAR_IP)) is None
    A.solicit(sa, (FAR_IP, 0), EVL_NEIGH_MAYROUTE)
    route = A.frontcache.routes.peek(ip2int(FAR_IP))
    assert route.gateway == ip2int(G_IP) and route.port is pa
    assert A.frontcache.neighbours.peek(ip2int(G_IP)).mac == link.b.mac
    # the datagram goes to the gateway's MAC with the far address in the IP header
    tap = G.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    before = extra(G, pg)["rx_otherhost"]
    assert sa.oob_sendmsg([b"far away"], address=(FAR_IP, 9), flags=MSG_DONTWAIT) == 8
    frame = tap.oob_recvmsg(2000, timeout=5)[0]
    assert frame[0:6] == link.b.mac
    assert frame[14 + 16:14 + 20] == pysocket.inet_aton(FAR_IP)
    assert wait_until(lambda: extra(G, pg)["rx_otherhost"] == before + 1)   # G does not route
    tap.close()


def test_solicit_times_out(pair):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    p.A.set_solicit_timeout(0.3)
    with raises_errno(errno.ETIMEDOUT):
        p.A.solicit(sa, (NOBODY_IP, 0))
    assert p.A.frontcache.neighbours.peek(ip2int(NOBODY_IP)) is None
    for bad in (0, -1):
        with raises_errno(errno.EINVAL):
            p.A.set_solicit_timeout(bad)
    assert p.A.settings.solicit_timeout == 0.3


def test_solicit_without_enabled_port_enodev(pair):
    p = pair
    other = VirtualLink(unique("xa"), unique("xb"))
    p.A.add_interface(other.a, "198.51.100.1/24")      # an interface with no oob port
    sa = p.udp(p.A)
    with raises_errno(errno.ENODEV):
        p.A.solicit(sa, ("198.51.100.2", 0))
    bound = p.udp(p.A)
    bound.setsockopt(SOL_SOCKET, SO_BINDTODEVICE, other.a.name.encode())
    with raises_errno(errno.ENODEV):                   # EVL: the bound device is no oob port
        p.A.solicit(bound, (B_IP, 0))
    p.A.disable_port(p.pa)
    with raises_errno(errno.ENODEV):
        p.A.solicit(sa, (B_IP, 0))


def test_solicit_argument_errors(pair):
    p = pair
    sa = p.udp(p.A)
    raw = p.A.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(ETH_P_ALL))
    with raises_errno(errno.EAFNOSUPPORT):
        p.A.solicit(raw, (B_IP, 0))
    for flags in (0x4, 0x100, -1, EVL_NEIGH_PERMANENT | 0x80, "1"):
        with raises_errno(errno.EINVAL):
            p.A.solicit(sa, (B_IP, 0), flags)
    for peer in ("not-an-ip", "", "0.0.0.0", ("0.0.0.0", 0), 12345, None, (), ("256.1.1.1", 0)):
        with raises_errno(errno.EINVAL):
            p.A.solicit(sa, peer)
    plain = pysocket.socket(AF_INET, SOCK_DGRAM)
    try:
        for sock in (plain, None, "fd", 3):
            with raises_errno(errno.EBADF):
                p.A.solicit(sock, (B_IP, 0))
            with raises_errno(errno.EBADF):
                evlnet.solicit(sock, (B_IP, 0))
    finally:
        plain.close()
    foreign = p.udp(p.B)                               # an oob socket of another stack
    with raises_errno(errno.EBADF):
        p.A.solicit(foreign, (B_IP, 0))
    closed = p.udp(p.A)
    closed.close()
    with raises_errno(errno.EBADF):
        p.A.solicit(closed, (B_IP, 0))
    raw.close()


@pytest.mark.parametrize("peer, dst", [("broadcast", "255.255.255.255"),
                                       ("192.0.2.255", "192.0.2.255")])
def test_solicit_broadcast(pair, peer, dst):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    p.A.solicit(sa, peer)
    neigh = p.A.frontcache.neighbours.peek(ip2int(dst))
    assert neigh.mac == b"\xff" * 6
    sb = p.udp(p.B, ("0.0.0.0", 6000))
    with raises_errno(errno.EACCES):                  # as Linux: broadcast needs SO_BROADCAST
        sa.oob_sendmsg([b"to all"], address=(dst, 6000), flags=MSG_DONTWAIT)
    sa.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_BROADCAST, 1)
    assert sa.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_BROADCAST) == 1
    assert sa.oob_sendmsg([b"to all"], address=(dst, 6000), flags=MSG_DONTWAIT) == 6
    data, _, _, addr = sb.oob_recvmsg(100, timeout=5)
    assert data == b"to all" and addr[0] == A_IP
    assert p.A.counters.tx_demoted == 0


def test_front_cache_miss_is_demoted_and_still_arrives(pair):
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    sb = p.udp(p.B, (B_IP, 6000))
    assert sa.oob_sendmsg([b"demoted"], address=(B_IP, 6000)) == 0     # EVL: 0 when offloaded
    assert p.A.counters.tx_demoted == 1
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"demoted"
    p.A.flush_routes()
    p.A.flush_neighbours()
    assert len(p.A.frontcache.routes) == 0 and len(p.A.frontcache.neighbours) == 0
    with raises_errno(errno.EINPROGRESS):
        sa.oob_sendmsg([b"dontwait"], address=(B_IP, 6000), flags=MSG_DONTWAIT)
    assert p.A.counters.tx_demoted == 2
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"dontwait"           # sent in-band anyway
    # the in-band send resolved the peer into the front cache: the fast path is back
    assert sa.oob_sendmsg([b"fast"], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 4
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"fast"
    assert p.A.counters.tx_demoted == 2


@pytest.mark.parametrize("flush", ["flush_routes", "flush_neighbours"])
def test_flush_brings_back_einprogress(pair, flush):
    p = pair
    sa, sb = p.solicited_pair()
    assert sa.oob_sendmsg([b"1"], address=(B_IP, 6000), flags=MSG_DONTWAIT) == 1
    getattr(p.A, flush)()
    with raises_errno(errno.EINPROGRESS):
        sa.oob_sendmsg([b"2"], address=(B_IP, 6000), flags=MSG_DONTWAIT)
    sa.setblocking(False)                               # O_NONBLOCK counts as DONTWAIT
    p.A.flush_routes()
    p.A.flush_neighbours()
    with raises_errno(errno.EINPROGRESS):
        sa.oob_sendmsg([b"3"], address=(B_IP, 6000))
    got = sorted(sb.oob_recvmsg(10, timeout=5)[0] for _ in range(3))
    assert got == [b"1", b"2", b"3"]
    assert p.A.counters.tx_demoted == 2


def test_demoted_send_to_nobody_is_dropped_and_counted(pair):
    p = pair
    p.A.set_solicit_timeout(0.3)
    sa = p.udp(p.A, (A_IP, 0))
    with raises_errno(errno.EINPROGRESS):
        sa.oob_sendmsg([b"lost"], address=(NOBODY_IP, 6000), flags=MSG_DONTWAIT)
    assert sa.oob_sendmsg([b"lost"], address=(NOBODY_IP, 6000)) == 0
    assert p.A.counters.tx_demoted == 2
    assert wait_until(lambda: p.A.counters.tx_demote_failed == 2)
    assert p.A.frontcache.neighbours.peek(ip2int(NOBODY_IP)) is None
    with raises_errno(errno.EINPROGRESS):               # unreachable network: dropped in-band
        sa.oob_sendmsg([b"x"], address=("198.51.100.9", 6000), flags=MSG_DONTWAIT)
    assert wait_until(lambda: p.A.counters.tx_demote_failed == 3)


def test_disabling_a_port_purges_its_cache_entries(pair):
    """Neighbours are purged; the route stays as a tombstone on the disabled port (senders get
    ENETDOWN) until the port is enabled again or routes are flushed."""
    p = pair
    sa, _ = p.solicited_pair()
    assert p.A.frontcache.routes.peek(ip2int(B_IP)) is not None
    p.A.disable_port(p.pa)
    assert p.A.frontcache.neighbours.peek(ip2int(B_IP)) is None
    tomb = p.A.frontcache.routes.peek(ip2int(B_IP))
    assert tomb is not None and tomb.port is p.pa and not tomb.port.enabled
    p.A.flush_routes()
    assert p.A.frontcache.routes.peek(ip2int(B_IP)) is None


def test_interface_removal_purges_routes_too(pair):
    p = pair
    sa, _ = p.solicited_pair()
    p.link.a.remove()
    import time
    for _ in range(200):
        if p.A.frontcache.routes.peek(ip2int(B_IP)) is None:
            break
        time.sleep(0.01)
    assert p.A.frontcache.routes.peek(ip2int(B_IP)) is None
    assert p.A.frontcache.neighbours.peek(ip2int(B_IP)) is None


def test_permanent_neighbour_not_overridden_by_arp(pair):
    """EVL/Linux: ARP traffic never changes a NUD_PERMANENT entry (not even its MAC)."""
    from scapy.layers.l2 import ARP, Ether
    from virtual_fixtures import mac_str
    p = pair
    sa = p.udp(p.A, (A_IP, 0))
    p.A.solicit(sa, (B_IP, 0), EVL_NEIGH_PERMANENT)
    rogue = "02:66:66:66:66:66"
    claim = (Ether(dst=mac_str(p.link.a.mac), src=rogue)
             / ARP(op=1, hwsrc=rogue, psrc=B_IP, pdst=A_IP))
    arp_replies = extra(p.A, p.pa)["arp_replies"]
    p.link.b.transmit(bytes(claim))                    # straight onto the wire, as B's NIC
    assert wait_until(lambda: extra(p.A, p.pa)["arp_replies"] == arp_replies + 1)
    neigh = p.A.frontcache.neighbours.peek(ip2int(B_IP))
    assert neigh.permanent and neigh.mac == p.link.b.mac
    # a non-permanent entry does follow a MAC change
    sb = p.udp(p.B, (B_IP, 0))
    p.B.solicit(sb, (A_IP, 0))
    other = (Ether(dst=mac_str(p.link.b.mac), src=rogue)
             / ARP(op=1, hwsrc=rogue, psrc=A_IP, pdst=B_IP))
    p.link.a.transmit(bytes(other))
    assert wait_until(lambda: p.B.frontcache.neighbours.peek(ip2int(A_IP)).mac
                      == bytes.fromhex(rogue.replace(":", "")))

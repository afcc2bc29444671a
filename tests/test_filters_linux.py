"""eBPF RX filters on a Linux port (issue 10): the program runs in the kernel, as the AF_PACKET
ring's socket filter and as the tc ingress program, with the kernel's stack as the in-band
stage. evlnet's port is on a veth end in namespace A, the kernel sends from namespace B. Root
needed (skip otherwise, fail under CI=true); only 192.0.2.0/24, in namespaces made here."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from test_linux_bridge import A_IP, B_IP, evl_pair, kernel_socket, leftovers
from virtual_fixtures import raises_errno, wait_until

from evlnet.linux import rtnl
from evlnet.testing import in_netns, netns, require_root, veth_pair
from evlnet.testing.bpf import build, build_all

pytestmark = pytest.mark.root
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "filters")


@pytest.fixture(autouse=True)
def _root():
    require_root("network namespaces, veth pairs, AF_PACKET sockets and bpf()")


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, str]:
    out = str(tmp_path_factory.mktemp("filters"))
    objects = build_all(out)
    # drop_source.c dropping B's address
    objects["drop_b"] = build(os.path.join(EXAMPLES, "drop_source.c"), out,
                              "SOURCE=0xC0000202")
    return objects


@pytest.fixture
def pair():
    with evl_pair() as p:
        yield p


def try_recv(s, timeout: float = 0.3) -> bytes | None:
    s.settimeout(timeout)
    try:
        return s.recv(2000)
    except (TimeoutError, BlockingIOError):
        return None


def oob_try_recv(s, timeout: float = 0.3) -> bytes | None:
    try:
        return s.oob_recvmsg(2000, timeout=timeout)[0]
    except (TimeoutError, BlockingIOError):
        return None


def inband_side(oob) -> socket.socket:
    """The genuine kernel socket behind an oob UDP socket: it gets what the kernel delivers."""
    return socket.socket(fileno=os.dup(oob.kernel_fileno()))


def counters(pair) -> dict:
    return pair.stack.get_stats(pair.port).extra


@pytest.mark.parametrize("name", ["udp_port_range", "udp_port_range_direct"])
def test_accept_reaches_oob_and_skip_reaches_the_kernel(pair, objs, name):
    """Both forms: the first runs in the kernel at both hooks; the second (direct packet
    access, refused for socket filters) runs in tc and in the core's VM."""
    oob_in = pair.oob_socket((A_IP, 59059))
    oob_out = pair.oob_socket((A_IP, 7000))
    # their genuine kernel sockets: the in-band stage's takers of these ports
    k_in = inband_side(oob_in)
    k_out = inband_side(oob_out)
    pair.stack.set_filter(pair.port, objs[name])
    cli = kernel_socket(pair.b, (B_IP, 0))
    for i in range(3):
        cli.sendto(b"oob%d" % i, (A_IP, 59059))
        cli.sendto(b"inband%d" % i, (A_IP, 7000))
    assert [oob_in.oob_recvmsg(100, timeout=3)[0] for _ in range(3)] == \
        [b"oob%d" % i for i in range(3)]
    assert [try_recv(k_out, 3) for _ in range(3)] == [b"inband%d" % i for i in range(3)]
    assert try_recv(k_in) is None                # ACCEPT: the kernel never saw it
    assert oob_try_recv(oob_out) is None         # SKIP: the oob stack never saw it
    c = counters(pair)
    assert c["kernel_filter_accepted"] >= 3 and c["kernel_filter_skipped"] >= 3
    if name == "udp_port_range":                 # in-kernel socket filter: nothing came up
        assert c["rx_filter_skipped"] == 0
    for s in (oob_in, oob_out, k_in, k_out, cli):
        s.close()


def test_drop_reaches_neither_and_is_counted(pair, objs):
    oob = pair.oob_socket((A_IP, 59059))
    k = inband_side(oob)
    pair.stack.set_filter(pair.port, objs["drop_b"])
    cli = kernel_socket(pair.b, (B_IP, 0))
    for _ in range(4):
        cli.sendto(b"x", (A_IP, 59059))
    assert wait_until(lambda: counters(pair)["rx_filter_dropped"] >= 4, 3), counters(pair)
    assert oob_try_recv(oob) is None and try_recv(k) is None
    assert pair.stack.get_stats(pair.port).rx_packets == 0     # not one reached user space
    # ping from B is dropped too (it is IPv4 from B): no answer from either stage
    proc = subprocess.run(["ip", "netns", "exec", pair.b.name, "ping", "-c1", "-W1", A_IP],
                          capture_output=True)
    assert proc.returncode != 0
    for s in (oob, k, cli):
        s.close()


def test_remove_restores_the_default_diversion(pair, objs):
    oob = pair.oob_socket((A_IP, 7000))
    pair.stack.set_filter(pair.port, objs["udp_port_range"])   # would skip port 7000
    cli = kernel_socket(pair.b, (B_IP, 0))
    cli.sendto(b"skipped", (A_IP, 7000))
    assert oob_try_recv(oob) is None
    pair.stack.set_filter(pair.port, None)
    with in_netns(pair.a):
        nl = rtnl.RtnlSocket()
    try:
        names = [f.name for f in rtnl.filter_dump(nl, pair.port.ifindex)]
    finally:
        nl.close()
    assert not any(n.startswith("evlnet:") for n in names)   # the eBPF program is gone
    cli.sendto(b"diverted", (A_IP, 7000))
    assert oob.oob_recvmsg(100, timeout=3)[0] == b"diverted"
    oob.close()
    cli.close()


def test_replace_under_traffic_loses_nothing(pair, objs):
    oob = pair.oob_socket((A_IP, 59059))
    oob.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    cli = kernel_socket(pair.b, (B_IP, 0))
    cycle = [objs["ipv4_only"], objs["udp_port_range"], objs["udp_port_range_direct"], None]
    sent = 0
    got = []
    for i in range(24):
        pair.stack.set_filter(pair.port, cycle[i % len(cycle)])
        for _ in range(50):
            cli.sendto(b"%06d" % sent, (A_IP, 59059))
            sent += 1
        while (d := oob_try_recv(oob, 0.05)) is not None:
            got.append(d)
    while (d := oob_try_recv(oob, 1.0)) is not None:
        got.append(d)
    c = counters(pair)
    counted = (c["rx_filter_dropped"] + c["rx_filter_invalid"] + c["rx_filter_skipped"]
               + c["rx_sock_full"] + pair.stack.get_stats(pair.port).rx_nomem
               + c.get("kernel_drops", 0))
    print(f"\nsent {sent}, received {len(got)}, counted {counted}")
    assert len(got) + counted == sent
    assert got == sorted(set(got))
    oob.close()
    cli.close()


def test_errors_on_a_linux_port(pair, objs, tmp_path):
    with raises_errno(errno.ENOENT):
        pair.stack.set_filter(pair.port, str(tmp_path / "nope.o"))
    with raises_errno(errno.EINVAL):
        pair.stack.set_filter(pair.port, objs["loop"])
    pair.stack.disable_port(pair.port)
    with raises_errno(errno.EBADF):
        pair.stack.set_filter(pair.port, objs["ipv4_only"])


def tcx_links_of(pid: int) -> list[dict]:
    """The tcx links whose program evlnet process *pid* loaded (its programs are named
    ``evlnet_<pid>_...``; bpftool, installed by ./run test as root)."""
    def show(what: str) -> list[dict]:
        out = subprocess.run(["bpftool", "-j", what, "show"], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out or "[]")

    names = {p["id"]: p.get("name", "") for p in show("prog")}
    return [link for link in show("link") if link.get("type") in ("tcx", 11)
            and names.get(link.get("prog_id"), "").startswith(f"evlnet_{pid}_")]


def test_nothing_stays_in_the_kernel_after_a_kill(objs):
    """A process that installed a filter is killed -9: its tcx link goes with it, and it left
    no tc filter or clsact qdisc behind (the default diversion's went when the filter came)."""
    with netns("a") as a, netns("b") as b, \
            veth_pair(a, b, addr_a=f"{A_IP}/24", addr_b=f"{B_IP}/24") as (ea, _eb):
        src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
        code = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {src!r})
            from evlnet.core.stack import Stack
            from evlnet.testing import in_netns, Namespace
            import evlnet
            s = Stack("victim")
            with in_netns(Namespace({a.name!r})):
                p = s.enable_port({ea.name!r})
            s.set_filter(p, {objs["ipv4_only"]!r})
            print("ready", p.ifindex, flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split()[0] == "ready"
            assert len(tcx_links_of(proc.pid)) == 1
            assert leftovers(a) == []          # no clsact filter or qdisc while it runs
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert wait_until(lambda: tcx_links_of(proc.pid) == [], 5)
        assert leftovers(a) == []


def test_without_cap_bpf_the_filter_runs_in_the_vm(pair, objs, monkeypatch):
    """A process allowed AF_PACKET and tc but not bpf() (no CAP_BPF): played by making the
    kernel refuse every load with EPERM. The filter then runs in the core's VM; the kernel's
    stack keeps getting what the default diversion leaves it."""
    from evlnet.linux import bridge

    def refuse(*_args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(bridge, "kernel_load", refuse)
    oob = pair.oob_socket((A_IP, 59059))
    other = pair.oob_socket((A_IP, 7000))
    pair.stack.set_filter(pair.port, objs["udp_port_range"])
    cli = kernel_socket(pair.b, (B_IP, 0))
    cli.sendto(b"accepted", (A_IP, 59059))
    cli.sendto(b"skipped", (A_IP, 7000))
    assert oob.oob_recvmsg(100, timeout=3)[0] == b"accepted"
    assert oob_try_recv(other) is None
    assert wait_until(lambda: counters(pair)["rx_filter_skipped"] >= 1, 3)
    for s in (oob, other, cli):
        s.close()

"""eBPF RX filters on the virtual link (issue 10): EVL's verdicts run by the core's rbpf VM, the
filter's precedence over the VLAN set, atomic replace and removal under traffic, the load-time
refusals and every errno of ``set_filter``. The filters are the C examples of
``examples/filters`` (and the refused ones of ``tests/filters``), built here by clang."""
from __future__ import annotations

import errno
import os
import socket as pysocket
import sys
import threading
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw
from virtual_fixtures import (  # noqa: F401
    A_IP,
    B_IP,
    extra,
    mac_str,
    make_pair,
    make_solo,
    pair,
    raises_errno,
    solo,
    stacks,
    wait_until,
)

import evlnet
from evlnet import AF_PACKET, MSG_DONTWAIT, SOCK_OOB, SOCK_RAW
from evlnet.core.filters import load_program
from evlnet.testing.bpf import EXAMPLES, build, build_all

PEER_IP = "192.0.2.9"
DROPPED_SOURCE = "192.0.2.66"      # drop_source.c's default


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, str]:
    return build_all(str(tmp_path_factory.mktemp("filters")))


def udp_frame(solo, payload: bytes, dport: int, src: str = PEER_IP, tags=()) -> bytes:
    l2 = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac))
    for tag in tags:
        l2 = l2 / tag
    return bytes(l2 / IP(src=src, dst=B_IP) / UDP(sport=1234, dport=dport) / Raw(payload))


FATES = ("rx_delivered", "icmp_echo_replies", "rx_inband", "rx_reasm_held", "rx_otherhost",
         "rx_malformed", "rx_ip_errors", "rx_no_receiver", "rx_sock_full", "rx_unknown_proto",
         "rx_reasm_fails", "rx_reasm_dups", "rx_filtered", "rx_reply_fails", "rx_inband_drops",
         "rx_filter_dropped", "rx_filter_invalid")


def settle(solo, frames: int) -> None:
    """Wait until the port's RX path has taken *frames* frames (in total) to their fates (the
    RX ledger of core/src/stats.rs) and the in-band stage has handled what was skipped."""
    def done() -> bool:
        stats = solo.B.get_stats(solo.pb)
        c = stats.extra
        fates = sum(c[k] for k in FATES) + stats.csum_errors + stats.rx_nomem
        return (stats.rx_packets >= frames and fates >= frames
                and c["inband_filter_skipped"] >= c["rx_filter_skipped"])
    assert wait_until(done, 5), extra(solo.B, solo.pb)


def nothing_queued(sock) -> bool:
    try:
        sock.oob_recvmsg(70000, flags=MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


def counters(solo) -> dict:
    c = extra(solo.B, solo.pb)
    return {k: c[k] for k in ("rx_filter_dropped", "rx_filter_invalid", "rx_filter_skipped",
                              "rx_delivered")}


# -- verdicts -----------------------------------------------------------------------------------

def test_accept_and_skip_by_udp_port(solo, objs):
    inside, outside = solo.udp((B_IP, 59059)), solo.udp((B_IP, 7000))
    solo.B.set_filter(solo.pb, objs["udp_port_range"])
    assert solo.pb.filter_path == objs["udp_port_range"]
    solo.inject(udp_frame(solo, b"taken", 59059))          # ACCEPT: the oob socket gets it
    solo.inject(udp_frame(solo, b"left", 7000))            # SKIP: the in-band stage does
    settle(solo, 2)
    assert inside.oob_recvmsg(100, timeout=5)[0] == b"taken"
    assert nothing_queued(outside)
    c = counters(solo)
    assert c["rx_filter_skipped"] == 1 and c["rx_filter_dropped"] == 0
    # the in-band stage of a virtual link has no UDP: counted as having no taker
    assert extra(solo.B, solo.pb)["inband_no_taker"] == 1


def test_drop_is_counted_and_reaches_no_one(solo, objs):
    s = solo.udp((B_IP, 59059))
    tap = solo.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(evlnet.ETH_P_ALL))
    solo.B.set_filter(solo.pb, objs["drop_source"])
    solo.inject(udp_frame(solo, b"bad", 59059, src=DROPPED_SOURCE))
    solo.inject(udp_frame(solo, b"good", 59059))
    settle(solo, 2)
    assert s.oob_recvmsg(100, timeout=5)[0] == b"good"
    assert nothing_queued(s)
    # not even an ETH_P_ALL listener saw the dropped frame
    frame = tap.oob_recvmsg(2000, timeout=5)[0]
    assert frame.endswith(b"good") and nothing_queued(tap)
    assert counters(solo)["rx_filter_dropped"] == 1
    tap.close()


def test_accept_one_ethertype_for_a_packet_socket(solo, objs):
    listener = solo.B.socket(AF_PACKET, SOCK_RAW | SOCK_OOB, pysocket.htons(0x88B5))
    s = solo.udp((B_IP, 59059))
    solo.B.set_filter(solo.pb, objs["ethertype"])
    eth = Ether(dst=mac_str(solo.b_mac), src=mac_str(solo.wire_mac), type=0x88B5)
    solo.inject(bytes(eth / Raw(b"x" * 50)))
    solo.inject(udp_frame(solo, b"udp", 59059))            # not the EtherType: skipped
    settle(solo, 2)
    assert listener.oob_recvmsg(2000, timeout=5)[0].endswith(b"x" * 50)
    assert nothing_queued(s)
    assert counters(solo)["rx_filter_skipped"] == 1
    listener.close()


def test_skipped_arp_goes_to_the_inband_stage(solo, objs):
    solo.B.set_filter(solo.pb, objs["ipv4_only"])
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac_str(solo.wire_mac)) / ARP(
        op=2, hwsrc=mac_str(solo.wire_mac), psrc=PEER_IP, hwdst=mac_str(solo.b_mac), pdst=B_IP)
    solo.inject(bytes(arp))
    settle(solo, 1)
    # the in-band stage learnt the neighbour from it (EVL: ARP always stays in-band)
    assert wait_until(lambda: any(n.address == evlnet.core.stack.parse_cidr(PEER_IP)[0]
                                  for n in solo.B.frontcache.neighbours), 5)
    assert counters(solo)["rx_filter_skipped"] == 1
    assert extra(solo.B, solo.pb).get("arp_replies", 0) == 0     # the oob stage did not answer


def test_vlan_verdict_applies_the_vlan_set(solo, objs):
    s = solo.udp((B_IP, 59059))
    solo.B.set_vlans("42")
    solo.B.set_filter(solo.pb, objs["vlan"])
    solo.inject(udp_frame(solo, b"in-set", 59059, tags=(Dot1Q(vlan=42),)))
    solo.inject(udp_frame(solo, b"not-in-set", 59059, tags=(Dot1Q(vlan=43),)))
    solo.inject(udp_frame(solo, b"untagged", 59059))
    settle(solo, 3)
    assert s.oob_recvmsg(100, timeout=5)[0] == b"in-set"
    assert nothing_queued(s)
    assert counters(solo)["rx_filter_skipped"] == 2


def test_the_filter_takes_precedence_over_the_vlan_set(solo, objs):
    s = solo.udp((B_IP, 59059))
    other = solo.udp((B_IP, 7000))
    solo.B.set_vlans("42")
    # without a filter, a tagged frame in the set reaches any bound socket
    solo.inject(udp_frame(solo, b"no-filter", 7000, tags=(Dot1Q(vlan=42),)))
    assert other.oob_recvmsg(100, timeout=5)[0] == b"no-filter"
    solo.B.set_filter(solo.pb, objs["udp_port_range"])
    # the filter decides first: same VID, port outside the range -> skipped
    solo.inject(udp_frame(solo, b"filtered", 7000, tags=(Dot1Q(vlan=42),)))
    solo.inject(udp_frame(solo, b"taken", 59059, tags=(Dot1Q(vlan=42),)))
    settle(solo, 3)
    assert s.oob_recvmsg(100, timeout=5)[0] == b"taken"
    assert nothing_queued(other)
    solo.B.set_filter(solo.pb, objs["drop_source"])
    solo.inject(udp_frame(solo, b"dropped", 59059, src=DROPPED_SOURCE, tags=(Dot1Q(vlan=42),)))
    settle(solo, 4)
    assert nothing_queued(s)
    assert counters(solo)["rx_filter_dropped"] == 1


def test_other_return_values_are_dropped_and_counted(solo, objs):
    s = solo.udp((B_IP, 59059))
    solo.B.set_filter(solo.pb, objs["bad_verdict"])
    for i in range(3):
        solo.inject(udp_frame(solo, b"%d" % i, 59059))
    settle(solo, 3)
    assert nothing_queued(s)
    assert counters(solo)["rx_filter_invalid"] == 3


def test_remove_restores_the_default_and_queued_frames_stay(solo, objs):
    s = solo.udp((B_IP, 59059))
    solo.inject(udp_frame(solo, b"queued-before", 59059))
    settle(solo, 1)
    solo.B.set_filter(solo.pb, objs["bad_verdict"])          # drops everything from now on
    assert s.oob_recvmsg(100, timeout=5)[0] == b"queued-before"
    solo.inject(udp_frame(solo, b"dropped", 59059))
    settle(solo, 2)
    assert nothing_queued(s)
    solo.B.set_filter(solo.pb, None)
    assert solo.pb.filter_path is None
    solo.inject(udp_frame(solo, b"after", 59059))
    assert s.oob_recvmsg(100, timeout=5)[0] == b"after"


def test_replace_and_remove_under_traffic_lose_nothing_uncounted(pair, objs):
    """A sender floods B while B swaps filters (each accepting the traffic) and removes them:
    every datagram is delivered or counted."""
    sa, sb = pair.solicited_pair(59059)
    sb.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 1 << 24)
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        while not stop.is_set():
            try:
                sa.oob_sendto(b"%08d" % sent[0], (B_IP, 59059))
                sent[0] += 1
            except BlockingIOError:
                pass

    received: list[bytes] = []

    def drain() -> None:
        while not stop.is_set():
            try:
                received.append(sb.oob_recvmsg(100, timeout=0.2)[0])
            except (BlockingIOError, TimeoutError):
                pass

    threads = [threading.Thread(target=flood), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    try:
        cycle = [objs["ipv4_only"], objs["udp_port_range"], objs["udp_port_range_direct"], None]
        i = 0
        deadline = time.monotonic() + 10
        while (i < 40 or sent[0] < 5000) and time.monotonic() < deadline:
            pair.B.set_filter(pair.pb, cycle[i % len(cycle)])
            i += 1
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # what A put on the link has all reached B's RX path (or the device's drop counters)
    tx = pair.A.get_stats(pair.pa).tx_packets

    def arrived() -> int:
        c = extra(pair.B, pair.pb)
        return pair.B.get_stats(pair.pb).rx_packets + c["rx_dropped"] + c["device_rx_nomem"]

    assert wait_until(lambda: arrived() >= tx, 5)

    def counted_drops() -> tuple[int, dict, dict]:
        stats = pair.B.get_stats(pair.pb)
        c = stats.extra
        a = extra(pair.A, pair.pa)
        # every drop reason that can hit this traffic, on both sides (core/src/stats.rs)
        return (c["rx_sock_full"] + c["rx_filter_dropped"] + c["rx_filter_invalid"]
                + c["rx_filter_skipped"] + stats.rx_nomem + c["rx_dropped"]
                + c["rx_no_receiver"] + a["tx_qdisc_drops"] + a["tx_errors"]
                + a["tx_dropped_down"]), c, a

    def unaccounted() -> int:
        while not nothing_queued_peek(sb):
            received.append(sb.oob_recvmsg(100, flags=MSG_DONTWAIT)[0])
        return sent[0] - len(received) - counted_drops()[0]

    # a frame is counted in rx_packets as the RX path takes it, and reaches its socket (or a
    # drop counter) a moment later: wait for the last ones, then check the balance
    wait_until(lambda: unaccounted() == 0, 5)
    counted, c, a = counted_drops()
    lost = sent[0] - len(received)
    print(f"\n{i} swaps; sent {sent[0]} received {len(received)} counted drops {counted}")
    assert sent[0] > 1000
    assert lost == counted, (c, a)
    assert c["rx_filter_skipped"] == c["rx_filter_dropped"] == 0   # every filter accepted it
    # in order, none twice
    assert received == sorted(set(received))


def nothing_queued_peek(sock) -> bool:
    return len(sock.core_socket) == 0


# -- refusals and errnos ------------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("unchecked_read", "packet read out of bounds"),
    ("loop", "loops are not allowed"),
    ("unknown_helper", "helper 5 is not available"),
    ("no_program", "holds no program"),
])
def test_unsafe_programs_are_refused_at_load(solo, objs, name, why):
    s = solo.udp((B_IP, 59059))
    with raises_errno(errno.EINVAL) as info:
        solo.B.set_filter(solo.pb, objs[name])
    assert why in str(info.value)
    assert solo.pb.filter_path is None
    # nothing was installed: traffic flows as before
    solo.inject(udp_frame(solo, b"still", 59059))
    assert s.oob_recvmsg(100, timeout=5)[0] == b"still"


def test_set_filter_errnos(solo, objs, tmp_path, stacks):
    B, port = solo.B, solo.pb
    with raises_errno(errno.ENOENT):
        B.set_filter(port, str(tmp_path / "missing.o"))
    garbage = tmp_path / "garbage.o"
    garbage.write_bytes(b"\x7fELF but not really" * 10)
    with raises_errno(errno.EINVAL):
        B.set_filter(port, str(garbage))
    with raises_errno(errno.EINVAL):
        B.set_filter(port, sys.executable)                 # an ELF file, for the host
    with raises_errno(errno.EINVAL):
        B.set_filter(port, str(tmp_path))                  # a directory
    with raises_errno(errno.EBADF):
        B.set_filter(-1, objs["ipv4_only"])
    other = stacks("O")
    with raises_errno(errno.EBADF):
        other.set_filter(port, objs["ipv4_only"])           # not a port of that stack
    B.disable_port(port)
    with raises_errno(errno.EBADF):
        B.set_filter(port, objs["ipv4_only"])               # no longer enabled


def test_unreadable_object_is_eacces(objs, tmp_path):
    """Root reads anything: as root, a forked child becomes user nobody first."""
    locked = tmp_path / "locked.o"
    locked.write_bytes(open(objs["ipv4_only"], "rb").read())
    locked.chmod(0)
    os.chmod(tmp_path, 0o755)
    if os.geteuid() != 0:
        with raises_errno(errno.EACCES):
            load_program(str(locked))
        return
    pid = os.fork()
    if pid == 0:                                   # the child: only a file open, then _exit
        code = 1
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            load_program(str(locked))
        except OSError as exc:
            code = 0 if exc.errno == errno.EACCES else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "load_program did not fail with EACCES"


def test_custom_port_range_built_with_defines(solo, tmp_path):
    obj = build(os.path.join(os.path.dirname(__file__), "..", "examples", "filters",
                             "udp_port_range.c"), str(tmp_path), "FIRST_PORT=7000",
                "LAST_PORT=7001")
    s = solo.udp((B_IP, 7001))
    solo.B.set_filter(solo.pb, obj)
    solo.inject(udp_frame(solo, b"in-range", 7001))
    assert s.oob_recvmsg(100, timeout=5)[0] == b"in-range"


def test_module_level_api(objs, make_solo):
    # evlnet.set_filter acts on the default stack: EBADF for a port that is not one of its own
    s = make_solo()
    with raises_errno(errno.EBADF):
        evlnet.set_filter(s.pb, objs["ipv4_only"])


def test_the_jit_gives_the_interpreters_verdict_on_any_frame(objs):
    """Every example runs JIT-compiled (x86-64) in the RX path; on random frames, and on frames
    that pass each test in the examples, it returns what rbpf's bounds-checked interpreter
    returns, and never faults."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from evlnet.datapath import _core

    examples = [f[:-2] for f in os.listdir(EXAMPLES) if f.endswith(".c")]
    progs = {n: _core.FilterProgram(open(objs[n], "rb").read()) for n in examples}
    assert len(progs) >= 6
    if os.uname().machine == "x86_64":
        assert all(p.jitted for p in progs.values()), {n: p.jitted for n, p in progs.items()}
    l2 = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:09")
    shaped = st.builds(
        lambda src, dport, tags, payload, proto: bytes(
            (l2 / Dot1Q(vlan=tags) if tags else l2)
            / IP(src=src, dst=B_IP, proto=proto) / UDP(sport=1234, dport=dport) / Raw(payload)),
        st.sampled_from([PEER_IP, DROPPED_SOURCE]),
        st.one_of(st.just(59059), st.integers(0, 65535)),
        st.sampled_from([0, 42, 100]), st.binary(max_size=64), st.sampled_from([17, 6, 1]))

    @settings(max_examples=300, deadline=None)
    @given(frame=st.one_of(shaped, st.binary(max_size=200)),
           cut=st.integers(0, 200))
    def same_verdict(frame: bytes, cut: int) -> None:
        frame = frame[:cut] if cut < len(frame) else frame
        for name, prog in progs.items():
            jit = prog.time_vm(frame, 1)[0]
            assert jit != -1, name
            assert jit == prog.time_vm(frame, 1, True)[0], (name, frame.hex())

    same_verdict()

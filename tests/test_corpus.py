"""The malformed-frame corpus (issue 9), replayed on the virtual link and on a veth port.

``tests/corpus/`` holds pcap files built once by ``make_corpus.py`` (scapy) and
``expected.json``: each frame's outcome and the counter that must show it. Each frame is
followed by a sentinel datagram to another socket; once the sentinel is received and the RX
ledger balances, the frame's counter must have risen by exactly 1 and the frame must have had
exactly one fate (nothing else counted for it). On a Linux port only what the diversion rule
takes reaches the core: there the program the kernel runs (``diversion.build_program``, checked
against the kernel by ``test_linux_diversion.py``) says which frames go to the core; the others
must not reach it.
"""
from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader
from virtual_fixtures import make_solo, raises_errno, solo, stacks, unique, wait_until  # noqa: F401

from evlnet import AF_INET, SOCK_DGRAM, SOCK_OOB, VirtualLink
from evlnet.constants import MSG_DONTWAIT
from evlnet.core.stack import Stack

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SENTINEL_PORT = 7999

#: the counters of every fate a frame can have in the RX ledger (core/src/stats.rs)
DROPS = ("rx_otherhost", "rx_malformed", "rx_ip_errors", "csum_errors", "rx_no_receiver",
         "rx_sock_full", "rx_unknown_proto", "rx_reasm_fails", "rx_reasm_dups", "rx_filtered",
         "rx_nomem", "rx_reply_fails", "rx_inband_drops", "rx_filter_dropped",
         "rx_filter_invalid")
FATES = ("rx_delivered", "icmp_echo_replies", "rx_inband", "rx_reasm_held") + DROPS


def load_corpus() -> tuple[dict, list[dict]]:
    with open(os.path.join(CORPUS, "expected.json")) as f:
        spec = json.load(f)
    frames: dict[str, list[bytes]] = {}
    for entry in spec["frames"]:
        name = entry["pcap"]
        if name not in frames:
            frames[name] = [data for data, _meta in RawPcapReader(os.path.join(CORPUS, name))]
        entry["frame"] = frames[name][entry["index"]]
    return spec["setup"], spec["frames"]


def with_macs(frame: bytes, setup: dict, victim: bytes, peer: bytes) -> bytes:
    """The frame with the placeholder MACs replaced by the real ones."""
    vm, pm = (bytes.fromhex(setup[k].replace(":", "")) for k in ("victim_mac", "peer_mac"))
    dst, src = frame[:6], frame[6:12]
    dst = victim if dst == vm else dst
    src = peer if src == pm else src
    return dst + src + frame[12:] if len(frame) >= 12 else frame


def ledger(c: dict) -> tuple[int, int]:
    """(frames in, fates) of the RX ledger (core/src/stats.rs)."""
    packets = c["rx_packets"] + c["rx_reasm_ok"] + c["rx_reasm_timeouts"]
    return packets, sum(c[k] for k in FATES)


@dataclass
class Replay:
    """Replays frames on one port: *send* puts a frame on the wire towards it."""

    setup: dict
    send: Callable[[bytes], bool]
    counters: Callable[[], dict]
    data_sock: object
    sentinel_sock: object
    sentinel: bytes
    results: dict = field(default_factory=lambda: {"replayed": 0, "as_expected": 0,
                                                   "to_core": 0, "to_kernel": 0,
                                                   "refused_by_sender": 0})
    failures: list = field(default_factory=list)
    #: the frames the victim sent since the last call (None: not observable here)
    replies: Callable[[], list[bytes]] | None = None

    def quiet(self, before: dict, timeout: float = 5.0) -> dict:
        """Send the sentinel, receive it, wait for the ledger to balance; the counters then."""
        assert self.send(self.sentinel)
        data = self.sentinel_sock.oob_recvmsg(100, timeout=timeout)[0]
        assert data == b"sentinel"
        got: dict = {}

        def balanced() -> bool:
            got.update(self.counters())
            packets, fates = ledger(got)
            return packets == fates and got["rx_delivered"] > before["rx_delivered"]
        assert wait_until(balanced, timeout), f"RX ledger never balanced: {ledger(got)}"
        return got

    def frame(self, entry: dict, frame: bytes, to_core: bool) -> None:
        before = self.counters()
        if self.replies is not None:
            self.replies()
        sent = self.send(frame)
        after = self.quiet(before)
        self.results["replayed"] += 1
        delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
        delta["rx_delivered"] -= 1                 # the sentinel's
        delta["rx_packets"] -= 1
        problems = []
        if not sent:
            self.results["refused_by_sender"] += 1
            if any(delta.get(k, 0) for k in ("rx_packets",) + FATES):
                problems.append(f"refused by the sender, yet counted: {delta}")
        elif not to_core:
            self.results["to_kernel"] += 1
            if delta["rx_packets"] != 0:
                problems.append(f"not diverted, yet the core saw it: {delta}")
        else:
            self.results["to_core"] += 1
            counter = entry["counter"]
            if delta.get(counter) != 1:
                moved = {k: v for k, v in delta.items() if v and k in FATES + ("rx_oversize",)}
                problems.append(f"{counter} +{delta.get(counter)} (moved: {moved})")
            # one fate per frame (a datagram completed by it brings rx_reasm_ok and its own fate)
            fates = sum(delta[k] for k in FATES) - delta["rx_reasm_ok"]
            expect_fates = 0 if counter == "rx_oversize" else 1
            if fates != expect_fates or delta["rx_packets"] != expect_fates:
                problems.append(f"{fates} fates for {delta['rx_packets']} frames in")
            if entry["outcome"] == "answered" and self.replies is not None:
                answers: list[bytes] = []
                replies = self.replies

                def answered() -> bool:    # the TX thread may send it after the sentinel
                    answers.extend(f for f in replies() if _is_answer(f, frame))
                    return bool(answers)
                wait_until(answered, 2)
                if len(answers) != 1:
                    problems.append(f"{len(answers)} answers on the wire")
            if entry["outcome"] == "delivered":
                try:
                    self.data_sock.oob_recvmsg(70000, flags=MSG_DONTWAIT)
                except OSError as exc:
                    problems.append(f"nothing to receive: {exc}")
        if problems:
            self.failures.append((entry["pcap"], entry["index"], entry["case"], problems))
        else:
            self.results["as_expected"] += 1

    def report(self, where: str) -> None:
        r = self.results
        print(f"\n{where}: {r['replayed']} frames replayed, {r['as_expected']} outcomes as "
              f"expected ({r['to_core']} to the core, {r['to_kernel']} left to the kernel by "
              f"the diversion rule, {r['refused_by_sender']} refused by the sending kernel)")
        assert not self.failures, "\n".join(map(str, self.failures))
        assert r["as_expected"] == r["replayed"]


def _is_answer(reply: bytes, request: bytes) -> bool:
    """*reply* is the ICMP echo reply or ARP reply to *request*, sent back to its sender."""
    if request[12:14] == b"\x08\x06":       # ARP: is-at for the target, to the sender's MAC
        return reply[:6] == request[22:28] and reply[12:14] == b"\x08\x06" and \
            reply[20:22] == b"\x00\x02" and reply[28:32] == request[38:42]
    if reply[:6] != request[6:12]:
        return False
    ihl, rihl = ((f[14] & 0x0F) * 4 for f in (request, reply))
    return (reply[12:14] == b"\x08\x00" and reply[14 + 9] == 1 and reply[14 + rihl] == 0
            and reply[14 + 16:14 + 20] == request[14 + 12:14 + 16]          # to the requester
            and reply[14 + rihl + 4:14 + rihl + 8] == request[14 + ihl + 4:14 + ihl + 8])


def sentinel_frame(setup: dict, victim: bytes, peer: bytes) -> bytes:
    pkt = (Ether(dst=victim, src=peer) / IP(src=setup["peer_ip"], dst=setup["victim_cidr"][:-3]) /
           UDP(sport=5000, dport=SENTINEL_PORT) / b"sentinel")
    return bytes(pkt)


def open_sockets(stack: Stack, port: int) -> tuple:
    data = stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    data.bind(("0.0.0.0", port))
    sentinel = stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    sentinel.bind(("0.0.0.0", SENTINEL_PORT))
    return data, sentinel


def test_corpus_is_what_the_script_builds(tmp_path):
    """The committed files are the script's output (no hand edits, no stale pcaps)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_corpus",
                                                  os.path.join(CORPUS, "make_corpus.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.HERE = str(tmp_path)
    mod.main()
    for name in sorted(os.listdir(tmp_path)):
        with open(tmp_path / name, "rb") as fresh, open(os.path.join(CORPUS, name), "rb") as old:
            assert fresh.read() == old.read(), f"{name} differs: run make_corpus.py again"


def test_corpus_on_the_virtual_link(stacks):
    setup, entries = load_corpus()
    link = VirtualLink(unique("ca"), unique("cb"), mtu=setup["mtu"])
    B = stacks("B", reasm_poolsz=setup["reasm_poolsz"])
    B.add_interface(link.b, setup["victim_cidr"])
    B.set_vlans(setup["vlans"])
    port = B.enable_port(link.b.name)
    data, sent = open_sockets(B, setup["udp_port"])
    victim, peer = link.b.mac, link.a.mac
    link.a.set_tap(True, False)            # the wire's end: what B sends is dropped there
    try:
        def send(frame: bytes) -> bool:
            link.b.inject(frame)
            return True

        r = Replay(setup, send, port.counter_values, data, sent,
                   sentinel_frame(setup, victim, peer), replies=link.a.take_tapped)
        for e in entries:
            r.frame(e, with_macs(e["frame"], setup, victim, peer), to_core=True)
        r.report("virtual link")
        st = B.get_stats(port)
        assert wait_until(lambda: B.get_stats(port).extra["rx_skb_free"] ==
                          st.extra["rx_skb_total"]), "RX buffers missing once quiet"
    finally:
        link.a.set_tap(False, True)


def _hook_view(frame: bytes) -> tuple[bytes, int | None]:
    """What the kernel's packet hooks see: an outer 802.1Q/802.1ad tag moved to the metadata."""
    if len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:], int.from_bytes(frame[14:16], "big")
    return frame, None


@pytest.mark.root
def test_corpus_on_a_veth_port():
    from evlnet.linux import diversion as dv
    from evlnet.testing import in_netns, netns, require_root, veth_pair
    require_root()
    setup, entries = load_corpus()
    victim_ip = setup["victim_cidr"][:-3]
    with netns("ca") as a, netns("cb") as b, \
            veth_pair(a, b, addr_a=setup["victim_cidr"], addr_b=setup["peer_ip"] + "/24",
                      mtu=setup["mtu"]) as (ea, eb):
        stack = Stack(unique("corpus"), reasm_poolsz=setup["reasm_poolsz"])
        raw = None
        try:
            stack.set_vlans(setup["vlans"])
            with in_netns(a):
                port = stack.enable_port(ea.name)
            data, sent = open_sockets(stack, setup["udp_port"])
            stack.kernel.refresh_diversion()
            ops = dv.build_program(stack.kernel.rule_for_port(port), dv.SOCKET_ACCEPT,
                                   dv.SOCKET_PASS)
            with in_netns(b):
                raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            raw.bind((eb.name, 0))
            victim = bytes.fromhex(ea.mac_str.replace(":", ""))
            peer = bytes.fromhex(eb.mac_str.replace(":", ""))
            # the kernel in B must not answer ARP for the victim's traffic: the frames carry
            # the MACs already; B learns A's MAC for nothing here
            sock_raw = raw

            def send(frame: bytes) -> bool:
                try:
                    return sock_raw.send(frame) == len(frame)
                except OSError as exc:
                    if exc.errno in (errno.EMSGSIZE, errno.EINVAL):
                        return False
                    raise

            r = Replay(setup, send, port.counter_values, data, sent,
                       sentinel_frame(setup, victim, peer))
            for e in entries:
                frame = with_macs(e["frame"], setup, victim, peer)
                to_core = dv.run_program(ops, *_hook_view(frame)) == dv.SOCKET_ACCEPT
                r.frame(e, frame, to_core)
            r.report(f"veth port ({victim_ip}, kernel sender)")
            assert r.results["to_core"] > len(entries) // 2
        finally:
            if raw is not None:
                raw.close()
            stack.close()

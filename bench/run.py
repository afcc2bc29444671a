#!/usr/bin/env python3
"""evlnet's benchmark suite (issue #5): evlnet side by side with the kernel path, in one run.

    ./run bench                    # everything, default sizes (~10 min; root for the veth parts)
    ./run bench --quick            # small N, short windows (~1-2 min)
    ./run bench --write-results    # also write bench/RESULTS.md and bench/rtt.png
    ./run bench --evlnet-opts rx_poolsz=2048 poolsz=4096   # Stack(**opts) / enable_port(...)

Two network namespaces (A: clients and senders, B: servers and receivers) joined by one veth pair
per data path; each end is its own process (own GIL) inside its own namespace. Measured, with
64-byte UDP payloads unless --size says otherwise:

1. RTT, evlnet<->evlnet vs kernel<->kernel (and raw AF_PACKET<->raw AF_PACKET, and the Rust
   ring floor: core/examples/rtt_floor.rs, evlnet's AfPacket device alone), p50/p99/p99.9/max
   over N round trips in interleaved chunks; again with a CPU-burning process on the other core.
2. RX datagrams/s delivered to the application, fed by trafgen (what was offered is counted too).
3. TX datagrams/s from the application onto the wire (counted by the peer interface).
4. Bytes allocated per packet in steady state (tracemalloc), RSS vs the TX pool bytes.
5. References: raw AF_PACKET loops, the Rust ring floor (RTT only), scapy (srp1 / sendp /
   sniff, small N).

Prints ONE table; a part that cannot run is shown as "n/a [k]" with the reason in footnote k,
so the suite always completes. Targets are printed (PASS/MISS), never asserted. See
bench/README.md for the method.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent / "src"))   # evlnet even without `pip install -e .`

import _stalls  # noqa: E402
from _report import Results, format_report, write_results  # noqa: E402

RTT_PORT = 59059          # latmus' UDP port
CLIENT_PORT = 40000
SCAPY_CLIENT_PORT = 40001
RX_PORT = 7001
RX_SRC_PORT = 7000
TX_PORT = 9009

PRESETS = {
    #         N       chunk  warmup  window rounds alloc  alloc_warm scapy_rtt scapy_tx virtual
    "full":  (100000, 5000,  1000,   3.0,   2,     10000, 2000,      300,      5000,    20000),
    "quick": (5000,   1000,  300,    1.0,   2,     2000,  500,       100,      1000,    5000),
    "smoke": (200,    100,   50,     0.25,  1,     100,   50,        5,        50,      200),
}
#: --smoke: no single wait is longer (a hanging path becomes an n/a, the run still ends)
SMOKE_TIMEOUT_CAP = 30.0
PARTS = ("rtt", "burner", "rx", "tx", "alloc", "mem", "raw", "floor", "scapy", "virtual",
         "stalls")
#: seconds of the vCPU stall probe (bench/_stalls.py) per mode
STALL_SECONDS = {"full": 2.0, "quick": 1.0, "smoke": 0.2}
#: the Rust ring floor: round trips each run of the client does, unrecorded, before its chunk
FLOOR_CHUNK_WARMUP = 100
#: payload size the floor's frames carry (core/examples/rtt_floor.rs: PAYLOAD)
FLOOR_SIZE = 64
#: upper bound on the floor echo's life (it is stopped with its worker long before)
FLOOR_ECHO_SECONDS = 4 * 3600


@dataclass
class Params:
    mode: str = "full"
    round_trips: int = 100000
    chunk: int = 5000
    warmup: int = 1000
    window_s: float = 3.0
    rounds: int = 2
    alloc_round_trips: int = 10000
    alloc_warmup: int = 2000
    scapy_rtt: int = 300
    scapy_tx: int = 5000
    virtual_round_trips: int = 20000
    size: int = 64
    evlnet_opts: dict = field(default_factory=dict)
    burner_cpu: int = 0
    trafgen_cpu: int | None = None
    rx_cpus: list | None = None
    skip: list = field(default_factory=list)
    virtual: bool = False
    #: CPU wake-up latency request held for the whole run (µs), None: the machine's own
    cpu_latency_us: int | None = 0
    cpu_latency: str = ""


#: evlnet's low-latency configuration: receivers busy-poll the port (SO_BUSY_POLL) for up to 0.1 s
DEFAULT_EVLNET_OPTS = ["busy_poll_us=100000"]


def parse_opts(tokens: list[str]) -> dict:
    """``key=value`` pairs (also comma-separated) -> kwargs; values become bool/int/float/str."""
    out: dict = {}
    for tok in tokens:
        for item in filter(None, tok.split(",")):
            if "=" not in item:
                raise argparse.ArgumentTypeError(f"--evlnet-opts: {item!r} is not key=value")
            k, v = item.split("=", 1)
            low = v.lower()
            if low in ("true", "yes", "on"):
                val: object = True
            elif low in ("false", "no", "off"):
                val = False
            else:
                try:
                    val = int(v, 0)
                except ValueError:
                    try:
                        val = float(v)
                    except ValueError:
                        val = v
            out[k.strip()] = val
    return out


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    ap = argparse.ArgumentParser(
        prog="bench/run.py", description="evlnet vs kernel benchmarks (issue #5): one table.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[1])
    ap.add_argument("--quick", action="store_true", help="small N and short windows (~1-2 min)")
    ap.add_argument("--smoke", action="store_true", help="tiny N, implies --quick: checks that "
                    "everything runs in seconds (numbers meaningless; tests/test_bench_smoke.py)")
    ap.add_argument("-n", "--round-trips", type=int, help="RTT round trips per path and phase "
                    "(default 100000; --quick 5000)")
    ap.add_argument("--chunk", type=int, help="round trips per interleaved chunk")
    ap.add_argument("--warmup", type=int, help="discarded round trips per path before measuring")
    ap.add_argument("--seconds", type=float, help="RX/TX window length (default 3 s)")
    ap.add_argument("--rounds", type=int, help="RX/TX windows per path, alternated (default 2)")
    ap.add_argument("--size", type=int, default=64, help="UDP payload bytes (default 64)")
    ap.add_argument("--evlnet-opts", nargs="*", default=DEFAULT_EVLNET_OPTS, metavar="KEY=VALUE",
                    help="passed to evlnet.Stack(**opts); poolsz=/bufsz= go to enable_port() "
                    f"(default: {' '.join(DEFAULT_EVLNET_OPTS)}: receivers busy-poll, as a "
                    "latency-minded user runs evlnet; pass busy_poll_us=0 for the threaded path)")
    ap.add_argument("--burn-cpu", type=int, help="CPU of the burner process (default: the last)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin trafgen and the RX "
                    "receiver to separate CPUs")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    ap.add_argument("--virtual", action="store_true", help="also measure evlnet on the embedded "
                    "virtual link (done anyway when evlnet cannot run on veth)")
    ap.add_argument("--write-results", action="store_true",
                    help="write RESULTS.md and rtt.png (into --out)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR, help="where --write-results writes "
                    "(default: bench/)")
    ap.add_argument("--json", type=Path, help="also dump every figure (and histograms) as JSON")
    ap.add_argument("--keep-logs", action="store_true", help="keep the worker logs directory")
    ap.add_argument("--cpu-latency", type=int, default=0, metavar="US",
                    help="hold a PM QoS CPU wake-up latency of US microseconds for the whole "
                    "run, for every path alike (default 0: idle CPUs poll, as a real-time system "
                    "is set up; -1 leaves the machine's idle states alone)")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    n, chunk, warm, win, rounds, alloc, alloc_w, s_rtt, s_tx, virt = PRESETS[mode]
    p = Params(mode=mode, round_trips=n, chunk=chunk, warmup=warm, window_s=win, rounds=rounds,
               alloc_round_trips=alloc, alloc_warmup=alloc_w, scapy_rtt=s_rtt, scapy_tx=s_tx,
               virtual_round_trips=virt, size=args.size)
    if args.round_trips is not None:
        p.round_trips = max(1, args.round_trips)
        if args.chunk is None:
            p.chunk = max(100, min(5000, p.round_trips // 20))
    if args.chunk is not None:
        p.chunk = max(1, args.chunk)
    p.chunk = min(p.chunk, p.round_trips)
    if args.warmup is not None:
        p.warmup = max(0, args.warmup)
    if args.seconds is not None:
        p.window_s = max(0.05, args.seconds)
    if args.rounds is not None:
        p.rounds = max(1, args.rounds)
    if not 8 <= p.size <= 1472:
        ap.error("--size must be 8..1472 (a sequence number goes in the first 8 bytes)")
    try:
        p.evlnet_opts = parse_opts(args.evlnet_opts)
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    p.skip = [s for s in args.skip.split(",") if s]
    bad = set(p.skip) - set(PARTS)
    if bad:
        ap.error(f"--skip: unknown part(s) {', '.join(sorted(bad))} (parts: {', '.join(PARTS)})")
    ncpu = len(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))
    p.burner_cpu = args.burn_cpu if args.burn_cpu is not None else cpus[-1]
    if ncpu >= 2 and not args.no_pin:
        p.trafgen_cpu, p.rx_cpus = cpus[0], cpus[1:]
    p.virtual = args.virtual
    p.virtual_round_trips = min(p.virtual_round_trips, p.round_trips)
    p.cpu_latency_us = None if args.cpu_latency < 0 else args.cpu_latency
    return args, p


FIFO_PRIORITY = 50


@contextmanager
def fifo_workers(pids: list[int], priority: int = FIFO_PRIORITY):
    """SCHED_FIFO for every thread of the worker processes (evlnet's core RX/TX threads
    included) while the block runs, SCHED_OTHER again after: the "+burner" phase measures
    each path as a real-time user would run it next to a CPU hog. A refused call is noted, the
    phase still runs."""
    changed: list[int] = []
    refused: list[str] = []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
                changed.append(tid)
            except OSError as exc:
                refused.append(f"{tid}: {exc.strerror}")
    try:
        yield refused
    finally:
        for tid in changed:
            try:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass


def rotate(names: list, i: int) -> list:
    if not names:
        return names
    k = i % len(names)
    return names[k:] + names[:k]


# ------------------------------------------------------------------------------------------
# the veth suite
# ------------------------------------------------------------------------------------------

def veth_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, AF_PACKET)"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    return None


class Suite:
    """One run on the veth topology: workers, then the phases, each failure becoming an n/a."""

    SERVER_PARTS = ("rtt", "rtt_burner", "rx", "alloc", "mem")
    CLIENT_PARTS = ("rtt", "rtt_burner", "tx", "alloc")
    #: what a worker that failed to start takes down, where it differs from the above
    PARTS_OF = {("server", "scapy"): ("rx",), ("client", "scapy"): ("rtt", "tx"),
                ("server", "floor"): ("rtt", "rtt_burner"),
                ("client", "floor"): ("rtt", "rtt_burner")}

    def __init__(self, p: Params, res: Results, workdir: str) -> None:
        self.p = p
        self.res = res
        self.workdir = workdir
        self.servers: dict = {}
        self.clients: dict = {}
        self.floor_bin: str | None = None

    # -- helpers ------------------------------------------------------------------------------
    def skipped(self, part: str) -> bool:
        return part in self.p.skip

    def ok(self, kind: str, impl: str) -> bool:
        w = (self.servers if kind == "server" else self.clients).get(impl)
        return w is not None and w.alive

    def fail(self, part: str, impl: str, what: str, exc: BaseException) -> None:
        self.res.set_na((part, impl), f"{impl} {what}: {exc}")

    # -- set-up ---------------------------------------------------------------------------
    def start(self, topo, stack: ExitStack) -> None:
        from _harness import Worker
        p = self.p
        pr = topo.pairs
        impls = ["evlnet", "kernel"]
        if not self.skipped("raw"):
            impls.append("raw")
        if not self.skipped("scapy"):
            impls.append("scapy")
        else:
            self.res.set_na("scapy", "skipped (--skip scapy)")
        if self.skipped("raw"):
            self.res.set_na("raw", "skipped (--skip raw)")
        if self.floor_ready():
            impls.append("floor")

        def ips(pair):
            return topo.end_ip(pair, "a"), topo.end_ip(pair, "b")

        k_a, k_b = ips("kernel")
        kt_a, kt_b = ips("kernel_tx")
        e_a, e_b = ips("evlnet")
        et_a, et_b = ips("evlnet_tx")
        r_a, r_b = ips("raw")
        raw_a, raw_b = pr["raw"]
        f_a, f_b = ips("floor")
        floor_a, floor_b = pr["floor"]
        server_cfgs = {
            "kernel": {"role": "kernel-server", "ip": k_b, "rtt_port": RTT_PORT,
                       "rx_port": RX_PORT, "sinks": [[kt_b, TX_PORT], [et_b, TX_PORT]]},
            "evlnet": {"role": "evlnet-server", "ifname": pr["evlnet"][1].name, "ip": e_b,
                       "client_ip": e_a, "rtt_port": RTT_PORT, "rx_port": RX_PORT,
                       "evlnet_opts": p.evlnet_opts},
            "raw": {"role": "raw-server", "ifname": raw_b.name, "rtt_port": RTT_PORT,
                    "rx_port": RX_PORT},
            "scapy": {"role": "scapy-server"},
            "floor": {"role": "floor-server", "binary": self.floor_bin, "ifname": floor_b.name,
                      "seconds": FLOOR_ECHO_SECONDS},
        }
        client_cfgs = {
            "kernel": {"role": "kernel-client", "local_ip": k_a, "peer_ip": k_b,
                       "tx_local_ip": kt_a, "tx_peer_ip": kt_b},
            "evlnet": {"role": "evlnet-client", "ifname": pr["evlnet"][0].name,
                       "tx_ifname": pr["evlnet_tx"][0].name, "local_ip": e_a, "peer_ip": e_b,
                       "tx_local_ip": et_a, "tx_peer_ip": et_b, "evlnet_opts": p.evlnet_opts},
            "raw": {"role": "raw-client", "ifname": raw_a.name, "mac": raw_a.mac_str,
                    "peer_mac": raw_b.mac_str, "local_ip": r_a, "peer_ip": r_b},
            "scapy": {"role": "scapy-client", "ifname": raw_a.name, "mac": raw_a.mac_str,
                      "peer_mac": raw_b.mac_str, "local_ip": r_a, "peer_ip": r_b,
                      "client_port": SCAPY_CLIENT_PORT},
            "floor": {"role": "floor-client", "binary": self.floor_bin, "ifname": floor_a.name,
                      "mac": floor_a.mac_str, "peer_mac": floor_b.mac_str, "local_ip": f_a,
                      "peer_ip": f_b, "chunk_warmup": min(FLOOR_CHUNK_WARMUP, p.warmup)},
        }
        common = {"size": p.size, "rtt_port": RTT_PORT, "client_port": CLIENT_PORT,
                  "tx_port": TX_PORT}
        # servers first: the clients solicit them
        for impl in impls:
            w = Worker(f"{impl}-server", server_cfgs[impl], topo.b, self.workdir)
            stack.callback(w.close)
            self.servers[impl] = w
        for impl, w in self.servers.items():
            if not w.wait_ready():
                for part in self.PARTS_OF.get(("server", impl), self.SERVER_PARTS):
                    self.res.set_na((part, impl), f"{w.cfg['role']}: {w.error}")
        for impl in impls:
            w = Worker(f"{impl}-client", {**common, **client_cfgs[impl]}, topo.a, self.workdir)
            stack.callback(w.close)
            self.clients[impl] = w
        for impl, w in self.clients.items():
            if not w.wait_ready():
                for part in self.PARTS_OF.get(("client", impl), self.CLIENT_PARTS):
                    self.res.set_na((part, impl), f"{w.cfg['role']}: {w.error}")

    def floor_ready(self) -> bool:
        """Build the Rust ring floor (before any worker starts); False, with the reason as the
        floor column's n/a, when it is skipped or cannot be built."""
        from _harness import build_floor
        p = self.p
        if self.skipped("floor"):
            self.res.set_na("floor", "skipped (--skip floor)")
            return False
        if self.skipped("rtt"):
            return False                  # the rtt part's own n/a says why
        if p.size != FLOOR_SIZE:
            self.res.set_na("floor", f"the floor sends {FLOOR_SIZE}-byte payloads only "
                            f"(--size {p.size})")
            return False
        t0 = time.monotonic()
        self.floor_bin, why = build_floor(timeout=120.0 if p.mode == "smoke" else 600.0)
        self.res.floor["build_s"] = round(time.monotonic() - t0, 1)
        if self.floor_bin is None:
            self.res.set_na("floor", why)
            return False
        self.res.floor["binary"] = self.floor_bin
        return True

    # -- RTT ------------------------------------------------------------------------------
    def rtt_phase(self, phase: str, part: str) -> float:
        """Interleaved chunks of round trips; returns the phase's wall time."""
        from _harness import WorkerError
        from _worker import new_histogram
        from hdrh.histogram import HdrHistogram
        p = self.p
        t_start = time.monotonic()
        active = {i: self.clients[i] for i in ("evlnet", "kernel", "raw", "floor")
                  if self.ok("client", i) and self.ok("server", i)}
        for name, w in list(active.items()):
            try:
                w.call("rtt", timeout=120 + p.warmup * 0.05, n=max(1, p.warmup),
                       max_seconds=60 + p.warmup * 0.02)
            except WorkerError as exc:
                self.fail(part, name, "RTT warm-up", exc)
                del active[name]
        out = self.res.rtt[phase]
        left = {name: p.round_trips for name in active}
        i = 0
        while active and any(left[nm] > 0 for nm in active):
            for name in rotate(list(active), i):
                c = min(p.chunk, left[name])
                if c <= 0 or name not in active:
                    continue
                max_s = max(30.0, c * 0.02)
                try:
                    r = active[name].call("rtt", timeout=max_s + 30, n=c, max_seconds=max_s)
                except WorkerError as exc:
                    self.fail(part, name, "RTT", exc)
                    out.pop(name, None)
                    del active[name]
                    continue
                slot = out.setdefault(name, {"hist": new_histogram(), "n": 0, "lost": 0,
                                             "chunks": 0, "elapsed": 0.0, "truncated": 0})
                slot["hist"].add(HdrHistogram.decode(r["hist"]))
                slot["n"] += r["n"]
                slot["lost"] += r["lost"]
                slot["chunks"] += 1
                slot["elapsed"] += r["elapsed"]
                slot["truncated"] += int(r["truncated"])
                left[name] -= c
            i += 1
        return time.monotonic() - t_start

    def scapy_rtt(self) -> None:
        from _harness import WorkerError
        from hdrh.histogram import HdrHistogram
        if not (self.ok("client", "scapy") and self.ok("server", "raw")):
            if not self.ok("server", "raw"):
                self.res.set_na(("rtt", "scapy"), "scapy RTT needs the raw AF_PACKET echo server: "
                                + (self.res.reason("rtt", "raw") or "not running"))
            return
        n = self.p.scapy_rtt
        try:
            r = self.clients["scapy"].call("rtt", timeout=n * 1.2 + 60, n=n, max_seconds=n + 30)
        except WorkerError as exc:
            self.fail("rtt", "scapy", "srp1 loop", exc)
            return
        self.res.rtt["idle"]["scapy"] = {"hist": HdrHistogram.decode(r["hist"]), "n": r["n"],
                                         "lost": r["lost"], "chunks": 1,
                                         "elapsed": r["elapsed"], "truncated": int(r["truncated"])}

    # -- RX ---------------------------------------------------------------------------------
    def rx_phase(self, topo) -> None:
        from _frames import udp_frame
        from _harness import WorkerError, trafgen, trafgen_available
        p = self.p
        why = trafgen_available()
        names = [i for i in ("evlnet", "kernel", "raw", "scapy") if self.ok("server", i)]
        if why:
            for i in names:
                self.res.set_na(("rx", i), why)
            return
        pair_of = {"evlnet": "evlnet", "kernel": "kernel", "raw": "raw", "scapy": "raw"}
        active = [i for i in names if i != "scapy"]
        plan = [(r, name) for r in range(p.rounds) for name in rotate(active, r)]
        if "scapy" in names:
            plan.append((0, "scapy"))     # one window: a reference, not a contender
        for _, name in plan:
            if name in self.res.na or ("rx", name) in self.res.na:
                continue
            pair = pair_of[name]
            a_end, b_end = topo.pairs[pair]
            frame = udp_frame(b_end.mac, a_end.mac, topo.end_ip(pair, "a"),
                              topo.end_ip(pair, "b"), RX_SRC_PORT, RX_PORT, bytes(p.size))
            try:
                with trafgen(topo.a, a_end.name, frame, p.window_s, p.trafgen_cpu,
                             self.workdir) as tg:
                    r = self.servers[name].call("rx", timeout=p.window_s + 60,
                                                seconds=p.window_s, ifname=b_end.name,
                                                cpus=p.rx_cpus)
            except (WorkerError, RuntimeError, OSError) as exc:
                self.fail("rx", name, "RX window", exc)
                self.res.rx.pop(name, None)
                continue
            acc = self.res.rx.setdefault(name, {"received": 0, "elapsed": 0.0, "offered": 0,
                                                "trafgen_outgoing": 0, "windows": 0})
            acc["received"] += r["received"]
            acc["elapsed"] += r["elapsed"]
            acc["offered"] += r["offered"]
            acc["trafgen_outgoing"] += tg.get("outgoing") or 0
            acc["windows"] += 1
            for k, v in r.get("lost", {}).items():
                lost = acc.setdefault("lost", {})
                lost[k] = lost.get(k, 0) + v

    # -- TX ---------------------------------------------------------------------------------
    def tx_phase(self, topo) -> None:
        from _harness import WorkerError, link_counter
        p = self.p
        pair_of = {"evlnet": "evlnet_tx", "kernel": "kernel_tx", "raw": "raw", "scapy": "raw"}
        names = [i for i in ("evlnet", "kernel", "raw") if self.ok("client", i)]
        for name in names:                               # ARP, caches, first-touch of the pool
            try:
                self.clients[name].call("tx", timeout=60, seconds=min(0.2, p.window_s))
            except WorkerError as exc:
                self.fail("tx", name, "TX warm-up", exc)
        names = [n for n in names if ("tx", n) not in self.res.na]
        plan = [name for r in range(p.rounds) for name in rotate(names, r)]
        if self.ok("client", "scapy"):
            plan.append("scapy")
        for name in plan:
            if ("tx", name) in self.res.na:
                continue
            b_end = topo.pairs[pair_of[name]][1]
            try:
                c0 = link_counter(topo.b, b_end.name)
                if name == "scapy":
                    r = self.clients[name].call("tx", timeout=p.scapy_tx * 0.05 + 60,
                                                count=p.scapy_tx)
                else:
                    r = self.clients[name].call("tx", timeout=p.window_s + 60,
                                                seconds=p.window_s)
                c1 = self._settled(topo.b, b_end.name)
            except (WorkerError, RuntimeError) as exc:
                self.fail("tx", name, "TX window", exc)
                self.res.tx.pop(name, None)
                continue
            acc = self.res.tx.setdefault(name, {"delivered": 0, "sent": 0, "errors": 0,
                                                "elapsed": 0.0, "windows": 0})
            acc["delivered"] += c1 - c0
            acc["sent"] += r["sent"]
            acc["errors"] += r["errors"]
            acc["elapsed"] += r["elapsed"]
            acc["windows"] += 1
            if "via_tx_thread" in r:
                acc["via_tx_thread"] = acc.get("via_tx_thread", 0) + r["via_tx_thread"]

    @staticmethod
    def _settled(ns, ifname: str) -> int:
        from _harness import link_counter
        last = link_counter(ns, ifname)
        for _ in range(20):                 # <= ~1 s
            time.sleep(0.05)
            cur = link_counter(ns, ifname)
            if cur == last:
                return cur
            last = cur
        return last

    # -- allocations and memory -------------------------------------------------------------
    def alloc_phase(self) -> None:
        from _harness import WorkerError
        p = self.p
        for name in ("evlnet", "kernel", "raw"):
            if not (self.ok("client", name) and self.ok("server", name)):
                continue
            budget = 60 + (p.alloc_round_trips + p.alloc_warmup) * 0.05
            try:
                self.res.alloc[name] = self.clients[name].call(
                    "alloc", timeout=budget + 30, n=p.alloc_round_trips, warmup=p.alloc_warmup,
                    max_seconds=budget)
            except WorkerError as exc:
                self.fail("alloc", name, "tracemalloc run", exc)

    def mem_phase(self) -> None:
        from _harness import WorkerError
        for name in ("evlnet", "kernel", "raw"):
            if not self.ok("server", name):
                continue
            try:
                m = self.servers[name].call("mem", timeout=30)
                if self.ok("client", name):
                    m["client"] = self.clients[name].call("mem", timeout=30)
                self.res.mem[name] = m
            except WorkerError as exc:
                self.fail("mem", name, "memory query", exc)

    def check_threads(self) -> None:
        from _harness import WorkerError
        for kind, ws in (("server", self.servers), ("client", self.clients)):
            for name, w in ws.items():
                if not w.alive:
                    continue
                try:
                    errs = w.call("ping", timeout=20).get("thread_errors")
                except WorkerError:
                    continue
                if errs:
                    self.res.notes.append(f"{name} {kind}: thread errors: {'; '.join(errs)}")

    def worker_pids(self) -> list[int]:
        """Every worker process (all paths: the same treatment for each), and the floor's echo
        (its client runs are started by a worker thread, whose policy they inherit)."""
        pids = [w.proc.pid for w in (*self.servers.values(), *self.clients.values())
                if getattr(w, "proc", None) is not None]
        floor = self.servers.get("floor")
        if floor is not None and floor.alive and floor.info.get("echo_pid"):
            pids.append(floor.info["echo_pid"])
        return pids

    # -- everything ---------------------------------------------------------------------------
    def run(self) -> None:
        from _harness import cpu_burner, topology
        p = self.p
        with topology() as topo, ExitStack() as stack:
            self.start(topo, stack)
            if not self.skipped("rtt"):
                idle_s = self.rtt_phase("idle", "rtt")
                if not self.skipped("scapy"):
                    self.scapy_rtt()
                if not self.skipped("burner"):
                    limit = min(3600.0, 3 * idle_s + 120)
                    with cpu_burner(p.burner_cpu, limit), fifo_workers(self.worker_pids()):
                        self.rtt_phase("burner", "rtt_burner")
                else:
                    self.res.set_na("rtt_burner", "skipped (--skip burner)")
            else:
                self.res.set_na("rtt", "skipped (--skip rtt)")
                self.res.set_na("rtt_burner", "skipped (--skip rtt)")
            for part, fn in (("rx", lambda: self.rx_phase(topo)),
                             ("tx", lambda: self.tx_phase(topo)),
                             ("alloc", self.alloc_phase), ("mem", self.mem_phase)):
                if self.skipped(part):
                    self.res.set_na(part, f"skipped (--skip {part})")
                else:
                    fn()
            self.check_threads()
            for w in list(self.servers.values()) + list(self.clients.values()):
                # a crash or a hang says little by itself: show the end of the worker's log
                if w.error and ("exited" in w.error or "no answer" in w.error):
                    tail = w.log_tail(2)
                    if tail:
                        self.res.notes.append(f"{w.name} log: {tail[-300:]}")


# ------------------------------------------------------------------------------------------
# evlnet on the embedded virtual link (labelled; not in the main table)
# ------------------------------------------------------------------------------------------

def run_virtual(p: Params, res: Results, workdir: str) -> None:
    from _harness import Worker, WorkerError
    from _worker import new_histogram
    from hdrh.histogram import HdrHistogram
    cfg = {"role": "evlnet-virtual", "local_ip": "192.0.2.1", "peer_ip": "192.0.2.2",
           "client_port": CLIENT_PORT, "rtt_port": RTT_PORT, "size": p.size,
           "evlnet_opts": p.evlnet_opts}
    w = Worker("evlnet-virtual", cfg, None, workdir)
    try:
        if not w.wait_ready():
            res.virtual["error"] = w.error
            return
        n = p.virtual_round_trips
        slot = {"hist": new_histogram(), "n": 0, "lost": 0, "chunks": 0, "elapsed": 0.0,
                "truncated": 0}
        try:
            w.call("rtt", timeout=120, n=max(1, p.warmup), max_seconds=60)
            left = n
            while left > 0:
                c = min(p.chunk, left)
                r = w.call("rtt", timeout=max(30.0, c * 0.02) + 30, n=c,
                           max_seconds=max(30.0, c * 0.02))
                slot["hist"].add(HdrHistogram.decode(r["hist"]))
                for k in ("n", "lost", "elapsed"):
                    slot[k] += r[k]
                slot["chunks"] += 1
                slot["truncated"] += int(r["truncated"])
                left -= c
            res.virtual["rtt"] = slot
            if "alloc" not in p.skip:
                budget = 60 + (p.alloc_round_trips + p.alloc_warmup) * 0.05
                res.virtual["alloc"] = w.call("alloc", timeout=budget + 30,
                                              n=p.alloc_round_trips, warmup=p.alloc_warmup,
                                              max_seconds=budget)
            res.virtual["mem"] = w.call("mem", timeout=30)
        except WorkerError as exc:
            res.virtual["error"] = str(exc)
    finally:
        w.close()


# ------------------------------------------------------------------------------------------

def _tx_thread_share(res: Results) -> str:
    """What share of evlnet's TX datagrams its port's TX thread carried (streams hand off)."""
    e = res.tx.get("evlnet") or {}
    if not e.get("sent") or "via_tx_thread" not in e:
        return ""
    return f"; {e['via_tx_thread'] / e['sent']:.0%} of them through its port's TX thread"


def describe(p: Params, res: Results) -> None:
    """The measuring conditions, printed under the table."""
    res.notes += [
        f"RTT: {p.round_trips:,} round trips per path and phase after {p.warmup} discarded, in "
        f"chunks of {p.chunk:,} alternating evlnet/kernel/raw/floor; percentiles from "
        f"HdrHistogram (3 digits). +burner+FIFO: a process spinning on CPU {p.burner_cpu} during "
        f"the phase, every thread of every worker (all paths) under SCHED_FIFO {FIFO_PRIORITY} "
        "(workers unpinned).",
        f"RX: trafgen (1 process{f' on CPU {p.trafgen_cpu}' if p.trafgen_cpu is not None else ''}"
        f") floods {p.size}-byte UDP datagrams for {p.rounds} x {p.window_s:g} s per path "
        f"(scapy: 1 window){f'; receiver pinned to CPU {p.rx_cpus}' if p.rx_cpus else ''}; "
        "offered = the receiving veth's rx_packets over the window.",
        f"TX: {p.rounds} x {p.window_s:g} s per path (scapy: sendp count={p.scapy_tx}); counted "
        "by the peer veth's rx_packets; the peer drops them in a never-read kernel UDP socket "
        "(kernel, evlnet) or, with no address, at IP (raw, scapy). evlnet's window ends when its "
        "TX pool is full again" + _tx_thread_share(res) + ".",
        f"alloc: tracemalloc growth (all threads) over {p.alloc_round_trips:,} round trips after "
        f"{p.alloc_warmup:,}, divided by the packets the client handled (2 per round trip).",
        "RSS: VmRSS of the server (B) process after all parts; pools = (skb_total + "
        "rx_skb_total) x skb_size of its port (get_stats): the TX and RX pools it preallocates. "
        "kernel/raw RSS: same Python process shape, for reference.",
        f"scapy: srp1 loop of {p.scapy_rtt} against the raw echo, sendp, sniff.",
    ]
    if any("floor" in d for d in res.rtt.values()):
        res.notes.append(
            "Rust ring floor: core/examples/rtt_floor.rs (evlnet's AfPacket device and Pool, no "
            "stack, no Python; busy-polling client and echo) on its own veth pair, one run of the "
            f"compiled client per chunk, each after {min(FLOOR_CHUNK_WARMUP, p.warmup)} "
            "unrecorded round trips; its echo busy-polls while a client runs, waits in poll() "
            "otherwise.")
    if res.stalls:
        res.notes.append(_stalls.describe(res.stalls))
    if p.evlnet_opts:
        res.notes.append(f"evlnet options: {p.evlnet_opts}")
    if p.cpu_latency_us is None:
        res.notes.append("CPU idle states: the machine's own (--cpu-latency -1): a blocking "
                         "receiver may wait for a halted CPU to wake.")
    else:
        res.notes.append(f"CPU wake-up latency request (/dev/cpu_dma_latency) of "
                         f"{p.cpu_latency_us} us held for the whole run, all paths alike: "
                         f"{p.cpu_latency}.")
    a = res.alloc.get("evlnet") or {}
    if a.get("bytes_per_packet") and round(a["bytes_per_packet"]) > 0 and a.get("top"):
        res.notes.append("evlnet steady-state allocations, top sites: " + "; ".join(a["top"][:3]))
    m = res.mem.get("evlnet") or {}
    if m.get("client"):
        c = m["client"]
        res.notes.append(f"evlnet client process (2 ports: RTT and TX pairs): RSS "
                         f"{c['rss_kib'] / 1024:.1f} MiB; both evlnet processes started at "
                         f"{m['baseline_rss_kib'] / 1024:.1f} MiB after imports.")


def _logs_show_errors(workdir: str) -> bool:
    for f in Path(workdir).glob("*.log"):
        try:
            if "Traceback" in f.read_text(errors="replace"):
                return True
        except OSError:
            pass
    return False


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        print("bench/run.py needs hdrhistogram (and matplotlib for --write-results): "
              "pip install -e '.[bench]'  (./run bench does it)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    old_term = signal.signal(signal.SIGTERM, on_term)

    if p.mode == "smoke":
        from _harness import Worker
        Worker.timeout_cap = SMOKE_TIMEOUT_CAP
    from evlnet.core import realtime
    if p.cpu_latency_us is not None:
        # system-wide while held: every path's processes and the kernel's own wake-ups alike
        p.cpu_latency = realtime.hold_cpu_latency(p.cpu_latency_us)
    res = Results(params={k: v for k, v in asdict(p).items()})
    workdir = tempfile.mkdtemp(prefix="evlnet-bench-")
    t0 = time.monotonic()
    failed = False
    try:
        if "stalls" not in p.skip:
            res.stalls = _stalls.measure(STALL_SECONDS[p.mode])
        why = veth_unavailable()
        if why:
            for impl in ("evlnet", "kernel", "raw", "floor", "scapy"):
                res.set_na(impl, why)
        else:
            try:
                Suite(p, res, workdir).run()
            except Exception as exc:   # the table is printed with what was measured
                failed = True
                traceback.print_exc()
                reason = f"suite aborted: {type(exc).__name__}: {exc}"
                for impl in ("evlnet", "kernel", "raw", "floor", "scapy"):
                    res.set_na(impl, reason)
        evlnet_on_veth = "evlnet" in res.rtt["idle"]
        if (p.virtual or not evlnet_on_veth) and "virtual" not in p.skip:
            run_virtual(p, res, workdir)
        describe(p, res)
        res.params["elapsed_s"] = round(time.monotonic() - t0, 1)
        print(format_report(res), end="")
        print(f"(bench ran {res.params['elapsed_s']:.0f} s)")
        if args.write_results:
            command = "./run bench " + " ".join(argv if argv is not None else sys.argv[1:])
            md, png = write_results(res, args.out, command.strip())
            print(f"wrote {md}" + (f" and {png}" if png else ""))
        if args.json:
            args.json.write_text(json.dumps(res.as_json(), indent=1, default=str))
            print(f"wrote {args.json}")
    except (KeyboardInterrupt, SystemExit):
        print("bench interrupted (namespaces and processes cleaned up)", file=sys.stderr)
        raise
    finally:
        realtime.release_cpu_latency()
        signal.signal(signal.SIGTERM, old_term)
        if args.keep_logs or failed or _logs_show_errors(workdir):
            print(f"worker logs: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

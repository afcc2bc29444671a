"""One benchmark end, run as its own process inside its own network namespace.

    python bench/_worker.py '<json config>'        (started by bench/run.py via `ip netns exec`)

The config names a role (``kernel-client``, ``evlnet-server``, ...). The worker sets the role up,
writes one JSON line (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``) and then answers
one JSON command per stdin line (``{"op": "rtt", "n": 5000, ...}``) with one JSON line. It exits on
``{"op": "quit"}`` or when stdin closes (the orchestrator died), so it never outlives the run.
The protocol uses a private copy of the original stdout; fd 1 is pointed at stderr so that
stray prints from libraries (scapy) cannot corrupt it.

Roles use only evlnet's public API (``Stack``, ``enable_port``, ``socket``, ``bind``,
``solicit``, ``oob_sendmsg``, ``oob_recvmsg_into``, ``get_stats``).
"""
from __future__ import annotations

import gc
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from array import array

import _loops as L
from _frames import bpf_udp_port, packet_socket, set_rcvtimeo, udp_frame

HIST_MAX_NS = 60_000_000_000     # 60 s: anything slower is recorded as 60 s


def new_histogram():
    from hdrh.histogram import HdrHistogram
    return HdrHistogram(1, HIST_MAX_NS, 3)


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def if_counter(ifname: str, name: str = "rx_packets") -> int:
    """A counter of *ifname* in this process's namespace (``ip netns exec`` remounts /sys)."""
    try:
        with open(f"/sys/class/net/{ifname}/statistics/{name}") as f:
            return int(f.read())
    except OSError:
        return -1


def top_growth(before, after, limit: int = 5) -> list[str]:
    """The source lines whose traced memory grew most between two snapshots."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, __file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    out = []
    for st in stats[:limit]:
        if st.size_diff <= 0:
            break
        frame = st.traceback[0]
        out.append(f"{frame.filename}:{frame.lineno} +{st.size_diff} B in {st.count_diff} blocks")
    return out


class Pinned:
    """Pin every thread of this process to *cpus* for the block (None: leave as is)."""

    def __init__(self, cpus):
        self.cpus = set(cpus) if cpus else None
        self.saved: dict[int, set[int]] = {}

    def __enter__(self):
        if self.cpus:
            for tid in map(int, os.listdir("/proc/self/task")):
                try:
                    self.saved[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, self.cpus)
                except OSError:
                    pass
        return self

    def __exit__(self, *exc):
        for tid, cpus in self.saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


class StepError(RuntimeError):
    """A setup step failed; the message names the step (it becomes the table's n/a reason)."""


def step(what: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as exc:
        raise StepError(f"{what}: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------
# roles
# ------------------------------------------------------------------------------------------

class Role:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.baseline_rss_kib = proc_status_kib("VmRSS")
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.thread_errors: list[str] = []

    def info(self) -> dict:
        return {}

    def start_thread(self, name: str, fn, *args) -> None:
        def run():
            try:
                fn(*args)
            except BaseException as exc:  # reported with the next command
                self.thread_errors.append(f"{name}: {type(exc).__name__}: {exc}")
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def pool_info(self) -> dict:
        return {}

    def op_ping(self) -> dict:
        return {"thread_errors": self.thread_errors}

    def op_mem(self) -> dict:
        gc.collect()
        return {"rss_kib": proc_status_kib("VmRSS"), "hwm_kib": proc_status_kib("VmHWM"),
                "baseline_rss_kib": self.baseline_rss_kib, "threads": threading.active_count(),
                **self.pool_info()}

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)


class ClientRole(Role):
    """The A end: round trips (latency, allocations) and transmission."""

    seq = 0

    def _rtt(self, samples, n: int, deadline_ns: int) -> tuple[int, int]:
        raise NotImplementedError

    def op_rtt(self, n: int, max_seconds: float = 60.0) -> dict:
        samples = array("q", bytes(8 * n))
        deadline = L.now_ns() + int(max_seconds * 1e9)
        t0 = time.monotonic()
        got, lost = self._rtt(samples, n, deadline)
        elapsed = time.monotonic() - t0
        hist = new_histogram()
        record = hist.record_value
        for v in samples[:got]:
            record(min(max(v, 1), HIST_MAX_NS))
        return {"n": got, "lost": lost, "elapsed": elapsed, "hist": hist.encode().decode(),
                "truncated": got + lost < n}

    def op_alloc(self, n: int, warmup: int = 1000, max_seconds: float = 120.0) -> dict:
        """Traced memory growth over *n* round trips after *warmup* untraced and n/5 traced ones
        (tracemalloc, all threads of this process)."""
        samples = array("q", bytes(8 * max(n, warmup)))
        deadline = L.now_ns() + int(max_seconds * 1e9)
        self._rtt(samples, warmup, deadline)
        gc.collect()
        tracemalloc.start(1)
        try:
            # the diagnostic snapshot holds many lists and tuples, draining the free lists;
            # a traced warm-up after it refills them (and whatever is filled lazily), so that
            # objects parked in a free list do not count as growth of the measured window
            snap0 = tracemalloc.take_snapshot()
            self._rtt(samples, max(50, n // 5), deadline)
            base = tracemalloc.get_traced_memory()[0]
            got, lost = self._rtt(samples, n, deadline)
            cur, peak = tracemalloc.get_traced_memory()
            snap1 = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        packets = 2 * got   # this process sends one and receives one datagram per round trip
        return {"round_trips": got, "lost": lost, "growth": cur - base, "peak": peak - base,
                "bytes_per_packet": (cur - base) / packets if packets else None,
                "top": top_growth(snap0, snap1)}


# --- kernel UDP sockets -------------------------------------------------------------------

class KernelClient(ClientRole):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((cfg["local_ip"], cfg["client_port"]))
        set_rcvtimeo(self.sock, L.RTT_TIMEOUT)
        self.peer = (cfg["peer_ip"], cfg["rtt_port"])
        self.payload = bytearray(cfg["size"])
        self.rbuf = bytearray(2048)
        self.txsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.txsock.bind((cfg["tx_local_ip"], cfg["client_port"]))
        self.tx_peer = (cfg["tx_peer_ip"], cfg["tx_port"])

    def _rtt(self, samples, n, deadline_ns):
        got, lost, self.seq = L.kernel_rtt(self.sock, self.peer, self.payload, self.rbuf,
                                           samples, n, self.seq, deadline_ns)
        return got, lost

    def op_tx(self, seconds: float) -> dict:
        sent, errors, elapsed = L.kernel_tx(self.txsock, self.tx_peer, bytes(self.cfg["size"]),
                                            seconds)
        return {"sent": sent, "errors": errors, "elapsed": elapsed / 1e9}


class KernelServer(Role):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.echo.bind((cfg["ip"], cfg["rtt_port"]))
        set_rcvtimeo(self.echo, 0.2)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind((cfg["ip"], cfg["rx_port"]))
        set_rcvtimeo(self.rx, L.RX_POLL)
        self.sinks = []
        for ip, port in cfg.get("sinks", []):   # bound, never read: the kernel drops quietly
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((ip, port))
            self.sinks.append(s)
        self.start_thread("kernel-echo", L.kernel_echo, self.echo, self.stop)

    def op_rx(self, seconds: float, ifname: str, cpus=None) -> dict:
        rbuf = bytearray(2048)
        with Pinned(cpus):
            c0 = if_counter(ifname)
            count, elapsed = L.kernel_rx(self.rx, rbuf, seconds)
            c1 = if_counter(ifname)
        return {"received": count, "elapsed": elapsed / 1e9, "offered": c1 - c0}


# --- evlnet --------------------------------------------------------------------------------

def _evlnet_stack(name: str, opts: dict):
    import evlnet
    opts = dict(opts)
    port_opts = {k: int(opts.pop(k)) for k in ("poolsz", "bufsz") if k in opts}
    stack = step(f"evlnet.Stack({', '.join(f'{k}={v!r}' for k, v in opts.items())})",
                 evlnet.Stack, name, **opts)
    return evlnet, stack, port_opts


def _evlnet_pool_info(stack, port) -> dict:
    st = stack.get_stats(port)
    return {"poolsz": st.skb_total, "bufsz": st.skb_size, "pool_free": st.skb_free,
            # every pool the port preallocates: TX (EVL's skb pool) and RX, same buffer size
            "pool_bytes": (st.skb_total + st.extra["rx_skb_total"]) * st.skb_size,
            "tx_pool_bytes": st.skb_total * st.skb_size, "port_stats": {
                "rx_packets": st.rx_packets, "tx_packets": st.tx_packets,
                "rx_nomem": st.rx_nomem, "tx_nomem": st.tx_nomem, **st.extra}}


def _evlnet_udp(evlnet, stack, local, peer_ip):
    sock = step("stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)", stack.socket, evlnet.AF_INET,
                evlnet.SOCK_DGRAM | evlnet.SOCK_OOB)
    step(f"bind({local!r})", sock.bind, local)
    step(f"solicit({peer_ip!r}, EVL_NEIGH_PERMANENT)", stack.solicit, sock, (peer_ip, 0),
         evlnet.EVL_NEIGH_PERMANENT)
    return sock


class EvlnetClient(ClientRole):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.evlnet, self.stack, popts = _evlnet_stack("bench-a", cfg.get("evlnet_opts", {}))
        try:
            self.port = step(f"enable_port({cfg['ifname']!r})", self.stack.enable_port,
                             cfg["ifname"], **popts)
            self.sock = _evlnet_udp(self.evlnet, self.stack, (cfg["local_ip"], cfg["client_port"]),
                                    cfg["peer_ip"])
            self.tx_port = step(f"enable_port({cfg['tx_ifname']!r})", self.stack.enable_port,
                                cfg["tx_ifname"], **popts)
            self.txsock = _evlnet_udp(self.evlnet, self.stack,
                                      (cfg["tx_local_ip"], cfg["client_port"]), cfg["tx_peer_ip"])
        except BaseException:
            self.stack.close()
            raise
        self.peer = (cfg["peer_ip"], cfg["rtt_port"])
        self.tx_peer = (cfg["tx_peer_ip"], cfg["tx_port"])
        self.payload = bytearray(cfg["size"])
        self.rbuf = bytearray(2048)

    def _rtt(self, samples, n, deadline_ns):
        got, lost, self.seq = L.evlnet_rtt(self.sock, self.peer, self.payload, self.rbuf,
                                           samples, n, self.seq, deadline_ns)
        return got, lost

    def op_tx(self, seconds: float) -> dict:
        queued0 = self.stack.get_stats(self.tx_port).extra["tx_queued"]
        t0 = time.monotonic()
        sent, errors, loop_ns = L.evlnet_tx(self.txsock, self.tx_peer, bytes(self.cfg["size"]),
                                            seconds)
        # the TX thread may still hold queued datagrams: the window ends when the pool is full
        limit = time.monotonic() + 2.0
        while time.monotonic() < limit:
            st = self.stack.get_stats(self.tx_port)
            if st.skb_free >= st.skb_total:
                break
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        # how many went through the port's TX thread (a stream is handed off to it)
        via_tx_thread = self.stack.get_stats(self.tx_port).extra["tx_queued"] - queued0
        return {"sent": sent, "errors": errors, "elapsed": elapsed, "loop_elapsed": loop_ns / 1e9,
                "via_tx_thread": via_tx_thread}

    def pool_info(self) -> dict:
        return _evlnet_pool_info(self.stack, self.port)

    def close(self) -> None:
        super().close()
        self.stack.close()


class EvlnetServer(Role):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.evlnet, self.stack, popts = _evlnet_stack("bench-b", cfg.get("evlnet_opts", {}))
        try:
            self.port = step(f"enable_port({cfg['ifname']!r})", self.stack.enable_port,
                             cfg["ifname"], **popts)
            self.echo = _evlnet_udp(self.evlnet, self.stack, (cfg["ip"], cfg["rtt_port"]),
                                    cfg["client_ip"])
            self.rx = step("socket/bind (rx)", self._rx_socket, (cfg["ip"], cfg["rx_port"]))
        except BaseException:
            self.stack.close()
            raise
        self.start_thread("evlnet-echo", L.evlnet_echo, self.echo, self.stop)

    def _rx_socket(self, local):
        ev = self.evlnet
        s = self.stack.socket(ev.AF_INET, ev.SOCK_DGRAM | ev.SOCK_OOB)
        s.bind(local)
        return s

    def op_rx(self, seconds: float, ifname: str, cpus=None) -> dict:
        rbuf = bytearray(2048)
        before = self._losses()
        with Pinned(cpus):
            c0 = if_counter(ifname)
            count, elapsed = L.evlnet_rx(self.rx, rbuf, seconds)
            c1 = if_counter(ifname)
        after = self._losses()
        return {"received": count, "elapsed": elapsed / 1e9, "offered": c1 - c0,
                "lost": {k: after[k] - before[k] for k in after if after[k] != before[k]}}

    def _losses(self) -> dict:
        """The port's counters of frames lost on the way in (where an RX shortfall went)."""
        st = self.stack.get_stats(self.port)
        extra = st.extra
        return {"rx_sock_full": extra.get("rx_sock_full", 0), "rx_nomem": st.rx_nomem,
                "kernel_drops": extra.get("kernel_drops", 0),
                "rx_dropped": extra.get("rx_dropped", 0)}

    def pool_info(self) -> dict:
        return _evlnet_pool_info(self.stack, self.port)

    def close(self) -> None:
        super().close()
        self.stack.close()


class EvlnetVirtual(ClientRole):
    """Both ends in this one process on the embedded virtual link (no root, no namespace).

    Not comparable with the veth figures: the client, the echo thread and both stacks' RX/TX
    threads share one GIL. It exercises the evlnet loops while Linux ports are unavailable.
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        import evlnet
        opts = cfg.get("evlnet_opts", {})
        _, self.left, popts = _evlnet_stack("virt-left", opts)
        _, self.right, _ = _evlnet_stack("virt-right", opts)
        try:
            link = evlnet.VirtualLink("vlink0", "vlink1")
            self.left.add_interface(link.a, f"{cfg['local_ip']}/24")
            self.right.add_interface(link.b, f"{cfg['peer_ip']}/24")
            self.port = step("enable_port('vlink0')", self.left.enable_port, "vlink0", **popts)
            self.rport = step("enable_port('vlink1')", self.right.enable_port, "vlink1", **popts)
            self.sock = _evlnet_udp(evlnet, self.left, (cfg["local_ip"], cfg["client_port"]),
                                    cfg["peer_ip"])
            self.echo = _evlnet_udp(evlnet, self.right, (cfg["peer_ip"], cfg["rtt_port"]),
                                    cfg["local_ip"])
        except BaseException:
            self.left.close()
            self.right.close()
            raise
        self.stack = self.left
        self.peer = (cfg["peer_ip"], cfg["rtt_port"])
        self.payload = bytearray(cfg["size"])
        self.rbuf = bytearray(2048)
        self.start_thread("evlnet-echo", L.evlnet_echo, self.echo, self.stop)

    def _rtt(self, samples, n, deadline_ns):
        got, lost, self.seq = L.evlnet_rtt(self.sock, self.peer, self.payload, self.rbuf,
                                           samples, n, self.seq, deadline_ns)
        return got, lost

    def pool_info(self) -> dict:
        a = _evlnet_pool_info(self.left, self.port)
        b = _evlnet_pool_info(self.right, self.rport)
        a["pool_bytes"] += b["pool_bytes"]
        a["note"] = "two stacks (two ports) in this process"
        return a

    def close(self) -> None:
        super().close()
        self.left.close()
        self.right.close()


# --- raw AF_PACKET --------------------------------------------------------------------------

class RawClient(ClientRole):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        ifname = cfg["ifname"]
        self.sock = packet_socket(ifname, bpf=bpf_udp_port(dport=cfg["client_port"],
                                                           sport=cfg["rtt_port"]),
                                  rcvtimeo=L.RTT_TIMEOUT)
        self.txsock = packet_socket(ifname, rx=False)
        payload = bytes(cfg["size"])
        self.frame = bytearray(udp_frame(cfg["peer_mac"], cfg["mac"], cfg["local_ip"],
                                         cfg["peer_ip"], cfg["client_port"], cfg["rtt_port"],
                                         payload, udp_csum=False))
        self.txframe = udp_frame(cfg["peer_mac"], cfg["mac"], cfg["local_ip"], cfg["peer_ip"],
                                 cfg["client_port"], cfg["tx_port"], payload)
        self.rbuf = bytearray(2048)

    def _rtt(self, samples, n, deadline_ns):
        got, lost, self.seq = L.raw_rtt(self.sock, self.frame, self.rbuf, samples, n, self.seq,
                                        deadline_ns)
        return got, lost

    def op_tx(self, seconds: float) -> dict:
        sent, errors, elapsed = L.raw_tx(self.txsock, self.txframe, seconds)
        return {"sent": sent, "errors": errors, "elapsed": elapsed / 1e9}


class RawServer(Role):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.echo = packet_socket(cfg["ifname"], bpf=bpf_udp_port(dport=cfg["rtt_port"]),
                                  rcvtimeo=0.2)
        self.start_thread("raw-echo", L.raw_echo, self.echo, self.stop)

    def op_rx(self, seconds: float, ifname: str, cpus=None) -> dict:
        rbuf = bytearray(2048)
        s = packet_socket(ifname, bpf=bpf_udp_port(dport=self.cfg["rx_port"]), rcvtimeo=L.RX_POLL)
        try:
            with Pinned(cpus):
                c0 = if_counter(ifname)
                count, elapsed = L.raw_rx(s, rbuf, seconds)
                c1 = if_counter(ifname)
        finally:
            s.close()
        return {"received": count, "elapsed": elapsed / 1e9, "offered": c1 - c0}


# --- the Rust ring floor (core/examples/rtt_floor.rs) ----------------------------------------

class FloorClient(ClientRole):
    """Runs ``rtt_floor client`` once per chunk (a compiled busy-polling loop over evlnet's
    AfPacket device; each run does its own short warm-up first) and hands its samples on."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.bin = cfg["binary"]
        if not os.access(self.bin, os.X_OK):
            raise StepError(f"rtt_floor binary: {self.bin} is not executable")

    def _rtt(self, samples, n, deadline_ns):
        cfg = self.cfg
        max_s = max(1.0, (deadline_ns - L.now_ns()) / 1e9)
        cmd = [self.bin, "client", cfg["ifname"], cfg["mac"], cfg["peer_mac"], cfg["local_ip"],
               cfg["peer_ip"], str(n), str(cfg["chunk_warmup"]), f"{max_s:.3f}"]
        # stderr goes to this worker's log; the timeout only catches a hung binary (the client
        # stops by itself after max_s, plus at most 1 s for a last lost reply)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=max_s + 30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"rtt_floor client exited with {proc.returncode} (see the log)")
        r = json.loads(proc.stdout)
        got = r["n"]
        samples[:got] = array("q", r["samples"])
        return got, r["lost"]


class FloorServer(Role):
    """Keeps ``rtt_floor echo`` running on the B end (stopped on close; it also dies with this
    process and ends by itself after cfg["seconds"])."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.proc = subprocess.Popen(
            [cfg["binary"], "echo", cfg["ifname"], str(cfg["seconds"])],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline() if ready else b""
        if b"ready" not in line:
            self.close()
            raise StepError(f"rtt_floor echo did not start (rc {self.proc.returncode}; see the "
                            "log)")

    def info(self) -> dict:
        return {"echo_pid": self.proc.pid}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self.proc.stdout.close()
        super().close()


# --- scapy ------------------------------------------------------------------------------------

def _import_scapy():
    import logging
    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy import all as scapy  # noqa: E402  (slow import: once per worker)
    scapy.conf.verb = 0
    return scapy


class ScapyClient(Role):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.scapy = sc = _import_scapy()
        base = sc.Ether(dst=cfg["peer_mac"], src=cfg["mac"]) / \
            sc.IP(src=cfg["local_ip"], dst=cfg["peer_ip"])
        self.probe = base / sc.UDP(sport=cfg["client_port"], dport=cfg["rtt_port"]) / \
            sc.Raw(bytes(cfg["size"]))
        self.txpkt = base / sc.UDP(sport=cfg["client_port"], dport=cfg["tx_port"]) / \
            sc.Raw(bytes(cfg["size"]))

    def op_rtt(self, n: int, max_seconds: float = 60.0) -> dict:
        srp1 = self.scapy.srp1
        iface = self.cfg["ifname"]
        hist = new_histogram()
        got = lost = 0
        deadline = time.monotonic() + max_seconds
        t_start = time.monotonic()
        for _ in range(n):
            t0 = L.now_ns()
            ans = srp1(self.probe, iface=iface, timeout=L.RTT_TIMEOUT, verbose=0)
            dt = L.now_ns() - t0
            if ans is None:
                lost += 1
            else:
                got += 1
                hist.record_value(min(max(dt, 1), HIST_MAX_NS))
            if time.monotonic() > deadline:
                break
        return {"n": got, "lost": lost, "elapsed": time.monotonic() - t_start,
                "hist": hist.encode().decode(), "truncated": got + lost < n}

    def op_tx(self, count: int) -> dict:
        t0 = time.monotonic()
        self.scapy.sendp(self.txpkt, iface=self.cfg["ifname"], count=count, verbose=0)
        return {"sent": count, "errors": 0, "elapsed": time.monotonic() - t0}


class ScapyServer(Role):
    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.scapy = _import_scapy()

    def op_rx(self, seconds: float, ifname: str, cpus=None) -> dict:
        counter = [0]

        def count(_pkt) -> None:
            counter[0] += 1

        with Pinned(cpus):
            c0 = if_counter(ifname)
            t0 = time.monotonic()
            self.scapy.sniff(iface=ifname, prn=count, store=False, timeout=seconds)
            elapsed = time.monotonic() - t0
            c1 = if_counter(ifname)
        return {"received": counter[0], "elapsed": elapsed, "offered": c1 - c0}


ROLES = {
    "kernel-client": KernelClient, "kernel-server": KernelServer,
    "evlnet-client": EvlnetClient, "evlnet-server": EvlnetServer,
    "evlnet-virtual": EvlnetVirtual,
    "raw-client": RawClient, "raw-server": RawServer,
    "floor-client": FloorClient, "floor-server": FloorServer,
    "scapy-client": ScapyClient, "scapy-server": ScapyServer,
}


# ------------------------------------------------------------------------------------------
# the command loop
# ------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        role = ROLES[cfg["role"]](cfg)
    except BaseException as exc:
        traceback.print_exc()
        reply({"ok": False, "error": str(exc) if isinstance(exc, StepError)
               else f"{type(exc).__name__}: {exc}"})
        return 1
    reply({"ok": True, "pid": os.getpid(), **role.info()})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                reply({"ok": True})
                break
            try:
                fn = getattr(role, f"op_{op}", None)
                if fn is None:
                    raise ValueError(f"role {cfg['role']} has no operation {op!r}")
                res = fn(**cmd)
                if role.thread_errors:
                    res["thread_errors"] = list(role.thread_errors)
                reply({"ok": True, **res})
            except Exception as exc:
                traceback.print_exc()
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        role.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Process plumbing for bench/run.py: worker processes, the namespace topology, trafgen, the CPU
burner. Everything started here is stopped by its own id, and everything made is deleted, also on
failure (context managers)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORKER_PY = BENCH_DIR / "_worker.py"


class WorkerError(RuntimeError):
    pass


def worker_env() -> dict:
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(BENCH_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """A ``bench/_worker.py`` process (inside namespace *ns*, or here when None)."""

    #: upper bound on any single wait (seconds), None = as asked; --smoke sets it so that a
    #: hanging path becomes an n/a quickly
    timeout_cap: float | None = None

    def __init__(self, name: str, cfg: dict, ns=None, logdir: str | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.ns = ns
        self.error: str | None = None
        self.info: dict = {}
        self._buf = b""
        logdir = logdir or tempfile.gettempdir()
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-u", str(WORKER_PY), json.dumps(cfg)]
        kw = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                  env=worker_env(), cwd=str(REPO))
        if ns is not None:
            self.proc = ns.popen(*cmd, **kw)
        else:
            self.proc = subprocess.Popen(cmd, **kw)

    # -- protocol -------------------------------------------------------------------------
    def _read_line(self, timeout: float) -> dict:
        if self.timeout_cap is not None:
            timeout = min(timeout, self.timeout_cap)
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerError(f"{self.name} exited (rc {self.proc.poll()}): "
                                  f"{self.log_tail(3)}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float = 90.0) -> bool:
        try:
            msg = self._read_line(timeout)
        except (WorkerError, ValueError) as exc:
            self.error = str(exc)
            self.kill()
            return False
        if not msg.get("ok"):
            self.error = msg.get("error", "setup failed")
            self.kill()
            return False
        self.info = msg
        return True

    @property
    def alive(self) -> bool:
        return self.error is None and self.proc.poll() is None

    def call(self, op: str, timeout: float, **args) -> dict:
        """Run one operation; raises WorkerError (the worker is killed on a timeout)."""
        if not self.alive:
            raise WorkerError(self.error or f"{self.name} is not running")
        try:
            self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            self.proc.stdin.flush()
            msg = self._read_line(timeout)
        except (OSError, WorkerError, ValueError) as exc:
            self.error = f"{op}: {exc}"
            self.kill()
            raise WorkerError(self.error) from exc
        if not msg.pop("ok", False):
            raise WorkerError(f"{op}: {msg.get('error')}")
        return msg

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    # -- stopping -------------------------------------------------------------------------
    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self._log.close()


# ------------------------------------------------------------------------------------------
# topology
# ------------------------------------------------------------------------------------------

#: name: (A end, B end, A address, B address); /28s inside the documentation networks
PAIRS = {
    "kernel":    ("kern0", "kern1", "192.0.2.1/28", "192.0.2.2/28"),
    "kernel_tx": ("ktx0", "ktx1", "192.0.2.17/28", "192.0.2.18/28"),
    "evlnet":    ("evl0", "evl1", "198.51.100.1/28", "198.51.100.2/28"),
    "evlnet_tx": ("etx0", "etx1", "198.51.100.17/28", "198.51.100.18/28"),
    "raw":       ("raw0", "raw1", None, None),          # no kernel address: the kernel ignores it
    "floor":     ("flr0", "flr1", None, None),          # the Rust ring floor (core/examples)
}
#: addresses the raw AF_PACKET and scapy frames carry on the "raw" pair (never configured)
RAW_A_IP = "203.0.113.1"
RAW_B_IP = "203.0.113.2"
#: (A, B) addresses the frames carry on each pair without kernel addresses
FRAME_IPS = {"raw": (RAW_A_IP, RAW_B_IP), "floor": ("203.0.113.17", "203.0.113.18")}


@dataclass
class Topology:
    a: object            # Namespace (client side, "A")
    b: object            # Namespace (server side, "B")
    pairs: dict          # name -> (VethEnd A, VethEnd B)

    def end_ip(self, pair: str, side: str) -> str:
        a, b = self.pairs[pair]
        end = a if side == "a" else b
        if end.ip:
            return end.ip
        return FRAME_IPS[pair][0 if side == "a" else 1]


@contextmanager
def topology() -> Iterator[Topology]:
    from evlnet.testing import netns, veth_pair
    with ExitStack() as stack:
        a = stack.enter_context(netns("bencha"))
        b = stack.enter_context(netns("benchb"))
        pairs = {}
        for name, (na, nb, addr_a, addr_b) in PAIRS.items():
            pairs[name] = stack.enter_context(
                veth_pair(a, b, addr_a=addr_a, addr_b=addr_b, name_a=na, name_b=nb))
        yield Topology(a, b, pairs)


def link_counter(ns, ifname: str, direction: str = "rx", field: str = "packets") -> int:
    out = ns.ip("-s", "-j", "link", "show", "dev", ifname).stdout
    return int(json.loads(out)[0]["stats64"][direction][field])


# ------------------------------------------------------------------------------------------
# trafgen
# ------------------------------------------------------------------------------------------

@contextmanager
def trafgen(ns, ifname: str, frame: bytes, seconds: float, cpu: int | None,
            workdir: str, max_pps: float = 5e6) -> Iterator[dict]:
    """trafgen sending *frame* on *ifname* in *ns* for the duration of the block.

    Bounded twice: ``-n`` caps the packet count (at *max_pps* for *seconds* + 10 s) and the
    process group is interrupted (then killed) when the block ends. ``--no-sock-mem`` keeps it
    from retuning the socket-memory sysctls, ``-Q`` from touching IRQ affinity; ``-P 1``: one
    sending process (pinned to *cpu*).
    """
    from _frames import trafgen_config
    cfg = os.path.join(workdir, f"trafgen-{ifname}.cfg")
    with open(cfg, "w") as f:
        f.write(trafgen_config(frame))
    count = int(max_pps * (seconds + 10))
    cmd = []
    if cpu is not None:
        cmd += ["taskset", "-c", str(cpu)]
    cmd += ["trafgen", "--no-sock-mem", "-Q", "-P", "1", "-n", str(count),
            "--dev", ifname, "--conf", cfg]
    log_path = os.path.join(workdir, f"trafgen-{ifname}.log")
    info = {"log": log_path, "outgoing": None}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *cmd], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(0.25)                      # let it start and fill the pipe
        if proc.poll() is not None:
            raise RuntimeError(f"trafgen exited early (rc {proc.returncode}): "
                               f"{Path(log_path).read_text(errors='replace')[-300:]}")
        yield info
    finally:
        _stop_group(proc, signal.SIGINT, 3.0)
        text = Path(log_path).read_text(errors="replace")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1:3] == ["packets", "outgoing"]:
                info["outgoing"] = int(parts[0])


def _stop_group(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Stop a process we started in its own session, and its children (trafgen forks)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)    # whatever is left of the group
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)


def trafgen_available() -> str | None:
    """None if trafgen can be used, else the reason."""
    from shutil import which
    if which("trafgen") is None:
        return "trafgen (netsniff-ng) not installed"
    return None


# ------------------------------------------------------------------------------------------
# the CPU burner
# ------------------------------------------------------------------------------------------

_BURN = r"""
import os, sys, time
cpu, limit, parent = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
try:
    os.sched_setaffinity(0, {cpu})
except OSError:
    pass
end = time.monotonic() + limit
x = 0
while time.monotonic() < end and os.getppid() == parent:
    for i in range(200000):
        x ^= i
"""


@contextmanager
def cpu_burner(cpu: int, limit_s: float) -> Iterator[subprocess.Popen]:
    """A child process spinning on *cpu*; it stops by itself after *limit_s* or when we die, and
    is killed when the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", _BURN, str(cpu), str(limit_s),
                             str(os.getpid())], start_new_session=True)
    try:
        time.sleep(0.1)
        yield proc
    finally:
        _stop_group(proc, signal.SIGKILL, 2.0)


# ------------------------------------------------------------------------------------------
# the Rust ring floor (core/examples/rtt_floor.rs)
# ------------------------------------------------------------------------------------------

def find_cargo() -> str | None:
    """cargo as ``./run`` finds it (setup_rust): on PATH, else rustup's in ~/.cargo/bin."""
    import shutil
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.path.expanduser("~/.cargo/bin/cargo"))
    return str(home) if os.access(home, os.X_OK) else None


def build_floor(timeout: float = 600.0) -> tuple[str | None, str]:
    """``cargo build --release --example rtt_floor`` in core/: (path of the binary, "") or
    (None, why not). Never raises: a missing toolchain or a failed build is an n/a."""
    cargo = find_cargo()
    if cargo is None:
        return None, ("no Rust toolchain to build core/examples/rtt_floor.rs (cargo neither on "
                      "PATH nor in ~/.cargo/bin)")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(cargo).parent), env.get("PATH", "")])
    cmd = [cargo, "build", "--release", "--example", "rtt_floor",
           "--message-format=json-render-diagnostics"]
    try:
        proc = subprocess.run(cmd, cwd=REPO / "core", env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"cargo build --release --example rtt_floor: no result within {timeout:.0f} s"
    except OSError as exc:
        return None, f"cargo build --release --example rtt_floor: {exc}"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error")] or lines[-3:]
        err = " | ".join(errors[:3])
        return None, f"cargo build --release --example rtt_floor failed: {err[:300]}"
    for line in proc.stdout.splitlines():        # the artifact says where the binary went
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg.get("target", {}).get("name") == "rtt_floor"):
            return msg["executable"], ""
    return None, "cargo build --release --example rtt_floor: no executable reported"

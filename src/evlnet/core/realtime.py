"""Optional real-time levers for a process using evlnet, each reported when refused.

None is needed for correctness; each trims latency outliers: freezing the garbage collector
(no collection pauses on the data path), CPU affinity, SCHED_FIFO, locking memory (no page
faults), a shorter GIL switch interval (a thread waiting for the GIL waits less), and a CPU
wake-up latency request (idle CPUs do not enter sleep states slower to leave than that: on a
VM a halted vCPU can take ~50 µs to run a thread woken on it).
"""
from __future__ import annotations

import ctypes
import gc
import os
import struct
import sys

MCL_CURRENT, MCL_FUTURE = 1, 2
#: Linux's PM QoS interface: a process that writes a latency (µs, native s32) and keeps the
#: file open asks every CPU for idle states no slower to leave than that, until it closes it.
CPU_DMA_LATENCY = "/dev/cpu_dma_latency"
_cpu_latency_fd: int | None = None


def hold_cpu_latency(us: int, path: str = CPU_DMA_LATENCY) -> str:
    """Ask for idle CPUs that wake within *us* µs, for as long as the process lives (or until
    ``release_cpu_latency``): 0 keeps them polling instead of halting, what cyclictest and
    tuned's latency-performance profile do. Returns ``"ok: ..."`` or ``"refused: why"`` (the
    file needs root)."""
    global _cpu_latency_fd
    if us < 0:
        return "refused: a latency is >= 0 µs"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"refused: {path}: {exc.strerror}"
    try:
        os.write(fd, struct.pack("=i", us))
    except OSError as exc:
        os.close(fd)
        return f"refused: {path}: {exc.strerror}"
    release_cpu_latency()
    _cpu_latency_fd = fd
    return f"ok: {us} us"


def release_cpu_latency() -> None:
    """Withdraw the request ``hold_cpu_latency`` made (nothing if none is held)."""
    global _cpu_latency_fd
    if _cpu_latency_fd is not None:
        os.close(_cpu_latency_fd)
        _cpu_latency_fd = None


def cpu_latency_held() -> bool:
    """Whether this process holds a CPU wake-up latency request."""
    return _cpu_latency_fd is not None


def apply(cpu: int | None = None, fifo_priority: int | None = None, lock_memory: bool = False,
          freeze_gc: bool = True, switch_interval: float | None = None,
          cpu_latency_us: int | None = None) -> dict[str, str]:
    """Apply the levers asked for; returns ``{lever: outcome}`` ("ok ..." or "refused: why").

    ``fifo_priority`` applies SCHED_FIFO to the *calling thread* (Linux schedules threads);
    call it from the thread that runs the oob loop. ``cpu_latency_us`` holds a CPU wake-up
    latency request for the process's life (``hold_cpu_latency``).
    """
    report: dict[str, str] = {}
    if freeze_gc:
        gc.collect()
        gc.freeze()           # objects alive now are never scanned again
        report["gc"] = "ok: collected and frozen"
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            report["affinity"] = f"ok: CPU {cpu}"
        except OSError as exc:
            report["affinity"] = f"refused: {exc.strerror}"
    if fifo_priority is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo_priority))
            report["sched"] = f"ok: SCHED_FIFO {fifo_priority}"
        except OSError as exc:
            report["sched"] = f"refused: {exc.strerror}"
    if lock_memory:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
            report["mlockall"] = "ok"
        else:
            report["mlockall"] = f"refused: {os.strerror(ctypes.get_errno())}"
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
        report["switch_interval"] = f"ok: {switch_interval * 1e6:.0f} us"
    if cpu_latency_us is not None:
        report["cpu_latency"] = hold_cpu_latency(cpu_latency_us)
    return report

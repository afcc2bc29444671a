"""Optional real-time levers for a process using evlnet, each reported when refused.

None is needed for correctness; each trims latency outliers: freezing the garbage collector
(no collection pauses on the data path), CPU affinity, SCHED_FIFO, locking memory (no page
faults), and a shorter GIL switch interval (a thread waiting for the GIL waits less).
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys

MCL_CURRENT, MCL_FUTURE = 1, 2


def apply(cpu: int | None = None, fifo_priority: int | None = None, lock_memory: bool = False,
          freeze_gc: bool = True, switch_interval: float | None = None) -> dict[str, str]:
    """Apply the levers asked for; returns ``{lever: outcome}`` ("ok ..." or "refused: why").

    ``fifo_priority`` applies SCHED_FIFO to the *calling thread* (Linux schedules threads);
    call it from the thread that runs the oob loop.
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
    return report

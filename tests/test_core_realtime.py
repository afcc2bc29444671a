"""The real-time levers apply or say why not."""
import gc
import os
import sys

from evlnet.core import realtime


def test_levers_report_each_outcome():
    before = sys.getswitchinterval()
    cpus = os.sched_getaffinity(0)
    try:
        cpu = min(cpus)
        report = realtime.apply(cpu=cpu, freeze_gc=True, switch_interval=0.0005)
        assert report["gc"].startswith("ok")
        assert gc.get_freeze_count() > 0
        assert report["affinity"] == f"ok: CPU {cpu}"
        assert os.sched_getaffinity(0) == {cpu}
        assert sys.getswitchinterval() == 0.0005
    finally:
        gc.unfreeze()
        os.sched_setaffinity(0, cpus)
        sys.setswitchinterval(before)


def test_refused_levers_are_reported_not_raised():
    report = realtime.apply(cpu=10_000, freeze_gc=False)   # no such CPU
    assert report["affinity"].startswith("refused:")
    assert "gc" not in report

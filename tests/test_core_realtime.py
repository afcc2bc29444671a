"""The real-time levers apply or say why not."""
import gc
import os
import sys

from virtual_fixtures import make_pair, pair, stacks  # noqa: F401

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


def test_port_threads_take_affinity_and_report_refusals(pair):
    from virtual_fixtures import os_thread_names  # noqa: F401  (fixtures module on the path)
    cpu = min(os.sched_getaffinity(0))
    report = pair.pa.set_realtime(cpus={cpu})
    assert report == {"rx affinity": "ok", "tx affinity": "ok"}
    tids = [t for t in os.listdir("/proc/self/task")
            if open(f"/proc/self/task/{t}/comm").read().strip()
            in (f"{pair.link.a.name}.rx", f"{pair.link.a.name}.tx")]
    assert len(tids) == 2
    assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tids)
    refused = pair.pa.set_realtime(cpus={100_000}, fifo_priority=1000)   # no such CPU/priority
    assert set(refused) == {"rx affinity", "tx affinity", "rx sched_fifo", "tx sched_fifo"}
    assert all(v.startswith("refused:") for v in refused.values())
    sa, sb = pair.solicited_pair()                     # the port still works
    sa.oob_sendmsg([b"after"], address=("192.0.2.2", 6000))
    assert sb.oob_recvmsg(100, timeout=5)[0] == b"after"

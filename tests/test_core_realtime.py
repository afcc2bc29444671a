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


def test_cpu_latency_request_is_held_until_released(tmp_path):
    # a stand-in for /dev/cpu_dma_latency (a regular file records what was written)
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    try:
        assert realtime.hold_cpu_latency(0, str(dev)) == "ok: 0 us"
        assert realtime.cpu_latency_held()
        assert dev.read_bytes() == (0).to_bytes(4, sys.byteorder)
    finally:
        realtime.release_cpu_latency()
    assert not realtime.cpu_latency_held()
    assert realtime.hold_cpu_latency(-1, str(dev)).startswith("refused:")
    assert realtime.hold_cpu_latency(0, str(tmp_path / "missing")).startswith("refused:")
    assert not realtime.cpu_latency_held()


def test_cpu_latency_lever_on_the_real_device():
    from evlnet.testing import require_root
    require_root()
    report = realtime.apply(freeze_gc=False, cpu_latency_us=0)
    try:
        assert report["cpu_latency"] == "ok: 0 us", report
        # reading the device gives the constraint the kernel now applies to every CPU
        with open(realtime.CPU_DMA_LATENCY, "rb") as f:
            assert int.from_bytes(f.read(4), sys.byteorder, signed=True) == 0
    finally:
        realtime.release_cpu_latency()

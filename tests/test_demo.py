"""The main job (README's first command, `./run demo`): latmus -E between two stacks on the
virtual link prints RTD lines, the RTS summary and a plain-language reading of it."""
import io
import re
import subprocess
import sys
from pathlib import Path

from virtual_fixtures import os_thread_names, wait_until

from evlnet.tools import demo

REPO = Path(__file__).resolve().parent.parent


def test_demo_prints_latmus_summary_and_reading():
    p = subprocess.run([sys.executable, "-m", "evlnet.tools.demo", "--seconds", "2"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("$ latmus --virtual -T 2")
    assert [ln for ln in lines if ln.startswith("RTD|")]
    rts = [i for i, ln in enumerate(lines) if ln.startswith("RTS|")]
    assert len(rts) == 1
    m = re.match(r"(\d+) datagrams received from the peer, (\d+) lost", lines[rts[0] + 1])
    assert m and int(m.group(1)) > 0
    start = next(i for i, ln in enumerate(lines) if ln.startswith("How to read this:"))
    assert start > rts[0]
    reading = " ".join(lines[start:])
    for word in ("'rx sched'", "'rx user'", "'tx sched'", "'tx user'", "'msw'", "'overrun'"):
        assert word in reading
    assert f"{m.group(1)} datagrams arrived from the peer" in reading


def test_demo_run_reports_and_cleans_up():
    out, err = io.StringIO(), io.StringIO()
    report = demo.run(seconds=1, out=out, err=err)
    assert report["status"] == 0
    runner = report["runners"]["evlnet"]
    assert runner.received > 0 and runner.rx_d.all_samples > 0
    for name in ("vlink0", "vlink1"):
        st = report["stats"][name]
        assert st.oob_capable and st.tx_packets >= runner.received // 2
    # Joined already; /proc/self/task lists an exited thread until the kernel reaps it.
    assert wait_until(lambda: not [t for t in os_thread_names() if t.startswith("vlink")])


def test_demo_main_exit_code():
    assert demo.main(["--seconds", "1", "--", "-q"]) == 0

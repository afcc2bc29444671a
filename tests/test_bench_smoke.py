"""The benchmark suite (bench/run.py, `./run bench`) runs end to end and prints its one table.

Only that it runs, prints the header and every row, and cleans up is checked -- never its
numbers (speed is reported by `./run bench`, not asserted in tests). The veth run needs root
(skip otherwise, fail under CI=true); the table machinery and the frame helpers are checked
without root too.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evlnet.testing import list_namespaces, require_root

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RUN = BENCH / "run.py"

HEADER = ("metric", "evlnet", "kernel", "evlnet/kernel", "target", "verdict", "raw AF_PACKET",
          "scapy", "Rust ring floor")
ROWS = (
    "RTT p50 (us)", "RTT p99 (us)", "RTT p99.9 (us)", "RTT max (us)", "RTT round trips (lost)",
    "evlnet p50 / floor p50",
    "RTT p50 +burner+FIFO (us)", "RTT p99 +burner+FIFO (us)", "RTT p99.9 +burner+FIFO (us)",
    "RTT max +burner+FIFO (us)", "RTT round trips +burner+FIFO (lost)",
    "RX delivered (dgram/s)", "RX offered (pkt/s)", "TX onto wire (dgram/s)",
    "alloc/packet (B)", "RSS (MiB)", "pools TX+RX, preallocated (MiB)", "RSS - pool (MiB)",
)


def _bench_modules():
    pytest.importorskip("hdrh", reason="hdrhistogram (pip install -e '.[bench]')")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def _check_table(out: str) -> list[str]:
    lines = out.splitlines()
    header = [ln for ln in lines if ln.startswith("metric ")]
    assert header, out
    for col in HEADER:
        assert col in header[0], (col, header[0])
    for row in ROWS:
        assert any(ln.startswith(row + "  ") for ln in lines), f"row {row!r} missing:\n{out}"
    return lines


@pytest.mark.root
def test_bench_smoke_run(tmp_path):
    require_root("the benchmark's network namespaces and veth pairs")
    _bench_modules()
    out_json = tmp_path / "bench.json"
    proc = subprocess.Popen([sys.executable, str(RUN), "--quick", "--smoke", "--json",
                             str(out_json)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"bench/run.py --smoke did not finish in 150 s\n{out}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out}\n{err[-3000:]}"
    _check_table(out)
    data = json.loads(out_json.read_text())
    assert set(data) >= {"params", "rtt", "rx", "tx", "alloc", "mem", "na"}
    assert data["params"]["mode"] == "smoke"
    # the kernel reference needs nothing from evlnet: it must have been measured
    assert data["rtt"]["idle"]["kernel"]["n"] > 0, data["na"]
    # so must the Rust ring floor (built by the bench; the toolchain is there where the core is
    # built), its p50 a number in the last column
    assert data["rtt"]["idle"]["floor"]["n"] > 0, data["na"]
    p50_row = next(ln for ln in out.splitlines() if ln.startswith("RTT p50 (us)  "))
    assert re.fullmatch(r"[\d,]+\.?\d*", re.split(r"\s{2,}", p50_row)[-1]), p50_row
    assert data["floor"]["binary"] and data["floor"]["target"] == 1.5
    # the machine's stall probe ran on every CPU and its note is under the table
    assert [c["cpu"] for c in data["stalls"]["per_cpu"]] == sorted(os.sched_getaffinity(0))
    assert "vCPU stalls" in out
    # nothing left behind: namespaces (named after the run's pid) and processes
    assert list_namespaces(proc.pid) == []


def test_bench_without_root_prints_the_table(tmp_path, capsys, monkeypatch):
    """No root: every veth cell is n/a with the reason; the table and RESULTS.md still come out
    (with the evlnet virtual-link section)."""
    _bench_modules()
    import run

    monkeypatch.setattr(run, "veth_unavailable", lambda: "needs root (simulated)")
    assert run.main(["--smoke", "--skip", "alloc", "--write-results", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = _check_table(out)
    assert any("needs root (simulated)" in ln for ln in lines)
    assert "virtual link" in out
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| metric | evlnet | kernel |" in md and "## Machine" in md
    assert "./run bench --smoke" in md


def test_stall_probe_counts_the_gaps_it_sees():
    """bench/_stalls.py: one entry per CPU, its histogram adds up to its gap count, and a gap
    forced into the spinning loop (a stopped process) is counted with its length."""
    _bench_modules()
    import _stalls

    cpu = min(os.sched_getaffinity(0))
    st = _stalls.measure(0.3, [cpu])
    (c,) = st["per_cpu"]
    assert c["cpu"] == cpu and c["seconds"] >= 0.3
    assert sum(c["bins"]) == c["gaps"] and 0.0 <= c["lost_pct"] <= 100.0
    assert f"CPU {cpu}:" in _stalls.describe(st)
    # stop the spinner for ~50 ms: at least one gap that long, in the last bins
    proc = _stalls.start_spinner(cpu, 1.0)
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(0.05)
    proc.send_signal(signal.SIGCONT)
    gaps = json.loads(proc.communicate(timeout=30)[0])["gaps_ns"]
    assert max(gaps) >= 40_000_000, sorted(gaps)[-3:]


def test_evlnet_opts_parsing():
    _bench_modules()
    import run

    assert run.parse_opts(["rx_poolsz=2048,strict_diversion=true", "qdisc=oob_fifo",
                           "ipfrag_time=1.5"]) == {
        "rx_poolsz": 2048, "strict_diversion": True, "qdisc": "oob_fifo", "ipfrag_time": 1.5}


def test_frames_match_scapy():
    """The frames trafgen and the raw AF_PACKET loops send are well formed (scapy as oracle)."""
    _bench_modules()
    scapy_all = pytest.importorskip("scapy.all")
    from _frames import bpf_udp_port, parse_udp, swap_udp_reply, trafgen_config, udp_frame

    frame = udp_frame("02:00:00:00:00:02", "02:00:00:00:00:01", "192.0.2.1", "192.0.2.2",
                      7000, 7001, bytes(64))
    pkt = scapy_all.Ether(frame)
    ip, udp = pkt[scapy_all.IP], pkt[scapy_all.UDP]
    assert (ip.src, ip.dst, udp.sport, udp.dport, len(udp.payload)) == \
        ("192.0.2.1", "192.0.2.2", 7000, 7001, 64)
    rebuilt = scapy_all.Ether(bytes(pkt))
    del rebuilt[scapy_all.IP].chksum, rebuilt[scapy_all.UDP].chksum
    assert bytes(scapy_all.Ether(bytes(rebuilt))) == frame      # both checksums right
    echo = bytearray(frame)
    swap_udp_reply(echo, len(echo))
    p = parse_udp(echo)
    assert (p["src_ip"], p["dst_ip"], p["sport"], p["dport"], p["ip_csum_ok"]) == \
        ("192.0.2.2", "192.0.2.1", 7001, 7000, True)
    cfg = trafgen_config(frame)
    assert cfg.count("0x") == len(frame)
    assert len(bpf_udp_port(dport=7001)) == 8   # 3 x (load, compare) + accept + drop
    assert socket.inet_aton("192.0.2.2") == frame[30:34]



def test_hook_bench_runs_and_cleans_up():
    """bench/bench_hooks.py (tc against XDP on veth) prints one row per mode with a rate, and
    leaves no namespace behind."""
    require_root()
    before = set(list_namespaces())
    p = subprocess.run([sys.executable, str(BENCH / "bench_hooks.py"), "--seconds", "0.3",
                        "--rounds", "1"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()[3:] if line}
    assert set(rows) == {"none", "tc", "xdp", "xdpgeneric", "tc+tap"}, p.stdout
    for mode, (rate, per_frame, _delta) in rows.items():
        assert float(rate.replace(",", "")) > 0 and float(per_frame) > 0, (mode, p.stdout)
    assert set(list_namespaces()) <= before

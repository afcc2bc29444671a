"""``latmus -E`` (issue 11): EVL's options, exit statuses, messages and output formats, run as
a subprocess on the embedded virtual link (no root) and between two namespaces over veth
(root: skipped without it, failing under CI=true).

Figures are never asserted, only formats, counts that must add up, and orderings that hold by
construction (a minimum is not above its maximum, the peer that stopped left rounds
unanswered).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evlnet.testing import list_namespaces, require_root
from evlnet.tools import latmus
from evlnet.tools.latency import RTH_TITLES, LatencySet, parse_gnuplot

REPO = Path(__file__).resolve().parent.parent
F = r"\s*-?\d+\.\d{3}"            # EVL's %10.3f
RTT_RE = re.compile(r"^RTT\|  \d\d:\d\d:\d\d  \((net|kernel UDP(, loopback)?), (\d+) us period, "
                    r"priority (\d+), CPU(\d+)(-noisol)?\)$")
RTD_RE = re.compile(rf"^RTD\|({F})\|({F})\|({F})\|({F})\|(\s*\d+)\|(\s*\d+)\|({F})\|({F})\|"
                    rf"({F})\|({F})$")
RTS_RE = re.compile(rf"^RTS\|({F})\|({F})\|({F})\|({F})\|(\s*\d+)\|(\s*\d+)\| {{26}}"
                    r"\d\d:\d\d:\d\d/\d\d:\d\d:\d\d$")
COUNTS_RE = re.compile(r"^(\d+) datagrams received from the peer, (\d+) lost, (\d+) invalid, "
                       r"(\d+) rounds unanswered at the end$")
RULE = "---|----------|----------|----------|----------|" + "-" * 57
RTH = ("RTH|--rx sched|---rx user|--tx sched|---tx user|-msw|-overrun|---rx best|--rx worst|"
       "---tx best|--tx worst")


def run_latmus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evlnet.tools.latmus", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def widths(line: str) -> list[int]:
    return [len(f) for f in line.split("|")[1:]]


def check_rtd(line: str) -> list[float]:
    """An RTD line: EVL's field widths, window max <= all-time worst for rx and tx user."""
    m = RTD_RE.match(line)
    assert m, line
    assert widths(line) == [10, 10, 10, 10, 4, 8, 10, 10, 10, 10], line
    v = [float(x) for x in m.groups()]
    rx_user, tx_user, rx_best, rx_worst, tx_best, tx_worst = v[1], v[3], v[6], v[7], v[8], v[9]
    assert rx_best <= rx_user <= rx_worst, line
    assert tx_best <= tx_worst and tx_user <= tx_worst, line
    return v


# ------------------------------------------------------------------------------------------
# the EVL test on the virtual link
# ------------------------------------------------------------------------------------------

def test_virtual_output_is_evls_and_dump_adds_up(tmp_path):
    dump = tmp_path / "hist.txt"
    p = run_latmus("--virtual", "-T", "2", "-l", "2", "-H", "50", "-g", str(dump))
    assert p.returncode == 0, p.stderr
    assert re.match(r"warming up on CPU\d+( \(not isolated\))?\.\.\.$", p.stderr.splitlines()[0])
    lines = p.stdout.splitlines()
    rtt = [ln for ln in lines if ln.startswith("RTT|")]
    rtd = [ln for ln in lines if ln.startswith("RTD|")]
    assert rtd, p.stdout
    for ln in rtt:
        m = RTT_RE.match(ln)
        assert m and m.group(1) == "net" and m.group(3) == "1000", ln
    # the page header comes first, and again every -l 2 data lines, each RTT| followed by RTH|
    # (a second whose first round's datagram came late prints no RTD and no header: EVL's rule)
    assert lines[0].startswith("RTT|") and lines[1] == RTH
    for i, ln in enumerate(lines):
        if ln.startswith("RTT|"):
            assert lines[i + 1] == RTH and lines[i + 2].startswith("RTD|")
    assert 1 <= len(rtt) <= (len(rtd) + 1) // 2
    assert [f.strip("-") for f in RTH.split("|")[1:]] == [t.strip("-") for t in RTH_TITLES]
    for ln in rtd:
        check_rtd(ln)
    # the summary: EVL's rule, the RTS line, then evlnet's counts
    i = lines.index(RULE)
    m = RTS_RE.match(lines[i + 1])
    assert m, lines[i + 1]
    assert widths(lines[i + 1])[:6] == [10, 10, 10, 10, 4, 8]
    rts = [float(x) for x in m.groups()]
    # all-time maxima are at least every window maximum printed
    for ln in rtd:
        v = check_rtd(ln)
        assert all(v[k] <= rts[k] for k in range(4)), (ln, lines[i + 1])
    counts = COUNTS_RE.match(lines[i + 2])
    assert counts, lines[i + 2]
    received, lost, invalid, _ = (int(x) for x in counts.groups())
    assert received > 0 and invalid == 0
    # the -g dump: EVL's comments, and each set's cells add up to its sample count
    meta, rows = parse_gnuplot(dump.read_text())
    assert meta["sampling period"] == "1000 microseconds" and meta["context"] == "net"
    assert meta["RX received"] == str(received) and meta["RX lost"] == str(lost)
    names = ("RX queuing", "RX delivery", "TX queuing", "TX delivery")
    assert rows and all(len(r[2]) == 4 for r in rows)
    assert [r[0] for r in rows] == list(range(rows[0][0], rows[-1][0] + 1))
    assert all(cell < 50 for cell, _, _ in rows)
    assert not any(plus for _, plus, _ in rows[:-1])
    for k, name in enumerate(names):
        samples = int(meta[f"{name} sample count"])
        assert samples > 0
        assert sum(r[2][k] for r in rows) == samples, name
        lo, avg, hi = (float(meta[f"{name} {w} latency"]) for w in ("min", "avg", "max"))
        assert lo <= avg <= hi
        assert abs(hi - rts[k]) < 0.0015, name       # the dump and RTS agree
        # a maximum beyond the 50 cells shows as '+' on the last row
        assert rows[-1][1] == any(float(meta[f"{n} max latency"]) >= 50 for n in names)
    assert received == int(meta["RX delivery sample count"])


def test_rtt_compare_kernel_and_plot(tmp_path):
    pytest.importorskip("hdrh")
    plt = pytest.importorskip("matplotlib.pyplot")
    png = tmp_path / "latmus.png"
    p = run_latmus("--virtual", "-T", "1", "-q", "--rtt", "--compare-kernel", "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("running quietly for 1 seconds on CPU")
    lines = p.stdout.splitlines()
    assert not [ln for ln in lines if ln.startswith(("RTT|", "RTH|", "RTD|"))]    # -q
    rts = [ln for ln in lines if ln.startswith("RTS|")]
    assert len(rts) == 2 and all(RTS_RE.match(ln) for ln in rts)    # oob, then kernel UDP
    assert len([ln for ln in lines if COUNTS_RE.match(ln)]) == 2
    head = next(i for i, ln in enumerate(lines) if ln.startswith("delay (us)"))
    assert "evlnet oob" in lines[head] and "kernel UDP" in lines[head]
    table = {ln[:42].strip(): ln[42:] for ln in lines[head + 2:]}
    for row in ("tx sched (send call -> qdisc)", "tx user (send call -> device)",
                "rx (device -> waiting receiver returns)",
                "round trip (send call -> echo returns)"):
        cells = re.findall(r"([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+)", table[row])
        assert len(cells) == 2, (row, table[row])
        for cell in cells:
            lo, p50, p99, hi = (float(x) for x in cell)
            assert lo <= hi and p50 <= p99 * 1.001 + 0.1, (row, cell)
    assert "n/a" in table["rx user (device -> queued on the socket)"]   # no kernel point
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = plt.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_peer_that_stops_answering_leaves_rounds_unanswered():
    p = run_latmus("--virtual", "-T", "2", "-q", "--peer-stops-after", "0.7")
    assert p.returncode == 0, p.stderr
    counts = [COUNTS_RE.match(ln) for ln in p.stdout.splitlines()]
    m = next(c for c in counts if c)
    received, lost, invalid, unanswered = (int(x) for x in m.groups())
    assert received > 0 and unanswered > 0 and invalid == 0


def test_silent_peer_is_reported():
    p = run_latmus("--virtual", "-T", "1", "--peer-stops-after", "0")
    assert p.returncode == 0, p.stderr
    assert "RTS|" not in p.stdout and "RTD|" not in p.stdout      # EVL: no data, no summary
    assert "0 datagrams received from the peer, 0 lost, 0 invalid" in p.stdout
    assert p.stderr.endswith("latmus: no datagram came from 192.0.2.2 (net): is latmus -E "
                             "running there, pointing back?\n"), p.stderr


def test_abort_threshold_exits_102():
    p = run_latmus("--virtual", "-T", "5", "-A", "1")
    assert p.returncode == 102, (p.stdout, p.stderr)
    assert re.search(r"^latency threshold is exceeded \(1000 >= \d+\.\d{3}\), aborting\.$",
                     p.stderr, re.M), p.stderr
    assert "RTS|" not in p.stdout          # EVL exits at once, no summary


# ------------------------------------------------------------------------------------------
# options: EVL's messages and exit statuses
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, stdout, stderr", [
    (["-x"], "** Uh, you lost me somewhere near '-x' (arg #1)\n", "usage: latmus [options]:"),
    (["-E", "192.0.2.2", "-L", "eth0", "stray"],
     "** Uh, you lost me somewhere near 'stray' (arg #5)\n", "usage: latmus [options]:"),
    (["--bogus"], "** Uh, you lost me somewhere near '--bogus' (arg #1)\n", "usage: latmus"),
    (["-E"], "** Uh, you lost me somewhere near '-E' (arg #1)\n", "usage: latmus"),
    (["-E", "192.0.2.2"], "",
     "latmus: -[eE] requires -L<netif> to specify a local interface: Invalid argument\n"),
    (["--virtual", "-S", "20"], "",
     "latmus: packet size too short (20 <= 20): Invalid argument\n"),
    (["-p", "0"], "", "latmus: invalid sampling period (0 < period < 1000000): Invalid argument\n"),
    (["-H", "1001"], "",
     "latmus: invalid number of histogram cells (0 < cells <= 1000): Invalid argument\n"),
    (["-T", "3x"], "", "latmus: invalid time modifier: 'x': Invalid argument\n"),
    (["-A", "0"], "", "latmus: invalid timeout: Invalid argument\n"),
    (["-u"], "", "latmus: evlnet's latmus has the network test only (-E <host> -L <netif>, or "
                 "--virtual): Invalid argument\n"),
    (["-E", "no-such-host.invalid", "-L", "eth0"], "",
     "latmus: cannot resolve 'no-such-host.invalid' as an IPv4 address: Invalid argument\n"),
])
def test_bad_options_evl_messages_and_status(args, stdout, stderr):
    p = run_latmus(*args)
    assert p.returncode == 1, (p.stdout, p.stderr)       # EVL's status for both kinds
    assert p.stdout == stdout
    if stderr.endswith("\n"):
        assert p.stderr.endswith(stderr), p.stderr
        assert "usage:" not in p.stderr            # a bad value is an error, not bad usage
    else:
        assert p.stderr.startswith(stderr), p.stderr
        assert "-E --net=<host>" in p.stderr and "-L --local-if=<netif>" in p.stderr


def test_dump_is_not_overwritten(tmp_path):
    dump = tmp_path / "exists.txt"
    dump.write_text("keep me\n")
    p = run_latmus("--virtual", "-T", "1", "-g", str(dump))
    assert p.returncode == 1
    assert p.stderr.endswith(f"latmus: declining to overwrite {dump}: Invalid argument\n")
    assert dump.read_text() == "keep me\n"


def test_not_a_port_as_evl_says():
    p = run_latmus("-E", "192.0.2.2", "-L", "evlt-nosuchif", "-T", "1")
    assert p.returncode == 1
    assert "latmus: evlt-nosuchif is not an out-of-band networking port: " in p.stderr


def test_help_and_console_script():
    p = run_latmus("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: latmus [options]:")
    script = Path(sys.executable).with_name("latmus")
    assert script.exists(), "pip install -e . installs the latmus console script"


# ------------------------------------------------------------------------------------------
# units: the frame, the counting, the statistics
# ------------------------------------------------------------------------------------------

def test_frame_is_evls():
    # EVL's CRC8-CCITT table (latmus/net.c): spot values
    assert latmus.CRC8_TABLE[:4] == bytes([0x00, 0x8D, 0x97, 0x1A])
    assert latmus.CRC8_TABLE[-4:] == bytes([0xF1, 0x7C, 0x66, 0xEB])
    buf = bytearray(24)
    latmus.prepare_frame(buf, 0x1F)
    assert bytes(buf[:22]) == b"^000000000000001fFFFF$"
    assert buf[22:].decode() == f"{latmus.crc8(buf[:22]):02x}"
    assert latmus.parse_frame(buf) == 0x1F
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x01
        assert latmus.parse_frame(bad) != 0x1F
    big = bytearray(64)
    serial = 2**40 * 26 + 25                  # filler: 'A' + serial % 26
    latmus.prepare_frame(big, serial)
    assert big[17:61] == b"Z" * 44 and latmus.parse_frame(big) == serial


class FakeTransport:
    """Delivers prepared datagrams to a NetRunner, one per receive, and swallows its sends."""

    label = "net"
    required_sets = 4

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)
        self.sent = 0

    def send(self, frame, nonblock):
        self.sent += 1

    def collect_tx(self):
        return []

    def recv(self, buf, timeout):
        if not self.frames:
            raise TimeoutError
        f = self.frames.pop(0)
        buf[:len(f)] = f
        return len(f), (1000, 2000, 3000)

    def in_band_switches(self):
        return 0


def _frame(serial: int, size: int = 64) -> bytes:
    b = bytearray(size)
    latmus.prepare_frame(b, serial)
    return bytes(b)


@pytest.mark.parametrize("no_check", [False, True])
def test_runner_counts_lost_and_invalid(no_check):
    import threading

    corrupt = bytearray(_frame(5))
    corrupt[30] ^= 0x20
    frames = [_frame(0), _frame(1), _frame(4), bytes(corrupt), b"#" * 64, _frame(6), _frame(2)]
    args = ["--virtual", "-p", "100", "-q", "-T", "1"] + (["-n"] if no_check else [])
    opts = latmus.parse_args(args)
    latmus.check_options(opts, sys.stderr)
    t = FakeTransport(frames)
    r = latmus.NetRunner(t, opts, latmus.Output(None), "net")
    r.lost_timeout = 0.01
    stop = threading.Event()
    import time
    r.run(stop, time.monotonic() + 0.3)
    assert r.received == 5                     # 0, 1, 4, 6, 2
    assert r.invalid == (2 if no_check else 3)  # bad CRC, not a frame, (2 after 6: backwards)
    assert r.lost == (0 if no_check else 2 + 1)  # 2, 3 between 1 and 4; 5 between 4 and 6
    assert r.unanswered > 0                    # rounds after the frames ran out
    assert r.rx_d.all_samples == 6 and r.rx_d.all_max == 2000   # stamps logged for each '^'


def test_latency_set_cells_and_window():
    st = LatencySet("x", cells=3)
    for ns in (500, 1500, 2999, 3000, 10_000, -5):
        st.add(ns)
    assert st.histogram == [2, 1, 3] and sum(st.histogram) == st.all_samples == 6
    assert st.max == 10_000 and st.min == -5
    st.reset_window()
    assert st.samples == 0 and st.all_max == 10_000


# ------------------------------------------------------------------------------------------
# root: two namespaces over veth, with the kernel path beside
# ------------------------------------------------------------------------------------------

@pytest.mark.root
def test_veth_script_compare_kernel():
    require_root("the example's network namespaces and veth pair")
    before = set(list_namespaces())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    p = subprocess.run([str(REPO / "examples" / "latmus_veth.sh"), "-T", "2"], env=env,
                       capture_output=True, text=True, timeout=90, cwd=REPO)
    assert p.returncode == 0, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    contexts = [RTT_RE.match(ln).group(1) for ln in lines if ln.startswith("RTT|")]
    assert "net" in contexts and "kernel UDP" in contexts
    for ln in lines:
        if ln.startswith("RTD|"):
            check_rtd(ln)
    assert len([ln for ln in lines if RTS_RE.match(ln)]) == 2
    head = next(i for i, ln in enumerate(lines) if ln.startswith("delay (us)"))
    rows = {ln[:42].strip(): ln[42:] for ln in lines[head + 2:]}
    assert len(re.findall(r" / ", rows["round trip (send call -> echo returns)"])) == 6
    received = [int(m.group(1)) for m in map(COUNTS_RE.match, lines) if m]
    assert len(received) == 2 and all(n > 0 for n in received)
    assert "veth0: oob capability: no -- not a failure" in p.stderr
    leaked = [n for n in set(list_namespaces()) - before if n.startswith("evlt-latmus")]
    assert not leaked

"""``evl-net`` (issue 11): EVL's options, order of execution, messages and output formats, run
as subprocesses against a stack served by ``evl-net serve``; the control endpoint's security
(owner-only files, another user refused, garbage requests survived); pcap capture read back by
scapy and tshark.

Every test serves its stacks in a runtime directory of its own (``EVLNET_RUNTIME_DIR``), so
stacks served by other runs on the machine are never seen. The virtual-link tests need no
root; the Linux-port and other-user tests need root (skip otherwise, fail under CI=true) and use
only 192.0.2.0/24 inside namespaces made here.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import pwd
import random
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from evlnet import AF_INET, SOCK_DGRAM, SOCK_OOB, Stack, VirtualLink
from evlnet.control import endpoint as ep
from evlnet.control.client import ControlClient
from evlnet.control.server import ControlServer
from evlnet.core.stats import DevStat
from evlnet.testing import list_namespaces, netns, require_root, veth_pair
from evlnet.testing.bpf import EXAMPLES, REFUSED, build

PY = sys.executable
EVL_NET = os.path.join(os.path.dirname(PY), "evl-net")
USAGE_HEAD = "usage: evl-net [options]:\n-e -i <ifname> [-p][-b]            enable out-of-band"
QUERY_RE = re.compile(
    r"oob capability: (yes|no)\n    rx packets: (\d+)\n      rx bytes: (\d+)\n"
    r"    tx packets: (\d+)\n      tx bytes: (\d+)\n      skb size: (\d+)\n"
    r"      skb free: (\d+) / (\d+)\n   csum errors: (\d+)\n      rx nomem: (\d+)\n"
    r"      tx nomem: (\d+)\n\Z")


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def rundir(tmp_path, monkeypatch):
    """A private runtime directory for this test's endpoints (also for subprocesses)."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("EVLNET_RUNTIME_DIR", str(d))
    return str(d)


def evl_net(*args: str, timeout: float = 30.0, prefix: tuple[str, ...] = (),
            **kw) -> subprocess.CompletedProcess:
    """Run ``python -m evlnet ARGS`` (the evl-net command) and capture its output."""
    return subprocess.run([*prefix, PY, "-m", "evlnet", *args], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", os.environ.copy()), **kw)


def read_line(stream, timeout: float = 15.0) -> str:
    """One line from a subprocess pipe, within *timeout* (fails rather than hangs)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line within {timeout}s (got {buf!r})"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            assert chunk, f"stream closed (got {buf!r})"
            buf += chunk
    return buf.decode()


@contextmanager
def serving(*args: str, name: str = "tst", prefix: tuple[str, ...] = (),
            stderr: list[str] | None = None):
    """``evl-net serve --stack NAME ARGS`` running; stopped with SIGTERM afterwards, which must
    end it cleanly (exit 0, socket removed). What it wrote on stderr is appended to *stderr*."""
    proc = subprocess.Popen([*prefix, PY, "-m", "evlnet", "serve", "--stack", name, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            line = read_line(proc.stdout)
            if "serving stack" in line:
                break
        path = line.split(" on ", 1)[1].split(" (pid")[0]
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.stdout.close()
        proc.stderr.close()
        if stderr is not None:
            stderr.append(err)
    assert rc == 0, f"evl-net serve exited {rc}: {err}"
    assert not os.path.exists(path), "the socket file stays after a clean shutdown"


@pytest.fixture
def served(rundir):
    """A served stack with a virtual interface vlink0 (192.0.2.1/24; the peer is .2)."""
    with serving("--virtual", "vlink0", "--solicit-timeout", "0.5") as (proc, path):
        yield proc, path


def query(*extra: str) -> dict[str, int | str]:
    r = evl_net("-QRrTtosfacx", "-i", "vlink0", *extra)
    assert r.returncode == 0, r.stderr
    keys = ["R", "r", "T", "t", "o", "s", "f", "a", "c", "rx_nomem", "tx_nomem"]
    vals = r.stdout.rstrip("\n").split(" ")
    assert r.stdout.endswith("\n") and len(vals) == len(keys), r.stdout
    return {k: (v if k == "o" else int(v)) for k, v in zip(keys, vals)}


# -- command line --------------------------------------------------------------------------------

def test_no_stack_running_says_so(rundir):
    r = evl_net("-Q", "-i", "vlink0")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (f"evl-net: no evlnet stack is running (none served in {rundir}; "
                        "start one with 'evl-net serve')\n")


@pytest.mark.parametrize("args, first_line", [
    (["-z"], "evl-net: invalid option -- 'z'"),
    (["-e"], "a network interface must be specified"),
    (["-Q"], "a network interface must be specified"),
    (["-F"], "a network interface must be specified"),
    (["-i", "vlink0"], "no command given"),
    (["-g"], "no command given"),
    (["--interface"], "evl-net: option '--interface' requires an argument"),
    (["--bogus"], "evl-net: unrecognized option '--bogus'"),
    (["--help=x"], "evl-net: option '--help' doesn't allow an argument"),
    (["-s"], "evl-net: option requires an argument -- 's'"),
    (["-Q", "-i", "vlink0", "extra"], None),
    (["-e", "-i", "vlink0", "-p", "12x"], None),
])
def test_bad_usage_prints_usage_and_exits_2(rundir, args, first_line):
    r = evl_net(*args)
    assert r.returncode == 2, r
    assert r.stdout == ""
    if first_line is not None:
        assert r.stderr.startswith(first_line + "\n" + USAGE_HEAD)
    else:
        assert r.stderr.startswith(USAGE_HEAD)


def test_help_version_line_and_console_script(rundir):
    for args in ([], ["-h"], ["--help"]):
        r = evl_net(*args)
        assert (r.returncode, r.stdout) == (0, "")
        assert r.stderr.startswith(USAGE_HEAD)
        assert "-Q[RrTtosfacx] -i <ifname>         query network interface information" \
            in r.stderr
    r = evl_net("-@")
    assert (r.returncode, r.stdout) == (0, "manage the EVL out-of-band networking stack\n")
    # the console script installed by pip is the same command
    assert os.access(EVL_NET, os.X_OK)
    r = subprocess.run([EVL_NET, "-@"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "manage the EVL out-of-band networking stack\n")


def test_python_m_evlnet_dispatches_latmus(rundir):
    r = evl_net("latmus", "--help")
    if importlib.util.find_spec("evlnet.tools.latmus") is None:
        assert r.returncode == 1
        assert r.stderr == "evlnet: latmus is not available in this build\n"
    else:
        assert "latmus" in (r.stdout + r.stderr)


# -- actions on a served stack -------------------------------------------------------------------

def test_enable_solicit_query_block_and_modifiers(served):
    r = evl_net("-ei", "vlink0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = evl_net("-S", "192.0.2.2", "-i", "vlink0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = evl_net("-Q", "-i", "vlink0")
    assert (r.returncode, r.stderr) == (0, "")  # oob-capable: no note on stderr
    m = QUERY_RE.match(r.stdout)
    assert m, r.stdout
    assert m.group(1) == "yes"                 # a virtual link is oob-capable
    # the ARP request left, the peer's reply came back
    assert int(m.group(2)) >= 1 and int(m.group(4)) >= 1
    q = query()
    # the block and the one-line form show the same values, formatted by DevStat
    stat = DevStat(rx_packets=q["R"], rx_bytes=q["r"], tx_packets=q["T"], tx_bytes=q["t"],
                   skb_size=q["s"], skb_free=q["f"], skb_total=q["a"], csum_errors=q["c"],
                   rx_nomem=q["rx_nomem"], tx_nomem=q["tx_nomem"], oob_capable=q["o"] == "yes")
    assert r.stdout == stat.format_query() + "\n"
    assert q["s"] == 4096 and q["f"] <= q["a"] == 2048
    # modifiers in the order given, long form too
    r = evl_net("--query-port=xoR", "--interface", "vlink0")
    assert r.stdout == f"{q['rx_nomem']} {q['tx_nomem']} yes {q['R']}\n"
    # a bad modifier: EVL's message (and its typo), after the values before it
    r = evl_net("-QRz", "-i", "vlink0")
    assert r.returncode == 1
    assert r.stdout == str(q["R"])
    assert r.stderr == "evl-net: invalid query modifer 'z': Invalid argument\n"


def test_enable_with_pool_and_buffer_sizes_and_errors(served):
    r = evl_net("-e", "-i", "vlink0", "-p", "64", "-b", "8192")
    assert r.returncode == 0, r.stderr
    q = query()
    assert (q["a"], q["s"]) == (64, 8192)
    r = evl_net("--enable-port", "--interface", "nope0")
    assert r.returncode == 1
    assert r.stderr == "evl-net: cannot enable out-of-band port on nope0: Invalid argument\n"
    r = evl_net("-e", "-i", "vlink0", "-p", "40000")          # above EVL's 32768
    assert (r.returncode, r.stderr) == (
        1, "evl-net: cannot enable out-of-band port on vlink0: Invalid argument\n")
    r = evl_net("-Q", "-i", "vlink9")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "evl-net: cannot open out-of-band port vlink9: Invalid argument\n"


def test_order_of_execution_is_evls(served):
    assert evl_net("-ei", "vlink0").returncode == 0
    assert evl_net("-S", "192.0.2.2", "-i", "vlink0").returncode == 0
    assert query()["T"] >= 1
    # query is last whatever the command line says: -Q before -d still queries after disabling
    r = evl_net("-Q", "-d", "-i", "vlink0")
    assert r.returncode == 1
    assert r.stderr == "evl-net: cannot open out-of-band port vlink0: Invalid argument\n"
    # disable, then enable, then query: a fresh port with fresh counters
    assert evl_net("-ei", "vlink0").returncode == 0
    assert evl_net("-S", "192.0.2.2", "-i", "vlink0").returncode == 0
    before = query()
    assert before["R"] >= 1
    r = evl_net("-Q", "-e", "-d", "-i", "vlink0")
    assert r.returncode == 0, r.stderr
    m = QUERY_RE.match(r.stdout)
    assert m and (int(m.group(2)), int(m.group(4))) == (0, 0), r.stdout
    # set VLANs comes before show VLANs, and both before solicit and query
    r = evl_net("-n", "-N42-45,100")
    assert (r.returncode, r.stdout) == (0, "42-45,100\n")
    assert evl_net("-N").stdout == "VLAN filter cleared\n"


def test_order_of_execution_places_filter_and_solicit(served, tmp_path):
    """Where -F sits in EVL's order (disable, enable, filter, set VLANs, show VLANs, solicit,
    query), with real eBPF filters, and solicit directly before query."""
    obj = build(os.path.join(EXAMPLES, "ipv4_only.c"), str(tmp_path))
    loop = build(os.path.join(REFUSED, "loop.c"), str(tmp_path))       # refused at load
    assert evl_net("-ei", "vlink0").returncode == 0
    # disable before filter: the port is gone when the filter is set
    r = evl_net(f"-F{obj}", "-d", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "evl-net: cannot open out-of-band port vlink0: Invalid argument\n"
    # enable before filter: the filter goes on the port enabled by the same command
    r = evl_net(f"-F{obj}", "-e", "-i", "vlink0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # filter before set VLANs: a refused filter ends the command before -N acts
    r = evl_net("-N42", f"-F{loop}", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "evl-net: cannot set BPF filter on vlink0: Invalid argument\n"
    assert evl_net("-n").stdout == ""
    # filter, then set VLANs, then show them: the messages come in that order
    r = evl_net("-n", "-N7", "-F", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (0, "eBPF module removed from vlink0\n7\n"), r.stderr
    assert evl_net("-N").stdout == "VLAN filter cleared\n"
    # solicit before query, on a port enabled by the same command (fresh counters): the
    # query counts the ARP exchange; without -S the same command shows none
    assert evl_net("-di", "vlink0").returncode == 0
    r = evl_net("-QRT", "-e", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (0, "0 0\n"), r.stderr
    assert evl_net("-di", "vlink0").returncode == 0
    r = evl_net("-QRT", "-S", "192.0.2.2", "-e", "-i", "vlink0")
    assert r.returncode == 0, r.stderr
    rx, tx = map(int, r.stdout.split())
    assert rx >= 1 and tx >= 1, r.stdout
    # and all of it in one command: filter (installed), solicit, query
    assert evl_net("-di", "vlink0").returncode == 0
    r = evl_net("-QT", "-s", "192.0.2.2", f"-F{obj}", "-e", "-i", "vlink0")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 1


def test_solicit_messages(served):
    assert evl_net("-ei", "vlink0").returncode == 0
    r = evl_net("-s", "192.0.2.9", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "evl-net: 192.0.2.9 did not respond: Connection timed out\n"
    r = evl_net("--solicit", "192.0.2.2")        # no -i: routed by the stack
    assert (r.returncode, r.stderr) == (0, "")
    r = evl_net("-s", "192.0.2.2", "-i", "vlink7")
    assert (r.returncode, r.stderr) == (
        1, "evl-net: cannot bind UDP socket to device vlink7: No such device\n")
    r = evl_net("-s", "broadcast", "-i", "vlink0")       # EVL's literal: INADDR_BROADCAST
    assert (r.returncode, r.stderr) == (0, "")


def test_vlan_filter_set_show_clear(served):
    r = evl_net("-N42-45")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert evl_net("-n").stdout == "42-45\n"
    assert evl_net("--set-vlan-ids=7,9").returncode == 0
    assert evl_net("--print-vlan-ids").stdout == "7,9\n"
    r = evl_net("-N")
    assert (r.returncode, r.stdout) == (0, "VLAN filter cleared\n")
    r = evl_net("-n")
    assert (r.returncode, r.stdout) == (0, "")
    r = evl_net("-N4095")
    assert r.returncode == 1
    assert r.stderr == "evl-net: cannot set VLAN filters: Invalid argument\n"


def test_filter_install_remove_and_errors(served, tmp_path):
    assert evl_net("-ei", "vlink0").returncode == 0
    obj = build(os.path.join(EXAMPLES, "ipv4_only.c"), str(tmp_path))
    r = evl_net(f"-F{obj}", "-i", "vlink0")                  # installed: EVL prints nothing
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    loop = build(os.path.join(REFUSED, "loop.c"), str(tmp_path))
    r = evl_net(f"-F{loop}", "-i", "vlink0")                 # the verifier's refusal
    assert r.returncode == 1
    assert r.stderr == "evl-net: cannot set BPF filter on vlink0: Invalid argument\n"
    r = evl_net("-F", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (0, "eBPF module removed from vlink0\n"), r.stderr
    r = evl_net("--filter", "--interface", "vlink0")
    assert r.stdout == "eBPF module removed from vlink0\n"
    r = evl_net("-F/nonexistent/f.o", "-i", "vlink0")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("evl-net: cannot set BPF filter on vlink0: "
                        "No such file or directory\n")
    r = evl_net("-F", "-i", "vlink9")
    assert r.stderr == "evl-net: cannot open out-of-band port vlink9: Invalid argument\n"


def test_filter_calls_the_stack_api_through_the_endpoint(inproc, monkeypatch, tmp_path):
    """-F against a stand-in ``set_filter`` that records its calls: the tool passes an absolute
    module path or None, words the results as EVL does, and reports the API's errno."""
    stack, server = inproc
    calls = []

    def set_filter(self, port, modpath):
        calls.append((port.name, modpath))
        if modpath is not None and not os.path.exists(modpath):
            raise OSError(errno.ENOENT, f"{modpath}: no such module")

    monkeypatch.setattr(Stack, "set_filter", set_filter, raising=False)
    assert evl_net("-ei", "vlink0").returncode == 0
    r = evl_net("-F", "-i", "vlink0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "eBPF module removed from vlink0\n", "")
    module = tmp_path / "f.o"
    module.write_bytes(b"\x7fELF")
    r = evl_net("-Ff.o", "-i", "vlink0", cwd=str(tmp_path))      # relative to the client's cwd
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = evl_net("--filter=missing.o", "-i", "vlink0", cwd=str(tmp_path))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "evl-net: cannot set BPF filter on vlink0: No such file or directory\n"
    assert calls == [("vlink0", None), ("vlink0", str(module)),
                     ("vlink0", str(tmp_path / "missing.o"))]


def test_stack_selection(rundir):
    with serving("--virtual", "vlink0", name="alpha"), \
            serving("--virtual", "vlink0:198.51.100.1/24:198.51.100.7", "--enable", "vlink0",
                    name="beta"):
        r = evl_net("-Q", "-i", "vlink0")
        assert r.returncode == 1
        assert r.stderr == ("evl-net: several stacks are running (alpha, beta); choose one "
                            "with --stack NAME\n")
        assert evl_net("stacks").stdout == "alpha\nbeta\n"
        assert evl_net("--stack", "beta", "-QR", "-i", "vlink0").stdout == "0\n"
        # beta's peer answers at the address given to --virtual
        r = evl_net("--stack", "beta", "-S", "198.51.100.7", "-QR", "-i", "vlink0")
        assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
        r = evl_net("--stack", "alpha", "-QR", "-i", "vlink0")   # not enabled there
        assert r.stderr == "evl-net: cannot open out-of-band port vlink0: Invalid argument\n"
        r = evl_net("--stack=gamma", "-n")
        assert r.returncode == 1
        assert r.stderr.startswith("evl-net: no stack named 'gamma' is running")
        # bad serve arguments are usage errors
        r = evl_net("serve", "--virtual", "x:192.0.2.1/32")
        assert r.returncode == 2
        assert "no room for a peer in 192.0.2.1/32" in r.stderr
        # a second server with a live name is refused
        r = evl_net("serve", "--stack", "beta")
        assert r.returncode == 1
        assert r.stderr.startswith("evl-net: cannot serve stack beta: Address already in use")


# -- capture -------------------------------------------------------------------------------------

def test_capture_subprocess_holds_the_frames_sent(served, tmp_path):
    assert evl_net("-ei", "vlink0").returncode == 0
    out = tmp_path / "arp.pcap"
    cap = subprocess.Popen([PY, "-m", "evlnet", "capture", "-i", "vlink0", "-w", str(out),
                            "-c", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(cap.stderr) == (f"evl-net: capturing oob RX and TX frames of vlink0 "
                                         f"into {out}\n")
        # a second capture on the same port is refused
        r = evl_net("capture", "-i", "vlink0", "-w", str(tmp_path / "other.pcap"))
        assert (r.returncode, r.stderr) == (
            1, "evl-net: cannot capture on vlink0: Device or resource busy\n")
        r = evl_net("-S", "192.0.2.2", "-i", "vlink0")      # ARP request out, reply in
        assert r.returncode == 0, r.stderr
        assert cap.wait(15) == 0
        summary = cap.stderr.read().decode()
    finally:
        if cap.poll() is None:
            cap.kill()
        cap.wait()
        cap.stdout.close()
        cap.stderr.close()
    size = os.path.getsize(out)
    assert summary == (f"2 frames captured (1 received, 1 sent), 0 dropped, {size} bytes "
                       "written\n")
    frames = rdpcap(str(out))
    assert len(frames) == 2
    req, rep = frames
    assert req[ARP].op == 1 and req[ARP].pdst == "192.0.2.2" and req[ARP].psrc == "192.0.2.1"
    assert rep[ARP].op == 2 and rep[ARP].psrc == "192.0.2.2"
    assert rep[Ether].dst == req[Ether].src
    assert float(req.time) <= float(rep.time) and abs(float(req.time) - time.time()) < 60
    if shutil.which("tshark"):
        t = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "arp.opcode",
                            "-e", "arp.dst.proto_ipv4"], capture_output=True, text=True,
                           timeout=60)
        assert t.returncode == 0, t.stderr
        assert t.stdout.split("\n")[:2] == ["1\t192.0.2.2", "2\t192.0.2.1"]


def test_capture_stops_on_sigint_and_bad_file(served, tmp_path):
    assert evl_net("-ei", "vlink0").returncode == 0
    out = tmp_path / "none.pcap"
    cap = subprocess.Popen([PY, "-m", "evlnet", "capture", "-i", "vlink0", "-w", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(cap.stderr).startswith("evl-net: capturing")
        cap.send_signal(signal.SIGINT)
        assert cap.wait(15) == 0
        assert cap.stderr.read().decode() == ("0 frames captured (0 received, 0 sent), "
                                              "0 dropped, 24 bytes written\n")
    finally:
        if cap.poll() is None:
            cap.kill()
        cap.wait()
        cap.stdout.close()
        cap.stderr.close()
    assert len(rdpcap(str(out))) == 0
    r = evl_net("capture", "-i", "vlink0", "-w", str(tmp_path / "no" / "dir.pcap"))
    assert (r.returncode, r.stderr) == (
        1, f"evl-net: cannot open {tmp_path}/no/dir.pcap: No such file or directory\n")
    r = evl_net("capture", "-i", "vlink3", "-w", str(tmp_path / "x.pcap"))
    assert (r.returncode, r.stderr) == (
        1, "evl-net: cannot open out-of-band port vlink3: Invalid argument\n")
    r = evl_net("capture", "-w", str(tmp_path / "x.pcap"))
    assert r.returncode == 2


@pytest.fixture
def vpair():
    link = VirtualLink("cap0", "cap1")
    a, b = Stack("capa"), Stack("capb")
    try:
        a.add_interface(link.a, "198.51.100.1/24")
        b.add_interface(link.b, "198.51.100.2/24")
        pa, pb = a.enable_port("cap0"), b.enable_port("cap1")
        yield a, b, pa, pb
    finally:
        a.close()
        b.close()


def test_capture_in_process_count_and_byte_bounds(vpair, tmp_path):
    a, b, pa, pb = vpair
    rx = b.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    rx.bind(("198.51.100.2", 9000))
    tx = a.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
    a.solicit(tx, ("198.51.100.2", 9000))           # ARP now, before the capture starts
    sent = [f"datagram {i}".encode() * (i + 1) for i in range(6)]
    path = tmp_path / "udp.pcap"
    with open(path, "wb") as f:
        cap = pb.start_capture(f.fileno(), max_frames=4)
    for p in sent:
        tx.oob_sendmsg([p], address=("198.51.100.2", 9000))
    assert cap.wait(5.0)
    frames, nbytes, drops, nrx, ntx, err, finished = cap.stats()
    assert (frames, drops, nrx, ntx, err, finished) == (4, 0, 4, 0, 0, True)
    pkts = rdpcap(str(path))
    assert [p[Raw].load for p in pkts] == sent[:4]
    assert os.path.getsize(path) == nbytes
    # a byte bound: the file never exceeds it, and holds whole frames only
    path2 = tmp_path / "bounded.pcap"
    with open(path2, "wb") as f:
        cap2 = pa.start_capture(f.fileno(), max_bytes=400)
    for p in sent:
        tx.oob_sendmsg([p], address=("198.51.100.2", 9000))
    assert cap2.wait(5.0)
    size = os.path.getsize(path2)
    assert size <= 400
    pkts = rdpcap(str(path2))
    assert 1 <= len(pkts) < len(sent)
    assert [p[Raw].load for p in pkts] == sent[:len(pkts)]
    assert size == 24 + sum(16 + len(p) for p in pkts)
    for p in (tx, rx):
        p.close()


def test_capture_rejects_what_it_cannot_write(vpair, tmp_path):
    a, b, pa, pb = vpair
    ro = tmp_path / "ro.pcap"
    ro.write_bytes(b"")
    with open(ro, "rb") as f, pytest.raises(OSError) as info:
        pa.start_capture(f.fileno())
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        pa.start_capture(-1)
    assert info.value.errno == errno.EBADF
    with open(tmp_path / "w.pcap", "wb") as f:
        with pytest.raises(OSError) as info:
            pa.start_capture(f.fileno(), max_bytes=10)
        assert info.value.errno == errno.EINVAL
        first = pa.start_capture(f.fileno())
        with pytest.raises(OSError) as info:
            pa.start_capture(f.fileno())
        assert info.value.errno == errno.EBUSY
        assert first.stop()[6] is True
        pa.start_capture(f.fileno()).stop()     # free again once stopped


# -- the control endpoint ------------------------------------------------------------------------

@pytest.fixture
def inproc(rundir):
    """A stack served in this process (vlink0 192.0.2.1/24, its peer stack at .2)."""
    link = VirtualLink("vlink0", "vlink0-peer")
    stack, peer = Stack("inproc"), Stack("inproc-peer")
    stack.add_interface(link.a, "192.0.2.1/24")
    peer.add_interface(link.b, "192.0.2.2/24")
    peer.enable_port("vlink0-peer")
    server = ControlServer(stack).start()
    try:
        yield stack, server
    finally:
        server.close()
        stack.close()
        peer.close()


def raw_conn(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    return s


def ask(s: socket.socket, msg: bytes) -> dict:
    s.send(msg)
    reply = json.loads(s.recv(ep.MAX_REPLY))
    assert isinstance(reply, dict)
    return reply


def test_endpoint_files_are_owner_only(inproc, rundir):
    stack, server = inproc
    assert server.path == os.path.join(rundir, "inproc.sock")
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700
    # a directory open to others is refused, as is one that is not a directory
    loose = os.path.join(rundir, "loose")
    os.mkdir(loose, 0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(OSError) as info:
        ControlServer(stack, directory=loose, name="x").start()
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        ControlServer(stack, name="inproc").start()
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        ControlServer(stack, name="../evil")
    assert info.value.errno == errno.EINVAL
    # clients refuse such a directory too (a socket planted there could be anyone's)
    env = dict(os.environ, EVLNET_RUNTIME_DIR=loose)
    r = evl_net("-n", env=env)
    assert r.returncode == 1
    assert r.stderr == (f"evl-net: cannot reach the stack: Operation not permitted: {loose} is "
                        "open to other users (mode 0755, want 0700)\n")


def test_endpoint_survives_garbage(inproc):
    stack, server = inproc
    s = raw_conn(server.path)
    cases = [
        (b"x" * (ep.MAX_REQUEST + 100), errno.EMSGSIZE),
        (b"not json", errno.EINVAL),
        (b"\xff\xfe", errno.EINVAL),
        (b"[1, 2]", errno.EINVAL),
        (b"[" * 6000 + b"]" * 6000, errno.EMSGSIZE),
        (b"[" * 4000 + b"]" * 4000, errno.EINVAL),
        (b'{"cmd": 5}', errno.EINVAL),
        (b'{"cmd": "hello", "extra": 1}', errno.EINVAL),
        (b'{"cmd": "reboot"}', errno.EOPNOTSUPP),
        (b'{"cmd": "__init__"}', errno.EOPNOTSUPP),
        (b'{"cmd": "enable", "args": []}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": 5}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "poolsz": true}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "poolsz": -1}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "poolsz": 1e3}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "bufsz": NaN}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "' + b"v" * 100 + b'"}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "a\\u0000b"}}', errno.EINVAL),
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "how": "x"}}', errno.EINVAL),
        (b'{"cmd": "query", "args": {"ifname": "vlink0"}}', errno.EINVAL),   # not enabled
        (b'{"cmd": "solicit", "args": {"host": "not an address"}}', errno.EINVAL),
        (b'{"cmd": "set_vlans", "args": {"spec": "1"}}', errno.EINVAL),
        (b'{"cmd": "capture", "args": {"ifname": "vlink0"}}', errno.EBADF),   # no fd
        (b'{"cmd": "enable", "args": {"ifname": "vlink0", "poolsz": 99999999999}}',
         errno.EINVAL),
    ]
    for msg, want in cases:
        reply = ask(s, msg)
        assert reply["ok"] is False, (msg[:60], reply)
        assert reply["errno"] == want, (msg[:60], reply)
        assert isinstance(reply["error"], str) and reply["error"]
    rng = random.Random(11)
    for _ in range(200):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        reply = ask(s, junk)
        assert reply["ok"] is False and isinstance(reply["errno"], int)
    # a descriptor passed with a command that takes none is refused (and closed)
    r, w = os.pipe()
    try:
        socket.send_fds(s, [b'{"cmd": "hello"}'], [r])
        reply = json.loads(s.recv(ep.MAX_REPLY))
        assert (reply["ok"], reply["errno"]) == (False, errno.EINVAL)
    finally:
        os.close(r)
        os.close(w)
    # the same connection and the stack still work
    hello = ask(s, b'{"cmd": "hello"}')
    assert hello["ok"] and hello["result"]["stack"] == "inproc"
    assert hello["result"]["pid"] == os.getpid()
    assert ask(s, b'{"cmd": "enable", "args": {"ifname": "vlink0"}}') == {
        "ok": True, "result": {"ifname": "vlink0", "oob_capable": True}}
    q = ask(s, b'{"cmd": "query", "args": {"ifname": "vlink0"}}')
    assert q["ok"] and q["result"]["oob_port"] is True
    s.close()
    assert server.counters["errors"] >= len(cases) + 200
    # a client that hangs up mid-way does not disturb the server
    s2 = raw_conn(server.path)
    s2.close()
    with ControlClient(server.path) as c:
        assert c.request("get_vlans") == ""


def test_a_refused_client_reads_its_refusal(inproc):
    """With every slot taken, each new client gets EBUSY from its request, never ECONNRESET: the
    server keeps a refused connection until the request arrives, so closing it resets nothing
    (before: about 29 of 30 such clients saw ECONNRESET)."""
    stack, server = inproc
    conns = [raw_conn(server.path) for _ in range(ep.MAX_CONNECTIONS)]
    try:
        for c in conns:
            assert ask(c, b'{"cmd": "hello"}')["ok"]
        seen = []
        for _ in range(30):
            with ControlClient(server.path) as c:
                try:
                    c.request("hello")
                    seen.append("ok")
                except OSError as exc:
                    seen.append(errno.errorcode.get(exc.errno, exc.errno))
        assert seen == ["EBUSY"] * 30
    finally:
        for c in conns:
            c.close()


def test_endpoint_limits_connections(inproc):
    stack, server = inproc
    conns = [raw_conn(server.path) for _ in range(ep.MAX_CONNECTIONS)]
    try:
        for c in conns:                       # all of them served
            assert ask(c, b'{"cmd": "hello"}')["ok"]
        extra = raw_conn(server.path)
        reply = json.loads(extra.recv(ep.MAX_REPLY))
        assert (reply["ok"], reply["errno"]) == (False, errno.EBUSY)
        assert extra.recv(100) == b""          # and closed
        extra.close()
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 5
    while True:                               # slots come back as connections close
        with ControlClient(server.path) as c:
            try:
                assert c.request("hello")["stack"] == "inproc"
                break
            except OSError as exc:
                assert exc.errno == errno.EBUSY and time.monotonic() < deadline
                time.sleep(0.05)


def _other_user() -> pwd.struct_passwd:
    for name in ("evltest", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("no other user (evltest or nobody) on this machine")


_PEER_CLIENT = """
import ctypes, json, os, socket, sys
# SO_PEERCRED reports the effective uid: become the other user (euid). With "keep-fs", keep
# root's filesystem uid (allowed: the real uid stays 0) so that the path can be reached.
os.setresuid(0, int(sys.argv[2]), 0)
if sys.argv[3] == "keep-fs":
    ctypes.CDLL(None, use_errno=True).setfsuid(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps(["connect", exc.errno]))
    sys.exit(0)
first = s.recv(65536)
try:
    s.send(b'{"cmd": "enable", "args": {"ifname": "vlink0"}}')
    second = s.recv(65536)
except OSError:
    second = b""
print(json.dumps([first.decode(), second.decode()]))
"""


def test_endpoint_refuses_another_user(inproc, rundir):
    require_root("changing the user of a client process")
    stack, server = inproc
    other = _other_user()

    def client(mode: str) -> list:
        r = subprocess.run([PY, "-c", _PEER_CLIENT, server.path, str(other.pw_uid), mode],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    # the owner-only directory keeps the other user out altogether
    assert client("as-user") == ["connect", errno.EACCES]
    assert server.counters["refused_peers"] == 0
    # past the files (as if their modes were loosened), SO_PEERCRED refuses it before anything
    first, second = client("keep-fs")
    reply = json.loads(first)
    assert (reply["ok"], reply["errno"]) == (False, errno.EACCES)
    assert f"uid {other.pw_uid} is refused" in reply["error"]
    assert second == ""                                   # closed: nothing was done
    assert "vlink0" not in stack.ports
    assert server.counters["refused_peers"] == 1
    assert server.counters["requests"] == 0
    # the owner is still served
    with ControlClient(server.path) as c:
        assert c.request("hello")["stack"] == "inproc"


# -- a Linux port, served from a namespace -------------------------------------------------------

def test_serve_linux_port_ping_query_capture(rundir, tmp_path):
    require_root()
    with netns("srv") as a, netns("peer") as b, \
            veth_pair(a, b, addr_a="192.0.2.1/24", addr_b="192.0.2.2/24") as (ea, eb):
        prefix = ("ip", "netns", "exec", a.name)
        # AF_PACKET: not oob-capable; stdout stays EVL's, the explanation goes to stderr
        note = f"evl-net: {ea.name}: {DevStat(oob_capable=False).capability_note()}\n"
        assert "not a failure" in note
        with serving("--solicit-timeout", "2", name="lx", prefix=prefix):
            r = evl_net("-ei", ea.name)
            assert (r.returncode, r.stdout, r.stderr) == (0, "", note)
            r = evl_net("-Q", "-i", ea.name)
            m = QUERY_RE.match(r.stdout)
            assert m and m.group(1) == "no", r.stdout + r.stderr
            assert r.stderr == note
            r = evl_net("-QoR", "-i", ea.name)
            assert (r.returncode, r.stdout.split()[0], r.stderr) == (0, "no", note)
            r = evl_net("-QRT", "-i", ea.name)         # the capability is not printed: no note
            assert (r.returncode, r.stderr) == (0, "")
            out = tmp_path / "icmp.pcap"
            cap = subprocess.Popen([PY, "-m", "evlnet", "capture", "-i", ea.name, "-w",
                                    str(out), "-c", "4"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert read_line(cap.stderr).startswith("evl-net: capturing")
                # the kernel in the peer namespace pings evlnet's port: the core answers
                ping = b.run("ping", "-c", "2", "-i", "0.2", "-W", "2", "192.0.2.1",
                             check=False)
                assert ping.returncode == 0, ping.stdout + ping.stderr
                assert cap.wait(15) == 0
            finally:
                if cap.poll() is None:
                    cap.kill()
                cap.wait()
                cap.stdout.close()
                cap.stderr.close()
            pkts = [p for p in rdpcap(str(out)) if ICMP in p]
            assert [p[ICMP].type for p in pkts] == [8, 0, 8, 0]   # request in, reply out
            assert all(p[ICMP].type == 0 and p[Ether].src == ea.mac_str for p in pkts[1::2])
            if shutil.which("tshark"):
                t = subprocess.run(["tshark", "-r", str(out), "-Y", "icmp", "-T", "fields",
                                    "-e", "icmp.type"], capture_output=True, text=True,
                                   timeout=60)
                assert t.returncode == 0, t.stderr
                assert t.stdout.split() == ["8", "0", "8", "0"]
            r = evl_net("-S", "192.0.2.2", "-i", ea.name)
            assert (r.returncode, r.stderr) == (0, "")
            after = QUERY_RE.match(evl_net("-Q", "-i", ea.name).stdout)
            assert after and int(after.group(2)) >= 2 and int(after.group(4)) >= 2
            r = evl_net("-di", ea.name)
            assert (r.returncode, r.stderr) == (0, "")
            r = evl_net("-Q", "-i", ea.name)
            assert r.stderr == f"evl-net: cannot open out-of-band port {ea.name}: " \
                               "Invalid argument\n"
        # serve --enable explains it on its stderr too
        errs: list[str] = []
        with serving("--enable", ea.name, name="lx2", prefix=prefix, stderr=errs):
            r = evl_net("-Qo", "-i", ea.name, "--stack", "lx2")
            assert (r.returncode, r.stdout, r.stderr) == (0, "no\n", note)
        assert errs == [note]
    assert list_namespaces(os.getpid()) == []


# -- request validation as a property ------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_requests = st.fixed_dictionaries(
    {"cmd": st.sampled_from(sorted(ep.COMMANDS)) | st.text(max_size=10)},
    optional={"args": st.dictionaries(
        st.sampled_from(sorted({a for s in ep.COMMANDS.values() for a in s})) | st.text(
            max_size=6), _json, max_size=4)})


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | _requests.map(lambda r: json.dumps(r).encode()))
def test_validate_accepts_only_well_formed_requests(message):
    """Any message is either a request that matches the schema exactly or an OSError with
    EMSGSIZE/EINVAL/EOPNOTSUPP; nothing else escapes."""
    try:
        cmd, args = ep.validate(message)
    except OSError as exc:
        assert exc.errno in (errno.EMSGSIZE, errno.EINVAL, errno.EOPNOTSUPP)
        return
    schema = ep.COMMANDS[cmd]
    assert set(args) <= set(schema)
    for name, (types, required, bound) in schema.items():
        if name not in args:
            assert not required
            continue
        value = args[name]
        assert type(value) in types
        if type(value) is int:
            assert 0 <= value <= bound
        if type(value) is str:
            assert len(value) <= bound and "\0" not in value

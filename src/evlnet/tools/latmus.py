"""``latmus -E HOST -L IF``: EVL's network latency test, on evlnet.

Usage is EVL's (``latmus/latmus.c``, ``net.c``, ``stats.c``)::

    latmus -E 192.0.2.2 -L veth0 -T 10        # this end; the peer runs latmus -E <us> -L <its if>
    latmus --virtual -T 10                    # both ends in this process, on the virtual link

Every period (``-p``, default 1000 µs) each end sends one UDP datagram to the other on port
59059 in EVL's format (``^`` + 16 hex digits of serial + ``'A'+serial%26`` filler + ``$`` + the
CRC8-CCITT in 2 hex digits: 20 bytes of metadata, ``-S`` bytes in all, default 64), waits for
the next period, collects its TX timestamps (``oob_recvmsg(MSG_TIMESTAMP|MSG_DONTWAIT)``) and
receives one datagram from the peer with its RX timestamps. The peer is found with
``evl_net_solicit(EVL_NEIGH_PERMANENT)`` first and the socket has every timestamp point on
(``SO_TIMESTAMP_OOB = EVL_SOF_TIMESTAMPS``). Four one-host delays come out of the stamps (no
clock synchronisation involved), in µs:

- ``rx sched``: device -> the port's RX thread takes the frame (``queuing - device``);
- ``rx user``: device -> queued on the socket for the application (``delivery - device``);
- ``tx sched``: ``oob_sendmsg`` entry -> queued to the qdisc (``queuing - delivery``);
- ``tx user``: ``oob_sendmsg`` entry -> handed to the device (``device - delivery``).

Output (stdout) is EVL's, byte for byte: an ``RTT|`` header and ``RTH|`` column titles every
``-l`` lines, one ``RTD|`` line per second (window maxima, in-band switches, overruns, all-time
best/worst rx and tx user), and the ``RTS|`` summary (all-time maxima) at the end. evlnet adds
one line after it with the datagrams lost and invalid. ``-g`` writes EVL's gnuplot histogram
dump (1-µs cells, ``-H`` of them, default 200).

How evlnet differs from EVL, and why:

- latmus enables the ``-L`` port in its own stack (EVL expects ``evl net -ei IF`` first:
  evlnet's ports are per process for now); the interface needs an IPv4 address, as on EVL.
- ``msw`` (EVL: switches of the runner to the in-band stage) counts datagrams evlnet demoted to
  its in-band stage (a front-cache miss), its nearest equivalent.
- ``-n`` disables the sequence check, as EVL's help says (EVL's code has it the other way
  round). Lost datagrams are counted from the gaps in the peer's serials (EVL overwrites its
  count at each gap; evlnet adds them up). EVL blocks in the receive for ever and its display
  stalls when the peer goes quiet; evlnet waits at most ``LOST_TIMEOUT_MAX`` per round and goes
  on, and the rounds left without an answer at the end are reported apart ("rounds unanswered
  at the end": the peer stopped, or its ``-T`` ended first), after the ``RTS|`` line, on an
  evlnet line of its own: ``N datagrams received from the peer, L lost, I invalid, U rounds
  unanswered at the end``.
- ``-P`` gives the runner thread SCHED_FIFO when allowed; when refused (no root) latmus says
  so on stderr and runs at the default policy, and the header shows priority 0.
- Bad options: EVL's ``** Uh, you lost me somewhere near ...`` and the usage, exit status 1
  (EVL's ``main`` returns 1); bad values: ``latmus: <message>: Invalid argument``, exit 1;
  ``-A`` exceeded: EVL's message, exit status 102.

Beyond EVL: ``--rtt``: each end also opens an echo socket (UDP 59061) served by its own
thread, blocked in a receive; every period the runner sends its frame there too (marked ``~``),
the peer's echo thread sends it straight back (marked ``=``), and the round trip is the time
from the send call to the reply's return from the receive call; the echo threads also time
"device -> a waiting receiver gets it". ``--compare-kernel``: after the oob run, the same
exchange for the same time over plain kernel UDP sockets from Python (port 59060, echo 59062;
loopback with ``--virtual``), with the kernel's software timestamps (SO_TIMESTAMPING: TX when
the qdisc takes the packet and when the driver does; RX when the stack takes it from the
device, converted from CLOCK_REALTIME), then both side by side. ``--plot FILE.png``
(matplotlib): the distributions of the delays, and of the round trips when measured.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket as _pysocket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import (
    AF_INET,
    EVL_NEIGH_PERMANENT,
    EVL_SOF_TIMESTAMP_DEVICE,
    EVL_SOF_TIMESTAMP_RX,
    EVL_SOF_TIMESTAMPS,
    MSG_DONTWAIT,
    MSG_TIMESTAMP,
    SO_TIMESTAMP_OOB,
    SOCK_DGRAM,
    SOCK_OOB,
    SOL_SOCKET,
    IoTimes,
    Stack,
    VirtualLink,
    __version__,
)
from .latency import (
    LatencySet,
    cpu_isolated,
    current_cpu,
    rtd_line,
    rth_line,
    rts_lines,
    rtt_line,
    write_gnuplot,
)

PROG = "latmus"
#: EVL's ``LATMUS_NET_PORT``
LATMUS_NET_PORT = 59059
#: evlnet's --compare-kernel exchange (kernel UDP sockets; never diverted to an oob port)
KERNEL_PORT = 59060
FRAME_METADATA_LEN = 20
DEFAULT_PACKET_LEN = 64
DEFAULT_PRIORITY = 10          # EVL's default in net mode
DEFAULT_LINES = 21
DEFAULT_CELLS = 200
#: the longest a receive waits for the peer's datagram of a round before counting it missing
LOST_TIMEOUT_MAX = 0.25
#: --virtual: the link and addresses both ends use
VIRTUAL_IFS = ("vlink0", "vlink1")
VIRTUAL_CIDRS = ("192.0.2.1/24", "192.0.2.2/24")
EXIT_ABORT = 102
ECHO = ord("~")      # --rtt: a request to echo
REPLY = ord("=")     # --rtt: the echo
PROBE = ord("^")
RTT_PORT = 59061
#: --rtt's echo sockets: RX stamps at the device only (no TX records to collect)
ECHO_STAMPS = EVL_SOF_TIMESTAMP_RX | EVL_SOF_TIMESTAMP_DEVICE


class LatmusError(Exception):
    """A fatal error reported as glibc's ``error(1, errnum, ...)`` does."""

    def __init__(self, message: str, errnum: int = 0, status: int = 1) -> None:
        super().__init__(message)
        self.errnum = errnum
        self.status = status

    def __str__(self) -> str:
        msg = f"{PROG}: {self.args[0]}"
        return f"{msg}: {os.strerror(self.errnum)}" if self.errnum else msg


# ------------------------------------------------------------------------------------------
# EVL's frame: ^<16 hex serial><filler>$<crc8 hex>
# ------------------------------------------------------------------------------------------

def _crc8_table(poly: int = 0x8D) -> bytes:
    table = bytearray(256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table[i] = c
    return bytes(table)


CRC8_TABLE = _crc8_table()   # CRC8-CCITT as latmus' net.c (table[1] = 0x8d), initial value 0xff
_HEX = b"0123456789abcdef"


def crc8(data: bytes | bytearray | memoryview) -> int:
    """latmus' ``generate_crc``."""
    crc = 0xFF
    table = CRC8_TABLE
    for b in bytes(data):
        crc = table[crc ^ b]
    return crc


def prepare_frame(buf: bytearray, serial: int) -> None:
    """Fill *buf* (the whole datagram, > 20 bytes) with frame *serial* (``prepare_output``)."""
    size = len(buf)
    buf[0:17] = b"^%016x" % (serial & 0xFFFFFFFFFFFFFFFF)
    buf[17:size - 3] = bytes([65 + serial % 26]) * (size - FRAME_METADATA_LEN)
    buf[size - 3] = 0x24   # '$'
    crc = crc8(memoryview(buf)[:size - 2])
    buf[size - 2] = _HEX[crc // 16]
    buf[size - 1] = _HEX[crc % 16]


def parse_frame(buf: bytes | bytearray | memoryview) -> int | None:
    """The serial of a well-formed frame (CRC and hex digits checked), else None."""
    size = len(buf)
    if size <= FRAME_METADATA_LEN:
        return None
    try:
        crc = int(bytes(buf[size - 2:size]), 16)
        if crc8(memoryview(buf)[:size - 2]) != crc:
            return None
        return int(bytes(buf[1:17]), 16)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------
# options (EVL's getopt_long, the net-mode subset, plus evlnet's long options)
# ------------------------------------------------------------------------------------------

@dataclass
class Options:
    """latmus' settings, EVL's defaults."""

    host: str | None = None
    netif: str | None = None
    period_us: int = 1000
    packet_size: int = 0
    priority: int = -1
    cpu: int = -1
    timeout_s: int = 0
    lines: int = DEFAULT_LINES
    cells: int = 0
    gnuplot: str | None = None     # "-" = stdout
    abort_us: int = 0
    no_check: bool = False
    verbosity: int = 1
    rtt: bool = False
    compare_kernel: bool = False
    plot_png: str | None = None
    virtual: bool = False
    peer_stops_after: float | None = None


#: short option -> (long name, argument: 0 none, 1 required, 2 optional)
_SHORT = {"E": ("net", 1), "L": ("local-if", 1), "S": ("packet-size", 1), "n": ("no-check", 0),
          "p": ("period", 1), "P": ("priority", 1), "c": ("cpu", 1), "C": ("force-cpu", 1),
          "T": ("timeout", 1), "l": ("lines", 1), "H": ("histogram", 1), "g": ("plot", 2),
          "A": ("maxlat-abort", 1), "q": ("quiet", 0), "v": ("verbose", 2),
          "K": ("keep-going", 0), "m": ("measure", 0), "h": ("help", 0)}
_LONG = {name: (short, arg) for short, (name, arg) in _SHORT.items()}
_LONG.update({"local-ip": ("L", 1), "max-abort": ("A", 1), "rtt": ("rtt", 0),
              "compare-kernel": ("compare-kernel", 0), "virtual": ("virtual", 0),
              "peer-stops-after": ("peer-stops-after", 1)})
#: EVL's other test modes: recognised, refused (evlnet's latmus has the network test only)
_OTHER_MODES = set("ikustzZIO")
#: EVL options of its other modes or of daemon use that evlnet does not offer
_UNSUPPORTED = set("rbM")

USAGE = """\
usage: latmus [options]:
-E --net=<host>            measure out-of-band UDP delay talking to <host>
   -L --local-if=<netif>   use specified local network interface
   -n --no-check           disable packet sequence check
   -S --packet-size=<n>    set the UDP packet size (> 20 bytes)
-p --period=<us>           sampling period
-P --priority=<prio>       responder thread priority [=10 in net mode]
-c --cpu=<n>               pin responder thread to CPU [=current]
-C --force-cpu=<n>         similar to -c, accept non-isolated CPU
-K --keep-going            keep going on unexpected switch to in-band mode
-A --max-abort=<us>        abort if maximum latency exceeds threshold
-T --timeout=<t>[dhms]     stop measurement after <t> [d(ays)|h(ours)|m(inutes)|s(econds)]
-v --verbose[=level]       set verbosity level [=1]
-q --quiet                 quiet mode (i.e. --verbose=0)
-l --lines=<num>           result lines per page, 0 = no pagination [=21]
-H --histogram[=<nr>]      set histogram size to <nr> cells [=200]
-g --plot=<filename>       dump histogram data to file (gnuplot format)
evlnet's own:
   --virtual               run both ends in this process on the embedded virtual link
                           (no root; this end -E 192.0.2.2 -L vlink0, the peer pointing back)
   --rtt                   also measure round trips (both ends echo each other's datagrams)
   --compare-kernel        then run the same exchange over kernel UDP sockets (port 59060)
                           for the same time, and print both side by side (needs -T)
   --plot=<file>.png       draw the delay distributions (and round trips) with matplotlib
   --peer-stops-after=<s>  --virtual: the peer stops answering after <s> seconds (losses)
"""


class BadUsage(Exception):
    """An unknown option, a missing argument or a stray argument (EVL's ``bad_usage``)."""

    def __init__(self, argv: Sequence[str], index: int) -> None:
        super().__init__(index)
        last = index if index < len(argv) else len(argv) - 1
        self.word = argv[last] if argv else ""
        self.index = last + 1          # EVL counts argv[0]


def _atoi(text: str) -> int:
    """C's ``atoi``: leading digits, 0 when none."""
    text = text.strip()
    sign, digits = 1, ""
    if text[:1] in "+-":
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return sign * int(digits) if digits else 0


def _timeout(text: str) -> int:
    digits = ""
    rest = text.lstrip()
    if rest[:1] in "+-":
        digits, rest = rest[0], rest[1:]
    while rest[:1].isdigit():
        digits, rest = digits + rest[0], rest[1:]
    if not digits.lstrip("+-"):
        raise LatmusError("invalid timeout", errno.EINVAL)
    value = int(digits)
    if value < 0:
        raise LatmusError("invalid timeout", errno.EINVAL)
    mult = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}.get(rest[:1])
    if mult is None:
        raise LatmusError(f"invalid time modifier: '{rest[0]}'", errno.EINVAL)
    return value * mult


def parse_args(argv: Sequence[str]) -> Options:
    """EVL's option rules: clustered short options, ``-p100``/``-p 100``, ``--net=H``/``--net
    H``, optional arguments attached (``-gFILE``, ``--plot=FILE``; evlnet also takes ``-g
    FILE``). Raises BadUsage or LatmusError."""
    o = Options()
    given: list[tuple[str, str | None, int]] = []      # (key, argument, argv index)
    value: str | None
    i = 0
    argv = list(argv)
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if name not in _LONG:
                raise BadUsage(argv, i)
            key, arg = _LONG[name]
            if arg == 0 and eq:
                raise BadUsage(argv, i)
            if arg == 1 and not eq:
                if i + 1 >= len(argv):
                    raise BadUsage(argv, i)
                i += 1
                value = argv[i]
            if name == "plot" and not eq and i + 1 < len(argv) \
                    and argv[i + 1].lower().endswith(".png"):
                i += 1                     # --plot FILE.png (evlnet's)
                value, eq = argv[i], "="
            given.append((key, value if (eq or arg == 1) else None, i))
            i += 1
            continue
        if not word.startswith("-") or word == "-":
            raise BadUsage(argv, i)
        j = 1
        while j < len(word):
            ch = word[j]
            if ch in _OTHER_MODES or ch in _UNSUPPORTED:
                given.append((ch, None, i))
                j += 1
                continue
            if ch not in _SHORT:
                raise BadUsage(argv, i)
            arg = _SHORT[ch][1]
            if arg == 0:
                given.append((ch, None, i))
                j += 1
                continue
            value = word[j + 1:]
            if not value and arg == 1:
                if i + 1 >= len(argv):
                    raise BadUsage(argv, i)
                i += 1
                value = argv[i]
            elif not value and ch == "g" and i + 1 < len(argv) \
                    and not argv[i + 1].startswith("-"):
                i += 1                     # -g FILE (EVL wants -gFILE)
                value = argv[i]
            given.append((ch, value or None, i))
            break
        i += 1
    if i < len(argv):
        raise BadUsage(argv, i)
    for key, value, _ in given:
        _apply(o, key, value)
    return o


def _apply(o: Options, key: str, value: str | None) -> None:
    v = value or ""
    if key in _UNSUPPORTED:
        raise LatmusError(f"-{key} is not supported by evlnet's latmus", errno.EINVAL)
    if key in _OTHER_MODES:
        raise LatmusError("evlnet's latmus has the network test only (-E <host> -L <netif>, "
                          "or --virtual)", errno.EINVAL)
    if key == "h":
        raise BadUsage([], 0)
    if key == "E":
        o.host = v
    elif key == "L":
        o.netif = v
    elif key == "S":
        o.packet_size = _atoi(v)
    elif key == "n":
        o.no_check = True
    elif key == "p":
        o.period_us = _atoi(v)
        if o.period_us <= 0 or o.period_us > 1000000:
            raise LatmusError("invalid sampling period (0 < period < 1000000)", errno.EINVAL)
    elif key == "P":
        max_prio = os.sched_get_priority_max(os.SCHED_FIFO)
        o.priority = _atoi(v)
        if o.priority < 0 or o.priority > max_prio:
            raise LatmusError(f"invalid thread priority (0 < priority < {max_prio})",
                              errno.EINVAL)
    elif key in ("c", "C"):
        o.cpu = _atoi(v)
        if o.cpu < 0 or o.cpu >= 1024:
            raise LatmusError("invalid CPU number", errno.EINVAL)
    elif key == "T":
        o.timeout_s = _timeout(v)
    elif key == "l":
        o.lines = _atoi(v)
    elif key == "H":
        o.cells = _atoi(v)
        if o.cells < 1 or o.cells > 1000:
            raise LatmusError("invalid number of histogram cells (0 < cells <= 1000)",
                              errno.EINVAL)
    elif key == "g":
        if value and value.lower().endswith(".png"):
            o.plot_png = value
        else:
            o.gnuplot = value if value and value != "-" else "-"
    elif key == "A":
        o.abort_us = _atoi(v)
        if o.abort_us <= 0:
            raise LatmusError("invalid timeout", errno.EINVAL)
    elif key == "q":
        o.verbosity = 0
    elif key == "v":
        o.verbosity = _atoi(v) if value is not None else 1
    elif key == "rtt":
        o.rtt = True
    elif key == "compare-kernel":
        o.compare_kernel = True
    elif key == "virtual":
        o.virtual = True
    elif key == "peer-stops-after":
        try:
            o.peer_stops_after = float(v)
        except ValueError:
            o.peer_stops_after = -1.0
        if not o.peer_stops_after >= 0:
            raise LatmusError("invalid --peer-stops-after", errno.EINVAL)
    # -K (keep going), -m (measure): nothing to do here


def check_options(o: Options, err: TextIO) -> None:
    """The checks EVL makes after parsing, in its order (``main`` and ``run_net_test``)."""
    if not o.timeout_s and not o.verbosity:
        err.write("--quiet requires --timeout, ignoring --quiet\n")
        o.verbosity = 1
    if o.gnuplot and o.gnuplot != "-":
        if os.path.exists(o.gnuplot):
            raise LatmusError(f"declining to overwrite {o.gnuplot}", errno.EINVAL)
    if (o.gnuplot or o.plot_png) and o.cells == 0:
        o.cells = DEFAULT_CELLS
    if o.virtual:
        if o.host not in (None, "192.0.2.2") or o.netif not in (None, VIRTUAL_IFS[0]):
            raise LatmusError(f"--virtual makes its own link: this end is -E 192.0.2.2 "
                              f"-L {VIRTUAL_IFS[0]}", errno.EINVAL)
        o.host, o.netif = "192.0.2.2", VIRTUAL_IFS[0]
    elif o.peer_stops_after is not None:
        raise LatmusError("--peer-stops-after needs --virtual (the peer in this process)",
                          errno.EINVAL)
    if o.host is None:
        raise LatmusError("evlnet's latmus has the network test only (-E <host> -L <netif>, "
                          "or --virtual)", errno.EINVAL)
    if not o.netif:
        raise LatmusError("-[eE] requires -L<netif> to specify a local interface", errno.EINVAL)
    if o.priority < 0:
        o.priority = DEFAULT_PRIORITY
    if o.compare_kernel and not o.timeout_s:
        raise LatmusError("--compare-kernel requires --timeout (-T)", errno.EINVAL)
    if not o.packet_size:
        o.packet_size = DEFAULT_PACKET_LEN
    elif o.packet_size <= FRAME_METADATA_LEN:
        raise LatmusError(f"packet size too short ({o.packet_size} <= {FRAME_METADATA_LEN})",
                          errno.EINVAL)
    if o.rtt or o.compare_kernel or o.plot_png:
        try:
            import hdrh  # noqa: F401
        except ImportError:
            raise LatmusError("--rtt, --compare-kernel and --plot need the hdrhistogram package"
                              " (pip install 'evlnet[tools]')") from None
    if o.plot_png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise LatmusError("--plot needs matplotlib (pip install 'evlnet[plot]')") from None


# ------------------------------------------------------------------------------------------
# transports: the oob socket, and a kernel UDP socket for --compare-kernel
# ------------------------------------------------------------------------------------------

class OobTransport:
    """An evlnet oob UDP socket set up as latmus does on EVL."""

    label = "net"
    required_sets = 4          # EVL prints the summary only when all four sets have samples

    def __init__(self, stack: Stack, local_ip: str, peer: tuple[str, int],
                 port: int = LATMUS_NET_PORT, stamps: int = EVL_SOF_TIMESTAMPS) -> None:
        self.stack = stack
        self.peer = peer
        self.sock = stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        try:
            try:
                stack.solicit(self.sock, peer, EVL_NEIGH_PERMANENT)
            except OSError as exc:
                raise LatmusError(f"{peer[0]} did not respond", exc.errno or errno.EIO) from None
            if stamps:
                self.sock.setsockopt(SOL_SOCKET, SO_TIMESTAMP_OOB, stamps)
            try:
                self.sock.bind((local_ip, port))
            except OSError as exc:
                raise LatmusError("bind() failed", exc.errno or errno.EIO) from None
        except BaseException:
            self.sock.close()
            raise
        self._send = self.sock.oob_sendmsg
        self._recv = self.sock.oob_recvmsg_into
        self._tsbuf = bytearray(16 * IoTimes.SIZE)
        self._einprogress = 0
        self._demoted0 = stack.counters.tx_demoted

    def send(self, frame: bytearray | memoryview, nonblock: bool) -> None:
        """One datagram; BlockingIOError when the pool is empty under *nonblock*."""
        try:
            self._send([frame], flags=MSG_DONTWAIT if nonblock else 0, address=self.peer)
        except OSError as exc:
            if exc.errno != errno.EINPROGRESS:
                raise
            self._einprogress += 1          # demoted to the in-band stage (front-cache miss)

    def collect_tx(self) -> list[tuple[int, int, int]]:
        """Pending TX records ``(device, queuing, delivery)``, up to 16 (EVL's bulk)."""
        try:
            n, _, _, _ = self._recv([self._tsbuf], 0, MSG_TIMESTAMP | MSG_DONTWAIT)
        except BlockingIOError:
            return []
        return [(t.device_time, t.queuing_time, t.delivery_time)
                for t in IoTimes.unpack_array(memoryview(self._tsbuf)[:n])]

    def recv(self, buf: bytearray, timeout: float) -> tuple[int, tuple[int, int, int] | None]:
        """One datagram into *buf*: ``(length, (device, queuing, delivery) or None)``;
        TimeoutError when none came in time."""
        n, anc, _, _ = self._recv([buf], IoTimes.SIZE, timeout=timeout)
        if not anc:
            return n, None
        t = IoTimes.unpack(anc[0][2])
        return n, (t.device_time, t.queuing_time, t.delivery_time)

    def in_band_switches(self) -> int:
        return self.stack.counters.tx_demoted - self._demoted0 + self._einprogress

    def close(self) -> None:
        self.sock.close()


# Linux SO_TIMESTAMPING (include/uapi/linux/net_tstamp.h, errqueue.h)
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_TX_SCHED = 1 << 8
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SCM_TSTAMP_SND, SCM_TSTAMP_SCHED = 0, 1
KERNEL_STAMPS = (SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_TX_SCHED
                 | SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
                 | SOF_TIMESTAMPING_OPT_ID | SOF_TIMESTAMPING_OPT_TSONLY)
KERNEL_RX_STAMPS = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
IP_RECVERR = 11
_TIMESPEC3 = struct.Struct("=qqqqqq")
_EXTERR = struct.Struct("=IBBBBII")        # struct sock_extended_err (first 16 bytes)
_MSG_ERRQUEUE = getattr(_pysocket, "MSG_ERRQUEUE", 0x2000)


class KernelTransport:
    """A plain kernel UDP socket doing the same exchange (``--compare-kernel``), with the
    kernel's software timestamps (SO_TIMESTAMPING): RX when the stack takes the frame from the
    device, TX when it enters the qdisc (SCHED) and when the driver takes it (SND); kernel
    stamps are CLOCK_REALTIME and converted to CLOCK_MONOTONIC."""

    label = "kernel"
    required_sets = 2          # no RX queuing or socket-queue point in the kernel: TX only

    def __init__(self, local: tuple[str, int], peer: tuple[str, int],
                 stamps: int = KERNEL_STAMPS) -> None:
        self.peer = peer
        s = _pysocket.socket(_pysocket.AF_INET, _pysocket.SOCK_DGRAM)
        self.sock = s
        self.stamps = bool(stamps & SOF_TIMESTAMPING_TX_SOFTWARE)
        try:
            if stamps:
                s.setsockopt(SOL_SOCKET, SO_TIMESTAMPING, stamps)
            s.bind(local)
        except OSError as exc:
            s.close()
            raise LatmusError(f"kernel UDP socket on {local[0]}:{local[1]}",
                              exc.errno or errno.EIO) from None
        s.setblocking(False)
        self._poll = select.poll()
        self._poll.register(s, select.POLLIN)
        self._poll_out = select.poll()
        self._poll_out.register(s, select.POLLOUT)
        self._pending: list[tuple[int, int, int]] = []
        self._next_id = 0
        self._sent: dict[int, int] = {}          # OPT_ID -> send entry (monotonic ns)
        self._sched: dict[int, int] = {}
        self._offset = time.monotonic_ns() - time.time_ns()

    def _mono(self, sec: int, nsec: int) -> int:
        return sec * 1_000_000_000 + nsec + self._offset

    def send(self, frame: bytearray | memoryview, nonblock: bool) -> None:
        t = time.monotonic_ns()
        if nonblock:
            self.sock.sendto(frame, self.peer)
        else:
            self._poll_out.poll(1000)
            self.sock.sendto(frame, self.peer)
        if self.stamps and len(self._sent) < 4096:
            self._sent[self._next_id] = t
        self._next_id += 1

    def collect_tx(self) -> list[tuple[int, int, int]]:
        out, self._pending = self._pending, []
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(0, 512, _MSG_ERRQUEUE | _pysocket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            stamp = kind = ident = None
            for level, typ, data in anc:
                if level == SOL_SOCKET and typ == SO_TIMESTAMPING and len(data) >= 48:
                    sec, nsec = _TIMESPEC3.unpack_from(data)[:2]
                    stamp = self._mono(sec, nsec)
                elif typ == IP_RECVERR and len(data) >= _EXTERR.size:
                    _, _, _, _, _, kind, ident = _EXTERR.unpack_from(data)
            if stamp is None or ident is None:
                continue
            if kind == SCM_TSTAMP_SCHED:
                self._sched[ident] = stamp
            elif kind == SCM_TSTAMP_SND:
                sent = self._sent.pop(ident, None)
                if sent is not None:
                    out.append((stamp, self._sched.pop(ident, 0), sent))

    def recv(self, buf: bytearray, timeout: float) -> tuple[int, tuple[int, int, int] | None]:
        end = time.monotonic() + timeout
        while True:
            try:
                n, anc, _, _ = self.sock.recvmsg_into([buf], 512)
                break
            except BlockingIOError:
                pass
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for _, ev in self._poll.poll(left * 1000):
                if ev & select.POLLERR:    # TX stamps queued: keep them for collect_tx
                    self._pending += self.collect_tx()
        for level, typ, data in anc:
            if level == SOL_SOCKET and typ == SO_TIMESTAMPING and len(data) >= 48:
                sec, nsec = _TIMESPEC3.unpack_from(data)[:2]
                if sec or nsec:
                    return n, (self._mono(sec, nsec), 0, 0)
        return n, None

    def in_band_switches(self) -> int:
        return 0

    def close(self) -> None:
        self.sock.close()


class RttEcho:
    """``--rtt``: a second socket per end (port 59061; kernel: 59062+) served by its own
    thread, blocked in a receive so that it answers at once. The runner sends each period's
    frame there too, marked ``~`` (a request); the peer's echo thread sends it back marked
    ``=``; this end's echo thread takes the reply and records the round trip (send call ->
    reply returned by the receive call), the same way on both paths."""

    def __init__(self, transport: Any, size: int, rtt: LatencySet,
                 rx_wait: LatencySet) -> None:
        self.t = transport
        self.rtt = rtt
        self.rx_wait = rx_wait
        self.size = size
        self.sent_at = [(-1, 0)] * 4096        # serial % 4096 -> (serial, send time)
        self.frame = bytearray(size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="latmus-echo", daemon=True)
        self.thread.start()

    def probe(self, frame: bytearray, serial: int) -> None:
        """Send this period's request (a copy of *frame* marked ``~``)."""
        f = self.frame
        f[:] = frame
        f[0] = ECHO
        self.sent_at[serial & 4095] = (serial, time.monotonic_ns())
        try:
            self.t.send(f, True)
        except BlockingIOError:
            pass

    def _serve(self) -> None:
        buf = bytearray(self.size)
        while not self.stop.is_set():
            try:
                n, times = self.t.recv(buf, 0.05)
            except TimeoutError:
                continue
            except OSError:
                return
            t_ret = time.monotonic_ns()
            if times is not None and times[0]:
                self.rx_wait.add(t_ret - times[0])     # device -> a waiting receiver
            if n != self.size:
                continue
            if buf[0] == ECHO:                 # the peer's request: answer at once
                buf[0] = REPLY
                try:
                    self.t.send(buf, True)
                except OSError:
                    pass
            elif buf[0] == REPLY:              # the answer to one of ours
                buf[0] = PROBE
                serial = parse_frame(buf)
                if serial is not None:
                    sent_serial, sent_at = self.sent_at[serial & 4095]
                    if sent_serial == serial:
                        self.rtt.add(t_ret - sent_at)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(1.0)
        self.t.close()


# ------------------------------------------------------------------------------------------
# the runner: one end of the exchange
# ------------------------------------------------------------------------------------------

@dataclass
class Output:
    """Where an end prints (only the measuring end prints; --virtual's peer is quiet)."""

    out: TextIO | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self, text: str) -> None:
        if self.out is None:
            return
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()


class Aborted(Exception):
    """``-A`` threshold exceeded."""


class NetRunner:
    """One ``latmus -E`` end: sends a frame per period, collects TX stamps, receives one frame.

    The figures (four EVL sets, plus the round trips and "rx app" -- device to the return of
    the receive call, measured the same way on both paths) stay on the object after ``run``.
    """

    def __init__(self, transport: Any, opts: Options, out: Output, context: str,
                 hdr: bool = False, priority: int | None = None) -> None:
        self.t = transport
        self.o = opts
        self.out = out
        self.context = context
        self.size = opts.packet_size
        self.period_ns = opts.period_us * 1000
        self.rounds_per_sec = max(1, 1_000_000 // opts.period_us)
        self.lost_timeout = min(LOST_TIMEOUT_MAX, max(0.05, 50 * opts.period_us / 1e6))
        cells = opts.cells
        self.rx_q = LatencySet("RX queuing", cells, hdr)
        self.rx_d = LatencySet("RX delivery", cells, hdr)
        self.tx_q = LatencySet("TX queuing", cells, hdr)
        self.tx_d = LatencySet("TX delivery", cells, hdr)
        #: --rtt: device -> the return of a receive call that was waiting (the echo thread)
        self.rx_app = LatencySet("RX to a waiting receiver", 0, hdr)
        self.rtt = LatencySet("round trip", 0, hdr)
        self.sets = (self.rx_q, self.rx_d, self.tx_q, self.tx_d)
        self.overruns = 0
        #: the peer's datagrams that never came, from the gaps in its serials
        self.lost = 0
        #: rounds at the end with no datagram from the peer (it stopped, or ended first)
        self.unanswered = 0
        self.invalid = 0
        self.received = 0
        self.missed_since_rx = 0
        self.lines_printed = 0
        self.last_serial: int | None = None
        self.priority = opts.priority if priority is None else priority
        self.cpu = opts.cpu
        self.isolated = False
        self.start_time = time.time()
        self.duration = 0
        self.abort_message: str | None = None
        #: --rtt: this end's echo socket and thread (set by the caller)
        self.echo: RttEcho | None = None
        #: stop exchanging after this many seconds (--peer-stops-after, the in-process peer)
        self.stop_after: float | None = None
        self._abort_ns = opts.abort_us * 1000

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event, deadline: float | None) -> None:
        """Exchange until *stop* is set or the monotonic *deadline* passes."""
        if self.cpu < 0:
            self.cpu = current_cpu()
        self.isolated = cpu_isolated(self.cpu)
        self.start_time = time.time()
        t0 = time.monotonic()
        frame = bytearray(self.size)
        rbuf = bytearray(self.size)
        now = time.monotonic_ns
        next_tick = now() + self.period_ns
        seq = 0
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                prepare_frame(frame, seq)
                self._tx(frame)
                if self.echo is not None:
                    self.echo.probe(frame, seq)
                delay = next_tick - now()      # the period timer
                if delay > 0:
                    time.sleep(delay / 1e9)
                next_tick += self.period_ns
                late = now() - next_tick
                if late >= 0:                  # expiries missed: one read takes them all,
                    next_tick += (late // self.period_ns + 1) * self.period_ns   # as EVL's
                for rec in self.t.collect_tx():
                    self._log_tx(rec)
                self._rx(rbuf, seq, stop, deadline)
                seq += 1
        except Aborted:
            stop.set()
        finally:
            self.duration = round(time.monotonic() - t0)
            self.unanswered = self.missed_since_rx if self.last_serial is not None else 0

    def _tx(self, frame: bytearray | memoryview) -> None:
        try:
            self.t.send(frame, True)
        except BlockingIOError:
            self.overruns += 1                 # EVL: an overrun, then wait for a buffer
            self.tx_d.all_overruns += 1
            self.t.send(frame, False)

    def _elapsed(self) -> int:
        return int(time.time() - self.start_time)

    def _add(self, st: LatencySet, ns: int) -> None:
        if st.add(ns, self._elapsed()) and self._abort_ns and st.all_max > self._abort_ns \
                and st in self.sets:
            self.abort_message = (f"latency threshold is exceeded ({self._abort_ns} >= "
                                  f"{st.all_max / 1000.0:.3f}), aborting.")
            raise Aborted

    def _log_tx(self, rec: tuple[int, int, int]) -> None:
        device, queuing, delivery = rec
        if queuing:
            self._add(self.tx_q, queuing - delivery)
        if device:
            self._add(self.tx_d, device - delivery)

    def _rx(self, buf: bytearray, seq: int, stop: threading.Event,
            deadline: float | None) -> None:
        """Receive the peer's frame of this round. Until the peer's first frame this waits
        as long as the run lasts (EVL waits for ever: the peer may start later); after it, at
        most ``lost_timeout``, and a round without a frame is counted as unanswered."""
        end = time.monotonic() + (self.lost_timeout if self.received else 1e9)
        while True:
            t = time.monotonic()
            if stop.is_set() or (deadline is not None and t >= deadline):
                return                         # the run ended, not the peer
            left = end - t
            if left <= 0:
                self.missed_since_rx += 1      # no datagram this round
                return
            try:
                n, times = self.t.recv(buf, min(left, 0.05))
            except TimeoutError:
                continue
            t_ret = time.monotonic_ns()
            if n == self.size and buf[0] == PROBE:
                if times is not None:
                    self._log_rx(times, t_ret, seq)
                serial = parse_frame(buf)
                if serial is None:
                    self.invalid += 1
                    return
                self.received += 1
                self.missed_since_rx = 0
                last = self.last_serial
                if not self.o.no_check and last is not None and serial != last + 1:
                    if serial > last:
                        self.lost += serial - last - 1
                    else:
                        self.invalid += 1      # EVL: "way too lost in space"
                self.last_serial = serial
                return
            self.invalid += 1
            return

    def _log_rx(self, times: tuple[int, int, int], t_ret: int, seq: int) -> None:
        device, queuing, delivery = times
        if device:
            if queuing:
                self._add(self.rx_q, queuing - device)
            if delivery:
                self._add(self.rx_d, delivery - device)
        if seq % self.rounds_per_sec == 0:
            if self.o.verbosity > 0:
                # EVL numbers its lines by round (its receive never misses one); counting the
                # lines printed is the same then, and keeps the header first when one is missed
                if self.o.lines and self.lines_printed % self.o.lines == 0:
                    self.out.line(rtt_line(self._elapsed(), self.context, self.o.period_us,
                                           self.priority, self.cpu, self.isolated))
                    self.out.line(rth_line())
                self.out.line(rtd_line(self.rx_q, self.rx_d, self.tx_q, self.tx_d,
                                       self.t.in_band_switches(), self.overruns))
                self.lines_printed += 1
            for st in self.sets:
                st.reset_window()

    # -- the end ----------------------------------------------------------------------------
    def summary(self) -> list[str]:
        """The rule and ``RTS|`` line (none without enough samples, as EVL), then evlnet's
        line of lost/invalid datagrams."""
        lines: list[str] = []
        if sum(1 for st in self.sets if st.all_samples) >= self.t.required_sets:
            lines += rts_lines(self.sets, self.t.in_band_switches(), self.overruns,
                               self.duration, self.o.timeout_s)
        lines.append(f"{self.received} datagrams received from the peer, {self.lost} lost, "
                     f"{self.invalid} invalid, {self.unanswered} rounds unanswered at the end")
        return lines

    def gnuplot_extra(self) -> list[str]:
        return [f"RX received: {self.received}", f"RX lost: {self.lost}",
                f"RX invalid: {self.invalid}", f"RX unanswered at the end: {self.unanswered}"]


# ------------------------------------------------------------------------------------------
# running it
# ------------------------------------------------------------------------------------------

def _ipv4_of(host: str) -> str:
    try:
        return str(_pysocket.getaddrinfo(host, None, _pysocket.AF_INET)[0][4][0])
    except (OSError, IndexError, UnicodeError):
        raise LatmusError(f"cannot resolve '{host}' as an IPv4 address", errno.EINVAL) from None


def _format_ip(ip: int) -> str:
    return _pysocket.inet_ntoa(ip.to_bytes(4, "big"))


def _local_ip(stack: Stack, netif: str) -> str:
    iface = stack.find_interface(netif)
    if iface is None or not iface.primary_address:
        raise LatmusError(f"find_netif_ip({netif})", errno.EINVAL)
    return _format_ip(iface.primary_address)


def _apply_priority(prio: int, err: TextIO) -> int:
    """SCHED_FIFO *prio* for the calling thread; the priority in effect (0 when refused)."""
    if prio <= 0:
        return 0
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        return prio
    except OSError as exc:
        err.write(f"{PROG}: SCHED_FIFO priority {prio} refused ({exc.strerror}): "
                  "running at the default policy\n")
        return 0


def _run_phase(main: NetRunner, peer: NetRunner | None, opts: Options, printer: Output,
               err: TextIO, stop: threading.Event) -> bool:
    """Run this end (and the in-process peer), each in its own thread, for -T seconds or until
    *stop*; then print the summary. False when -A aborted (EVL: its message, no summary)."""
    runners = [(main, True)] + ([(peer, False)] if peer is not None else [])
    deadline = time.monotonic() + opts.timeout_s if opts.timeout_s else None
    threads = []
    for runner, main_end in runners:
        def body(r: NetRunner = runner, prioritised: bool = main_end) -> None:
            if prioritised:
                r.priority = _apply_priority(opts.priority, err)
            else:
                r.priority = 0
            end = deadline
            if r.stop_after is not None:
                quit_at = time.monotonic() + r.stop_after
                end = quit_at if end is None else min(end, quit_at)
            r.run(stop, end)
        th = threading.Thread(target=body, name=f"net-runner:{os.getpid()}", daemon=True)
        threads.append(th)
        th.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
        if deadline is not None and time.monotonic() > deadline + 5:
            break
    stop.set()
    for t in threads:
        t.join(2.0)
    message = main.abort_message or (peer.abort_message if peer is not None else None)
    if message:
        err.write(message + "\n")
        return False
    if not main.received:
        err.write(f"{PROG}: no datagram came from {opts.host} ({main.context}): is latmus -E "
                  f"running there, pointing back?\n")
    for line in main.summary():
        printer.line(line)
    return True


def run(opts: Options, out: TextIO, err: TextIO, stop: threading.Event | None = None,
        report: dict[str, Any] | None = None) -> int:
    """Set up and run the test as EVL's ``run_net_test`` does; returns the exit status.

    *report*, when given, receives the measuring runners by path (``"evlnet"``, ``"kernel"``)
    under ``"runners"`` and each port's ``DevStat`` under ``"stats"``, for callers such as the
    demo."""
    report = {} if report is None else report
    stop = stop or threading.Event()
    hdr = bool(opts.rtt or opts.compare_kernel or opts.plot_png)
    if opts.cpu >= 0:
        try:
            os.sched_setaffinity(0, {opts.cpu})
        except OSError as exc:
            raise LatmusError(f"cannot set affinity to CPU{opts.cpu}",
                              exc.errno or errno.EINVAL) from None
    cpu_s = "" if cpu_isolated(opts.cpu if opts.cpu >= 0 else current_cpu()) \
        else " (not isolated)"
    cpu_shown = opts.cpu if opts.cpu >= 0 else current_cpu()
    if opts.verbosity > 0:
        err.write(f"warming up on CPU{cpu_shown}{cpu_s}...\n")
    else:
        err.write(f"running quietly for {opts.timeout_s} seconds on CPU{cpu_shown}{cpu_s}\n")
    err.flush()
    assert opts.host is not None and opts.netif is not None
    peer_ip = _ipv4_of(opts.host)
    stacks: list[Stack] = []
    transports: list[Any] = []
    try:
        printer = Output(out)
        if opts.virtual:
            link = VirtualLink(*VIRTUAL_IFS)
            ends = []
            for name, dev, cidr in zip(VIRTUAL_IFS, (link.a, link.b), VIRTUAL_CIDRS):
                st = Stack(f"latmus-{name}")
                stacks.append(st)
                st.add_interface(dev, cidr)
                st.enable_port(name)
                ends.append((st, cidr.split("/")[0]))
            (st_a, ip_a), (st_b, ip_b) = ends
            # the peer first: its socket is bound before this end sends
            t_b = OobTransport(st_b, ip_b, (ip_a, LATMUS_NET_PORT))
            transports.append(t_b)
            t_a = OobTransport(st_a, ip_a, (ip_b, LATMUS_NET_PORT))
            transports.append(t_a)
            main = NetRunner(t_a, opts, printer, "net", hdr)
            peer_b = NetRunner(t_b, opts, Output(None), "net", hdr)
            peer_b.stop_after = opts.peer_stops_after
            peer: NetRunner | None = peer_b
            if opts.rtt:
                for r, st_x, ip_x, ip_y in ((peer_b, st_b, ip_b, ip_a),
                                            (main, st_a, ip_a, ip_b)):
                    r.echo = RttEcho(OobTransport(st_x, ip_x, (ip_y, RTT_PORT), RTT_PORT,
                                                  ECHO_STAMPS), opts.packet_size, r.rtt,
                                     r.rx_app)
                    transports.insert(0, r.echo)
        else:
            st = Stack("latmus")
            stacks.append(st)
            try:
                port = st.enable_port(opts.netif)
            except OSError as exc:
                raise LatmusError(f"{opts.netif} is not an out-of-band networking port",
                                  exc.errno or errno.EINVAL) from None
            if opts.verbosity > 0 and not port.oob_capable:
                err.write(f"{opts.netif}: {port.stats().capability_note()}\n")
            local_ip = _local_ip(st, opts.netif)
            t_a = OobTransport(st, local_ip, (peer_ip, LATMUS_NET_PORT))
            transports.append(t_a)
            main = NetRunner(t_a, opts, printer, "net", hdr)
            peer = None
            if opts.rtt:
                main.echo = RttEcho(OobTransport(st, local_ip, (peer_ip, RTT_PORT), RTT_PORT,
                                                 ECHO_STAMPS), opts.packet_size, main.rtt,
                                    main.rx_app)
                transports.insert(0, main.echo)
        if not _run_phase(main, peer, opts, printer, err, stop):
            return EXIT_ABORT
        results = {"evlnet": main}
        report["runners"] = results
        report["stats"] = {name: st.get_stats(port) for st in stacks
                           for name, port in st.ports.items()}
        if opts.compare_kernel:
            kernel = _kernel_phase(opts, printer, err, stacks, peer_ip, hdr)
            if kernel is None:
                return EXIT_ABORT
            results["kernel"] = kernel
            printer.line("")
            for line in side_by_side(results, opts):
                printer.line(line)
        elif opts.rtt and main.rtt.all_samples:
            printer.line(_rtt_sentence(main.rtt))
        if opts.gnuplot:
            _dump(opts, main)
        if opts.plot_png:
            from .histplot import plot_latmus
            plot_latmus(opts.plot_png, results, title=_plot_title(opts))
        return 0
    finally:
        for t in transports:
            t.close()
        for st in stacks:
            st.close()


def _kernel_phase(opts: Options, printer: Output, err: TextIO, stacks: list[Stack],
                  peer_ip: str, hdr: bool) -> NetRunner | None:
    """The same exchange over kernel UDP sockets: loopback for --virtual, else the -L
    interface's address (the kernel still owns every port but 59059's traffic)."""
    stop = threading.Event()
    closing: list[Any] = []
    if opts.virtual:
        lo = "127.0.0.1"
        a, b = (lo, KERNEL_PORT), (lo, KERNEL_PORT + 1)
        ka, kb = KernelTransport(a, b), KernelTransport(b, a)
        echo_ends = [((lo, KERNEL_PORT + 2), (lo, KERNEL_PORT + 3)),
                     ((lo, KERNEL_PORT + 3), (lo, KERNEL_PORT + 2))]
        context = "kernel UDP, loopback"
    else:
        local_ip = _local_ip(stacks[0], opts.netif or "")
        ka, kb = KernelTransport((local_ip, KERNEL_PORT), (peer_ip, KERNEL_PORT)), None
        echo_ends = [((local_ip, KERNEL_PORT + 2), (peer_ip, KERNEL_PORT + 2))]
        context = "kernel UDP"
    closing += [ka] + ([kb] if kb is not None else [])
    try:
        main = NetRunner(ka, opts, printer, context, hdr)
        peer = None
        if kb is not None:
            peer = NetRunner(kb, opts, Output(None), context, hdr)
        if opts.rtt:
            for runner, (local, remote) in zip([main] + ([peer] if peer else []), echo_ends):
                runner.echo = RttEcho(KernelTransport(local, remote, KERNEL_RX_STAMPS),
                                      opts.packet_size, runner.rtt, runner.rx_app)
                closing.insert(0, runner.echo)
        return main if _run_phase(main, peer, opts, printer, err, stop) else None
    finally:
        for c in closing:
            c.close()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def side_by_side(results: dict[str, NetRunner], opts: Options) -> list[str]:
    """The evlnet and kernel figures in one table (µs; min/p50/p99/max per delay)."""
    names = list(results)
    rows = [("rx user (device -> queued on the socket)", "rx_d"),
            ("tx sched (send call -> qdisc)", "tx_q"),
            ("tx user (send call -> device)", "tx_d")]
    if opts.rtt:
        rows += [("rx (device -> waiting receiver returns)", "rx_app"),
                 ("round trip (send call -> echo returns)", "rtt")]
    head = f"{'delay (us): min / p50 / p99 / max':<42}" + "".join(
        f"{n + (' oob' if n == 'evlnet' else ' UDP'):>34}" for n in names)
    lines = [head, "-" * len(head)]
    for label, attr in rows:
        cells = []
        for n in names:
            st: LatencySet = getattr(results[n], attr)
            if not st.all_samples:
                cells.append(f"{'n/a':>34}")
                continue
            cells.append(f"{_fmt(st.all_min / 1000)} / {_fmt(st.percentile_us(50))} / "
                         f"{_fmt(st.percentile_us(99))} / {_fmt(st.all_max / 1000)}".rjust(34))
        lines.append(f"{label:<42}" + "".join(cells))
    counts = "".join(f"{f'{r.received} rx, {r.lost} lost, {r.invalid} invalid':>34}"
                     for r in results.values())
    lines.append(f"{'datagrams from the peer':<42}{counts}")
    return lines


def _rtt_sentence(st: LatencySet) -> str:
    return (f"round trip (us): min {st.all_min / 1000:.1f}  p50 {_fmt(st.percentile_us(50))}  "
            f"p99 {_fmt(st.percentile_us(99))}  max {st.all_max / 1000:.1f}  "
            f"({st.all_samples} round trips)")


def _plot_title(opts: Options) -> str:
    where = "embedded virtual link" if opts.virtual else f"{opts.netif} -> {opts.host}"
    return (f"latmus -E: {opts.packet_size}-byte UDP every {opts.period_us} us, {where}, "
            f"{opts.timeout_s or '?'} s")


def _dump(opts: Options, runner: NetRunner) -> None:
    kwargs: dict[str, Any] = dict(start_time=runner.start_time, period_us=opts.period_us,
                                  context="net", priority=runner.priority, cpu=runner.cpu,
                                  isolated=runner.isolated, duration_s=runner.duration,
                                  msw=runner.t.in_band_switches(),
                                  version=f"evlnet {__version__}",
                                  extra=runner.gnuplot_extra())
    if opts.gnuplot == "-":
        write_gnuplot(sys.stdout, runner.sets, **kwargs)
        sys.stdout.flush()
        return
    assert opts.gnuplot is not None
    try:
        with open(opts.gnuplot, "x") as f:
            write_gnuplot(f, runner.sets, **kwargs)
    except OSError as exc:
        raise LatmusError(f"cannot open {opts.gnuplot} for writing",
                          exc.errno or errno.EIO) from None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """The ``latmus`` command; returns its exit status (EVL's: 0, 1, 102)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        opts = parse_args(argv)
    except BadUsage as bad:
        if not bad.word:                   # -h, --help (evlnet's; EVL has none)
            out.write(USAGE)
            return 0
        out.write(f"** Uh, you lost me somewhere near '{bad.word}' (arg #{bad.index})\n")
        out.flush()
        err.write(USAGE)
        return 1
    except LatmusError as exc:
        out.flush()
        err.write(f"{exc}\n")
        return exc.status
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        check_options(opts, err)
        return run(opts, out, err, stop)
    except LatmusError as exc:
        out.flush()
        err.write(f"{exc}\n")
        return exc.status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

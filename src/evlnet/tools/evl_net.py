"""``evl-net``: manage a served evlnet stack as EVL's ``evl net`` manages EVL's.

EVL's options, long forms, order of execution and output, byte for byte (libevl
``utils/evl-net.c``)::

    evl-net -ei veth0            # enable the oob port of veth0
    evl-net -Q -i veth0          # query it (-QRrTt...: chosen values on one line)
    evl-net -S 192.0.2.2 -i veth0
    evl-net -F -i veth0          # remove the eBPF filter
    evl-net -N42-45 ; evl-net -n # set / show the VLAN filter
    evl-net -di veth0

On a port that is not oob-capable (a Linux interface), ``-Q`` and ``-e`` also write the
explanation of ``oob capability: no`` (``DevStat.capability_note``) on stderr; stdout stays
EVL's.

They act on a stack served by another process (``evl-net serve``), found by default (the
only one running) or by ``--stack NAME``. evlnet's own commands::

    evl-net serve [--stack NAME] [--virtual IF[:ADDR/LEN[:PEER]]]... [--enable IF]...
    evl-net capture -i IF -w FILE [-c COUNT] [--max-bytes N] [--snaplen N] [--stack NAME]
    evl-net stacks

Exit status: 0 done, 1 an action failed (EVL's ``error(1, ...)`` messages), 2 bad usage.
See ``docs/TOOLS.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from .. import DevStat, Stack, VirtualLink
from ..control import endpoint as ep
from ..control.client import ControlClient, StackNotFound, connect, running_stacks
from ..control.server import ControlServer

PROG = "evl-net"

#: EVL's short options (``short_optlist``): ``:`` required argument, ``::`` optional (attached).
SHORT_OPTS = "@hedQ::p:b:F::s:S:i:gN::n"
#: EVL's long options (name -> (short, argument: 0 none, 1 required, 2 optional)), and
#: evlnet's ``--stack``. EVL declares ``--print-vlan-ids`` with a required argument it never
#: reads; here it takes none, like ``-n``.
LONG_OPTS: dict[str, tuple[str, int]] = {
    "interface": ("i", 1), "filter": ("F", 2), "solicit": ("s", 1),
    "solicit-permanent": ("S", 1), "enable-port": ("e", 0), "disable-port": ("d", 0),
    "pool-size": ("p", 1), "buffer-size": ("b", 1), "query-port": ("Q", 2),
    "allow-gateway": ("g", 0), "set-vlan-ids": ("N", 2), "print-vlan-ids": ("n", 0),
    "help": ("h", 0), "stack": ("stack", 1),
}

USAGE = """\
usage: {prog} [options]:
-e -i <ifname> [-p][-b]            enable out-of-band port in network interface <ifname>
   -p <pool-size>                  max number of out-of-band socket buffers (0=default)
   -b <buffer-size>                size (in bytes) of out-of-band socket buffer (0=default)
-d -i <ifname>                     disable out-of-band port in network interface <ifname>
-s <host> [-i <ifname>][-g]        solicit <host> via <ifname> if given
-S <host> [-i <ifname>][-g]        like -s, marking ARP entry as permanent
   -g                              allow routing to destination via gateway(s)
-Q[RrTtosfacx] -i <ifname>         query network interface information about <ifname>
-F[<bpf-module.o>] -i <ifname>     install/remove eBPF filter (RX)
-N[<vlan-id-list]                  add/remove VLAN id. filter (RX)
-n                                 show VLAN id. filter (RX)
evlnet:
--stack <name>                     act on the served stack <name> (default: the only one)
{prog} serve [--stack <name>] [--virtual <if>[:<addr/len>[:<peer>]]] [--enable <if>]
                                   serve a stack (see '{prog} serve --help')
{prog} capture -i <ifname> -w <file> [-c <count>] [--max-bytes <n>]
                                   write the port's oob RX/TX frames to a pcap file
{prog} stacks                     list the served stacks
"""

QUERY_MODIFIERS = "RrTtosfacx"


class UsageError(Exception):
    """Bad command line: the message (may be empty) and the usage go to stderr, exit 2."""


class ActionError(Exception):
    """An action failed: EVL's ``error(1, errnum, fmt)`` line, exit 1."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.err = err

    def line(self) -> str:
        return f"{PROG}: {self.message}" + (f": {os.strerror(self.err)}" if self.err else "")


# -- command line (getopt_long, as EVL parses it) ------------------------------------------------

def _short_spec() -> dict[str, int]:
    spec, i = {}, 0
    while i < len(SHORT_OPTS):
        c = SHORT_OPTS[i]
        n = 0
        while i + 1 + n < len(SHORT_OPTS) and SHORT_OPTS[i + 1 + n] == ":":
            n += 1
        spec[c] = {0: 0, 1: 1, 2: 2}[n]
        i += 1 + n
    return spec


def getopt_long(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """Parse *argv* as glibc's getopt_long does with EVL's options: clustered short options,
    optional arguments only when attached (``-QRr``, ``--query-port=Rr``), unique prefixes of
    long options, ``--`` ends options. Any operand is a usage error (as EVL: ``optind <
    argc``). UsageError with glibc's message on a bad option."""
    shorts = _short_spec()
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise UsageError("")
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in LONG_OPTS:
                match = name
            else:
                cands = [n for n in LONG_OPTS if n.startswith(name)]
                if not cands:
                    raise UsageError(f"{PROG}: unrecognized option '{arg}'")
                if len(cands) > 1:
                    raise UsageError(f"{PROG}: option '{arg}' is ambiguous; possibilities: "
                                     + " ".join(f"'--{c}'" for c in cands))
                match = cands[0]
            opt, has = LONG_OPTS[match]
            if has == 0 and eq:
                raise UsageError(f"{PROG}: option '--{match}' doesn't allow an argument")
            if has == 1 and not eq:
                if i >= len(argv):
                    raise UsageError(f"{PROG}: option '--{match}' requires an argument")
                value, eq = argv[i], "="
                i += 1
            out.append((opt, value if eq else None))
            continue
        if arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                c = arg[j]
                j += 1
                kind = shorts.get(c)
                if kind is None or c == ":":
                    raise UsageError(f"{PROG}: invalid option -- '{c}'")
                if kind == 0:
                    out.append((c, None))
                    continue
                rest = arg[j:]
                if kind == 2:
                    out.append((c, rest or None))
                elif rest:
                    out.append((c, rest))
                elif i < len(argv):
                    out.append((c, argv[i]))
                    i += 1
                else:
                    raise UsageError(f"{PROG}: option requires an argument -- '{c}'")
                break
            continue
        raise UsageError("")            # an operand: EVL's "optind < argc"
    return out


def _strtol(text: str) -> int:
    """EVL parses -p/-b with strtol and rejects trailing characters."""
    m = re.fullmatch(r"\s*([+-]?\d+)", text)
    if m is None:
        raise UsageError("")
    return int(m.group(1))


# -- EVL's actions -------------------------------------------------------------------------------

class Options:
    def __init__(self) -> None:
        self.netif: str | None = None
        self.modpath: str | None = None
        self.ipaddr: str | None = None
        self.query_type: str | None = None
        self.vlan_list: str | None = None
        self.stack: str | None = None
        self.set_filter = self.solicit = self.permanent = False
        self.enable = self.disable = self.query = self.allow_routing = False
        self.set_vlans = self.show_vlans = False
        self.poolsz = self.bufsz = 0


def parse(argv: Sequence[str], out: TextIO) -> Options | int:
    """Options, or an exit status when the command line was fully handled (-h, -@)."""
    o = Options()
    for opt, val in getopt_long(argv):
        if opt == "e":
            o.enable = True
        elif opt == "d":
            o.disable = True
        elif opt == "Q":
            o.query, o.query_type = True, val
        elif opt == "p":
            o.poolsz = _strtol(val or "")
        elif opt == "b":
            o.bufsz = _strtol(val or "")
        elif opt in ("s", "S"):
            o.permanent = o.permanent or opt == "S"
            o.ipaddr, o.solicit = val, True
        elif opt == "F":
            o.modpath, o.set_filter = val, True
        elif opt == "h":
            sys.stderr.write(USAGE.format(prog=PROG))
            return 0
        elif opt == "i":
            o.netif = val
        elif opt == "g":
            o.allow_routing = True
        elif opt == "N":
            o.vlan_list, o.set_vlans = val, True
        elif opt == "n":
            o.show_vlans = True
        elif opt == "@":
            out.write("manage the EVL out-of-band networking stack\n")
            return 0
        elif opt == "stack":
            o.stack = val
    if not (o.disable or o.enable or o.query or o.solicit or o.set_filter or o.set_vlans
            or o.show_vlans):
        raise UsageError("no command given")
    if (o.disable or o.enable or o.query or o.set_filter) and not o.netif:
        raise UsageError("a network interface must be specified")
    return o


def _call(client: ControlClient, cmd: str, fail: str, open_fail: str | None = None,
          **args: Any) -> Any:
    try:
        return client.request(cmd, **args)
    except OSError as exc:
        err = exc.errno or errno.EIO
        if open_fail is not None and getattr(exc, "stage", None) == "open":
            raise ActionError(open_fail, err) from None
        raise ActionError(fail, err) from None


def find_host_ip(host: str) -> str:
    """EVL's ``find_host_ip``: "broadcast", else getaddrinfo (AF_INET, AI_ADDRCONFIG)."""
    if host == "broadcast":
        return "255.255.255.255"
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    try:
        res = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM, 0,
                                 socket.AI_ADDRCONFIG)
    except (socket.gaierror, UnicodeError):
        raise ActionError("invalid host/IP address", errno.ESRCH) from None
    return str(res[0][4][0])


def capability_note(netif: str, oob_capable: bool) -> str:
    """The stderr line that explains ``oob capability: no`` (empty for an oob-capable port):
    stdout stays byte for byte EVL's."""
    if oob_capable:
        return ""
    return f"{PROG}: {netif}: {DevStat(oob_capable=False).capability_note()}\n"


def run_actions(o: Options, client: ControlClient, out: TextIO,
                err: TextIO | None = None) -> None:
    """EVL's order: disable, enable, filter, set VLANs, show VLANs, solicit, query. Output is
    EVL's on *out*; a port that is not oob-capable gets its explanation on *err* (stderr) when
    it is enabled or its capability is queried."""
    err = err or sys.stderr
    netif = o.netif or ""
    if o.disable:
        _call(client, "disable", f"cannot disable out-of-band port on {netif}",
              f"cannot open out-of-band port {netif}", ifname=netif)
    if o.enable:
        if o.poolsz < 0 or o.bufsz < 0:
            raise ActionError(f"cannot enable out-of-band port on {netif}", errno.EINVAL)
        res = _call(client, "enable", f"cannot enable out-of-band port on {netif}",
                    ifname=netif, poolsz=o.poolsz, bufsz=o.bufsz)
        if isinstance(res, dict) and res.get("oob_capable") is False:
            err.write(capability_note(netif, False))
    if o.set_filter:
        module = os.path.abspath(o.modpath) if o.modpath is not None else None
        _call(client, "set_filter", f"cannot set BPF filter on {netif}",
              f"cannot open out-of-band port {netif}", ifname=netif, module=module)
        if module is None:
            out.write(f"eBPF module removed from {netif}\n")
    if o.set_vlans and o.vlan_list != "":       # EVL writes 0 bytes for "--set-vlan-ids="
        _call(client, "set_vlans", "cannot set VLAN filters", spec=o.vlan_list or "")
        if o.vlan_list is None:
            out.write("VLAN filter cleared\n")
    if o.show_vlans:
        vlans = _call(client, "get_vlans", "cannot read VLAN filters")
        if vlans:
            out.write(f"{vlans}\n")
    if o.solicit:
        host = o.ipaddr or ""
        addr = find_host_ip(host)
        try:
            client.request("solicit", host=addr, ifname=o.netif, permanent=o.permanent,
                           mayroute=o.allow_routing)
        except OSError as exc:
            code = exc.errno or errno.EIO
            if getattr(exc, "stage", None) == "bind":
                raise ActionError(f"cannot bind UDP socket to device {netif}", code) from None
            raise ActionError(f"{host} did not respond", code) from None
    if o.query:
        fields = _call(client, "query", f"cannot query out-of-band port on {netif}",
                       f"cannot open out-of-band port {netif}", ifname=netif)
        stat = devstat(fields)
        which = o.query_type or ""
        for k, c in enumerate(which):
            if c not in QUERY_MODIFIERS:
                out.write(stat.format_query(which[:k]) if k else "")
                out.flush()
                raise ActionError(f"invalid query modifer '{c}'", errno.EINVAL)
        out.write(stat.format_query(which) + "\n")
        if not which or "o" in which:       # the capability was printed: explain a "no"
            out.flush()
            err.write(capability_note(netif, stat.oob_capable))


def devstat(fields: Any) -> DevStat:
    """A DevStat from a ``query`` reply."""
    if not isinstance(fields, dict):
        raise ActionError("malformed reply from the stack", errno.EPROTO)
    names = {f.name for f in dataclasses.fields(DevStat)}
    known = {k: v for k, v in fields.items() if k in names}
    try:
        return DevStat(**known)
    except TypeError:
        raise ActionError("malformed reply from the stack", errno.EPROTO) from None


# -- evl-net serve ------------------------------------------------------------------------------

#: Default addresses of the virtual links ``serve --virtual`` makes, in order.
VIRTUAL_NETS = ("192.0.2", "198.51.100", "203.0.113")


def parse_virtual(spec: str, index: int) -> tuple[str, str, str]:
    """``IF[:ADDR/LEN[:PEER]]`` -> (ifname, local cidr, peer address)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"bad --virtual {spec!r}: IF[:ADDR/LEN[:PEER]]")
    ifname = parts[0]
    if len(ifname) > 15:
        raise ValueError(f"bad --virtual {spec!r}: interface names have at most 15 characters")
    if len(parts) >= 2:
        local = ipaddress.IPv4Interface(parts[1] if "/" in parts[1] else parts[1] + "/24")
        if len(parts) == 3:
            peer = ipaddress.IPv4Address(parts[2])
        else:
            hosts = [h for h in local.network.hosts() if h != local.ip]
            if not hosts:
                raise ValueError(f"bad --virtual {spec!r}: no room for a peer in {local}")
            peer = hosts[0]
        if peer not in local.network or peer == local.ip:
            raise ValueError(f"bad --virtual {spec!r}: the peer must be another address of "
                             f"{local.network}")
        return ifname, str(local), str(peer)
    if index >= len(VIRTUAL_NETS):
        raise ValueError(f"--virtual {spec!r}: give its addresses (IF:ADDR/LEN[:PEER])")
    net = VIRTUAL_NETS[index]
    return ifname, f"{net}.1/24", f"{net}.2"


def serve(argv: Sequence[str], out: TextIO) -> int:
    """``evl-net serve``: run a stack and its control endpoint until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(
        prog=f"{PROG} serve",
        description="Run an evlnet stack in this process and serve its control endpoint, so "
                    "that evl-net (and other tools) manage it from other processes. Runs until "
                    "SIGTERM or SIGINT, then disables its ports and removes its socket.")
    ap.add_argument("--stack", default="evlnet", help="the stack's name (default: evlnet)")
    ap.add_argument("--virtual", action="append", default=[], metavar="IF[:ADDR/LEN[:PEER]]",
                    help="add an interface IF on the embedded virtual link (no root needed), "
                         "its other end in a peer stack (in this process) that answers ARP "
                         "and ping at PEER; default addresses 192.0.2.1/24 and .2, then "
                         "198.51.100.0/24, 203.0.113.0/24")
    ap.add_argument("--enable", action="append", default=[], metavar="IF",
                    help="enable the oob port of IF at start (as evl-net -ei IF)")
    ap.add_argument("--solicit-timeout", type=float, default=None, metavar="SECONDS",
                    help="how long a solicitation waits for an answer (EVL's "
                         "ipv4_solicit_timeout, default 5)")
    args = ap.parse_args(list(argv))
    if args.solicit_timeout is not None and not args.solicit_timeout > 0:
        ap.error("--solicit-timeout must be > 0")
    try:
        links = [parse_virtual(s, k) for k, s in enumerate(args.virtual)]
        ep.check_name(args.stack)
    except ValueError as exc:
        ap.error(str(exc))
    except OSError as exc:
        ap.error(exc.strerror or str(exc))

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = Stack(args.stack)
    if args.solicit_timeout is not None:
        stack.set_solicit_timeout(args.solicit_timeout)
    peers: list[Stack] = []
    server: ControlServer | None = None
    try:
        for ifname, local, peer in links:
            link = VirtualLink(ifname, f"{ifname}-peer"[:15])
            stack.add_interface(link.a, local)
            peer_stack = Stack(f"{args.stack}-{ifname}-peer")
            peers.append(peer_stack)
            prefix = local.split("/")[1]
            peer_stack.add_interface(link.b, f"{peer}/{prefix}")
            peer_stack.enable_port(link.b.name)
            out.write(f"{PROG}: virtual interface {ifname} ({local}), its peer answers at "
                      f"{peer}\n")
        for ifname in args.enable:
            port = stack.enable_port(ifname)
            out.write(f"{PROG}: oob port enabled on {ifname}\n")
            sys.stderr.write(capability_note(ifname, port.oob_capable))
        server = ControlServer(stack).start()
        out.write(f"{PROG}: serving stack {args.stack} on {server.path} (pid {os.getpid()})\n")
        out.flush()
        while not stop.wait(3600):
            pass
        return 0
    except OSError as exc:
        sys.stderr.write(f"{PROG}: cannot serve stack {args.stack}: "
                         f"{exc.strerror or exc}\n")
        return 1
    finally:
        if server is not None:
            server.close()
        stack.close()
        for p in peers:
            p.close()


# -- evl-net capture ----------------------------------------------------------------------------

#: A capture with no bound given stops at this file size.
DEFAULT_MAX_BYTES = 64 << 20


def capture(argv: Sequence[str], out: TextIO) -> int:
    """``evl-net capture``: the port's oob RX and TX frames into a pcap file."""
    ap = argparse.ArgumentParser(
        prog=f"{PROG} capture",
        description="Write the oob RX and TX frames of a served stack's port to a pcap file "
                    "(tcpdump, tshark and scapy read it). Stops at the bound or on Ctrl-C/"
                    "SIGTERM; prints what it captured on stderr.")
    ap.add_argument("-i", "--interface", required=True, metavar="IF")
    ap.add_argument("-w", "--write", required=True, metavar="FILE", help="pcap file to write")
    ap.add_argument("-c", "--count", type=int, default=0, metavar="N",
                    help="stop after N frames")
    ap.add_argument("--max-bytes", type=int, default=0, metavar="N",
                    help=f"stop before the file exceeds N bytes (default {DEFAULT_MAX_BYTES} "
                         "when no -c either)")
    ap.add_argument("--snaplen", type=int, default=0, metavar="N",
                    help="bytes kept of each frame (default: whole frames)")
    ap.add_argument("--stack", default=None, metavar="NAME")
    args = ap.parse_args(list(argv))
    for name in ("count", "max_bytes", "snaplen"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    max_bytes = args.max_bytes or (0 if args.count else DEFAULT_MAX_BYTES)
    try:
        client = connect(args.stack)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: {exc.strerror or exc}\n")
        return 1
    interrupted = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.set()
        try:
            client.sock.shutdown(socket.SHUT_WR)      # tells the server to stop
        except OSError:
            pass

    try:
        try:
            fd = os.open(args.write, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ActionError(f"cannot open {args.write}", exc.errno or errno.EIO) from None
        try:
            client.send("capture", fds=[fd], ifname=args.interface, max_frames=args.count,
                        max_bytes=max_bytes, snaplen=args.snaplen)
        finally:
            os.close(fd)
        try:
            client.receive(timeout=30.0)
        except OSError as exc:
            if getattr(exc, "stage", None) == "open":
                raise ActionError(f"cannot open out-of-band port {args.interface}",
                                  exc.errno or errno.EIO) from None
            raise ActionError(f"cannot capture on {args.interface}", exc.errno or errno.EIO) \
                from None
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        sys.stderr.write(f"{PROG}: capturing oob RX and TX frames of {args.interface} into "
                         f"{args.write}\n")
        sys.stderr.flush()
        try:
            res = client.receive(timeout=None)
        except OSError as exc:
            raise ActionError(f"capture on {args.interface} failed", exc.errno or errno.EIO) \
                from None
        if not isinstance(res, dict):
            raise ActionError("malformed reply from the stack", errno.EPROTO)
        sys.stderr.write(f"{res.get('frames', 0)} frames captured ({res.get('rx_frames', 0)} "
                         f"received, {res.get('tx_frames', 0)} sent), {res.get('drops', 0)} "
                         f"dropped, {res.get('bytes', 0)} bytes written\n")
        if res.get("errno"):
            raise ActionError(f"cannot write {args.write}", int(res["errno"]))
        return 0
    except ActionError as exc:
        sys.stderr.write(exc.line() + "\n")
        return 1
    finally:
        client.close()


# -- main -------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``evl-net``: EVL's options, or ``serve``/``capture``/``stacks``. Returns the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if argv and argv[0] == "serve":
        return serve(argv[1:], out)
    if argv and argv[0] == "capture":
        return capture(argv[1:], out)
    if argv and argv[0] == "stacks":
        if len(argv) > 1:
            sys.stderr.write(USAGE.format(prog=PROG))
            return 2
        for name in running_stacks():
            out.write(name + "\n")
        return 0
    if not argv:
        sys.stderr.write(USAGE.format(prog=PROG))
        return 0
    try:
        parsed = parse(argv, out)
    except UsageError as exc:
        if str(exc):
            sys.stderr.write(f"{exc}\n")
        sys.stderr.write(USAGE.format(prog=PROG))
        return 2
    if isinstance(parsed, int):
        return parsed
    try:
        client = connect(parsed.stack)
    except StackNotFound as exc:
        sys.stderr.write(f"{PROG}: {exc.strerror}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{PROG}: cannot reach the stack: {exc.strerror or exc}\n")
        return 1
    try:
        run_actions(parsed, client, out)
    except ActionError as exc:
        out.flush()
        sys.stderr.write(exc.line() + "\n")
        return 1
    finally:
        client.close()
    return 0


def entry() -> None:
    """Console script ``evl-net``."""
    sys.exit(main())


if __name__ == "__main__":
    entry()

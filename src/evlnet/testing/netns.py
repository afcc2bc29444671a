"""Network-namespace test harness: namespaces, veth pairs and VLANs that always clean up.

Everything here is a context manager that deletes what it made on exit, exception or not::

    with netns("rx") as a, netns("peer") as b:
        with veth_pair(a, b, addr_a=None, addr_b="192.0.2.2/24") as (end_a, end_b):
            with in_netns(a):                 # this thread now lives in namespace a
                dev = AfPacketDevice(end_a.name)
            b.run("ping", "-c1", "192.0.2.1")

Rules it enforces (test traffic must never leave the sandbox):

* addresses only from the documentation ranges 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24
  (``ValueError`` otherwise, including prefixes wider than /24 that would route beyond them);
* every namespace is named ``evlt-<prefix>-<pid>-<n>`` and every link this harness leaves in the
  root namespace carries the alias ``evlt:<pid>``, so :func:`cleanup_leaked` can remove what a
  crashed run (dead pid) left behind.

``in_netns`` moves only the *calling thread* (``setns(2)`` is per thread); sockets created inside
the block stay in that namespace after the thread moves back, which is how a device or a peer socket
is "created in" a namespace and then used from any thread. Note that ``/sys/class/net`` and
``/proc/net`` (= ``/proc/self/net``) keep showing the namespace of the mount / thread-group leader,
not the thread's: use ``/proc/thread-self/net`` or sockets/ioctls/netlink inside the block.

Only the ``ip`` command (iproute2) and the standard library are used.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn

from .._netns import setns

__all__ = [
    "ALLOWED_NETWORKS", "PREFIX", "Namespace", "VethEnd", "VlanLink",
    "netns", "veth_pair", "vlan", "in_netns", "require_root", "check_address",
    "list_namespaces", "cleanup_leaked", "NETNS_DIR", "vlan_supported",
]

#: The only networks test traffic may use (RFC 5737 documentation ranges).
ALLOWED_NETWORKS = tuple(
    ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
#: Every namespace this harness creates starts with this; root-namespace links get alias
#: "evlt:<pid>".
PREFIX = "evlt-"
ALIAS_PREFIX = "evlt:"
NETNS_DIR = "/var/run/netns"

_counter = itertools.count()
_IP_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def check_address(addr: str) -> ipaddress.IPv4Interface:
    """Parse ``"a.b.c.d/len"`` and make sure the whole prefix is inside an allowed network."""
    iface = ipaddress.ip_interface(addr)
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise ValueError(f"{addr!r}: only IPv4 test addresses are allowed")
    if "/" not in addr:
        iface = ipaddress.IPv4Interface(f"{iface.ip}/24")
    if not any(iface.network.subnet_of(net) for net in ALLOWED_NETWORKS):
        raise ValueError(
            f"{addr!r} is outside the test networks "
            f"({', '.join(str(n) for n in ALLOWED_NETWORKS)}); refusing to configure it"
        )
    return iface


def _ip(args: Sequence[str], ns: "Namespace | str | None" = None, check: bool = True,
        ) -> subprocess.CompletedProcess:
    cmd = ["ip"]
    if ns is not None:
        cmd += ["-n", ns.name if isinstance(ns, Namespace) else ns]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_IP_TIMEOUT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_setns = setns


def _thread_netns_ino() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


# --------------------------------------------------------------------------------------------
# namespaces
# --------------------------------------------------------------------------------------------

@dataclass
class Namespace:
    """A named network namespace (``/var/run/netns/<name>``)."""

    name: str
    _procs: list = field(default_factory=list, repr=False)

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0, **kw
            ) -> subprocess.CompletedProcess:
        """Run *cmd* inside the namespace (``ip netns exec``); text output captured by default."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd],
                              check=check, timeout=timeout, **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        """Start *cmd* inside the namespace; it is terminated (by pid) when the namespace closes."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n <ns> <args>``."""
        return _ip(args, self, check=check)

    def link_info(self, ifname: str) -> dict:
        return json.loads(_ip(["-j", "link", "show", "dev", ifname], self).stdout)[0]

    def has_link(self, ifname: str) -> bool:
        return _ip(["link", "show", "dev", ifname], self, check=False).returncode == 0

    def sysctl(self, key: str, value: str | int) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run("sh", "-c", f"echo {value} > {path}")

    def __str__(self) -> str:
        return self.name

    def _stop_procs(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2)
        self._procs.clear()


def _delete_netns(name: str) -> None:
    for _ in range(3):
        if _ip(["netns", "del", name], check=False).returncode == 0:
            return
        if not os.path.exists(os.path.join(NETNS_DIR, name)):
            return
    _ip(["netns", "del", name])  # raise with the error


@contextmanager
def netns(name_prefix: str = "t", ipv6: bool = False) -> Iterator[Namespace]:
    """Create a uniquely named namespace ``evlt-<prefix>-<pid>-<n>`` with ``lo`` up.

    IPv6 is disabled by default so that link-up noise (router solicitations, MLD, DAD) stays out
    of captures. The namespace, and any process started with ``Namespace.popen``, is removed on
    exit even when the block raises.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", name_prefix):
        raise ValueError(f"bad namespace prefix {name_prefix!r}")
    name = f"{PREFIX}{name_prefix}-{os.getpid()}-{next(_counter)}"
    _ip(["netns", "add", name])
    ns = Namespace(name)
    try:
        _ip(["link", "set", "lo", "up"], ns)
        if not ipv6:
            for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
                path = "/proc/sys/" + key.replace(".", "/")
                with in_netns(ns):
                    try:
                        with open(path, "w") as f:  # /proc/sys/net follows the thread's netns
                            f.write("1")
                    except FileNotFoundError:  # kernel without IPv6
                        pass
        yield ns
    finally:
        try:
            ns._stop_procs()
        finally:
            _delete_netns(name)


# --------------------------------------------------------------------------------------------
# links
# --------------------------------------------------------------------------------------------

@dataclass
class VethEnd:
    """One end of a veth pair (or a VLAN device): where it lives and how it is configured."""

    name: str
    ns: Namespace | None
    addr: str | None          # "a.b.c.d/len" or None
    ifindex: int = 0
    mac: bytes = b""
    mtu: int = 1500

    @property
    def ip(self) -> str | None:
        return str(ipaddress.ip_interface(self.addr).ip) if self.addr else None

    @property
    def mac_str(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)

    def run_ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _ip(args, self.ns, check=check)

    def set_up(self) -> None:
        self.run_ip("link", "set", "dev", self.name, "up")

    def set_down(self) -> None:
        self.run_ip("link", "set", "dev", self.name, "down")

    def exists(self) -> bool:
        return self.run_ip("link", "show", "dev", self.name, check=False).returncode == 0

    def delete(self) -> None:
        """Delete the link now (a veth takes its peer with it); no error if already gone."""
        self.run_ip("link", "del", "dev", self.name, check=False)

    def add_neighbor(self, ip: str, mac: bytes | str) -> None:
        """Static ARP entry on this link (so the peer needs no kernel ARP reply)."""
        check_address(ip if "/" in ip else ip + "/32")
        if isinstance(mac, (bytes, bytearray)):
            mac = ":".join(f"{b:02x}" for b in mac)
        self.run_ip("neigh", "replace", ip, "lladdr", mac, "dev", self.name, "nud", "permanent")

    def refresh(self) -> None:
        info = json.loads(_ip(["-j", "link", "show", "dev", self.name], self.ns).stdout)[0]
        self.ifindex = int(info["ifindex"])
        self.mac = bytes.fromhex(info["address"].replace(":", ""))
        self.mtu = int(info["mtu"])


class VlanLink(VethEnd):
    """A ``<parent>.<vid>`` 802.1Q device."""

    parent: str = ""
    vid: int = 0


def _ns_name(ns: Namespace | None) -> str | None:
    return ns.name if ns is not None else None


def _free_ifname(ns: Namespace | None, taken: set[str], tag: str) -> str:
    if ns is None:  # root namespace: globally unique, recognisable name (max 15 chars)
        while True:
            name = f"evlt{secrets.token_hex(3)}{tag}"
            if name not in taken and _ip(["link", "show", "dev", name], check=False).returncode:
                return name
    for i in itertools.count():
        name = f"veth{i}"
        if name not in taken and not ns.has_link(name):
            return name
    raise AssertionError("unreachable")


def _configure(end: VethEnd, mtu: int | None) -> None:
    if mtu is not None:
        end.run_ip("link", "set", "dev", end.name, "mtu", str(mtu))
    if end.ns is None:
        end.run_ip("link", "set", "dev", end.name, "alias", f"{ALIAS_PREFIX}{os.getpid()}")
    if end.addr:
        end.run_ip("addr", "add", end.addr, "dev", end.name)
    end.set_up()
    end.refresh()


@contextmanager
def veth_pair(ns_a: Namespace | None, ns_b: Namespace | None,
              addr_a: str | None = "192.0.2.1/24", addr_b: str | None = "192.0.2.2/24",
              name_a: str | None = None, name_b: str | None = None, mtu: int = 1500,
              ) -> Iterator[tuple[VethEnd, VethEnd]]:
    """A veth pair with end A in *ns_a* and end B in *ns_b* (None = root namespace), both up.

    Default names: ``vethN`` (first free) inside a namespace, ``evlt<hex>a|b`` in the root one.
    Addresses (None = no address) must lie inside the documentation networks.
    """
    if addr_a is not None:
        check_address(addr_a)
    if addr_b is not None:
        check_address(addr_b)
    taken: set[str] = set()
    if name_a is None:
        name_a = _free_ifname(ns_a, taken, "a")
    taken.add(name_a)  # in another namespace only cosmetic: veth0 <-> veth1 reads better
    if name_b is None:
        name_b = _free_ifname(ns_b, taken, "b")
    for n in (name_a, name_b):
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", n):
            raise ValueError(f"bad interface name {n!r}")
    args = ["link", "add", "name", name_a]
    if ns_a is not None:
        args += ["netns", ns_a.name]
    args += ["type", "veth", "peer", "name", name_b]
    if ns_b is not None:
        args += ["netns", ns_b.name]
    _ip(args)
    end_a = VethEnd(name_a, ns_a, addr_a, mtu=mtu)
    end_b = VethEnd(name_b, ns_b, addr_b, mtu=mtu)
    try:
        _configure(end_a, mtu)
        _configure(end_b, mtu)
        yield end_a, end_b
    finally:
        end_a.delete()
        end_b.delete()


@contextmanager
def vlan(ns: Namespace | None, parent_ifname: str, vid: int, addr: str | None = None,
         ) -> Iterator[VlanLink]:
    """An 802.1Q device ``<parent>.<vid>`` on *parent_ifname*, up; deleted on exit.

    Raises ``RuntimeError`` when the kernel cannot create it (e.g. no CONFIG_VLAN_8021Q).
    """
    if not 1 <= vid <= 4094:
        raise ValueError(f"bad VLAN id {vid}")
    if addr is not None:
        check_address(addr)
    name = f"{parent_ifname}.{vid}"
    if len(name) > 15:
        raise ValueError(f"VLAN device name {name!r} longer than 15 characters")
    _ip(["link", "add", "link", parent_ifname, "name", name, "type", "vlan", "id", str(vid)], ns)
    link = VlanLink(name, ns, addr)
    link.parent = parent_ifname
    link.vid = vid
    try:
        _configure(link, None)
        yield link
    finally:
        link.delete()


def vlan_supported() -> bool:
    """Whether this kernel can create 802.1Q devices (tried in a throw-away namespace)."""
    with netns("vlanprobe") as ns:
        if _ip(["link", "add", "name", "p0", "type", "dummy"], ns, check=False).returncode:
            if _ip(["link", "add", "name", "p0", "type", "veth", "peer", "name", "p1"], ns,
                   check=False).returncode:
                return False
        return _ip(["link", "add", "link", "p0", "name", "p0.5", "type", "vlan", "id", "5"], ns,
                   check=False).returncode == 0


# --------------------------------------------------------------------------------------------
# moving the calling thread
# --------------------------------------------------------------------------------------------

@contextmanager
def in_netns(ns: Namespace | str | None) -> Iterator[Namespace | str | None]:
    """Move the calling thread into *ns* for the duration of the block (None: stay).

    Sockets created inside remain in *ns* after the thread returns to its original namespace.
    Do not yield to other code that expects the original namespace (generators, callbacks) inside.
    """
    if ns is None:
        yield ns
        return
    path = ns.path if isinstance(ns, Namespace) else os.path.join(NETNS_DIR, ns)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield ns
        finally:
            try:
                _setns(orig)
            except OSError as exc:  # the thread would be stranded in the wrong namespace
                raise RuntimeError(
                    f"could not restore the thread's network namespace: {exc}") from exc
    finally:
        os.close(orig)


# --------------------------------------------------------------------------------------------
# registry / leak cleanup / pytest helper
# --------------------------------------------------------------------------------------------

_NS_RE = re.compile(rf"^{re.escape(PREFIX)}([A-Za-z0-9_]+)-(\d+)-(\d+)$")


def list_namespaces(pid: int | None = None) -> list[str]:
    """Names of existing ``evlt-`` namespaces (only those made by *pid* when given)."""
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NS_RE.match(name)
        if name.startswith(PREFIX) and (pid is None or (m and int(m.group(2)) == pid)):
            out.append(name)
    return out


def cleanup_leaked(include_live: bool = False) -> list[str]:
    """Delete ``evlt-`` namespaces and root-namespace ``evlt:<pid>`` links whose creator is dead.

    With *include_live*, also those of running processes other than this one (use with care:
    a concurrent test run owns them). Returns what was removed.
    """
    removed = []
    me = os.getpid()
    for name in list_namespaces():
        m = _NS_RE.match(name)
        pid = int(m.group(2)) if m else -1
        if pid == me or (pid > 0 and _pid_alive(pid) and not include_live):
            continue
        _ip(["netns", "del", name], check=False)
        removed.append(name)
    proc = _ip(["-j", "-d", "link", "show"], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        for link in json.loads(proc.stdout):
            alias = link.get("ifalias", "")
            if not alias.startswith(ALIAS_PREFIX):
                continue
            try:
                pid = int(alias[len(ALIAS_PREFIX):])
            except ValueError:
                continue
            if pid == me or (_pid_alive(pid) and not include_live):
                continue
            _ip(["link", "del", "dev", link["ifname"]], check=False)
            removed.append(link["ifname"])
    return removed


def require_root(what: str = "network namespaces, veth pairs and AF_PACKET sockets") -> None:
    """In a test: skip unless root (and ``ip`` is available); under ``CI=true`` fail instead."""
    import shutil

    problem = None
    if os.geteuid() != 0:
        problem = f"needs root: {what}"
    elif shutil.which("ip") is None:
        problem = f"needs root and the 'ip' command (iproute2): {what}"
    if problem is not None:
        skip_or_fail(problem)


def skip_or_fail(problem: str) -> NoReturn:
    """In a test that cannot run here: skip with *problem* as the reason, but fail under
    ``CI=true`` (CI must run every test)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{problem} -- these tests must run in CI (CI=true); run the job as root",
                    pytrace=False)
    pytest.skip(problem)


"""Shared fixtures for the core tests: stacks joined by the embedded virtual link (no root).

Test modules import what they use (``from virtual_fixtures import pair, solo, ...``); pytest
picks the fixtures up from the module namespace.

- ``stacks``: a factory that makes ``Stack`` instances and closes every one of them after the
  test, whatever happened.
- ``pair`` / ``make_pair``: stacks A (192.0.2.1) and B (192.0.2.2) on one virtual link, ports
  enabled on both ends.
- ``solo``: stack B alone on a link whose other end is a raw wire driven by the test: frames are
  injected with ``solo.inject(bytes)`` (scapy-built) and whatever B transmits is recorded in
  ``solo.tap``.

Every name (stacks, interfaces) is unique per test, so the thread names a test checks
(``<if>.rx``, ``<if>.tx``, ``<stack>.inband``) belong to it alone.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket as pysocket
import threading
import time
from dataclasses import dataclass, field

import pytest

import evlnet
from evlnet import AF_INET, SOCK_DGRAM, SOCK_OOB, Stack, VirtualInterface, VirtualLink

A_IP = "192.0.2.1"
B_IP = "192.0.2.2"
G_IP = "192.0.2.254"
NOBODY_IP = "192.0.2.77"
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_serial)}"


def ip2int(text: str) -> int:
    return int.from_bytes(pysocket.inet_aton(text), "big")


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.002) -> bool:
    """Poll *predicate* until it is true or *timeout* passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def raises_errno(code: int):
    """``pytest.raises(OSError)`` that also checks the exact errno."""
    with pytest.raises(OSError) as info:
        yield info
    assert info.value.errno == code, (
        f"expected {errno.errorcode.get(code, code)}, got "
        f"{errno.errorcode.get(info.value.errno, info.value.errno)}: {info.value}")


def extra(stack: Stack, port) -> dict:
    """The port's evlnet-specific counters (drop reasons), by name."""
    return stack.get_stats(port).extra


class WireTap:
    """Records every frame that reaches one end of a virtual link (the core's tap hook).

    With ``passthrough`` the frame is then delivered as usual (to the port enabled on that end),
    otherwise the end behaves as a raw wire the test reads.
    """

    def __init__(self, end: VirtualInterface, passthrough: bool = True) -> None:
        self.end = end
        self.passthrough = passthrough
        self._frames: list[bytes] = []
        end.set_tap(True, passthrough)

    def _collect(self) -> None:
        self._frames.extend(self.end.take_tapped())

    @property
    def frames(self) -> list[bytes]:
        """Every frame recorded so far, in arrival order."""
        self._collect()
        return self._frames

    def clear(self) -> None:
        self._collect()
        self._frames.clear()

    def wait_for(self, predicate, timeout: float = 5.0, count: int = 1) -> list[bytes]:
        """Wait until *count* recorded frames satisfy *predicate*; returns them (in order)."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [f for f in self.frames if predicate(f)]
            if len(hits) >= count:
                return hits
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(hits)}/{count} matching frames "
                                     f"among {len(self.frames)} seen")
            self.end.wait_tapped(min(remaining, 0.05))

    def restore(self) -> None:
        self.end.set_tap(False, True)


class StackFactory:
    def __init__(self) -> None:
        self.made: list[Stack] = []

    def __call__(self, prefix: str = "S", **settings) -> Stack:
        stack = Stack(unique(prefix), **settings)
        self.made.append(stack)
        return stack

    def close_all(self) -> None:
        errors = []
        for stack in reversed(self.made):
            try:
                stack.close()
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def stacks():
    factory = StackFactory()
    try:
        yield factory
    finally:
        factory.close_all()


@dataclass
class Pair:
    link: VirtualLink
    A: Stack
    B: Stack
    pa: object
    pb: object
    sockets: list = field(default_factory=list)

    def udp(self, stack: Stack, bind=None):
        s = stack.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        self.sockets.append(s)
        if bind is not None:
            s.bind(bind)
        return s

    def solicited_pair(self, port: int = 6000):
        """A UDP socket on A that may send to B's socket on *port* without demotion."""
        sa = self.udp(self.A, (A_IP, 0))
        sb = self.udp(self.B, ("0.0.0.0", port))
        self.A.solicit(sa, (B_IP, 0))
        return sa, sb


@pytest.fixture
def make_pair(stacks):
    """make_pair(poolsz=0, bufsz=0, mtu=1500, **stack_settings) -> Pair."""

    def make(poolsz: int = 0, bufsz: int = 0, mtu: int = 1500, a_settings=None,
             b_settings=None, **settings) -> Pair:
        link = VirtualLink(unique("va"), unique("vb"), mtu=mtu)
        A = stacks("A", **{**settings, **(a_settings or {})})
        B = stacks("B", **{**settings, **(b_settings or {})})
        A.add_interface(link.a, f"{A_IP}/24")
        B.add_interface(link.b, f"{B_IP}/24")
        pa = A.enable_port(link.a.name, poolsz, bufsz)
        pb = B.enable_port(link.b.name, poolsz, bufsz)
        return Pair(link, A, B, pa, pb)

    return make


@pytest.fixture
def pair(make_pair) -> Pair:
    return make_pair()


@dataclass
class Solo:
    """Stack B on ``link.b``; ``link.a`` is a raw wire the test drives."""

    link: VirtualLink
    B: Stack
    pb: object
    tap: WireTap
    wire_mac: bytes

    @property
    def b_mac(self) -> bytes:
        return self.link.b.mac

    def inject(self, frame) -> None:
        """Put *frame* on the wire towards B, whatever it holds (runts included)."""
        self.link.b.inject(bytes(frame))

    def udp(self, bind):
        s = self.B.socket(AF_INET, SOCK_DGRAM | SOCK_OOB)
        s.bind(bind)
        return s


@pytest.fixture
def make_solo(stacks):
    taps = []

    def make(**settings) -> Solo:
        link = VirtualLink(unique("wa"), unique("wb"))
        B = stacks("B", **settings)
        B.add_interface(link.b, f"{B_IP}/24")
        pb = B.enable_port(link.b.name)
        tap = WireTap(link.a, passthrough=False)
        taps.append(tap)
        return Solo(link, B, pb, tap, link.a.mac)

    yield make
    for tap in taps:
        tap.restore()


@pytest.fixture
def solo(make_solo) -> Solo:
    return make_solo()


class _Polled:
    """An Event-like view of a condition that is polled (``wait``/``is_set``)."""

    def __init__(self, predicate) -> None:
        self._predicate = predicate

    def is_set(self) -> bool:
        return bool(self._predicate())

    def wait(self, timeout: float = 5.0) -> bool:
        return bool(wait_until(self._predicate, timeout, 0.001))


class TxGate:
    """Holds every frame an end transmits inside the device until ``open()`` (a deterministic
    "slow device"; the core's TX gate hook)."""

    def __init__(self, end: VirtualInterface) -> None:
        self.end = end
        self._base = end.core_device.tx_held()
        end.core_device.hold_tx(True)
        self.entered = _Polled(lambda: self.held > 0)

    @property
    def held(self) -> int:
        return self.end.core_device.tx_held() - self._base

    def open(self) -> None:
        self.end.core_device.hold_tx(False)

    def restore(self) -> None:
        self.open()


@pytest.fixture
def tx_gate(stacks):
    """tx_gate(end) -> TxGate; every gate is opened and removed after the test (before the
    stacks close: this fixture depends on ``stacks``, so it is torn down first)."""
    gates = []

    def make(end: VirtualInterface) -> TxGate:
        g = TxGate(end)
        gates.append(g)
        return g

    try:
        yield make
    finally:
        for g in gates:
            g.restore()


def os_thread_names() -> list[str]:
    """Names of every thread of this process: Python's (``threading``) and the core's (from
    ``/proc/self/task``, where the kernel keeps 15 characters)."""
    names = [t.name for t in threading.enumerate()]
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except OSError:          # the thread ended meanwhile
            pass
    return names


def stack_threads(*names: str) -> list[str]:
    """Live threads named after the given interfaces / stacks: the core's ``<if>.rx`` and
    ``<if>.tx``, Python's ``<stack>.inband`` and ``<stack>.events``."""
    wanted = {f"{n}.{suffix}"[:15] for n in names for suffix in ("rx", "tx", "inband", "events")}
    return [name for name in os_thread_names() if name in wanted]


def join_thread(t: threading.Thread, timeout: float = 5.0) -> None:
    t.join(timeout)
    assert not t.is_alive(), f"thread {t.name} still running"


class Runner(threading.Thread):
    """Run a call in a thread and keep its result or exception."""

    def __init__(self, fn, *args, **kwargs) -> None:
        super().__init__(daemon=True, name="test-runner")
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = None
        self.error: BaseException | None = None
        self.started_call = threading.Event()

    def run(self) -> None:
        self.started_call.set()
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:   # noqa: BLE001 - reported to the test
            self.error = exc

    def finish(self, timeout: float = 5.0):
        join_thread(self, timeout)
        return self


__all__ = [
    "A_IP", "B_IP", "G_IP", "NOBODY_IP", "Pair", "Runner", "Solo", "StackFactory", "TxGate",
    "WireTap", "evlnet", "extra", "ip2int", "join_thread", "mac_str", "make_pair", "make_solo",
    "os_thread_names", "pair", "raises_errno", "solo", "stack_threads", "stacks", "tx_gate",
    "unique", "wait_until",
]

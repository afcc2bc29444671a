"""The stack's in-band worker: one thread that does the slow things the oob path must never wait
for (neighbour resolution, ARP, demoted sends, port teardown after a link vanishes)."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("evlnet.inband")


class Doorbell:
    """A binary semaphore on a raw lock: ``ring()`` never blocks and coalesces, and a ring that
    comes before the wait is never lost."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def ring(self) -> None:
        if self._lock.locked():
            try:
                self._lock.release()
            except RuntimeError:  # rung by another thread meanwhile: coalesce
                pass

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return self._lock.acquire()
        return self._lock.acquire(True, max(timeout, 0))


class InbandWorker:
    """Runs posted jobs in order on a daemon thread. ``post`` never blocks (EVL:
    evl_call_inband)."""

    def __init__(self, name: str, periodic: Callable[[], None] | None = None,
                 period: float = 0.25,
                 periodic_needed: Callable[[], bool] | None = None) -> None:
        """*periodic* runs every *period* seconds while *periodic_needed()* says so (always
        when not given); otherwise the thread sleeps until a job is posted: an idle in-band
        stage never wakes, so it never competes with spinning receivers for a CPU."""
        self._periodic_needed = periodic_needed
        self._jobs: deque[tuple[Callable, tuple]] = deque()
        self._periodic = periodic
        self._period = period
        self._bell = Doorbell()
        self._running = True
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}.inband", daemon=True)
        self._thread.start()

    def post(self, fn: Callable, *args) -> None:
        self._jobs.append((fn, args))
        self._bell.ring()

    def _run(self) -> None:
        import time
        next_tick = time.monotonic() + self._period
        while self._running or self._jobs:
            if self._periodic is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._period
                self._jobs.append((self._periodic, ()))
            try:
                fn, args = self._jobs.popleft()
            except IndexError:
                if not self._running:
                    break
                needed = self._periodic is not None and (
                    self._periodic_needed is None or self._periodic_needed())
                self._bell.wait(self._period if needed else None)
                continue
            try:
                fn(*args)
            except Exception:  # a failed job must not kill the worker; it is counted and logged
                self.failures += 1
                log.exception("in-band job %r failed", fn)

    def stop(self, timeout: float = 5.0) -> None:
        self._running = False
        self._bell.ring()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

"""An oob port: the per-interface state EVL creates when a port is enabled.

One port owns a TX buffer pool (EVL's skb pool), an RX buffer pool (EVL leaves RX buffers to the
NIC driver; a user-space device needs somewhere to copy frames to), a qdisc, and two threads:

- ``<if>.rx`` blocks in ``device.receive()``, stamps ``queuing_time`` and runs the protocol input
  for each frame (Ethernet → IPv4 → UDP/ICMP, or packet sockets) up to the socket queue;
- ``<if>.tx`` drains the qdisc, stamps ``device_time`` and hands frames to the device, then pushes
  TX timestamp records and gives the buffer back to the pool.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from ..constants import EVL_SOF_TIMESTAMP_DEVICE, EVL_SOF_TIMESTAMP_QUEUING, EVL_SOF_TIMESTAMP_TX
from ..errors import oserror
from _thread import allocate_lock

from ..drivers.base import Device
from .buffers import BufferPool, Doorbell, PacketBuffer
from .interface import Interface
from .qdisc import make_qdisc
from .stats import DevStat, PortCounters

if TYPE_CHECKING:
    from .stack import Stack

log = logging.getLogger("evlnet.port")
_now = time.monotonic_ns
_TX = EVL_SOF_TIMESTAMP_TX
_TXQ = EVL_SOF_TIMESTAMP_TX | EVL_SOF_TIMESTAMP_QUEUING
_TXD = EVL_SOF_TIMESTAMP_TX | EVL_SOF_TIMESTAMP_DEVICE

RX_BATCH = 64
#: How often the RX thread wakes with no traffic to run housekeeping (fragment expiry).
RX_IDLE_TICK = 0.25


class Port:
    """An enabled oob port. Fd-like: ``fileno()`` is a descriptor owned by the port."""

    def __init__(self, stack: "Stack", iface: Interface, poolsz: int, bufsz: int,
                 rx_poolsz: int) -> None:
        self.stack = stack
        self.iface = iface
        self.device = iface.device
        self.name = iface.name
        self.ifindex = self.device.ifindex
        self.mtu = self.device.mtu
        self.mac = self.device.mac
        self.vlan_id = self.device.vlan_id
        self.bufsz = bufsz
        self.tx_pool = BufferPool(poolsz, bufsz, f"{self.name} TX pool")
        self.rx_pool = BufferPool(rx_poolsz, bufsz, f"{self.name} RX pool")
        self.qdisc = make_qdisc(stack.settings.qdisc)
        self.counters = PortCounters()
        self.local_addrs: frozenset[int] = frozenset(iface.local_addresses())
        self.iface_unicast: frozenset[int] = frozenset(a.address for a in iface.addresses)
        self.reassembler = None   # set by the stack (IPv4 reassembly state of this port)
        self._tx_bell = Doorbell()
        self._tx_busy = False
        # Run-to-completion: a sender transmits in its own thread when the qdisc is empty and
        # can be bypassed (Linux: TCQ_F_CAN_BYPASS); the lock serialises device transmits.
        self._tx_lock = allocate_lock()
        self.direct_tx = stack.settings.tx_direct and getattr(self.qdisc, "can_bypass", False)
        # One consumer of the device at a time: the RX thread or a busy-polling receiver.
        self._rx_lock = allocate_lock()
        self._poll_batch: list[PacketBuffer] = []
        self.busy_poll_capable = type(self.device).wait_ready is not Device.wait_ready
        # While receivers busy-poll this port, the RX thread parks on a doorbell rather than
        # waking on every frame to fight the poller for the GIL (Linux: SO_PREFER_BUSY_POLL with
        # deferred interrupts); it resumes busy_poll_defer_us after the last poller left.
        self._busy_pollers = 0
        self._busy_lock = allocate_lock()
        self._last_poll_exit = 0
        self._rx_park = Doorbell()
        self._poll_defer_ns = stack.settings.busy_poll_defer_us * 1000
        self.enabled = True          # False once disable starts: senders get ENETDOWN
        self.link_up = self.device.is_up()
        self._running = True
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.device.on_link_change = self._link_changed
        self.device.attach(self.rx_pool)
        self._rx_thread = threading.Thread(target=self._rx_loop, name=f"{self.name}.rx", daemon=True)
        self._tx_thread = threading.Thread(target=self._tx_loop, name=f"{self.name}.tx", daemon=True)
        self._rx_thread.start()
        self._tx_thread.start()

    # -- handle -------------------------------------------------------------------------------
    def fileno(self) -> int:
        """The port's descriptor (-1 once disabled)."""
        return self._fd

    @property
    def oob_capable(self) -> bool:
        return self.device.oob_capable

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Port {self.name} {state} fd={self._fd}>"

    def refresh_addresses(self) -> None:
        """In-band: the interface's addresses changed."""
        self.local_addrs = frozenset(self.iface.local_addresses())
        self.iface_unicast = frozenset(a.address for a in self.iface.addresses)

    # -- TX -----------------------------------------------------------------------------------
    def check_sendable(self) -> None:
        if not self.enabled:
            raise oserror(errno.ENETDOWN, f"port {self.name} is disabled")
        if not self.link_up:
            raise oserror(errno.ENETDOWN, f"link {self.name} is down")

    def take_tx_buffer(self, nonblock: bool, deadline_ns: int | None) -> PacketBuffer:
        """A buffer from the TX pool; exhaustion counts tx_nomem, then fails or waits."""
        buf = self.tx_pool.take()
        if buf is not None:
            return buf
        self.counters.tx_nomem += 1
        if nonblock:
            raise oserror(errno.EWOULDBLOCK, f"TX pool of {self.name} is empty")
        return self.tx_pool.take_wait(deadline_ns)

    def transmit(self, buf: PacketBuffer) -> None:
        """Hand a built frame to the qdisc (stamping queuing_time when asked).

        When the qdisc is empty and bypassable and no transmit is in progress, the frame goes
        straight to the device from the caller's thread (run-to-completion); otherwise the TX
        thread sends it. Either way the frame passes the queuing point, then the device point.
        """
        if not self.enabled or not self.link_up:
            buf.release()
            self.counters.tx_dropped_down += 1
            raise oserror(errno.ENETDOWN, f"port {self.name} is down")
        if buf.tsflags & _TXQ == _TXQ:
            buf.queuing_time = _now()
        qdisc = self.qdisc
        if self.direct_tx and not len(qdisc) and self._tx_lock.acquire(False):
            try:
                self._xmit(buf)
            finally:
                self._tx_lock.release()
            if len(qdisc):                    # others queued while we held the device
                self._tx_bell.ring()
            return
        if not qdisc.enqueue(buf):
            self.counters.tx_qdisc_drops += 1
            buf.release()
            raise oserror(errno.ENOBUFS, f"qdisc of {self.name} is full")
        self._tx_bell.ring()

    def _tx_loop(self) -> None:
        dequeue = self.qdisc.dequeue
        wait = self._tx_bell.wait
        xmit = self._xmit
        while True:
            buf = dequeue()
            if buf is None:
                self._tx_busy = False
                if not self._running:
                    return
                wait()
                continue
            self._tx_busy = True
            with self._tx_lock:
                xmit(buf)

    def _xmit(self, buf: PacketBuffer) -> None:
        ts = buf.tsflags
        if ts & _TXD == _TXD:
            buf.device_time = _now()
        counters = self.counters
        try:
            self.device.transmit(buf.view[buf.start:buf.end])
        except OSError as exc:
            if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                counters.tx_dropped_down += 1
            else:
                counters.tx_errors += 1
        else:
            counters.tx_packets += 1
            counters.tx_bytes += buf.end - buf.start
            sock = buf.sock
            if sock is not None and ts & _TX:
                sock._push_tx_timestamp(buf.device_time, buf.queuing_time, buf.delivery_time)
        buf.release()

    # -- RX -----------------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        batch: list[PacketBuffer] = []
        device = self.device
        housekeeping = self.stack.housekeeping
        rx_lock = self._rx_lock
        process = self._process_batch
        busy_poll = self.busy_poll_capable
        next_tick = _now() + int(RX_IDLE_TICK * 1e9)
        while self._running:
            try:
                if busy_poll and (self._busy_pollers or
                                  _now() - self._last_poll_exit < self._poll_defer_ns):
                    self._rx_park.wait(self._poll_defer_ns / 1e9 or RX_IDLE_TICK)
                elif busy_poll:
                    # Wait without holding the consumer lock, so busy-polling receivers are
                    # never blocked by this thread's sleep; then consume under the lock so
                    # frames keep their order whoever processes them.
                    device.wait_ready(RX_IDLE_TICK)
                    with rx_lock:
                        if device.receive(batch, RX_BATCH, 0):
                            process(batch)
                elif device.receive(batch, RX_BATCH, RX_IDLE_TICK):
                    process(batch)
            except OSError as exc:  # device gone or down: wait for the link state to settle
                log.debug("%s: receive failed: %s", self.name, exc)
                batch.clear()
                time.sleep(0.05)
                continue
            now = _now()
            if now >= next_tick:
                next_tick = now + int(RX_IDLE_TICK * 1e9)
                with rx_lock:
                    housekeeping(self, now)

    def _process_batch(self, batch: list[PacketBuffer]) -> None:
        """Protocol input for received frames (RX thread or busy poller, under the RX lock)."""
        counters = self.counters
        ethernet_input = self.stack.ethernet_input
        for buf in batch:
            buf.queuing_time = _now()
            buf.port = self
            counters.rx_packets += 1
            counters.rx_bytes += buf.end - buf.start
            try:
                ethernet_input(self, buf)
            except Exception:   # a faulty (custom) protocol must not kill the port
                counters.rx_errors += 1   # the buffer is not released: owner unknown
                log.exception("%s: protocol input failed", self.name)
        batch.clear()

    def busy_poll_enter(self) -> None:
        with self._busy_lock:
            self._busy_pollers += 1

    def busy_poll_exit(self) -> None:
        with self._busy_lock:
            self._busy_pollers -= 1
            self._last_poll_exit = _now()

    def poll_rx(self) -> int:
        """Busy poll (Linux SO_BUSY_POLL): process what the device has ready, from the calling
        thread, without blocking. Returns the number of frames processed (0 if the RX thread
        or another poller is consuming right now)."""
        if not self._running or not self._rx_lock.acquire(False):
            return 0
        try:
            batch = self._poll_batch
            n = self.device.receive(batch, RX_BATCH, 0)
            if n:
                self._process_batch(batch)
            return n
        except OSError:
            self._poll_batch.clear()
            return 0
        finally:
            self._rx_lock.release()

    # -- link state ---------------------------------------------------------------------------
    def _link_changed(self, up: bool | None) -> None:
        if up is None:   # the interface disappeared: disable the port from the in-band stage
            self.link_up = False
            self.stack.inband.post(self.stack._interface_vanished, self)
            self.stack._wake_receivers(self, errno.ENETDOWN)
            return
        self.link_up = bool(up)
        if up:
            self.stack._port_back_up(self)   # receivers woken with ENETDOWN may wait again
        else:
            self.stack._wake_receivers(self, errno.ENETDOWN)

    # -- teardown -----------------------------------------------------------------------------
    def shutdown(self, drain_timeout: float = 5.0) -> None:
        """Stop the port: refuse new sends, let queued frames leave, stop threads, free pools."""
        if not self._running:
            return
        self.enabled = False
        deadline = time.monotonic() + drain_timeout
        # EVL waits for in-flight TX buffers to be transmitted before tearing down.
        while ((len(self.qdisc) or self._tx_busy or self._tx_lock.locked())
               and time.monotonic() < deadline and self.link_up):
            self._tx_bell.ring()
            time.sleep(0.001)
        self._running = False
        self._tx_bell.ring()
        if threading.current_thread() is not self._tx_thread:
            self._tx_thread.join(drain_timeout)
        while (buf := self.qdisc.dequeue()) is not None:   # link down: these cannot leave
            self.counters.tx_dropped_down += 1
            buf.release()
        self.device.on_link_change = None
        self._rx_park.ring()
        self.device.detach()
        self.device.wake()
        if threading.current_thread() is not self._rx_thread:
            self._rx_thread.join(drain_timeout)
        self.tx_pool.close()
        self.rx_pool.close()
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = -1

    @property
    def threads_alive(self) -> bool:
        return self._rx_thread.is_alive() or self._tx_thread.is_alive()

    # -- statistics ---------------------------------------------------------------------------
    def stats(self) -> DevStat:
        c = self.counters
        dev = self.device.stats
        extra = {k: v for k, v in c.as_dict().items() if k not in DevStat.__dataclass_fields__}
        extra.update(rx_skb_total=self.rx_pool.total, rx_skb_free=self.rx_pool.free,
                     device_rx_dropped=dev.rx_dropped, device_tx_errors=dev.tx_errors,
                     kernel_drops=dev.kernel_drops, kernel_freeze_q_cnt=dev.kernel_freeze_q_cnt)
        return DevStat(
            rx_packets=c.rx_packets, rx_bytes=c.rx_bytes, tx_packets=c.tx_packets,
            tx_bytes=c.tx_bytes, skb_size=self.tx_pool.size, skb_free=self.tx_pool.free,
            skb_total=self.tx_pool.total, csum_errors=c.csum_errors,
            rx_nomem=c.rx_nomem + dev.rx_nomem, tx_nomem=c.tx_nomem,
            oob_capable=self.device.oob_capable, oob_port=self.enabled, extra=extra)

"""An oob port: the control-plane handle of the per-interface state EVL creates when a port is
enabled.

The data path — TX and RX buffer pools, the qdisc, the ``<if>.rx`` and ``<if>.tx`` threads, the
protocol input up to the socket queues, ICMP echo and ARP replies, every counter — is a
``evlnet._core.Port``: compiled, and never waiting for the GIL. This class keeps what the
control plane needs: the interface, the link state it follows, the handle's file descriptor,
statistics formatting, and frames the in-band stage builds itself (ARP requests, custom
protocols).
"""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace
from typing import Any, NamedTuple

from ..datapath import _core
from ..errors import oserror
from .interface import Interface
from .stats import DevStat

#: evlnet.core.stack.Stack: a layer above this module, so referred to, not imported.
Stack = Any


class PoolView:
    """Read-only figures of one of the port's preallocated pools."""

    def __init__(self, port: Port, which: str) -> None:
        self._port = port
        self._which = which

    def _figures(self) -> tuple[int, int, int]:
        size, tx_total, tx_free, rx_total, rx_free = self._port.core.pools()
        return (size, tx_total, tx_free) if self._which == "tx" else (size, rx_total, rx_free)

    @property
    def size(self) -> int:
        return self._figures()[0]

    @property
    def total(self) -> int:
        return self._figures()[1]

    @property
    def free(self) -> int:
        return self._figures()[2]


class ReassemblyState(NamedTuple):
    """IPv4 reassembly on a port, read now."""

    pending: int            #: datagrams waiting for fragments
    buffers_total: int      #: 64 KiB reassembly buffers of the port
    buffers_free: int


class QdiscView:
    """The port's qdisc as the control plane sees it: how many frames wait in it."""

    def __init__(self, port: Port) -> None:
        self._port = port

    def __len__(self) -> int:
        return int(self._port.core.qdisc_len)


class Port:
    """An enabled oob port. Fd-like: ``fileno()`` is a descriptor owned by the port."""

    def __init__(self, stack: Stack, iface: Interface, port_id: int, poolsz: int, bufsz: int,
                 rx_poolsz: int) -> None:
        self.stack = stack
        self.iface = iface
        self.device = iface.device
        self.id = port_id
        self.name = iface.name
        self.ifindex = self.device.ifindex
        self.mtu = self.device.mtu
        self.mac = self.device.mac
        self.vlan_id = self.device.vlan_id
        self.bufsz = bufsz
        st = stack.settings
        self.core = _core.Port(
            stack.core, port_id, self.name, self.device.core_device, poolsz, bufsz, rx_poolsz,
            st.qdisc, st.reasm_poolsz, st.ipfrag_max_datagrams, st.ipfrag_time,
            st.busy_poll_defer_us, bool(st.tx_direct), bool(st.tx_stream_handoff))
        self.qdisc = QdiscView(self)
        self.tx_pool = PoolView(self, "tx")
        self.rx_pool = PoolView(self, "rx")
        self.local_addrs: frozenset[int] = frozenset()
        self.iface_unicast: frozenset[int] = frozenset()
        self.refresh_addresses()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        #: what the in-band stage counts for frames the core handed up (already counted there as
        #: rx_inband): handlers that failed, protocols unregistered meanwhile
        self.inband_counters = {"inband_errors": 0, "inband_unknown_proto": 0,
                                "inband_filter_skipped": 0, "inband_no_taker": 0}
        #: the eBPF object file of the RX filter, None without one (``Stack.set_filter``)
        self.filter_path: str | None = None
        #: a Linux port's kernel filter counters (``_core.KernelCounters``), set by the bridge
        self.kernel_filter_counters: Any = None
        self.device.on_link_change = self._link_changed

    # -- handle -------------------------------------------------------------------------------
    def fileno(self) -> int:
        """The port's descriptor (-1 once disabled)."""
        return self._fd

    @property
    def enabled(self) -> bool:
        """Whether the port is enabled (False once disabled: the handle stays, unusable)."""
        return bool(self.core.enabled)

    @property
    def link_up(self) -> bool:
        """Whether the interface's link is up, as the port last saw it (while it is down, sends
        fail with ENETDOWN and blocked receivers are woken with it)."""
        return bool(self.core.link_up)

    @property
    def reassembly(self) -> ReassemblyState:
        """Datagrams in reassembly and the reassembly pool, read now."""
        return ReassemblyState(*self.core.reassembly())

    @property
    def direct_tx(self) -> bool:
        """Whether senders transmit from their own thread when the FIFO is empty."""
        return bool(self.core.direct_tx)

    @property
    def oob_capable(self) -> bool:
        """Whether the device moves frames straight from the oob threads (the embedded virtual
        link) rather than through the kernel's packet ring (Linux interfaces, AF_PACKET):
        EVL's ``oob capability``, see ``DevStat.capability_note``."""
        return self.device.oob_capable

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Port {self.name} {state} fd={self._fd}>"

    def refresh_addresses(self) -> None:
        """In-band: the interface's addresses changed; tell the core."""
        self.local_addrs = frozenset(self.iface.local_addresses())
        self.iface_unicast = frozenset(a.address for a in self.iface.addresses)
        unicast = [a.address for a in self.iface.addresses]
        self.core.set_addresses(unicast, sorted(self.local_addrs))
        self.stack.refresh_broadcasts()

    # -- TX from the in-band stage ------------------------------------------------------------
    def check_sendable(self) -> None:
        """Raise ENETDOWN unless the port is enabled and its link up: for frames built in-band
        (``transmit_frame``), before building them."""
        if not self.enabled:
            raise oserror(errno.ENETDOWN, f"port {self.name} is disabled")
        if not self.link_up:
            raise oserror(errno.ENETDOWN, f"link {self.name} is down")

    def transmit_frame(self, frame: Any, sock: Any = None, tsflags: int = 0,
                       nonblock: bool = True, deadline: int | None = None) -> int:
        """Queue one complete Ethernet frame built in-band (ARP, custom protocols); *sock* (a
        core socket) gets the TX timestamp record."""
        return int(self.core.transmit(frame, sock, tsflags, 0, nonblock, deadline))

    # -- link state ---------------------------------------------------------------------------
    def _link_changed(self, up: bool | None) -> None:
        stack = self.stack
        if up is None:   # the interface disappeared: disable the port from the in-band stage
            self.core.set_link(False)
            stack.inband.post(stack.interface_vanished, self)
            stack.wake_receivers(self, errno.ENETDOWN)
            return
        self.core.set_link(bool(up))
        if up:
            stack.port_back_up(self)   # receivers woken with ENETDOWN may wait again
        else:
            stack.wake_receivers(self, errno.ENETDOWN)

    # -- teardown -----------------------------------------------------------------------------
    def shutdown(self, drain_timeout: float = 5.0) -> None:
        """Stop the port: refuse new sends, let queued frames leave, stop threads, free pools."""
        if self._fd < 0:
            return
        self.device.on_link_change = None
        self.core.shutdown(self.stack.core, drain_timeout)
        release = getattr(self.device, "release_core", None)
        if release is not None:          # AF_PACKET: the ring and its socket go now
            release()
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = -1

    def set_realtime(self, cpus: set[int] | None = None,
                     fifo_priority: int | None = None) -> dict[str, str]:
        """Real-time levers for this port's RX and TX threads (the core's): pin them to *cpus*
        and/or run them under SCHED_FIFO at *fifo_priority*. Returns ``{"rx affinity": "ok" or
        "refused: <reason>", ...}``; a refused lever is reported, never raised."""
        report = {}
        for thread, lever, err in self.core.set_realtime(
                sorted(cpus) if cpus is not None else None, fifo_priority):
            report[f"{thread} {lever}"] = "ok" if err == 0 else f"refused: {os.strerror(err)}"
        return report

    # -- capture ------------------------------------------------------------------------------
    def start_capture(self, fd: int, snaplen: int = 0, max_frames: int = 0,
                      max_bytes: int = 0, queue_len: int = 1024) -> _core.Capture:
        """Capture this port's oob frames into a pcap file (what ``evl-net capture`` does).

        Captured: every frame the port's RX path receives (on a Linux port, what the diversion
        passes to it) and every frame handed to the device for TX, each with its whole Ethernet
        header (VLAN tags included) and a nanosecond timestamp, in a pcap file (Ethernet link
        type) that tcpdump, tshark and scapy read. *fd* is a descriptor open for writing; the
        core writes a duplicate of it from a writer thread of its own, so the caller may close
        *fd* at once.

        Bounds: *snaplen* bytes kept of each frame (0: whole frames, up to the port's buffer
        size; at most 262144); the capture ends after *max_frames* frames or before the file,
        headers included, would exceed *max_bytes* bytes (0: no bound; a bound that cannot hold
        one frame is EINVAL). At most *queue_len* frames wait for the writer thread: more are
        counted as drops, never silently lost; the data path only copies a frame into a
        preallocated buffer.

        Returns the running capture, a ``Capture``: ``Capture.wait(timeout)`` (True once it
        ended by itself: a bound reached or a write error), ``Capture.stats()`` and
        ``Capture.stop()`` (flushes the file; final figures), both ``(frames, bytes, drops,
        rx_frames, tx_frames, errno, over)`` — errno 0 unless a write failed. Dropping it
        stops the capture. Raises OSError: EBUSY when a capture already runs on this port,
        EINVAL for bad sizes, EBADF (or the write's errno) when the file cannot be written.
        """
        return self.core.start_capture(fd, snaplen, max_frames, max_bytes, queue_len)

    @property
    def threads_alive(self) -> bool:
        """Whether the port's RX or TX thread (the core's) still runs; False after disable."""
        return bool(self.core.threads_alive)

    # -- statistics ---------------------------------------------------------------------------
    def counter_values(self) -> dict[str, int]:
        """Every counter of the port and its device, by name."""
        values = dict(self.core.counters())
        for name, value in self.inband_counters.items():
            values[name] = values.get(name, 0) + value
        for name, value in self.device.counters().items():
            values[f"device_{name}" if name in values else name] = value
        if self.kernel_filter_counters is not None:
            # frames the kernel-side filter judged: its drops are this port's drops
            k = dict(self.kernel_filter_counters.read())
            values["rx_filter_dropped"] = values.get("rx_filter_dropped", 0) + k["dropped"]
            values["rx_filter_invalid"] = values.get("rx_filter_invalid", 0) + k["invalid"]
            values["kernel_filter_skipped"] = k["skipped"]
            values["kernel_filter_accepted"] = k["accepted"]
        return values

    @property
    def counters(self) -> SimpleNamespace:
        """The counters as attributes (``port.counters.rx_packets``), read now."""
        return SimpleNamespace(**self.counter_values())

    def stats(self) -> DevStat:
        """The port's statistics, read now (what ``Stack.get_stats`` returns): EVL's devstat
        fields (``skb_*`` are the TX pool's; ``rx_nomem`` includes the device's), whether it is
        oob-capable and enabled, and every other counter in ``extra`` (drop reasons, the RX
        pool, device and kernel filter counters)."""
        c = self.counter_values()
        size, tx_total, tx_free, rx_total, rx_free = self.core.pools()
        main = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "csum_errors", "rx_nomem",
                "tx_nomem")
        extra = {k: v for k, v in c.items() if k not in main}
        extra.update(rx_skb_total=rx_total, rx_skb_free=rx_free)
        return DevStat(
            rx_packets=c["rx_packets"], rx_bytes=c["rx_bytes"], tx_packets=c["tx_packets"],
            tx_bytes=c["tx_bytes"], skb_size=size, skb_free=tx_free, skb_total=tx_total,
            csum_errors=c["csum_errors"], rx_nomem=c["rx_nomem"] + c.get("device_rx_nomem", 0),
            tx_nomem=c["tx_nomem"], oob_capable=self.device.oob_capable, oob_port=self.enabled,
            extra=extra)

//! An oob port (EVL's per-interface oob state): the device, its preallocated pools, the qdisc,
//! the counters, and the RX and TX threads.
//!
//! - `<if>.rx` blocks in the device, stamps `queuing_time` and runs the protocol input
//!   (`rx::process`) for each frame up to the socket queues, ICMP and ARP replies included.
//! - `<if>.tx` drains the qdisc, stamps `device_time`, hands frames to the device and pushes TX
//!   timestamp records.
//!
//! Neither thread ever touches Python. Senders transmit straight from their own thread when the
//! FIFO is empty and the device idle (Linux's qdisc bypass), except a sender that streams back
//! to back, whose frames the TX thread carries; receivers that busy-poll, or that block in the
//! device, run the RX processing themselves while the RX thread parks (Linux's
//! prefer-busy-poll).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::capture::CaptureSlot;
use crate::device::Device;
use crate::doorbell::Doorbell;
use crate::filter::vm::VmFilter;
use crate::ipv4::IdentGen;
use crate::pool::{PacketBuf, Pool};
use crate::qdisc::{make_qdisc, Qdisc};
use crate::reassembly::Reassembler;
use crate::socket::{SocketCore, TS_DEVICE, TS_QUEUING, TS_TX};
use crate::stack::{InbandEvent, InbandKind, StackCore};
use crate::stats::PortCounters;
use crate::timestamps::monotonic_ns;

/// Frames taken from the device per batch.
pub const RX_BATCH: usize = 64;
/// How often an idle RX thread wakes for housekeeping (reassembly expiry), in ns.
pub const RX_TICK_NS: u64 = 250_000_000;
/// A run-to-completion sender that comes back within this long of its previous transmit is
/// sending back to back (a request/response peer comes back an RTT later, 5 µs at the least).
pub const STREAM_GAP_NS: u64 = 3_000;
/// Back-to-back transmits in a row after which a stream's frames go to the TX thread.
pub const STREAM_MIN_FRAMES: u32 = 8;
/// How long the TX thread keeps polling an emptied qdisc before it sleeps: a stream's next
/// frame comes in about a microsecond, a doorbell wake-up costs tens on an idle VM.
pub const TX_POLL_NS: u64 = 20_000;
/// Sent frames whose buffers the TX thread gives back to the pool together. A sender waiting
/// for a buffer polls the very cache lines a give-back writes (the pool's next slot and its
/// `Arc` count): given back one at a time, each frame moves them between the CPUs twice.
pub const TX_GIVE_BACK_BATCH: usize = 16;

/// An errno value.
pub type Errno = i32;

/// How a port is built.
#[derive(Clone, Debug)]
pub struct PortConfig {
    pub poolsz: usize,
    pub bufsz: usize,
    pub rx_poolsz: usize,
    pub qdisc: String,
    pub reasm_poolsz: usize,
    pub ipfrag_max_datagrams: usize,
    pub ipfrag_time_ns: u64,
    /// How long the RX thread stays parked after the last busy poller left.
    pub busy_poll_defer_ns: u64,
    /// Run-to-completion TX from the sender's thread when the FIFO is empty.
    pub tx_direct: bool,
    /// With `tx_direct`: a sender streaming back to back hands its frames to the TX thread,
    /// which transmits on another CPU while the sender builds the next (see `Port::transmit`).
    pub tx_stream_handoff: bool,
}

/// A frame on its way out, with whom to tell when it left.
pub struct TxItem {
    pub buf: PacketBuf,
    pub sock: Option<Arc<SocketCore>>,
    pub tsflags: u32,
}

/// The addresses of the port's interface.
#[derive(Default, Debug, Clone)]
pub struct Addresses {
    /// Unicast addresses of the interface.
    pub unicast: Vec<u32>,
    /// Everything we accept as a destination: unicast plus directed and limited broadcasts.
    pub local: Vec<u32>,
}

/// One enabled port.
pub struct Port {
    pub id: usize,
    pub name: String,
    pub device: Arc<dyn Device>,
    pub mac: [u8; 6],
    pub mtu: usize,
    pub vlan_id: u16,
    pub tx_pool: Arc<Pool>,
    pub rx_pool: Arc<Pool>,
    pub counters: PortCounters,
    pub stack: Arc<StackCore>,
    pub addrs: ArcSwap<Addresses>,
    pub reasm: Mutex<Reassembler>,
    /// The eBPF RX filter run in user space (virtual links; Linux ports while the kernel
    /// cannot run it). Swapped whole by the control plane; the RX path reads it lock-free.
    pub filter: ArcSwapOption<VmFilter>,
    /// Packet capture (`evl-net capture`): empty, one relaxed load per frame, unless capturing.
    pub capture: CaptureSlot,
    qdisc: Box<dyn Qdisc<TxItem>>,
    ident: IdentGen,
    enabled: AtomicBool,
    link_up: AtomicBool,
    running: AtomicBool,
    tx_bell: Doorbell,
    tx_lock: Mutex<()>,
    /// One receiver blocked in the device at a time (`wait_rx`). Frames stay in order without
    /// it: the device lets one consumer drain at a time, and nobody holds a lock while waiting
    /// in the device, so a busy poller is never stuck behind a consumer that sleeps there, or
    /// that was woken and waits for a CPU (under SCHED_FIFO, for the poller's whole budget).
    device_waiter: Mutex<()>,
    /// Receivers consuming the device themselves: spinning (SO_BUSY_POLL; a receiver waiting
    /// in the device steps back for them, as the RX thread does) and blocked in the device
    /// (`rx_wait_in_device`). The RX thread parks while there is one of either.
    spinners: AtomicUsize,
    device_waiters: AtomicUsize,
    /// Receivers blocked on this port's traffic (in its device or on their socket): one waits
    /// in the device only while it is alone.
    blocked_receivers: AtomicUsize,
    last_poll_exit: AtomicU64,
    /// When a spinner last left (it comes back at its next receive: a spinning receiver is
    /// registered only while it spins).
    last_spin_exit: AtomicU64,
    /// Test hook: the RX thread parks while set, so only busy pollers consume frames.
    rx_thread_paused: AtomicBool,
    rx_thread_parked: AtomicBool,
    rx_park: Doorbell,
    busy_poll_defer_ns: u64,
    tx_direct: bool,
    tx_stream_handoff: bool,
    /// CLOCK_MONOTONIC ns when the last run-to-completion transmit ended.
    last_direct_ns: AtomicU64,
    /// Run-to-completion transmits in a row, each within `STREAM_GAP_NS` of the previous one.
    direct_streak: AtomicU32,
    /// The TX thread is awake (draining the qdisc, or polling it for `TX_POLL_NS` after):
    /// senders hand it their frames rather than transmit themselves.
    tx_awake: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Kernel thread ids of the RX and TX threads (for the real-time levers), 0 until started.
    rx_tid: AtomicI32,
    tx_tid: AtomicI32,
}

/// What a real-time lever did to one thread: `Ok(())` or the errno it was refused with.
pub type LeverOutcome = Result<(), Errno>;

impl Port {
    /// Build the port, attach the device and start its threads.
    pub fn start(
        stack: Arc<StackCore>,
        id: usize,
        name: &str,
        device: Arc<dyn Device>,
        cfg: &PortConfig,
    ) -> io::Result<Arc<Port>> {
        let qdisc = make_qdisc::<TxItem>(&cfg.qdisc, cfg.poolsz.max(1))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let qdisc_bypass = qdisc.can_bypass();
        let reasm_pool = Pool::new(&format!("{name} reassembly"), cfg.reasm_poolsz, 65536 + 64);
        let port = Arc::new(Port {
            id,
            name: name.to_string(),
            mac: device.mac(),
            mtu: device.mtu(),
            vlan_id: device.vlan_id(),
            tx_pool: Pool::new(&format!("{name} TX pool"), cfg.poolsz, cfg.bufsz),
            rx_pool: Pool::new(&format!("{name} RX pool"), cfg.rx_poolsz, cfg.bufsz),
            counters: PortCounters::default(),
            addrs: ArcSwap::from_pointee(Addresses::default()),
            reasm: Mutex::new(Reassembler::new(
                reasm_pool,
                cfg.ipfrag_max_datagrams,
                cfg.ipfrag_time_ns,
            )),
            filter: ArcSwapOption::empty(),
            capture: CaptureSlot::default(),
            qdisc,
            ident: IdentGen::new((monotonic_ns() & 0xFFFF) as u16),
            enabled: AtomicBool::new(true),
            link_up: AtomicBool::new(device.is_up()),
            running: AtomicBool::new(true),
            tx_bell: Doorbell::default(),
            tx_lock: Mutex::new(()),
            device_waiter: Mutex::new(()),
            spinners: AtomicUsize::new(0),
            device_waiters: AtomicUsize::new(0),
            blocked_receivers: AtomicUsize::new(0),
            last_poll_exit: AtomicU64::new(0),
            last_spin_exit: AtomicU64::new(0),
            rx_thread_paused: AtomicBool::new(false),
            rx_thread_parked: AtomicBool::new(false),
            rx_park: Doorbell::default(),
            busy_poll_defer_ns: cfg.busy_poll_defer_ns,
            tx_direct: cfg.tx_direct && qdisc_bypass,
            tx_stream_handoff: cfg.tx_stream_handoff,
            last_direct_ns: AtomicU64::new(0),
            direct_streak: AtomicU32::new(0),
            tx_awake: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            rx_tid: AtomicI32::new(0),
            tx_tid: AtomicI32::new(0),
            device,
            stack,
        });
        port.device.attach(Arc::clone(&port.rx_pool))?;
        // The device reports carrier changes it notices itself (AF_PACKET socket errors).
        let weak = Arc::downgrade(&port);
        port.device
            .set_link_listener(Some(Arc::new(move |state: Option<bool>| {
                if let Some(p) = weak.upgrade() {
                    p.set_link(state == Some(true));
                }
            })));
        let rx = Arc::clone(&port);
        let tx = Arc::clone(&port);
        let mut threads = port.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}.rx"))
                .spawn(move || rx.rx_loop())?,
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}.tx"))
                .spawn(move || tx.tx_loop())?,
        );
        drop(threads);
        Ok(port)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Acquire)
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Acquire)
    }

    /// The control plane (netlink, or the virtual link) saw the link change.
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Release);
    }

    /// The next IPv4 identification.
    pub fn next_ident(&self) -> u16 {
        self.ident.next_ident()
    }

    /// ENETDOWN unless the port can send.
    pub fn check_sendable(&self) -> Result<(), Errno> {
        if !self.enabled() || !self.link_up() {
            return Err(libc::ENETDOWN);
        }
        Ok(())
    }

    /// A TX buffer without waiting; exhaustion counts `tx_nomem`.
    pub fn take_tx_now(&self) -> Option<PacketBuf> {
        let b = self.tx_pool.take();
        if b.is_none() {
            PortCounters::bump(&self.counters.tx_nomem);
        }
        b
    }

    // -- TX -------------------------------------------------------------------------------------

    /// Hand a built frame to the qdisc, or straight to the device from the caller's thread
    /// when the FIFO is empty and the device idle (Linux's qdisc bypass, run to completion).
    ///
    /// Except for streams: a sender that keeps coming back within `STREAM_GAP_NS` of its
    /// previous transmit (`STREAM_MIN_FRAMES` times in a row), or any sender while the TX
    /// thread is awake, enqueues instead. The TX thread then makes the device calls on another
    /// CPU while the sender builds its next frame: a pipeline for streams, run to completion
    /// (no thread hand-off, no wake-up) for requests and periodic traffic.
    pub fn transmit(&self, mut item: TxItem) -> Result<(), Errno> {
        if !self.enabled() || !self.link_up() {
            PortCounters::bump(&self.counters.tx_dropped_down);
            return Err(libc::ENETDOWN);
        }
        if item.tsflags & (TS_TX | TS_QUEUING) == TS_TX | TS_QUEUING {
            item.buf.times.queuing = monotonic_ns();
        }
        if self.tx_direct && self.qdisc.is_empty() && !self.hand_off_stream() {
            if let Ok(_guard) = self.tx_lock.try_lock() {
                drop(self.xmit(item)); // its buffer goes back at once
                drop(_guard);
                if self.tx_stream_handoff {
                    self.last_direct_ns.store(monotonic_ns(), Relaxed);
                }
                if !self.qdisc.is_empty() {
                    self.tx_bell.ring();
                }
                return Ok(());
            }
        }
        if let Err(_refused) = self.qdisc.enqueue(item) {
            PortCounters::bump(&self.counters.tx_qdisc_drops);
            return Err(libc::ENOBUFS);
        }
        self.tx_bell.ring();
        Ok(())
    }

    /// Whether this transmit belongs to a stream that the TX thread should carry (see
    /// `transmit`). Counts the streak: call once per transmit.
    fn hand_off_stream(&self) -> bool {
        if !self.tx_stream_handoff {
            return false;
        }
        if self.tx_awake.load(Acquire) {
            return true;
        }
        let since_last = monotonic_ns().saturating_sub(self.last_direct_ns.load(Relaxed));
        if since_last > STREAM_GAP_NS {
            self.direct_streak.store(0, Relaxed);
            return false;
        }
        if self.direct_streak.fetch_add(1, Relaxed) + 1 < STREAM_MIN_FRAMES {
            return false;
        }
        // the TX thread takes over; once it sleeps again, a stream has to show itself anew
        self.direct_streak.store(0, Relaxed);
        true
    }

    /// Transmit one frame and count it; hands the item back so that the TX thread can give
    /// buffers back in batches (dropping it returns the buffer to its pool).
    fn xmit(&self, mut item: TxItem) -> TxItem {
        if item.tsflags & (TS_TX | TS_DEVICE) == TS_TX | TS_DEVICE {
            item.buf.times.device = monotonic_ns();
        }
        let c = &self.counters;
        self.capture.tx(item.buf.payload());
        match self.device.transmit(item.buf.payload()) {
            Ok(()) => {
                PortCounters::bump(&c.tx_packets);
                c.tx_bytes.fetch_add(item.buf.len() as u64, Relaxed);
                if let Some(sock) = &item.sock {
                    if item.tsflags & TS_TX != 0 {
                        sock.push_tx_record(item.buf.times);
                    }
                }
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    PortCounters::bump(&c.tx_dropped_down)
                }
                _ => PortCounters::bump(&c.tx_errors),
            },
        }
        item
    }

    fn tx_loop(self: Arc<Self>) {
        self.tx_tid.store(gettid(), Release);
        // allocated once: the frames sent since the last give-back (TX_GIVE_BACK_BATCH)
        let mut sent: Vec<TxItem> = Vec::with_capacity(TX_GIVE_BACK_BATCH);
        loop {
            if !self.qdisc.is_empty() {
                self.tx_awake.store(true, Release);
                {
                    // The device first, then the frames: while a sender holds the device,
                    // frames wait in the qdisc (where they are counted), and order is kept.
                    let _g = self.tx_lock.lock().unwrap_or_else(|e| e.into_inner());
                    // one frame of look-ahead: its bytes, written by the sender on another
                    // CPU, come into this one's cache while the device call for the previous
                    // frame runs (A/B on veth, 3 x 8 chunks each: 1.21-1.29x the kernel
                    // path's rate with it, 1.16-1.24x without)
                    let mut next = self.qdisc.dequeue();
                    while let Some(item) = next {
                        next = self.qdisc.dequeue();
                        if let Some(n) = &next {
                            prefetch(n.buf.payload());
                        }
                        PortCounters::bump(&self.counters.tx_queued);
                        sent.push(self.xmit(item));
                        if sent.len() == TX_GIVE_BACK_BATCH {
                            sent.clear();
                        }
                    }
                }
                sent.clear(); // the qdisc is empty: nobody waits behind these
                if self.tx_stream_handoff && self.poll_qdisc(TX_POLL_NS) {
                    continue; // more of the stream: no sleep, no doorbell
                }
            }
            self.tx_awake.store(false, Release);
            if !self.running.load(Acquire) {
                return;
            }
            self.tx_bell.wait(Some(RX_TICK_NS));
        }
    }

    /// Poll the qdisc for up to `ns`: true as soon as a frame is queued.
    fn poll_qdisc(&self, ns: u64) -> bool {
        let end = monotonic_ns() + ns;
        while self.running.load(Relaxed) {
            if !self.qdisc.is_empty() {
                return true;
            }
            if monotonic_ns() >= end {
                break;
            }
            std::hint::spin_loop();
        }
        false
    }

    // -- RX -------------------------------------------------------------------------------------

    fn rx_loop(self: Arc<Self>) {
        self.rx_tid.store(gettid(), Release);
        let mut next_tick = monotonic_ns() + RX_TICK_NS;
        while self.running.load(Acquire) {
            let now = monotonic_ns();
            if self.rx_thread_paused.load(Acquire) {
                self.rx_thread_parked.store(true, Release);
                self.rx_park.wait(Some(RX_TICK_NS));
                continue;
            }
            self.rx_thread_parked.store(false, Release);
            let parked = self.receivers_in_device()
                || now.saturating_sub(self.last_poll_exit.load(Acquire)) < self.busy_poll_defer_ns;
            if parked {
                self.rx_park
                    .wait(Some(self.busy_poll_defer_ns.max(1_000_000)));
            } else {
                // no lock held while it waits there (see `device_waiter`)
                let res = self.device.receive(RX_BATCH, Some(RX_TICK_NS), &mut |buf| {
                    crate::rx::process(&self, buf);
                });
                if res.is_err() {
                    // device gone or down: let the link state settle
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            let now = monotonic_ns();
            if now >= next_tick {
                next_tick = now + RX_TICK_NS;
                self.housekeeping(now);
            }
        }
    }

    fn housekeeping(&self, now: u64) {
        let mut r = self.reasm.lock().unwrap_or_else(|e| e.into_inner());
        let expired = r.expire(now);
        if expired > 0 {
            // a timed-out datagram is dropped as a whole (RX ledger in `stats`)
            self.counters
                .rx_reasm_timeouts
                .fetch_add(expired as u64, Relaxed);
            self.counters
                .rx_reasm_fails
                .fetch_add(expired as u64, Relaxed);
        }
    }

    /// Busy polling (Linux SO_BUSY_POLL): process what the device has ready from the calling
    /// thread, without blocking; 0 when another consumer is draining the device right now.
    pub fn poll_rx(&self) -> usize {
        if !self.running.load(Acquire) || !self.device.ready() {
            return 0;
        }
        self.device
            .receive(RX_BATCH, Some(0), &mut |buf| crate::rx::process(self, buf))
            .unwrap_or(0)
    }

    /// Test hook: park the RX thread (true) or let it run again; returns whether it is parked
    /// now (it parks at its next loop, within one device wait).
    pub fn pause_rx_thread(&self, paused: bool) -> bool {
        self.rx_thread_paused.store(paused, Release);
        if paused {
            self.device.wake();
        } else {
            self.rx_park.ring();
        }
        self.rx_thread_parked.load(Acquire)
    }

    /// Test hook: whether the RX thread is parked by `pause_rx_thread`.
    pub fn rx_thread_parked(&self) -> bool {
        self.rx_thread_parked.load(Acquire)
    }

    /// Whether a transmit now would go straight to the device from the caller's thread (a
    /// guess for the caller's GIL: a stream may still be handed to the TX thread).
    pub fn would_transmit_directly(&self) -> bool {
        self.tx_direct && self.qdisc.is_empty() && !self.tx_awake.load(Acquire)
    }

    /// Whether the TX thread is awake and carrying frames (a sender out of TX buffers gets one
    /// back within a device transmit: worth spinning for rather than sleeping).
    pub fn tx_thread_awake(&self) -> bool {
        self.tx_awake.load(Acquire)
    }

    /// Frames waiting in the qdisc.
    pub fn qdisc_len(&self) -> usize {
        self.qdisc.len()
    }

    /// Whether senders may transmit from their own thread (qdisc bypass).
    pub fn direct_tx(&self) -> bool {
        self.tx_direct
    }

    /// A blocked receiver waits in the device for up to `timeout_ns` and processes what comes
    /// (see `python::wait_in_device`); None when another receiver is blocked in it already.
    pub fn wait_rx(&self, timeout_ns: u64) -> Option<usize> {
        if !self.running.load(Acquire) {
            return Some(0);
        }
        let _guard = self.device_waiter.try_lock().ok()?;
        Some(
            self.device
                .receive(RX_BATCH, Some(timeout_ns), &mut |buf| {
                    crate::rx::process(self, buf)
                })
                .unwrap_or(0),
        )
    }

    /// Whether a receiver consumes the device itself (spinning or blocked in it).
    fn receivers_in_device(&self) -> bool {
        self.spinners.load(Acquire) > 0 || self.device_waiters.load(Acquire) > 0
    }

    /// A receiver starts busy polling the port (`poll_rx` in a loop): the RX thread parks, and
    /// a receiver blocked in the device is woken to step back (one consumer delivers at the
    /// pace of the one that spins; two on one CPU would fill the socket queues and drop).
    pub fn spin_enter(&self) {
        self.spinners.fetch_add(1, AcqRel);
        if self.device_waiters.load(Acquire) > 0 {
            self.device.wake();
        }
    }

    pub fn spin_exit(&self) {
        let now = monotonic_ns();
        self.last_spin_exit.store(now, Release);
        self.last_poll_exit.store(now, Release);
        self.spinners.fetch_sub(1, AcqRel);
    }

    /// Whether a receiver busy-polls the port: spinning now, or (unless the caller is the one
    /// that spun last) within the busy-poll defer time of the last spin: between two receives
    /// a spinner runs Python, unregistered.
    pub fn spinning(&self, now: u64, caller_spun_last: bool) -> bool {
        self.spinners.load(Acquire) > 0
            || (!caller_spun_last
                && now.saturating_sub(self.last_spin_exit.load(Acquire)) < self.busy_poll_defer_ns)
    }

    /// A receiver blocks in the device (`wait_rx`): the RX thread parks meanwhile.
    pub fn device_wait_enter(&self) {
        self.device_waiters.fetch_add(1, AcqRel);
    }

    pub fn device_wait_exit(&self) {
        self.last_poll_exit.store(monotonic_ns(), Release);
        self.device_waiters.fetch_sub(1, AcqRel);
    }

    /// A receiver is about to block on this port's traffic; true when it is the only one, and
    /// may wait in the device. A receiver in the device consumes every socket's frames: with
    /// two blocked receivers, the one in the device would fill the other's queue from its own
    /// CPU faster than that one's application drains it (the bench's RX flood lost 5 % so),
    /// so the one in the device is woken to step out and both are served by the RX thread.
    pub fn receiver_blocks(&self) -> bool {
        let alone = self.blocked_receivers.fetch_add(1, AcqRel) == 0;
        if !alone && self.device_waiters.load(Acquire) > 0 {
            self.device.wake();
        }
        alone
    }

    pub fn receiver_unblocks(&self) {
        self.blocked_receivers.fetch_sub(1, AcqRel);
    }

    /// Whether exactly one receiver is blocked on this port's traffic.
    pub fn receiver_alone(&self) -> bool {
        self.blocked_receivers.load(Acquire) <= 1
    }

    /// The RX thread takes the device back now, without waiting out the busy-poll defer time
    /// (a receiver left the device for good).
    pub fn resume_rx_thread(&self) {
        self.last_poll_exit.store(0, Release);
        self.rx_park.ring();
    }

    /// Hand a frame up to the in-band stage (custom protocols, ARP learning).
    /// Counts `rx_inband` when queued, `rx_inband_drops` when the queue is full (one fate).
    pub fn post_inband(&self, buf: PacketBuf, kind: InbandKind, offset: usize) {
        let ev = InbandEvent {
            port: self.id,
            kind,
            offset,
            buf: Some(buf),
        };
        if self.stack.post_inband(ev) {
            PortCounters::bump(&self.counters.rx_inband);
        } else {
            self.counters.drop_for(crate::stats::DropReason::InbandFull);
        }
    }

    // -- teardown -------------------------------------------------------------------------------

    /// Stop the port: refuse new sends, let queued frames leave (up to `drain_ns`), stop the
    /// threads, give every buffer back.
    pub fn shutdown(&self, drain_ns: u64) {
        if !self.running.load(Acquire) {
            return;
        }
        self.enabled.store(false, Release);
        let deadline = monotonic_ns() + drain_ns;
        while (!self.qdisc.is_empty() || self.tx_awake.load(Acquire))
            && monotonic_ns() < deadline
            && self.link_up()
        {
            self.tx_bell.ring();
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        self.running.store(false, Release);
        self.tx_bell.ring();
        self.rx_park.ring();
        self.device.set_link_listener(None);
        self.device.detach();
        self.device.wake();
        let me = std::thread::current().id();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        while let Some(_item) = self.qdisc.dequeue() {
            PortCounters::bump(&self.counters.tx_dropped_down);
        }
        self.reasm.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.tx_pool.close();
        self.rx_pool.close();
        // threads joined, device detached: what the kernel holds for it goes now, even while
        // a handle on this port lives on (a Python object until its garbage is collected)
        self.device.release();
    }

    /// Whether the RX or TX thread still runs.
    pub fn threads_alive(&self) -> bool {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|t| !t.is_finished())
    }

    /// Counters by name, the device's included (diagnostics: the fuzz harness prints them).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut out = self.counters.snapshot();
        out.extend(self.device.counters().snapshot());
        out
    }

    /// Real-time levers for the port's RX and TX threads: pin them to `cpus` (when given) and
    /// run them under SCHED_FIFO at `fifo_priority` (when given). Returns, per thread and lever,
    /// what happened; a refused lever (EPERM, EINVAL) is reported, never fatal.
    pub fn set_realtime(
        &self,
        cpus: Option<&[usize]>,
        fifo_priority: Option<i32>,
    ) -> Vec<(&'static str, &'static str, LeverOutcome)> {
        let deadline = monotonic_ns() + 1_000_000_000;
        while (self.rx_tid.load(Acquire) == 0 || self.tx_tid.load(Acquire) == 0)
            && monotonic_ns() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut out = Vec::new();
        for (thread, tid) in [("rx", &self.rx_tid), ("tx", &self.tx_tid)] {
            let tid = tid.load(Acquire);
            if let Some(cpus) = cpus {
                out.push((thread, "affinity", set_affinity(tid, cpus)));
            }
            if let Some(prio) = fifo_priority {
                out.push((thread, "sched_fifo", set_fifo(tid, prio)));
            }
        }
        out
    }
}

/// Ask the CPU to bring `bytes` (a frame's first two cache lines) into its cache.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64).take(2) {
        // SAFETY: a prefetch is a hint that never faults or writes; the address is inside a
        // live slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// sched_setaffinity for one thread.
fn set_affinity(tid: i32, cpus: &[usize]) -> LeverOutcome {
    if tid == 0 || cpus.is_empty() {
        return Err(libc::ESRCH);
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it (CPU_SET ignores
    // indexes beyond CPU_SETSIZE), and sched_setaffinity reads size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(libc::EINVAL);
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// SCHED_FIFO at `priority` for one thread.
fn set_fifo(tid: i32, priority: i32) -> LeverOutcome {
    if tid == 0 {
        return Err(libc::ESRCH);
    }
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param that outlives the call; tid is a thread of this process.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(last_errno());
    }
    Ok(())
}

//! The core half of an oob socket: its receive queue, TX timestamp ring and readiness fd.
//!
//! The RX path pushes datagrams (and the TX path timestamp records) here; `oob_recvmsg` pops
//! them. One small mutex guards the queue: held for a push or a pop only, never while waiting.
//! The eventfd is readable exactly while something is queued or an error is pending, so a
//! socket can be polled (select, selectors, asyncio). It is kept up to date only once someone
//! asked for it (`fd()`): a socket nobody polls skips the two eventfd syscalls per datagram
//! (a write when the queue fills, a read when it drains) that would otherwise double the
//! syscalls of a ping-pong exchange.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;

use crate::device::Device;
use crate::eventfd::EventFd;
use crate::pool::PacketBuf;
use crate::timestamps::{monotonic_ns, IoTimes, TxTimestampRing};

/// What a queued datagram is charged against SO_RCVBUF on top of its bytes (about what Linux
/// charges for an sk_buff), so SO_RCVBUF bounds a queue as it does on Linux.
pub const RX_OVERHEAD: usize = 512;
/// SO_RCVBUF before anyone sets it (/proc/sys/net/core/rmem_default on a stock kernel).
pub const DEFAULT_RCVBUF: usize = 212_992;

/// Sockets with RX timestamping on, process-wide (EVL's `evl_net_rx_timestamping` count is
/// kernel-wide): while non-zero, the RX path stamps delivery times.
pub static RX_STAMPING: AtomicUsize = AtomicUsize::new(0);

/// Whether delivery times are being stamped.
pub fn rx_stamping() -> bool {
    RX_STAMPING.load(Relaxed) > 0
}

/// EVL's SO_TIMESTAMP_OOB flags.
pub const TS_RX: u32 = 1;
pub const TS_TX: u32 = 2;
pub const TS_DEVICE: u32 = 4;
pub const TS_QUEUING: u32 = 8;

struct State {
    items: VecDeque<PacketBuf>,
    queued_bytes: usize,
    readable: bool,
    /// A receiver blocked in a port's device (`rx_wait_in_device`), and its thread: what
    /// another thread queues for this socket (another port's RX thread) wakes that device.
    device_waiter: Option<(Arc<dyn Device>, ThreadId)>,
    /// That waiter is blocked in its device right now (else a push reaches it through `cond`,
    /// and waking the device would only disturb whoever holds it).
    in_device: bool,
}

/// The core state of one oob socket (shared by SO_REUSEPORT owners of one binding).
pub struct SocketCore {
    state: Mutex<State>,
    /// Blocked receivers and collectors sleep here (a futex: cheaper than polling the fd).
    cond: Condvar,
    waiters: AtomicUsize,
    rx_len: AtomicUsize,
    rcvbuf: AtomicUsize,
    error: AtomicI32,
    tsflags: AtomicU32,
    tx_ring: TxTimestampRing,
    ready: EventFd,
    /// Set by the first `fd()`: from then on `ready` follows the state.
    polled: AtomicBool,
    /// Datagrams refused because the queue was over SO_RCVBUF.
    pub drops: AtomicU64,
    /// `Port::id` + 1 of the port the last popped datagram came from, 0 before the first.
    last_port: AtomicUsize,
}

/// Why a wait ended without data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    Ready,
    TimedOut,
}

impl SocketCore {
    pub fn new() -> io::Result<SocketCore> {
        Ok(SocketCore {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(64),
                queued_bytes: 0,
                readable: false,
                device_waiter: None,
                in_device: false,
            }),
            cond: Condvar::new(),
            waiters: AtomicUsize::new(0),
            rx_len: AtomicUsize::new(0),
            rcvbuf: AtomicUsize::new(DEFAULT_RCVBUF),
            error: AtomicI32::new(0),
            tsflags: AtomicU32::new(0),
            tx_ring: TxTimestampRing::default(),
            ready: EventFd::new()?,
            polled: AtomicBool::new(false),
            drops: AtomicU64::new(0),
            last_port: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bring the eventfd in line with the state and wake sleepers (called with the lock held).
    fn refresh(&self, st: &mut State) {
        if self.waiters.load(Relaxed) > 0 {
            self.cond.notify_all();
        }
        if let Some((device, waiter)) = &st.device_waiter {
            if st.in_device && *waiter != std::thread::current().id() {
                device.wake();
            }
        }
        if !self.polled.load(Relaxed) {
            return;
        }
        let want =
            !st.items.is_empty() || self.error.load(Relaxed) != 0 || !self.tx_ring.is_empty();
        if want != st.readable {
            st.readable = want;
            if want {
                self.ready.set()
            } else {
                self.ready.clear()
            }
        }
    }

    /// RX path: queue a datagram, or give it back when over SO_RCVBUF (the caller counts it).
    /// Stamps `delivery` when `stamp` (some socket has RX timestamping on, as EVL does).
    pub fn push(&self, mut buf: PacketBuf, stamp: bool) -> Result<(), PacketBuf> {
        let size = buf.len() + RX_OVERHEAD;
        let mut st = self.lock();
        if st.queued_bytes + size > self.rcvbuf.load(Relaxed) {
            self.drops.fetch_add(1, Relaxed);
            return Err(buf);
        }
        buf.times.delivery = if stamp { monotonic_ns() } else { 0 };
        st.queued_bytes += size;
        st.items.push_back(buf);
        self.rx_len.store(st.items.len(), Release);
        self.refresh(&mut st);
        Ok(())
    }

    /// The oldest datagram, if any.
    pub fn pop(&self) -> Option<PacketBuf> {
        if self.rx_len.load(Acquire) == 0 {
            return None;
        }
        let mut st = self.lock();
        let buf = st.items.pop_front()?;
        self.last_port.store(buf.meta.port_id as usize + 1, Relaxed);
        st.queued_bytes -= buf.len() + RX_OVERHEAD;
        self.rx_len.store(st.items.len(), Release);
        self.refresh(&mut st);
        Some(buf)
    }

    /// The `Port::id` the last popped datagram came from (None before the first).
    pub fn last_port(&self) -> Option<usize> {
        self.last_port.load(Relaxed).checked_sub(1)
    }

    /// The calling thread is about to block in `device` waiting for this socket's datagrams:
    /// while it is registered, a push, pop, error or purge from any other thread wakes that
    /// device, so that what another port (or the in-band stage) queues is not missed. False
    /// when another thread of this socket is registered already (one at a time).
    pub fn claim_device_wait(&self, device: Arc<dyn Device>) -> bool {
        let mut st = self.lock();
        if st.device_waiter.is_some() {
            return false;
        }
        st.device_waiter = Some((device, std::thread::current().id()));
        true
    }

    /// The registered device waiter enters (true) or leaves (false) its device. Entering
    /// takes the lock, so a push that came just before is seen by the waiter's own check and
    /// one that comes after wakes the device.
    pub fn set_in_device(&self, inside: bool) {
        self.lock().in_device = inside;
    }

    /// The calling thread no longer waits in a device (see `claim_device_wait`).
    pub fn release_device_wait(&self) {
        let mut st = self.lock();
        if st
            .device_waiter
            .as_ref()
            .is_some_and(|(_, t)| *t == std::thread::current().id())
        {
            st.device_waiter = None;
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.rx_len.load(Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pending error (ENETDOWN after a port went down, EBADF after close), 0 if none.
    pub fn error(&self) -> i32 {
        self.error.load(Acquire)
    }

    /// Wake every waiter with `err`; 0 clears it (the port came back).
    pub fn set_error(&self, err: i32) {
        self.error.store(err, Release);
        let mut st = self.lock();
        self.refresh(&mut st);
    }

    /// Free every queued datagram `keep` does not want kept.
    pub fn purge(&self, mut keep: impl FnMut(&PacketBuf) -> bool) {
        let mut st = self.lock();
        let before = st.items.len();
        st.items.retain(|b| keep(b));
        if st.items.len() != before {
            st.queued_bytes = st.items.iter().map(|b| b.len() + RX_OVERHEAD).sum();
            self.rx_len.store(st.items.len(), Release);
            self.refresh(&mut st);
        }
    }

    /// Block (GIL released by the caller) until a datagram is queued, an error is pending, or
    /// the absolute CLOCK_MONOTONIC `deadline_ns` passes.
    pub fn wait(&self, deadline_ns: Option<u64>) -> WaitEnd {
        self.wait_for(deadline_ns, &|s| !s.is_empty())
    }

    /// Busy poll: run `poll` (the ports' RX processing, from this thread) until a datagram is
    /// queued or an error pending (true), or `spin_ns` or the deadline pass (false).
    pub fn spin(&self, deadline_ns: Option<u64>, spin_ns: u64, poll: &mut dyn FnMut()) -> bool {
        let mut end = monotonic_ns().saturating_add(spin_ns);
        if let Some(d) = deadline_ns {
            end = end.min(d);
        }
        loop {
            if !self.is_empty() || self.error() != 0 {
                return true;
            }
            poll();
            if monotonic_ns() >= end {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// As `wait`, for TX timestamp records (or TX stamping turned off meanwhile).
    pub fn wait_tx_records(&self, deadline_ns: Option<u64>) -> WaitEnd {
        self.wait_for(deadline_ns, &|s| {
            !s.tx_ring.is_empty() || s.tsflags() & TS_TX == 0
        })
    }

    fn wait_for(&self, deadline_ns: Option<u64>, have: &dyn Fn(&SocketCore) -> bool) -> WaitEnd {
        let ready = |s: &SocketCore| have(s) || s.error() != 0;
        let mut st = self.lock();
        self.waiters.fetch_add(1, SeqCst);
        let end = loop {
            // checked under the lock every push/refresh takes: no wake-up can be missed
            if ready(self) {
                break WaitEnd::Ready;
            }
            let timeout = match deadline_ns {
                None => std::time::Duration::from_millis(250),
                Some(d) => {
                    let now = monotonic_ns();
                    if now >= d {
                        break WaitEnd::TimedOut;
                    }
                    std::time::Duration::from_nanos(d - now)
                }
            };
            st = self
                .cond
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        self.waiters.fetch_sub(1, SeqCst);
        drop(st);
        end
    }

    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf.load(Relaxed)
    }

    pub fn set_rcvbuf(&self, bytes: usize) {
        self.rcvbuf.store(bytes, Relaxed);
    }

    pub fn tsflags(&self) -> u32 {
        self.tsflags.load(Relaxed)
    }

    /// SO_TIMESTAMP_OOB: EVL installs a fresh TX ring whenever the option is set.
    pub fn set_tsflags(&self, flags: u32) {
        self.tsflags.store(flags, Relaxed);
        self.tx_ring.reset();
        let mut st = self.lock();
        self.refresh(&mut st);
    }

    /// TX path: one record per transmitted datagram, points not asked for zeroed.
    pub fn push_tx_record(&self, t: IoTimes) {
        let flags = self.tsflags();
        if flags & TS_TX == 0 {
            return;
        }
        let rec = IoTimes {
            device: if flags & TS_DEVICE != 0 { t.device } else { 0 },
            queuing: if flags & TS_QUEUING != 0 {
                t.queuing
            } else {
                0
            },
            delivery: t.delivery,
        };
        let mut st = self.lock();
        self.tx_ring.push(rec);
        self.refresh(&mut st);
    }

    /// `oob_recvmsg(MSG_TIMESTAMP)`: move up to `room` records into `out`.
    pub fn pop_tx_records(&self, out: &mut [u8], room: usize) -> (usize, bool) {
        let mut st = self.lock();
        let r = self.tx_ring.pop_into(out, room);
        self.refresh(&mut st);
        r
    }

    pub fn tx_records(&self) -> usize {
        self.tx_ring.len()
    }

    /// TX records lost to ring overflows since SO_TIMESTAMP_OOB was last set.
    pub fn tx_records_dropped(&self) -> u64 {
        self.tx_ring.dropped()
    }

    /// Threads blocked in `wait`/`wait_tx_records` right now.
    pub fn waiters(&self) -> usize {
        self.waiters.load(SeqCst)
    }

    /// The readiness fd (readable while something is queued or an error pending). The first
    /// call brings it in line with the state (under the queue's lock, so no push or pop
    /// in between is missed) and keeps it so from then on.
    pub fn fd(&self) -> i32 {
        if !self.polled.swap(true, Relaxed) {
            let mut st = self.lock();
            self.refresh(&mut st);
        }
        self.ready.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    fn datagram(pool: &std::sync::Arc<Pool>, n: usize) -> PacketBuf {
        let mut b = pool.take().unwrap();
        b.fill(&vec![7u8; n]);
        b
    }

    #[test]
    fn fd_follows_the_queue_from_its_first_use() {
        let pool = Pool::new("t", 4, 2048);
        let s = SocketCore::new().unwrap();
        assert!(s.push(datagram(&pool, 10), false).is_ok());
        assert!(!s.ready.wait(Some(0))); // nobody asked for the fd: left alone
        let fd = s.fd(); // first use: in line with the queue at once
        assert!(s.ready.wait(Some(0)));
        assert!(s.pop().is_some());
        assert!(!s.ready.wait(Some(0)));
        assert!(s.push(datagram(&pool, 10), false).is_ok());
        assert!(s.ready.wait(Some(0)));
        assert_eq!(s.fd(), fd);
    }

    #[test]
    fn rcvbuf_bounds_the_queue_and_fd_follows() {
        let pool = Pool::new("t", 8, 2048);
        let s = SocketCore::new().unwrap();
        s.fd();
        s.set_rcvbuf(2 * (100 + RX_OVERHEAD));
        assert!(s.push(datagram(&pool, 100), false).is_ok());
        assert!(s.push(datagram(&pool, 100), true).is_ok());
        let refused = s.push(datagram(&pool, 100), false);
        assert!(refused.is_err());
        drop(refused);
        assert_eq!(s.drops.load(Relaxed), 1);
        assert!(s.ready.wait(Some(0)));
        assert_eq!(s.pop().unwrap().times.delivery, 0);
        assert!(s.pop().unwrap().times.delivery > 0);
        assert!(s.pop().is_none());
        assert!(!s.ready.wait(Some(0)));
        assert_eq!(pool.free(), 8);
    }

    #[test]
    fn wait_times_out_and_wakes_on_error() {
        let s = std::sync::Arc::new(SocketCore::new().unwrap());
        let soon = monotonic_ns() + 10_000_000;
        assert_eq!(s.wait(Some(soon)), WaitEnd::TimedOut);
        assert!(!s.spin(None, 1_000_000, &mut || {}));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait(None));
        std::thread::sleep(std::time::Duration::from_millis(10));
        s.set_error(libc::ENETDOWN);
        assert_eq!(t.join().unwrap(), WaitEnd::Ready);
        assert_eq!(s.error(), libc::ENETDOWN);
    }

    #[test]
    fn tx_records_only_when_asked() {
        let s = SocketCore::new().unwrap();
        s.push_tx_record(IoTimes {
            device: 1,
            queuing: 2,
            delivery: 3,
        });
        assert_eq!(s.tx_records(), 0);
        s.set_tsflags(TS_TX | TS_DEVICE);
        s.push_tx_record(IoTimes {
            device: 1,
            queuing: 2,
            delivery: 3,
        });
        let mut out = [0u8; 48];
        assert_eq!(s.pop_tx_records(&mut out, 2), (1, false));
        assert_eq!(u64::from_ne_bytes(out[8..16].try_into().unwrap()), 0); // queuing not asked
        assert_eq!(u64::from_ne_bytes(out[..8].try_into().unwrap()), 1);
    }
}

//! Preallocated packet buffers (EVL's per-port skb pools).
//!
//! A `Pool` allocates `count` buffers of `size` bytes once, in one slab. Taking a buffer pops an
//! index from a lock-free bounded queue and returns a `PacketBuf` that owns that slot until it is
//! dropped, when the index goes back: no allocation per packet, and no way to leak a buffer
//! short of leaking the `PacketBuf` itself. Blocking takers (a sender waiting for room) sleep on
//! a condition variable that is only touched when the pool is empty.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::timestamps::{monotonic_ns, IoTimes};

/// What the layers learn about a received frame, carried with its buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The port the frame arrived on (`Port::id`).
    pub port_id: u32,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub vlan_id: u16,
    pub protocol: u16,
    pub pkttype: u8,
    pub src_mac: [u8; 6],
}

/// Pause instructions between two looks of a spinning taker (`take_spin_wait`): a few hundred
/// nanoseconds, less than one device transmit.
const SPIN_BACKOFF: u32 = 64;

/// A fixed set of equally sized buffers.
///
/// Aligned to a cache line pair so that, inside its `Arc`, the reference count that every
/// `take()` and buffer drop touches does not share a line with the fields every buffer access
/// reads (a pool is used from two CPUs at once: a sender takes, the TX thread gives back).
#[repr(align(128))]
pub struct Pool {
    name: String,
    size: usize,
    count: usize,
    slab: Box<[UnsafeCell<u8>]>,
    free: ArrayQueue<u32>,
    waiters: AtomicUsize,
    closed: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
}

// SAFETY: the slab is only reached through a `PacketBuf`, and each index is owned by exactly one
// `PacketBuf` at a time (the free queue hands every index out once), so no two threads ever
// access the same bytes. Everything else in `Pool` is Sync on its own.
unsafe impl Sync for Pool {}
// SAFETY: sending a Pool moves only owned data (the slab, the queue, atomics, a mutex).
unsafe impl Send for Pool {}

/// Why a blocking `take_wait` gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeError {
    TimedOut,
    Closed,
}

impl Pool {
    /// A pool of `count` buffers of `size` bytes, all allocated now.
    pub fn new(name: &str, count: usize, size: usize) -> Arc<Pool> {
        let free = ArrayQueue::new(count.max(1));
        for i in 0..count {
            let _ = free.push(i as u32);
        }
        let slab = (0..count * size).map(|_| UnsafeCell::new(0u8)).collect();
        Arc::new(Pool {
            name: name.to_string(),
            size,
            count,
            slab,
            free,
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// Bytes per buffer.
    pub fn size(&self) -> usize {
        self.size
    }
    /// Buffers in all.
    pub fn total(&self) -> usize {
        self.count
    }
    /// Buffers not taken right now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// A buffer, or None when the pool is empty (the caller counts the drop or waits).
    pub fn take(self: &Arc<Self>) -> Option<PacketBuf> {
        let idx = self.free.pop()?;
        Some(PacketBuf {
            pool: Arc::clone(self),
            idx,
            start: 0,
            end: 0,
            times: IoTimes::default(),
            meta: Meta::default(),
        })
    }

    /// A buffer, waiting until one is given back, the absolute CLOCK_MONOTONIC `deadline_ns`
    /// passes (`None`: no deadline) or the pool is closed.
    pub fn take_wait(self: &Arc<Self>, deadline_ns: Option<u64>) -> Result<PacketBuf, TakeError> {
        if let Some(b) = self.take() {
            return Ok(b);
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = loop {
            if self.closed.load(Ordering::SeqCst) {
                break Err(TakeError::Closed);
            }
            if let Some(b) = self.take() {
                break Ok(b);
            }
            let mut wait = Duration::from_millis(100);
            if let Some(d) = deadline_ns {
                let now = monotonic_ns();
                if now >= d {
                    break Err(TakeError::TimedOut);
                }
                wait = wait.min(Duration::from_nanos(d - now));
            }
            guard = self
                .cond
                .wait_timeout(guard, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// As `take_wait`, spinning up to `spin_ns` first: for a taker that knows buffers are
    /// coming back within microseconds (a stream feeding a busy TX thread), where sleeping
    /// would cost a wake-up per buffer on both sides.
    pub fn take_spin_wait(
        self: &Arc<Self>,
        spin_ns: u64,
        deadline_ns: Option<u64>,
    ) -> Result<PacketBuf, TakeError> {
        let end = monotonic_ns()
            .saturating_add(spin_ns)
            .min(deadline_ns.unwrap_or(u64::MAX));
        while !self.closed.load(Ordering::Relaxed) {
            if let Some(b) = self.take() {
                return Ok(b);
            }
            // back off between looks: the giver pushes to the very cache lines a tight loop of
            // pops would keep stealing from it
            for _ in 0..SPIN_BACKOFF {
                std::hint::spin_loop();
            }
            if monotonic_ns() >= end {
                break;
            }
        }
        self.take_wait(deadline_ns)
    }

    /// Wake every waiter with `TakeError::Closed` (the port is going away).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    fn give_back(&self, idx: u32) {
        // Cannot fail: the queue has room for every index and each is given back once.
        let _ = self.free.push(idx);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_one();
        }
    }
}

/// One buffer taken from a pool; goes back when dropped.
///
/// `data()[start..end]` is the meaningful part (a frame, or a datagram's payload once the
/// layers have moved `start`).
pub struct PacketBuf {
    pool: Arc<Pool>,
    idx: u32,
    pub start: usize,
    pub end: usize,
    pub times: IoTimes,
    pub meta: Meta,
}

impl PacketBuf {
    /// The whole buffer.
    pub fn data(&self) -> &[u8] {
        let size = self.pool.size;
        let base = self.idx as usize * size;
        // SAFETY: this `PacketBuf` owns slot `idx` exclusively (see `Pool`'s Sync impl), the
        // range lies inside the slab, and UnsafeCell<u8> has the layout of u8.
        unsafe { std::slice::from_raw_parts(self.pool.slab[base].get() as *const u8, size) }
    }

    /// The whole buffer, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let size = self.pool.size;
        let base = self.idx as usize * size;
        // SAFETY: as in `data`, and `&mut self` makes this the only live view of the slot.
        unsafe { std::slice::from_raw_parts_mut(self.pool.slab[base].get(), size) }
    }

    /// The meaningful bytes.
    pub fn payload(&self) -> &[u8] {
        &self.data()[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Capacity of the buffer.
    pub fn capacity(&self) -> usize {
        self.pool.size
    }

    /// Replace the contents with `bytes` (false, unchanged, if they do not fit).
    pub fn fill(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.capacity() {
            return false;
        }
        self.data_mut()[..bytes.len()].copy_from_slice(bytes);
        self.start = 0;
        self.end = bytes.len();
        true
    }
}

impl Drop for PacketBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_drop_return_buffers() {
        let pool = Pool::new("t", 2, 64);
        let a = pool.take().unwrap();
        let mut b = pool.take().unwrap();
        assert!(pool.take().is_none());
        assert_eq!(pool.free(), 0);
        assert!(b.fill(b"hello"));
        assert_eq!(b.payload(), b"hello");
        drop(a);
        assert_eq!(pool.free(), 1);
        drop(b);
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn fill_refuses_oversize() {
        let pool = Pool::new("t", 1, 8);
        let mut b = pool.take().unwrap();
        assert!(!b.fill(&[0u8; 9]));
    }

    #[test]
    fn take_wait_times_out_and_wakes() {
        let pool = Pool::new("t", 1, 8);
        let held = pool.take().unwrap();
        let soon = monotonic_ns() + 20_000_000;
        assert_eq!(pool.take_wait(Some(soon)).err(), Some(TakeError::TimedOut));
        let p2 = Arc::clone(&pool);
        let t = std::thread::spawn(move || p2.take_wait(None).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert!(t.join().unwrap());
    }

    #[test]
    fn close_wakes_waiters() {
        let pool = Pool::new("t", 1, 8);
        let _held = pool.take().unwrap();
        let p2 = Arc::clone(&pool);
        let t = std::thread::spawn(move || p2.take_wait(None).err());
        std::thread::sleep(Duration::from_millis(20));
        pool.close();
        assert_eq!(t.join().unwrap(), Some(TakeError::Closed));
    }
}

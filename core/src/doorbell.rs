//! A doorbell: the binary semaphore that wakes a sleeping oob thread (EVL's wait queues with a
//! "pending" flag; in the Python version `evlnet.core.buffers.Doorbell`).
//!
//! `ring()` never blocks and coalesces: ringing an already rung bell does nothing, and a ring that
//! happens before `wait()` is never lost (the waiter finds it and returns at once). Several threads
//! may ring; each ring releases at most one `wait()`.
//!
//! The ring state is an atomic flag, so a `ring()` while nobody sleeps costs one atomic swap and
//! one load: the mutex and condition variable are only touched when a waiter is (or may be)
//! asleep. The waiter count and the flag are both `SeqCst`, the Dekker pattern: either the ringer
//! sees the waiter's count and notifies under the lock, or the waiter sees the flag before it
//! sleeps.

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicBool, AtomicUsize},
    Condvar, Mutex,
};
use std::sync::atomic::Ordering::SeqCst;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicUsize};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A binary semaphore for waking one thread (see the module doc). Under `--cfg loom` it is
/// built on loom's atomics and locks, for `tests/loom_doorbell.rs`.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Doorbell {
    pub fn new() -> Doorbell {
        Doorbell::default()
    }

    /// Ring: release one current or future `wait()`. Never blocks; rings coalesce.
    #[inline]
    pub fn ring(&self) {
        if self.rung.swap(true, SeqCst) {
            return; // already rung: whoever rang first notifies (or the waiter sees the flag)
        }
        if self.waiters.load(SeqCst) > 0 {
            // Taking the lock orders this notify after a waiter's last look at the flag (it
            // holds the lock from that look until it sleeps), so the notify cannot be missed.
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_one();
        }
    }

    /// Whether the bell is rung right now (nobody has consumed the ring yet).
    pub fn is_rung(&self) -> bool {
        self.rung.load(SeqCst)
    }

    /// Wait for a ring and consume it. `None` waits forever, `Some(0)` only takes a pending
    /// ring, `Some(ns)` waits up to `ns` nanoseconds. True if rung, false on timeout.
    pub fn wait(&self, timeout_ns: Option<u64>) -> bool {
        if self.rung.swap(false, SeqCst) {
            return true;
        }
        if timeout_ns == Some(0) {
            return false;
        }
        // `Instant` + `Duration` for the deadline: `checked_add` turns an absurd timeout into
        // "forever" rather than a panic.
        let deadline =
            timeout_ns.and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)));
        let forever = deadline.is_none();
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let rung = loop {
            if self.rung.swap(false, SeqCst) {
                break true;
            }
            if forever {
                guard = self.cond.wait(guard).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let now = Instant::now();
            let Some(left) = deadline.and_then(|d| d.checked_duration_since(now)) else {
                break false;
            };
            if left.is_zero() {
                break false;
            }
            guard = self
                .cond
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        rung
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ring_before_wait_is_kept_and_coalesced() {
        let b = Doorbell::new();
        assert!(!b.wait(Some(0)));
        b.ring();
        b.ring();
        assert!(b.is_rung());
        assert!(b.wait(Some(0)));
        assert!(!b.wait(Some(0)), "two rings coalesce into one");
        b.ring();
        assert!(
            b.wait(None),
            "a pending ring releases a forever wait at once"
        );
    }

    #[test]
    fn wait_times_out() {
        let b = Doorbell::new();
        let t0 = Instant::now();
        assert!(!b.wait(Some(20_000_000)));
        assert!(t0.elapsed() >= Duration::from_millis(20));
        // an absurd timeout is "forever", not a panic: a ring from another thread ends it
        let b = Arc::new(b);
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || b2.wait(Some(u64::MAX)));
        std::thread::sleep(Duration::from_millis(10));
        b.ring();
        assert!(t.join().unwrap());
    }

    #[test]
    fn ring_wakes_a_sleeper_and_no_ring_is_lost() {
        let b = Arc::new(Doorbell::new());
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || b2.wait(None));
        std::thread::sleep(Duration::from_millis(20));
        b.ring();
        assert!(t.join().unwrap());

        // ping-pong: every ring is seen by exactly one wait, whatever the interleaving
        let ping = Arc::new(Doorbell::new());
        let pong = Arc::new(Doorbell::new());
        let (pi, po) = (Arc::clone(&ping), Arc::clone(&pong));
        let t = std::thread::spawn(move || {
            for _ in 0..10_000 {
                assert!(pi.wait(Some(5_000_000_000)));
                po.ring();
            }
        });
        for _ in 0..10_000 {
            ping.ring();
            assert!(pong.wait(Some(5_000_000_000)));
        }
        t.join().unwrap();
        assert!(!ping.is_rung() && !pong.is_rung());
    }
}

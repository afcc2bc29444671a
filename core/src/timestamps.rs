//! EVL's three timestamp points and the per-socket TX timestamp ring.
//!
//! All times are CLOCK_MONOTONIC nanoseconds, 0 when a point was not taken.

use std::sync::Mutex;

/// Records a socket's TX ring holds (EVL: 128).
pub const TX_RING_SIZE: usize = 128;

/// CLOCK_MONOTONIC now, in nanoseconds.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, to convert kernel (realtime) stamps.
pub fn realtime_offset_ns() -> i64 {
    let mut rt = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `monotonic_ns`.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt) };
    let mono = monotonic_ns() as i64;
    rt.tv_sec * 1_000_000_000 + rt.tv_nsec - mono
}

/// One `struct evl_net_iotimes` record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTimes {
    pub device: u64,
    pub queuing: u64,
    pub delivery: u64,
}

impl IoTimes {
    /// The 24-byte native layout EVL copies to user space.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.device.to_ne_bytes());
        out[8..16].copy_from_slice(&self.queuing.to_ne_bytes());
        out[16..].copy_from_slice(&self.delivery.to_ne_bytes());
        out
    }
}

struct Ring {
    records: [IoTimes; TX_RING_SIZE],
    head: usize,
    len: usize,
    overflowed: bool,
    /// Records lost to overflows since the last reset.
    dropped: u64,
}

/// The TX timestamp ring of one socket: the TX path pushes, `oob_recvmsg(MSG_TIMESTAMP)` pops.
/// As EVL's `queue_iots_tx`, a full ring drops the new record and remembers the overflow, which
/// the next collection that moves records reports (`MSG_TRUNC`) and clears.
pub struct TxTimestampRing {
    inner: Mutex<Ring>,
}

impl Default for TxTimestampRing {
    fn default() -> Self {
        TxTimestampRing {
            inner: Mutex::new(Ring {
                records: [IoTimes::default(); TX_RING_SIZE],
                head: 0,
                len: 0,
                overflowed: false,
                dropped: 0,
            }),
        }
    }
}

impl TxTimestampRing {
    /// Push a record (the lock is held for a few stores only).
    pub fn push(&self, rec: IoTimes) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if r.len == TX_RING_SIZE {
            r.overflowed = true;
            r.dropped += 1;
            return;
        }
        let tail = (r.head + r.len) % TX_RING_SIZE;
        r.records[tail] = rec;
        r.len += 1;
    }

    /// Move up to `room` records into `out` (24 bytes each); returns (records, truncated).
    pub fn pop_into(&self, out: &mut [u8], room: usize) -> (usize, bool) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = room.min(r.len).min(out.len() / 24);
        for i in 0..n {
            let rec = r.records[(r.head + i) % TX_RING_SIZE];
            out[i * 24..(i + 1) * 24].copy_from_slice(&rec.to_bytes());
        }
        r.head = (r.head + n) % TX_RING_SIZE;
        r.len -= n;
        let truncated = n > 0 && r.overflowed;
        if truncated {
            r.overflowed = false;
        }
        (n, truncated)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget every record (setting SO_TIMESTAMP_OOB installs a fresh ring in EVL).
    pub fn reset(&self) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.head = 0;
        r.len = 0;
        r.overflowed = false;
        r.dropped = 0;
    }

    /// Records lost to overflows since the last reset.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_overflow_reports_truncation_once() {
        let ring = TxTimestampRing::default();
        for i in 0..(TX_RING_SIZE as u64 + 2) {
            ring.push(IoTimes {
                device: i,
                queuing: 0,
                delivery: i,
            });
        }
        let mut out = vec![0u8; 24 * 200];
        let (n, trunc) = ring.pop_into(&mut out, 200);
        assert_eq!(n, TX_RING_SIZE);
        assert!(trunc);
        // the two newest were dropped, the oldest kept
        assert_eq!(u64::from_ne_bytes(out[..8].try_into().unwrap()), 0);
        ring.push(IoTimes::default());
        assert_eq!(ring.pop_into(&mut out, 200), (1, false));
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}

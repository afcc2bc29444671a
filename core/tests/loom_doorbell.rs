//! Model-checking the doorbell's wake-up protocol with loom: every interleaving of ringers and a
//! waiter (loom explores them all, within its bounds) ends with the waiter released, never
//! asleep with a ring pending — a lost wake-up shows up as a deadlock, which loom reports.
//!
//!     RUSTFLAGS="--cfg loom" cargo test --release --test loom_doorbell
//!
//! Only the doorbell is modelled: it is the one lock-free protocol of our own whose failure
//! (a lost wake-up of an RX or TX thread) the other tests could miss. The pools' free lists,
//! the qdisc and the in-band queue are crossbeam's `ArrayQueue`, and the snapshots arc-swap's;
//! neither crate builds against loom's types, so they rely on their authors' own checks.
#![cfg(loom)]

use _core::doorbell::Doorbell;
use loom::sync::Arc;
use loom::thread;

#[test]
fn a_ring_always_releases_a_waiter_that_waits_forever() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::new());
        let ringer = {
            let bell = bell.clone();
            thread::spawn(move || bell.ring())
        };
        assert!(bell.wait(None));
        ringer.join().unwrap();
        assert!(!bell.is_rung(), "the waiter consumed the ring");
    });
}

#[test]
fn two_ringers_one_waiter_coalesce_without_losing_the_ring() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::new());
        let ringers: Vec<_> = (0..2)
            .map(|_| {
                let bell = bell.clone();
                thread::spawn(move || bell.ring())
            })
            .collect();
        assert!(bell.wait(None));
        for r in ringers {
            r.join().unwrap();
        }
        // at most one ring may still be pending (a ring after the waiter took the first)
        let _ = bell.wait(Some(0));
        assert!(!bell.is_rung());
    });
}

#[test]
fn a_ring_between_two_waits_releases_the_second() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::new());
        let waiter = {
            let bell = bell.clone();
            thread::spawn(move || {
                assert!(bell.wait(None));
                assert!(bell.wait(None));
            })
        };
        bell.ring();
        // the second ring: only once the first was consumed (rings coalesce otherwise)
        while bell.is_rung() {
            thread::yield_now();
        }
        bell.ring();
        waiter.join().unwrap();
    });
}

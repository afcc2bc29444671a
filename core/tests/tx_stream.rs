//! Run-to-completion TX and the hand-off of streams to the TX thread (`Port::transmit`), on a
//! virtual link whose far end receives what the port sends: spaced frames leave from the
//! sender's thread, a back-to-back stream is handed to the TX thread, and either way every
//! frame reaches the wire once, in order, with every TX buffer back in its pool.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::time::{Duration, Instant};

use _core::device::Device;
use _core::pool::Pool;
use _core::port::{TxItem, STREAM_GAP_NS, STREAM_MIN_FRAMES, TX_GIVE_BACK_BATCH};
use harness::*;

/// A rig whose port hands streams off (or not), and a pool on the wire's far end to receive.
fn rig(handoff: bool) -> Rig {
    rig_with_pool(handoff, 256)
}

fn rig_with_pool(handoff: bool, tx_poolsz: usize) -> Rig {
    let mut cfg = port_config(tx_poolsz, 64, 1_000_000_000, true);
    cfg.tx_stream_handoff = handoff;
    let rig = Rig::new(&cfg);
    rig.link
        .a
        .attach(Pool::new("far end", 32_768, 128))
        .expect("attach the far end");
    rig
}

/// Transmit a minimal Ethernet frame carrying `seq`, waiting for a TX buffer if need be.
fn send(rig: &Rig, seq: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = loop {
        if let Some(b) = rig.port.tx_pool.take() {
            break b;
        }
        assert!(Instant::now() < deadline, "no TX buffer came back");
        std::hint::spin_loop();
    };
    let mut frame = ether([0x02, 0, 0, 0, 0, 9], rig.mac, 0x88b5, &[0; 46]);
    frame[14..18].copy_from_slice(&seq.to_be_bytes());
    assert!(buf.fill(&frame));
    rig.port
        .transmit(TxItem {
            buf,
            sock: None,
            tsflags: 0,
        })
        .expect("transmit");
}

/// The sequence numbers of the `n` frames the far end receives (fails after 10 s).
fn receive(rig: &Rig, n: usize) -> Vec<u32> {
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seqs.len() < n && Instant::now() < deadline {
        rig.link
            .a
            .receive(64, Some(10_000_000), &mut |b| {
                let f = b.payload();
                seqs.push(u32::from_be_bytes([f[14], f[15], f[16], f[17]]));
            })
            .expect("receive");
    }
    seqs
}

fn wait_pool_full(rig: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.port.tx_pool.free() < rig.port.tx_pool.total() {
        assert!(Instant::now() < deadline, "TX buffers never came back");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Send `n` frames back to back while the far end receives them; checks that every frame
/// arrived once, in order, that every TX buffer came back, and that the TX thread carried them.
fn stream_in_order(rig: &Rig, n: u32) {
    let received = std::thread::scope(|s| {
        let rx = s.spawn(move || receive(rig, n as usize));
        for seq in 0..n {
            send(rig, seq);
        }
        rx.join().expect("receiver")
    });
    assert_eq!(
        received,
        (0..n).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    wait_pool_full(rig);
    assert!(
        rig.counter("tx_queued") > 0,
        "a stream of {n} back-to-back frames never reached the TX thread"
    );
}

#[test]
fn a_back_to_back_stream_goes_to_the_tx_thread_in_order() {
    let rig = rig(true);
    let n = 20_000u32;
    stream_in_order(&rig, n);
    assert_eq!(rig.counter("tx_packets"), u64::from(n));
    assert_eq!(rig.counter("tx_qdisc_drops"), 0);
}

#[test]
fn a_tx_pool_smaller_than_a_give_back_batch_keeps_streaming() {
    // The TX thread gives buffers back in batches; with fewer buffers than a batch, it must
    // still give them back (when the qdisc runs dry) rather than hold the sender's last ones.
    let rig = rig_with_pool(true, TX_GIVE_BACK_BATCH / 4);
    stream_in_order(&rig, 5_000);
}

#[test]
fn spaced_frames_leave_from_the_senders_thread() {
    let rig = rig(true);
    let n = 3 * STREAM_MIN_FRAMES;
    for seq in 0..n {
        send(&rig, seq);
        // well past the stream gap: a request/response or periodic sender
        let until = Instant::now() + Duration::from_nanos(20 * STREAM_GAP_NS);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    assert_eq!(receive(&rig, n as usize), (0..n).collect::<Vec<_>>());
    assert_eq!(
        rig.counter("tx_queued"),
        0,
        "spaced frames went through the TX thread"
    );
    assert_eq!(rig.counter("tx_packets"), u64::from(n));
}

#[test]
fn without_the_handoff_a_stream_stays_run_to_completion() {
    let rig = rig(false);
    let n = 2_000u32;
    for seq in 0..n {
        send(&rig, seq);
    }
    assert_eq!(receive(&rig, n as usize), (0..n).collect::<Vec<_>>());
    assert_eq!(rig.counter("tx_queued"), 0);
    wait_pool_full(&rig);
}

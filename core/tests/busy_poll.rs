//! Receivers that consume a port's device themselves: a spinning one (SO_BUSY_POLL) and one
//! blocked in the device (`rx_wait_in_device`). When both are there, the blocked one leaves the
//! device to the spinner: two consumers on one CPU would fill the socket queues faster than
//! the spinning application drains them (the bench's RX flood lost half its datagrams so).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::time::{Duration, Instant};

use _core::port::Port;
use _core::timestamps::monotonic_ns;
use harness::*;

const DEFER_NS: u64 = 50_000_000;

fn rig() -> Rig {
    let mut cfg = port_config(16, 64, 1_000_000_000, true);
    cfg.busy_poll_defer_ns = DEFER_NS;
    Rig::new(&cfg)
}

/// The RX thread out of the way (it would hold the device otherwise), and the wake-up parking
/// rang taken by a short wait, so that the next wait in the device blocks.
fn park_rx_thread(port: &Port) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port.pause_rx_thread(true) {
        assert!(Instant::now() < deadline, "the RX thread never parked");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(port.wait_rx(1_000_000), Some(0));
}

#[test]
fn a_receiver_blocked_in_the_device_is_woken_when_a_spinner_arrives() {
    let rig = rig();
    let port = &rig.port;
    park_rx_thread(port);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            port.device_wait_enter();
            let t0 = Instant::now();
            let got = port.wait_rx(5_000_000_000);
            port.device_wait_exit();
            (got, t0.elapsed())
        });
        // let the waiter block in the device (a frame-less wait of up to 5 s)
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the waiter did not block");
        port.spin_enter();
        let (got, waited) = waiter.join().expect("waiter");
        port.spin_exit();
        assert_eq!(got, Some(0), "woken without a frame");
        assert!(
            waited < Duration::from_secs(4),
            "the waiter stayed in the device for {waited:?} after a spinner arrived"
        );
    });
}

#[test]
fn a_spinner_counts_while_it_spins_and_for_the_defer_time_after() {
    let rig = rig();
    let port = &rig.port;
    assert!(!port.spinning(monotonic_ns(), false));
    port.spin_enter();
    assert!(port.spinning(monotonic_ns(), false));
    assert!(
        port.spinning(monotonic_ns(), true),
        "a spinner now counts for everyone"
    );
    port.spin_exit();
    let now = monotonic_ns();
    // between two receives a spinner runs Python: the others still leave it the device...
    assert!(port.spinning(now, false));
    // ...but the receiver that spun last (its budget ran out) takes the device itself
    assert!(!port.spinning(now, true));
    assert!(
        !port.spinning(now + DEFER_NS, false),
        "the defer time is over"
    );
}

#[test]
fn a_receiver_in_the_device_is_woken_to_step_out_when_a_second_one_blocks() {
    let rig = rig();
    let port = &rig.port;
    park_rx_thread(port);
    std::thread::scope(|s| {
        let first = s.spawn(|| {
            assert!(
                port.receiver_blocks(),
                "the first blocked receiver is alone"
            );
            port.device_wait_enter();
            let t0 = Instant::now();
            let got = port.wait_rx(5_000_000_000);
            port.device_wait_exit();
            let alone = port.receiver_alone();
            port.receiver_unblocks();
            (got, t0.elapsed(), alone)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !first.is_finished(),
            "the first receiver did not block in the device"
        );
        assert!(
            !port.receiver_blocks(),
            "a second blocked receiver is not alone"
        );
        let (got, waited, alone) = first.join().expect("first receiver");
        port.receiver_unblocks();
        assert_eq!(got, Some(0));
        assert!(waited < Duration::from_secs(4), "not woken: {waited:?}");
        assert!(!alone, "the woken receiver must see it is no longer alone");
    });
    assert!(port.receiver_alone());
}

#[test]
fn what_another_thread_queues_wakes_a_receiver_blocked_in_a_device() {
    // a receiver waits in port A's device for its socket; a datagram comes through another
    // port (its RX thread queues it): the device wait must end, not last out its slice
    let rig = rig();
    let port = &rig.port;
    park_rx_thread(port);
    let sock = &rig.udp;
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            assert!(sock.claim_device_wait(std::sync::Arc::clone(&port.device)));
            sock.set_in_device(true);
            let t0 = Instant::now();
            let got = port.wait_rx(5_000_000_000);
            sock.set_in_device(false);
            sock.release_device_wait();
            (got, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !waiter.is_finished(),
            "the receiver did not block in the device"
        );
        let mut buf = rig.port.rx_pool.take().expect("an RX buffer");
        assert!(buf.fill(b"from another port"));
        assert!(sock.push(buf, false).is_ok());
        let (got, waited) = waiter.join().expect("waiter");
        assert_eq!(got, Some(0));
        assert!(waited < Duration::from_secs(4), "not woken: {waited:?}");
    });
    assert_eq!(sock.len(), 1);
    // a second thread cannot claim the socket's device wait while one holds it
    assert!(sock.claim_device_wait(std::sync::Arc::clone(&port.device)));
    std::thread::scope(|s| {
        let other = s.spawn(|| sock.claim_device_wait(std::sync::Arc::clone(&port.device)));
        assert!(!other.join().expect("other"));
    });
    sock.release_device_wait();
}

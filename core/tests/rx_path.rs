//! The whole RX path of a real port (stack, port threads, virtual link, sockets, packet sockets,
//! in-band handlers) under random, mutated and crafted frames (issue 9): no panic, the RX ledger
//! of `_core::stats` balances exactly, every pool is full again once the queues are drained and
//! reassembly has expired, and issue 9's reassembly attacks leave the port able to reassemble
//! the largest datagram.
//!
//! `EVLNET_RX_FRAMES` (default 100 000) and `EVLNET_RX_SEED` change the main run's size and
//! seed. The harness is shared with the fuzz targets (`fuzz/src/lib.rs`).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use _core::device::Device;
use _core::stack::INBAND_QUEUE;
use _core::wire::{BROADCAST_MAC, ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP};
use harness::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Feeds a rig from this thread, paced so frames are not lost for want of RX buffers (the RX
/// thread frees them; the queues are drained here), and knows how many frames it sent.
struct Feeder<'a> {
    rig: &'a Rig,
    sent: u64,
    /// Leave the in-band queue alone (to fill it).
    keep_inband: bool,
}

impl Feeder<'_> {
    fn new(rig: &Rig) -> Feeder<'_> {
        Feeder {
            rig,
            sent: 0,
            keep_inband: false,
        }
    }

    fn drain(&self) {
        self.rig.drain_sockets(&mut |_, _| {});
        if !self.keep_inband {
            self.rig.drain_inband();
        }
    }

    fn send(&mut self, frame: &[u8]) {
        let pool = &self.rig.port.rx_pool;
        if self.sent.is_multiple_of(64) {
            // let the RX thread catch up: it never has more than 64 frames waiting
            self.wait_for("the RX thread to take its frames", || {
                !self.rig.link.b.ready()
            });
            self.drain();
        }
        if pool.free() < pool.total() / 4 {
            self.wait_for("free RX buffers", || {
                self.drain();
                pool.free() >= pool.total() / 4
            });
        }
        self.rig.inject(frame);
        self.sent += 1;
    }

    /// Spin until `done`; a dead or stuck RX thread fails the test instead of hanging it.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}:\n{}",
                self.rig.dump()
            );
            std::thread::yield_now();
        }
    }

    fn send_all<F: AsRef<[u8]>>(&mut self, frames: &[F]) {
        for f in frames {
            self.send(f.as_ref());
        }
    }

    /// Wait until the RX thread has taken every frame sent (into `rx_packets`, or dropped at
    /// the device) and the ledger balances; the socket queues are drained meanwhile.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.drain();
            let seen = self.rig.counter("rx_packets") + self.rig.device_drops();
            if seen == self.sent && !self.rig.link.b.ready() && self.rig.check_ledger().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never quiet: sent {}, seen {seen}: {:?}",
                self.sent,
                self.rig.check_ledger()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Settle, then wait for reassembly to time out whatever it holds.
    fn settle_and_expire(&self) {
        self.settle();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rig.reasm().0 > 0 {
            assert!(
                Instant::now() < deadline,
                "reassembly never expired: {:?}",
                self.rig.reasm()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.rig.check_ledger().unwrap();
    }

    /// Settle, expire, and wait for the TX thread to give its buffers back: then every pool
    /// must be full.
    fn settle_all(&self) {
        self.settle_and_expire();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = self.rig.check_pools_full() {
            assert!(Instant::now() < deadline, "{e}");
            self.drain();
            std::thread::sleep(Duration::from_millis(5));
        }
        self.rig.check_ledger().unwrap();
    }
}

type Counters = BTreeMap<String, u64>;

/// The port's counters and the device's (as `device_<name>`).
fn counters(rig: &Rig) -> Counters {
    let port = rig.port.counters.snapshot().into_iter();
    let device = rig.link.b.counters().snapshot().into_iter();
    port.map(|(n, v)| (n.to_string(), v))
        .chain(device.map(|(n, v)| (format!("device_{n}"), v)))
        .collect()
}

/// Counters that changed from `before` to now, bytes left out.
fn changed(rig: &Rig, before: &Counters) -> Counters {
    counters(rig)
        .into_iter()
        .filter(|(n, v)| !n.ends_with("_bytes") && *v != before[n])
        .map(|(n, v)| {
            let d = v - before[&n];
            (n, d)
        })
        .collect()
}

fn expect(want: &[(&str, u64)]) -> Counters {
    want.iter().map(|&(n, v)| (n.to_string(), v)).collect()
}

fn ping(dst_mac: [u8; 6], dst: u32, len: usize) -> Vec<u8> {
    let msg = icmp_echo(1, 1, &pattern(len, 9));
    ether(
        dst_mac,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, dst, IPPROTO_ICMP), &msg),
    )
}

fn udp_fragments(ident: u16, len: usize, frag_len: usize) -> Vec<Vec<u8>> {
    udp_fragments_from(PEER_IP, ident, len, frag_len)
}

fn udp_fragments_from(src: u32, ident: u16, len: usize, frag_len: usize) -> Vec<Vec<u8>> {
    let seg = udp_segment(
        src,
        OUR_IP,
        5000,
        UDP_PORT,
        &pattern(len, ident as u8),
        true,
    );
    let ip = Ip {
        ident,
        ..Ip::new(src, OUR_IP, IPPROTO_UDP)
    };
    ip_frames(fragments(&ip, &seg, frag_len))
}

/// Send `frames`, let them settle and reassembly expire: the counters that moved must be
/// exactly `want`.
fn check<F: AsRef<[u8]>>(feed: &mut Feeder, frames: &[F], want: &[(&str, u64)]) {
    let before = counters(feed.rig);
    feed.send_all(frames);
    feed.settle_and_expire();
    let first = frames[0].as_ref();
    let head = &first[..34.min(first.len())];
    assert_eq!(
        changed(feed.rig, &before),
        expect(want),
        "frames {head:x?}..."
    );
}

/// One frame of every fate, and every counter it moves, exactly (tap copies included: the
/// ETH_P_ALL socket sees each frame the port takes).
#[test]
fn each_fate_is_counted_once() {
    let rig = Rig::new(&port_config(16, 2048, 200_000_000, true));
    let mut feed = Feeder::new(&rig);
    let udp = udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_PORT, b"x");
    let one = |extra: &[(&'static str, u64)]| {
        let mut v = vec![("rx_packets", 1), ("rx_tap_copies", 1)];
        v.extend_from_slice(extra);
        v
    };
    check(&mut feed, &[&udp], &one(&[("rx_delivered", 1)]));
    let custom = ether(HOST_MAC, PEER_MAC, ETH_P_CUSTOM, b"c");
    check(&mut feed, &[custom], &one(&[("rx_delivered", 1)]));
    let echo = ping(HOST_MAC, OUR_IP, 56);
    check(
        &mut feed,
        &[&echo],
        &one(&[("icmp_echo_replies", 1), ("tx_packets", 1)]),
    );
    let arp = arp_frame(1, PEER_IP, OUR_IP);
    check(
        &mut feed,
        &[arp],
        &one(&[("rx_inband", 1), ("arp_replies", 1), ("tx_packets", 1)]),
    );
    let inband = ether(HOST_MAC, PEER_MAC, ETH_P_INBAND, b"i");
    check(&mut feed, &[&inband], &one(&[("rx_inband", 1)]));
    let proto = ether(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, OUR_IP, IPPROTO_INBAND), b"p"),
    );
    check(&mut feed, &[proto], &one(&[("rx_inband", 1)]));

    // reassembly: three fragments held, one datagram delivered
    let frags = udp_fragments(50, 2000, 800);
    let three = [
        ("rx_packets", 3),
        ("rx_tap_copies", 3),
        ("rx_reasm_held", 3),
    ];
    let mut want = three.to_vec();
    want.extend([("rx_reasm_ok", 1), ("rx_delivered", 1)]);
    check(&mut feed, &frags, &want);
    // an incomplete datagram times out: its frames were held, the datagram fails
    let frags = udp_fragments(51, 2000, 800);
    let two = [
        ("rx_packets", 2),
        ("rx_tap_copies", 2),
        ("rx_reasm_held", 2),
    ];
    let mut want = two.to_vec();
    want.extend([("rx_reasm_timeouts", 1), ("rx_reasm_fails", 1)]);
    check(&mut feed, &frags[..2], &want);
    // a duplicate fragment, a zero-length one, one past the end of the datagram
    let mut frags = udp_fragments(52, 2000, 800);
    frags.insert(1, frags[0].clone());
    let mut want = vec![
        ("rx_packets", 4),
        ("rx_tap_copies", 4),
        ("rx_reasm_held", 3),
    ];
    want.extend([
        ("rx_reasm_dups", 1),
        ("rx_reasm_ok", 1),
        ("rx_delivered", 1),
    ]);
    check(&mut feed, &frags, &want);
    let empty = Ip {
        ident: 53,
        more: true,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP)
    };
    let empty = ip_frames(vec![ipv4(&empty, &[])]);
    check(&mut feed, &empty, &one(&[("rx_malformed", 1)]));
    // the last fragment is held; one past the end it fixed fails the datagram; the first
    // then starts a new datagram, which times out
    let frags = udp_fragments(54, 2000, 800);
    let past = Ip {
        ident: 54,
        offset: 4000,
        more: true,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP)
    };
    let past = ip_frames(vec![ipv4(&past, &[0; 8])]).remove(0);
    let frags = [frags[2].clone(), past, frags[0].clone()];
    let mut want = vec![
        ("rx_packets", 3),
        ("rx_tap_copies", 3),
        ("rx_reasm_held", 2),
    ];
    want.extend([("rx_reasm_fails", 2), ("rx_reasm_timeouts", 1)]);
    check(&mut feed, &frags, &want);

    // the echo reply cannot go: port down, then no TX buffer
    rig.port.set_link(false);
    check(
        &mut feed,
        &[&echo],
        &one(&[("rx_reply_fails", 1), ("tx_dropped_down", 1)]),
    );
    rig.port.set_link(true);
    let held: Vec<_> = std::iter::from_fn(|| rig.port.tx_pool.take()).collect();
    check(
        &mut feed,
        &[&echo],
        &one(&[("rx_reply_fails", 1), ("tx_nomem", 1)]),
    );
    drop(held);

    // the in-band queue full (the tap's queue made large enough for every copy)
    rig.tap.set_rcvbuf(1 << 30);
    feed.keep_inband = true;
    let burst = vec![inband; INBAND_QUEUE + 3];
    let n = burst.len() as u64;
    let want = [
        ("rx_packets", n),
        ("rx_tap_copies", n),
        ("rx_inband", INBAND_QUEUE as u64),
        ("rx_inband_drops", 3),
    ];
    let before = counters(&rig);
    feed.send_all(&burst);
    feed.settle();
    assert_eq!(changed(&rig, &before), expect(&want));
    assert_eq!(rig.drain_inband(), INBAND_QUEUE);
    feed.keep_inband = false;

    // a tap copy lost is not a frame lost
    rig.tap.set_rcvbuf(0);
    check(
        &mut feed,
        &[&udp],
        &[
            ("rx_packets", 1),
            ("rx_tap_sock_full", 1),
            ("rx_delivered", 1),
        ],
    );
    rig.tap.set_rcvbuf(_core::socket::DEFAULT_RCVBUF);

    // drops, one reason each
    let mut bad_ip = udp.clone();
    bad_ip[14 + 10] ^= 1;
    let mut bad_udp = udp.clone();
    bad_udp[42] ^= 1;
    let mut other_host = udp.clone();
    other_host[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x77]);
    let other_vlan = with_vlan(&udp, OOB_VLAN + 1);
    let nobody = udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_UNBOUND_PORT, b"x");
    let unknown = ether(HOST_MAC, PEER_MAC, 0x9000, b"?");
    let bcast_ping = ping(BROADCAST_MAC, DIRECTED_BCAST, 8);
    // classification drops come before the packet sockets: no tap copy
    check(
        &mut feed,
        &[udp[..10].to_vec()],
        &[("rx_packets", 1), ("rx_malformed", 1)],
    );
    check(
        &mut feed,
        &[other_vlan],
        &[("rx_packets", 1), ("rx_filtered", 1)],
    );
    for (frame, counter) in [
        (bad_ip, "rx_ip_errors"),
        (bad_udp, "csum_errors"),
        (other_host, "rx_otherhost"),
        (bcast_ping, "rx_filtered"),
        (nobody, "rx_no_receiver"),
        (unknown, "rx_unknown_proto"),
    ] {
        check(&mut feed, &[frame], &one(&[(counter, 1)]));
    }
    let full: Vec<_> = (0..8)
        .map(|_| udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_ANY_PORT, &[7; 64]))
        .collect();
    let before = counters(&rig);
    rig.udp_any.set_rcvbuf(2 * (512 + 64));
    for f in &full {
        rig.inject(f);
    }
    feed.sent += full.len() as u64;
    // not drained until all are in: the queue takes two
    feed.wait_for("the datagrams to a full queue", || {
        rig.counter("rx_packets") + rig.device_drops() == feed.sent && rig.check_ledger().is_ok()
    });
    let d = changed(&rig, &before);
    assert_eq!((d["rx_delivered"], d["rx_sock_full"]), (2, 6), "{d:?}");
    // too large for an RX buffer: dropped by the device, never a frame in
    let before = counters(&rig);
    feed.send(&[0u8; 2100]);
    feed.settle();
    assert_eq!(changed(&rig, &before), expect(&[("device_rx_oversize", 1)]));
    feed.settle_all();
}

/// A fragment train: a UDP datagram or echo request of random size, cut at a random size,
/// sometimes reordered, duplicated, with one missing, a zero-length, overlapping or
/// past-the-end fragment added, one mutated, or all tagged.
fn random_train(rng: &mut XorShift, ident: u16) -> Vec<Vec<u8>> {
    let size = match rng.below(10) {
        0 => rng.below(MAX_UDP_PAYLOAD + 1),
        1..=3 => rng.below(9000),
        _ => rng.below(3000),
    };
    let data = pattern(size, rng.byte());
    let dst = if rng.one_in(8) {
        DIRECTED_BCAST
    } else {
        OUR_IP
    };
    let (proto, payload) = if rng.one_in(4) {
        (IPPROTO_ICMP, icmp_echo(rng.byte().into(), 1, &data))
    } else {
        let port = *rng.pick(&[UDP_PORT, UDP_PORT, UDP_ANY_PORT, UDP_UNBOUND_PORT]);
        (
            IPPROTO_UDP,
            udp_segment(PEER_IP, dst, 5000, port, &data, !rng.one_in(4)),
        )
    };
    let ip = Ip {
        ident,
        options: if rng.one_in(4) { 4 * rng.below(11) } else { 0 },
        ..Ip::new(PEER_IP, dst, proto)
    };
    // at most ~40 fragments a train
    let frag_len = (*rng.pick(&[1480, 1480, 1000, 512, 256, 64, 8])).max(payload.len() / 40);
    let mut frags = fragments(&ip, &payload, frag_len);
    let extra = |rng: &mut XorShift, offset: usize, len: usize, more: bool| {
        let f = Ip {
            options: 0,
            offset: offset / 8 * 8,
            more,
            ..ip
        };
        let bytes = rng.bytes(len);
        ipv4(&f, &bytes)
    };
    if rng.one_in(3) {
        for i in (1..frags.len()).rev() {
            frags.swap(i, rng.below(i + 1));
        }
    }
    if rng.one_in(5) {
        let f = rng.pick(&frags).clone();
        let at = rng.below(frags.len() + 1);
        frags.insert(at, f);
    }
    if rng.one_in(20) && frags.len() > 1 {
        frags.remove(rng.below(frags.len()));
    }
    match rng.below(40) {
        0 => {
            let off = rng.below(payload.len() + 1);
            let f = extra(rng, off, 0, true);
            frags.insert(rng.below(frags.len() + 1), f);
        }
        1 => {
            let off = payload.len() + 8 * rng.below(100);
            let (len, more) = (8 * (1 + rng.below(4)), rng.one_in(2));
            let f = extra(rng, off, len, more);
            frags.insert(rng.below(frags.len() + 1), f);
        }
        2 => {
            let off = rng.below(payload.len() + 1) + 8;
            let f = extra(rng, off, 16, true);
            frags.insert(rng.below(frags.len() + 1), f);
        }
        _ => {}
    }
    let mut frames = ip_frames(frags);
    if rng.one_in(12) {
        let i = rng.below(frames.len());
        mutate(rng, &mut frames[i]);
    }
    if dst == DIRECTED_BCAST {
        for f in frames.iter_mut().filter(|f| f.len() >= 6) {
            f[..6].copy_from_slice(&BROADCAST_MAC);
        }
    }
    if rng.one_in(10) {
        frames = frames.iter().map(|f| with_vlan(f, OOB_VLAN)).collect();
    }
    frames
}

/// Issue 9's attacks, each repeated: the IHL-15 first fragment last (would crash and leak) and
/// first (would deliver 65575 bytes). Neither delivers anything, and nothing stays held.
fn attack(feed: &mut Feeder, idents: std::ops::Range<u16>) {
    let rig = feed.rig;
    let (fails, held) = (rig.counter("rx_reasm_fails"), rig.counter("rx_reasm_held"));
    let delivered = rig.counter("rx_delivered");
    for ident in idents.clone() {
        feed.send_all(&ihl15_attack(ident, ident % 2 == 0));
    }
    feed.settle();
    let n = u64::from(idents.end - idents.start);
    assert_eq!(
        rig.counter("rx_reasm_fails") - fails,
        n,
        "each train fails once"
    );
    let others = ihl15_attack(0, false).len() as u64 - 1;
    assert_eq!(
        rig.counter("rx_reasm_held") - held,
        others * n,
        "the others were held"
    );
    assert_eq!(rig.counter("rx_delivered"), delivered, "nothing delivered");
    assert_eq!(rig.reasm().0, 0, "nothing left in reassembly");
}

/// The largest UDP datagram, in 45 fragments, arrives whole at the socket.
fn full_size_datagram_arrives(feed: &mut Feeder, ident: u16) {
    let rig = feed.rig;
    feed.settle();
    assert!(rig.udp.is_empty());
    feed.send_all(&udp_fragments(ident, MAX_UDP_PAYLOAD, 1480));
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        if let Some(b) = rig.udp.pop() {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the full-size datagram never came: {}",
            rig.dump()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(got.payload(), &pattern(MAX_UDP_PAYLOAD, ident as u8)[..]);
    assert_eq!((got.meta.src_addr, got.meta.dst_port), (PEER_IP, UDP_PORT));
}

#[test]
fn hundred_thousand_frames_balance_the_ledger() {
    let frames = env_u64("EVLNET_RX_FRAMES", 100_000);
    let seed = env_u64("EVLNET_RX_SEED", 0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    // a small TX pool and the TX thread: big echo replies run out of buffers now and then
    // (400 ms of ipfrag_time: a train is never cut by expiry, even on a loaded machine)
    let mut cfg = port_config(8, 2048, 400_000_000, false);
    // incomplete trains hold buffers until they expire: room for those of one round
    cfg.reasm_poolsz = 96;
    cfg.ipfrag_max_datagrams = 160;
    let rig = Rig::new(&cfg);
    let mut feed = Feeder::new(&rig);
    let mut rng = XorShift::new(seed);
    let seeds = seed_frames();
    let mut trains = 100u16;

    // the attacks first: the port keeps working after them
    attack(&mut feed, 0x7000..0x7006);
    full_size_datagram_arrives(&mut feed, 0x7100);

    // rounds of ROUND frames, each followed by a pause in which reassembly expires what the
    // round left incomplete (the flood below is the saturated case)
    const ROUND: u64 = 8000;
    let mut pause_at = ROUND;
    while feed.sent < frames {
        if feed.sent >= pause_at {
            feed.settle_and_expire();
            pause_at += ROUND;
        }
        match rng.below(100) {
            0..=29 => {
                let mut f = rng.pick(&seeds).clone();
                mutate(&mut rng, &mut f);
                feed.send(&f);
            }
            30..=41 => {
                let f = rng.pick(&seeds);
                if rng.one_in(5) {
                    // through the peer's transmit: its own checks first
                    if rig.link.a.transmit(&rig.localize(f)).is_ok() {
                        feed.sent += 1;
                    }
                } else {
                    feed.send(f);
                }
            }
            42..=49 => {
                let len = rng.below(200);
                let mut f = rng.bytes(len);
                if f.len() >= 14 && rng.one_in(2) {
                    f[..6].copy_from_slice(&HOST_MAC);
                    let et: u16 = *rng.pick(&[ETH_P_IP, 0x0806, 0x8100, 0x88A8, ETH_P_CUSTOM]);
                    f[12..14].copy_from_slice(&et.to_be_bytes());
                }
                feed.send(&f);
            }
            50..=69 => {
                // a fresh identification, but now and then one a recent train used
                trains += 1;
                let ident = if rng.one_in(30) {
                    trains - rng.below(20) as u16
                } else {
                    trains
                };
                feed.send_all(&random_train(&mut rng, ident));
            }
            70..=71 => {
                // larger than the RX buffers, or a runt
                let len = if rng.one_in(2) {
                    2049 + rng.below(3000)
                } else {
                    rng.below(14)
                };
                feed.send(&rng.bytes(len));
            }
            72 => feed.send_all(&ihl15_attack(trains, rng.one_in(2))),
            73 => {
                // switches flip now and then
                rig.apply_flags(rng.byte() & 0x7);
            }
            _ => {
                let len = rng.below(1400);
                feed.send(&udp_frame(
                    HOST_MAC,
                    PEER_IP,
                    OUR_IP,
                    UDP_PORT,
                    &pattern(len, 5),
                ));
            }
        }
    }
    rig.apply_flags(0);
    feed.settle_all();

    // a flood of first fragments from one source: it gets its share of reassembly (a quarter
    // of the 96 buffers) and no more, and other traffic still flows, fragmented or not
    let before = counters(&rig);
    for ident in 0..200u16 {
        feed.send(&udp_fragments(0x8000 + ident, 3000, 1480)[0]);
    }
    feed.send_all(&udp_fragments_from(PEER_IP + 11, 0x8000, 3000, 1480));
    let other = udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_PORT, b"still here");
    feed.send(&other);
    feed.settle();
    let d = changed(&rig, &before);
    assert_eq!(
        (d["rx_reasm_held"], d["rx_reasm_fails"]),
        (24 + 3, 176),
        "{d:?}"
    );
    assert_eq!((d["rx_reasm_ok"], d["rx_delivered"]), (1, 2), "{d:?}");
    // from many sources, the pool is the bound: NoMem once its buffers are all taken
    let before = counters(&rig);
    for ident in 0..100u16 {
        let src = PEER_IP + 20 + u32::from(ident % 8);
        feed.send(&udp_fragments_from(src, 0x8200 + ident, 3000, 1480)[0]);
    }
    feed.settle();
    let d = changed(&rig, &before);
    assert_eq!((d["rx_reasm_held"], d["rx_nomem"]), (72, 28), "{d:?}");
    feed.settle_all();

    // after all that (and once the junk it left in reassembly expired), the attacks again,
    // then the largest datagram still gets through
    attack(&mut feed, 0x7200..0x7208);
    full_size_datagram_arrives(&mut feed, 0x7300);

    feed.settle_all();
    rig.check_ledger().unwrap();
    rig.check_pools_full().unwrap();
    assert_eq!(rig.counter("rx_packets") + rig.device_drops(), feed.sent);
    assert!(
        rig.counter("rx_packets") >= frames * 95 / 100,
        "most frames reach the port"
    );
    eprintln!(
        "{} frames ({} through the RX path) in {:.1?}, seed {seed:#x}:\n{}",
        feed.sent,
        rig.counter("rx_packets"),
        started.elapsed(),
        rig.dump()
    );
    // the run reached every fate
    for name in [
        "rx_delivered",
        "icmp_echo_replies",
        "rx_inband",
        "rx_reasm_held",
        "rx_reasm_ok",
        "rx_reasm_timeouts",
        "rx_tap_copies",
        "rx_otherhost",
        "rx_malformed",
        "rx_ip_errors",
        "csum_errors",
        "rx_no_receiver",
        "rx_sock_full",
        "rx_unknown_proto",
        "rx_reasm_fails",
        "rx_reasm_dups",
        "rx_filtered",
        "rx_nomem",
    ] {
        assert!(
            rig.counter(name) > 0,
            "{name} never counted:\n{}",
            rig.dump()
        );
    }
    let port = std::sync::Arc::clone(&rig.port);
    drop(rig);
    assert!(!port.threads_alive());
    assert_eq!(port.rx_pool.free(), port.rx_pool.total());
    assert_eq!(port.tx_pool.free(), port.tx_pool.total());
    assert_eq!(port.counters.rx_ledger().0, port.counters.rx_ledger().1);
}

/// The committed seed corpus of the `rx_path` fuzz target replays clean (as does anything
/// added there, e.g. a crash once fixed).
#[test]
fn fuzz_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rx_path");
    let rig = Rig::new(&port_config(64, 1024, 3_600_000_000_000, true));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/rx_path") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        rig.run_rx_input(&data)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n > 0 && rig.counter("rx_packets") > 0);
}

/// Write the fuzz targets' seed corpora (`fuzz/corpus/<target>/`): valid inputs of every kind.
/// `cargo test --test rx_path -- --ignored write_fuzz_corpus`
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: String, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    // small frames for the parsers; the fragment trains go to rx_path and reassembly
    let small: Vec<_> = seed_frames()
        .into_iter()
        .filter(|f| f.len() <= 100)
        .collect();
    for (i, f) in small.iter().enumerate() {
        write("parse_ethernet", format!("frame-{i:02}"), f);
        write(
            "classify",
            format!("frame-{i:02}"),
            &[[0, 0x20].as_slice(), f].concat(),
        );
        let l3 = &f[if f[12..14] == [0x81, 0] { 18 } else { 14 }..];
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0806 => write("parse_arp", format!("arp-{i:02}"), l3),
            0x0800 => {
                write("parse_ipv4", format!("ipv4-{i:02}"), l3);
                let hlen = usize::from(l3[0] & 0xF) * 4;
                let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
                let l4 = &l3[hlen..total];
                match l3[9] {
                    IPPROTO_UDP => {
                        let addrs = [&l3[12..20], l4].concat();
                        write("parse_udp", format!("udp-{i:02}"), &addrs);
                    }
                    IPPROTO_ICMP => write("parse_icmp", format!("icmp-{i:02}"), l4),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let flags = [
        0,
        RxFlags::ACCEPT_MULTICAST | RxFlags::ECHO_ANSWER_BROADCASTS,
        RxFlags::FIX_IP_CSUM | RxFlags::FIX_L4_CSUM,
    ];
    for (i, &fl) in flags.iter().enumerate() {
        write(
            "rx_path",
            format!("every-kind-{i}"),
            &encode_rx_input(fl, &small),
        );
    }
    let mut train = udp_fragments(60, 1000, 400);
    train.swap(0, 2);
    train.insert(1, train[0].clone());
    write("rx_path", "train-udp".into(), &encode_rx_input(0, &train));
    let ping = icmp_echo(3, 3, &pattern(900, 1));
    let ip = Ip {
        ident: 61,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_ICMP)
    };
    let train = ip_frames(fragments(&ip, &ping, 480));
    write("rx_path", "train-echo".into(), &encode_rx_input(0, &train));

    let specs = |packets: Vec<Vec<u8>>, step: u8| -> Vec<u8> {
        let mut s = FragSpec::of(&packets);
        for (i, f) in s.iter_mut().enumerate() {
            f.step = if i % 3 == 2 { step } else { 0 };
        }
        let mut out = vec![0x0F]; // 4 buffers, 4 datagrams
        out.extend(s.iter().flat_map(|f| f.encode()));
        out
    };
    let seg = udp_segment(
        PEER_IP,
        OUR_IP,
        5000,
        UDP_PORT,
        &pattern(MAX_UDP_PAYLOAD, 1),
        true,
    );
    let big = Ip {
        ident: 7,
        options: 40,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP)
    };
    let mut attack = fragments(&big, &seg, 1480);
    write(
        "reassembly",
        "ihl15-first".into(),
        &specs(attack.clone(), 0),
    );
    attack.rotate_left(1);
    write("reassembly", "ihl15-last".into(), &specs(attack, 0));
    let plain = Ip { options: 0, ..big };
    write(
        "reassembly",
        "full-size".into(),
        &specs(fragments(&plain, &seg, 1480), 0),
    );
    let small_dg = Ip { ident: 8, ..plain };
    let mut frags = fragments(&small_dg, &seg[..3000], 1000);
    frags.swap(0, 1);
    frags.push(frags[0].clone());
    write(
        "reassembly",
        "shuffled-dup".into(),
        &specs(frags.clone(), 0),
    );
    write("reassembly", "slow".into(), &specs(frags, 60));
}

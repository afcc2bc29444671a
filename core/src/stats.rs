//! Per-port counters: EVL's `evl_net_devstat` fields plus one counter per drop reason.
//!
//! Every frame the port loses is counted under a reason (names as lwIP and seastar use them).
//! All counters are relaxed atomics: the oob threads bump them, the control plane reads them for
//! `get_stats()`.
//!
//! # The RX ledger
//!
//! Each frame given to `rx::process` (`rx_packets`) ends in exactly one of:
//! - delivered to a socket: `rx_delivered` (a UDP socket, or the packet socket listening to its
//!   EtherType);
//! - consumed by the stack: `icmp_echo_replies` (an echo request whose whole reply was handed to
//!   the TX path), `rx_inband` (an ARP or custom-protocol frame, or one the RX filter skipped, queued for the in-band
//!   stage),
//!   `rx_reasm_held` (a fragment whose bytes reassembly took, the one completing a datagram
//!   included);
//! - dropped: the counter of its [`DropReason`] (see [`DropReason::ALL`]).
//!
//! Reassembly turns held fragments into datagrams, and each datagram leaving it has a fate of
//! its own, counted in the same counters as a frame's: a completed datagram (`rx_reasm_ok`) is
//! delivered, consumed or dropped like any packet; a timed-out one (`rx_reasm_timeouts`) is
//! dropped under `rx_reasm_fails` (as Linux's ReasmFails counts ReasmTimeout). A datagram failed
//! by a fragment is counted once, by that fragment's drop; a datagram thrown away when the port
//! stops is counted in the reassembler's stats only. So, whenever no frame is half way through
//! the RX path (the port is quiet):
//!
//! ```text
//! rx_packets + rx_reasm_ok + rx_reasm_timeouts
//!     == rx_delivered + icmp_echo_replies + rx_inband + rx_reasm_held + sum(drops)
//! ```
//!
//! where `sum(drops)` adds the counters of every [`DropReason`] ([`PortCounters::rx_drops`];
//! [`PortCounters::rx_ledger`] gives both sides). And what reassembly holds is all accounted
//! for by its own stats (`reassembly::ReasmStats`):
//!
//! ```text
//! rx_reasm_held == rx_reasm_ok + held_frames + merged_frames + dropped_frames
//! ```
//!
//! Not frames in, so outside the ledger: what the device dropped before the port saw it
//! (`DeviceCounters`), and the copies packet-socket taps (ETH_P_ALL) get of a frame
//! (`rx_tap_copies` queued, `rx_tap_nomem` and `rx_tap_sock_full` lost): a tap copy never
//! changes the frame's own fate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a received frame went no further. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Unicast to another MAC, or a VLAN this port does not take.
    OtherHost,
    /// Too short or inconsistent at the link layer (Ethernet, 802.1Q, ARP).
    Malformed,
    /// Bad IPv4 header: version, IHL, header checksum, lengths, martian source.
    IpErrors,
    /// Bad UDP (or ICMP) checksum.
    CsumErrors,
    /// No socket bound to the destination (UDP) or no listener for the EtherType.
    NoReceiver,
    /// The socket's receive queue was over its SO_RCVBUF.
    SockFull,
    /// An IP protocol or EtherType nobody handles.
    UnknownProto,
    /// Reassembly gave up on a datagram (timeout, limits, oversize, overlap).
    ReasmFails,
    /// A duplicate fragment (same offset as one already held).
    ReasmDuplicate,
    /// Dropped by policy (ICMP echo ignored, multicast off, filter verdict DROP).
    Filtered,
    /// No free buffer to hold the frame (RX pool, reassembly pool).
    NoMem,
    /// The frame's answer (an ICMP echo reply) could not be sent: no TX buffer, the qdisc full
    /// or the port down (the TX side counts `tx_nomem`, `tx_qdisc_drops`, `tx_dropped_down`).
    ReplyFailed,
    /// The in-band queue was full: an ARP or custom-protocol frame could not go up.
    InbandFull,
    /// The eBPF RX filter returned EVL_RX_DROP.
    FilterDrop,
    /// The eBPF RX filter returned no verdict of EVL's (or faulted).
    FilterInvalid,
}

impl DropReason {
    /// Every reason: `PortCounters::rx_drops` adds their counters (keep in step with the enum).
    pub const ALL: [DropReason; 15] = [
        DropReason::OtherHost,
        DropReason::Malformed,
        DropReason::IpErrors,
        DropReason::CsumErrors,
        DropReason::NoReceiver,
        DropReason::SockFull,
        DropReason::UnknownProto,
        DropReason::ReasmFails,
        DropReason::ReasmDuplicate,
        DropReason::Filtered,
        DropReason::NoMem,
        DropReason::ReplyFailed,
        DropReason::InbandFull,
        DropReason::FilterDrop,
        DropReason::FilterInvalid,
    ];
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One port's counters (see the module doc).
        #[derive(Default, Debug)]
        pub struct PortCounters { $(pub $name: AtomicU64,)* }

        impl PortCounters {
            /// Every counter by name, for the control plane's `get_stats()`.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

counters!(
    rx_packets,
    rx_bytes,
    tx_packets,
    tx_bytes,
    csum_errors,
    rx_nomem,
    tx_nomem,
    rx_otherhost,
    rx_malformed,
    rx_ip_errors,
    rx_no_receiver,
    rx_sock_full,
    rx_unknown_proto,
    rx_reasm_fails,
    rx_reasm_dups,
    rx_reasm_ok,
    rx_filtered,
    rx_inband,
    rx_inband_drops,
    rx_errors,
    rx_delivered,
    tx_errors,
    tx_dropped_down,
    tx_qdisc_drops,
    tx_queued,
    icmp_echo_replies,
    arp_replies,
    rx_reasm_held,
    rx_reasm_timeouts,
    rx_reply_fails,
    rx_tap_copies,
    rx_tap_nomem,
    rx_tap_sock_full,
    rx_filter_dropped,
    rx_filter_invalid,
    rx_filter_skipped,
);

impl PortCounters {
    /// Add one to a counter.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Count one frame dropped for `reason`.
    pub fn drop_for(&self, reason: DropReason) {
        self.counter_for(reason).fetch_add(1, Relaxed);
    }

    /// The counter of `reason`.
    pub fn counter_for(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::OtherHost => &self.rx_otherhost,
            DropReason::Malformed => &self.rx_malformed,
            DropReason::IpErrors => &self.rx_ip_errors,
            DropReason::CsumErrors => &self.csum_errors,
            DropReason::NoReceiver => &self.rx_no_receiver,
            DropReason::SockFull => &self.rx_sock_full,
            DropReason::UnknownProto => &self.rx_unknown_proto,
            DropReason::ReasmFails => &self.rx_reasm_fails,
            DropReason::ReasmDuplicate => &self.rx_reasm_dups,
            DropReason::Filtered => &self.rx_filtered,
            DropReason::NoMem => &self.rx_nomem,
            DropReason::ReplyFailed => &self.rx_reply_fails,
            DropReason::InbandFull => &self.rx_inband_drops,
            DropReason::FilterDrop => &self.rx_filter_dropped,
            DropReason::FilterInvalid => &self.rx_filter_invalid,
        }
    }

    /// `sum(drops)` of the RX ledger (module doc): the counters of every drop reason.
    pub fn rx_drops(&self) -> u64 {
        DropReason::ALL
            .iter()
            .map(|&r| self.counter_for(r).load(Relaxed))
            .sum()
    }

    /// The two sides of the RX ledger (module doc): `(packets in, fates)`, equal once the port
    /// is quiet. Reads relaxed counters one by one: meaningful only when quiet.
    pub fn rx_ledger(&self) -> (u64, u64) {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let packets = get(&self.rx_packets) + get(&self.rx_reasm_ok) + get(&self.rx_reasm_timeouts);
        let fates = get(&self.rx_delivered)
            + get(&self.icmp_echo_replies)
            + get(&self.rx_inband)
            + get(&self.rx_reasm_held)
            + self.rx_drops();
        (packets, fates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let c = PortCounters::default();
        c.drop_for(DropReason::SockFull);
        c.drop_for(DropReason::SockFull);
        c.drop_for(DropReason::ReasmDuplicate);
        let snap: std::collections::HashMap<_, _> = c.snapshot().into_iter().collect();
        assert_eq!(snap["rx_sock_full"], 2);
        assert_eq!(snap["rx_reasm_dups"], 1);
        assert_eq!(snap["rx_otherhost"], 0);
    }

    #[test]
    fn ledger_adds_every_reason_once() {
        let c = PortCounters::default();
        for (i, &r) in DropReason::ALL.iter().enumerate() {
            // distinct counters: each reason lands on its own
            assert_eq!(c.counter_for(r).load(Relaxed), 0, "{r:?} shares a counter");
            c.drop_for(r);
            assert_eq!(c.rx_drops(), i as u64 + 1);
        }
        c.rx_packets.fetch_add(15, Relaxed);
        assert_eq!(c.rx_ledger(), (15, 15));
        c.rx_reasm_ok.fetch_add(1, Relaxed);
        PortCounters::bump(&c.rx_delivered);
        assert_eq!(c.rx_ledger(), (16, 16));
    }
}

//! ARP (RFC 826) on the oob stage: answer who-has for our addresses, and tell the control plane
//! what a frame taught us about a neighbour (Linux's `arp_process`, reduced to what a host does).
//!
//! On Linux interfaces the kernel runs ARP and netlink feeds the front cache; this is for ports
//! whose link the kernel does not see (the virtual link). Learning needs the neighbour cache,
//! which lives above this layer: [`ArpInput::should_learn`] gives the kernel's rule, the caller
//! applies it (never overwriting a permanent entry).

use crate::stats::DropReason;
use crate::wire::{
    parse_arp, write_eth_arp, ArpHeader, Mac, ARP_REPLY, ARP_REQUEST, BROADCAST_MAC,
};

/// A valid Ethernet/IPv4 ARP packet and whether it asks about (or answers) one of our addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInput {
    pub arp: ArpHeader,
    /// The target address is one of the port's unicast addresses.
    pub for_us: bool,
}

impl ArpInput {
    pub fn is_request(&self) -> bool {
        self.arp.op == ARP_REQUEST
    }

    pub fn is_reply(&self) -> bool {
        self.arp.op == ARP_REPLY
    }

    /// We owe the sender a reply (the caller also checks that the port is enabled).
    pub fn needs_reply(&self) -> bool {
        self.for_us && self.is_request()
    }

    /// Whether (sender IP, sender MAC) goes into the neighbour cache, `known` saying whether the
    /// sender is there already: anything addressed to us teaches us its sender; a request from a
    /// known neighbour refreshes it; a reply meant for someone else teaches nothing. A sender of
    /// 0.0.0.0 (duplicate address detection probe) never does.
    pub fn should_learn(&self, known: bool) -> bool {
        self.arp.sender_ip != 0 && (self.for_us || (known && !self.is_reply()))
    }
}

/// Parse the ARP packet at `packet` (the L3 payload of the frame; padding may follow) received
/// by a port whose unicast addresses are `ours`. Anything but a whole Ethernet/IPv4 ARP packet is
/// `Malformed`.
pub fn input(packet: &[u8], ours: &[u32]) -> Result<ArpInput, DropReason> {
    let arp = parse_arp(packet).map_err(|_| DropReason::Malformed)?;
    Ok(ArpInput {
        arp,
        for_us: ours.contains(&arp.target_ip),
    })
}

/// Build the reply to `req` (a request for one of our addresses) into `out`: from `our_mac` to
/// the requester, "target IP is at `our_mac`". Returns the frame length (60); `NoMem` when `out`
/// cannot hold it.
pub fn build_reply(out: &mut [u8], our_mac: &Mac, req: &ArpHeader) -> Result<usize, DropReason> {
    let reply = ArpHeader {
        op: ARP_REPLY,
        sender_mac: *our_mac,
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    };
    write_eth_arp(out, &req.sender_mac, our_mac, &reply).map_err(|_| DropReason::NoMem)
}

/// Build a broadcast who-has for `target_ip` from `sender_ip` (solicit) into `out`; returns the
/// frame length (60).
pub fn build_request(
    out: &mut [u8],
    our_mac: &Mac,
    sender_ip: u32,
    target_ip: u32,
) -> Result<usize, DropReason> {
    let req = ArpHeader {
        op: ARP_REQUEST,
        sender_mac: *our_mac,
        sender_ip,
        target_mac: [0; 6],
        target_ip,
    };
    write_eth_arp(out, &BROADCAST_MAC, our_mac, &req).map_err(|_| DropReason::NoMem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_ethernet, ETH_P_ARP};

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const PEER: Mac = [2, 0, 0, 0, 0, 9];
    const OUR_IP: u32 = 0x0A00_0001;
    const PEER_IP: u32 = 0x0A00_0009;

    #[test]
    fn request_for_us_is_answered() {
        let mut f = [0u8; 60];
        build_request(&mut f, &PEER, PEER_IP, OUR_IP).unwrap();
        let got = input(&f[14..], &[0x0A00_0005, OUR_IP]).unwrap();
        assert!(got.for_us && got.is_request() && !got.is_reply() && got.needs_reply());
        assert!(got.should_learn(false));

        let mut out = [0xAAu8; 64];
        assert_eq!(build_reply(&mut out, &OURS, &got.arp), Ok(60));
        let eth = parse_ethernet(&out).unwrap();
        assert_eq!((eth.dst, eth.src, eth.ethertype), (PEER, OURS, ETH_P_ARP));
        let reply = input(&out[14..60], &[PEER_IP]).unwrap();
        assert!(reply.is_reply() && reply.for_us && !reply.needs_reply());
        assert_eq!((reply.arp.sender_mac, reply.arp.sender_ip), (OURS, OUR_IP));
        assert_eq!((reply.arp.target_mac, reply.arp.target_ip), (PEER, PEER_IP));
        assert_eq!(
            build_reply(&mut out[..59], &OURS, &got.arp),
            Err(DropReason::NoMem)
        );
    }

    #[test]
    fn learning_rules() {
        let mut f = [0u8; 60];
        // a request for someone else: only refreshes a known sender
        build_request(&mut f, &PEER, PEER_IP, 0x0A00_0077).unwrap();
        let other = input(&f[14..], &[OUR_IP]).unwrap();
        assert!(!other.for_us && !other.needs_reply());
        assert!(!other.should_learn(false) && other.should_learn(true));
        // a reply for someone else teaches nothing
        let reply = ArpInput {
            arp: ArpHeader {
                op: ARP_REPLY,
                ..other.arp
            },
            for_us: false,
        };
        assert!(!reply.should_learn(true));
        // a probe from 0.0.0.0 never
        build_request(&mut f, &PEER, 0, OUR_IP).unwrap();
        let probe = input(&f[14..], &[OUR_IP]).unwrap();
        assert!(probe.needs_reply() && !probe.should_learn(true));
    }

    #[test]
    fn malformed() {
        let mut f = [0u8; 60];
        build_request(&mut f, &PEER, PEER_IP, OUR_IP).unwrap();
        assert_eq!(input(&f[14..41], &[OUR_IP]), Err(DropReason::Malformed));
        let mut bad = f;
        bad[15] = 6; // hardware type 6 (IEEE 802)
        assert_eq!(input(&bad[14..], &[OUR_IP]), Err(DropReason::Malformed));
        let mut bad = f;
        bad[18] = 8; // odd hardware address length
        assert_eq!(input(&bad[14..], &[OUR_IP]), Err(DropReason::Malformed));
    }
}

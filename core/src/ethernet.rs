//! Ethernet and 802.1Q input: classify one received frame (Linux's `eth_type_trans`, EVL's
//! `evl_net_ether_accept`).
//!
//! Classification tells the rest of the RX path four things: the packet type as `sockaddr_ll`
//! reports it (`PACKET_HOST`, `_BROADCAST`, `_MULTICAST`, `_OTHERHOST`), the VLAN the frame
//! belongs to, its EtherType and where its L3 header starts. As in EVL, only tagged traffic of the
//! oob VLAN set (or of the port's own VLAN) is diverted to the oob stage, and the stack pops the
//! tag(s) in software, so every consumer, packet sockets included, sees an untagged frame. With
//! QinQ the inner tag selects.
//!
//! The RX order (as `proto/ethernet.py`): [`classify`], then packet sockets (they see every
//! packet type, `PACKET_OTHERHOST` too), then [`L2Info::for_stack`] before dispatching on the
//! EtherType.

use crate::stats::DropReason;
use crate::wire::{parse_ethernet, Mac, BROADCAST_MAC, ETH_HLEN};

/// `sockaddr_ll.sll_pkttype` values.
pub const PACKET_HOST: u8 = 0;
pub const PACKET_BROADCAST: u8 = 1;
pub const PACKET_MULTICAST: u8 = 2;
pub const PACKET_OTHERHOST: u8 = 3;

/// A set of VLAN ids (the stack's oob VLAN set), one bit per id: a lookup is one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanSet([u64; 64]);

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet([0; 64])
    }
}

impl VlanSet {
    fn slot(vid: u16) -> (usize, u64) {
        let vid = vid & 0x0FFF;
        (usize::from(vid >> 6), 1 << (vid & 63))
    }

    pub fn insert(&mut self, vid: u16) {
        let (i, bit) = Self::slot(vid);
        self.0[i] |= bit;
    }

    pub fn remove(&mut self, vid: u16) {
        let (i, bit) = Self::slot(vid);
        self.0[i] &= !bit;
    }

    pub fn contains(&self, vid: u16) -> bool {
        let (i, bit) = Self::slot(vid);
        self.0[i] & bit != 0
    }
}

/// What classification needs to know about the receiving port.
#[derive(Clone, Copy, Debug)]
pub struct L2Port<'a> {
    pub mac: Mac,
    /// The port's own VLAN (its device's, 0 on a plain interface): what untagged frames carry.
    pub vlan_id: u16,
    /// The stack's oob VLAN set.
    pub vlans: &'a VlanSet,
}

/// One classified frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Info {
    /// Where the (untagged) Ethernet header now starts in the frame: 0, or 4 or 8 after tags
    /// were popped. Add it to the buffer's `start`.
    pub start: usize,
    /// Where the L3 header starts in the frame (`start + 14`).
    pub l3_offset: usize,
    pub ethertype: u16,
    pub vlan_id: u16,
    pub pkttype: u8,
    pub src_mac: Mac,
}

/// Classify `frame` received on `port`; pops VLAN tags in place (the MAC addresses move up
/// against the inner EtherType). Drops: `Malformed` (runt, truncated tag), `Filtered` (a VLAN
/// outside the oob set: EVL does not divert it, so no oob socket sees it).
pub fn classify(frame: &mut [u8], port: &L2Port<'_>) -> Result<L2Info, DropReason> {
    let eth = parse_ethernet(frame).map_err(|_| DropReason::Malformed)?;
    let l3_offset = eth.header_len;
    let start = l3_offset - ETH_HLEN;
    let vlan_id = match eth.vlan_id {
        None => port.vlan_id,
        Some(vid) if vid == port.vlan_id || port.vlans.contains(vid) => vid,
        Some(_) => return Err(DropReason::Filtered),
    };
    if start > 0 {
        frame.copy_within(..12, start);
    }
    let pkttype = if eth.dst == port.mac {
        PACKET_HOST
    } else if eth.dst == BROADCAST_MAC {
        PACKET_BROADCAST
    } else if eth.dst[0] & 1 != 0 {
        PACKET_MULTICAST
    } else {
        PACKET_OTHERHOST
    };
    Ok(L2Info {
        start,
        l3_offset,
        ethertype: eth.ethertype,
        vlan_id,
        pkttype,
        src_mac: eth.src,
    })
}

impl L2Info {
    /// Whether the stack's protocols take the frame, once packet sockets have seen it:
    /// `OtherHost` for unicast to another MAC, `Filtered` for a group address other than
    /// broadcast while the stack does not accept multicast (what a NIC's multicast filter does).
    pub fn for_stack(&self, accept_multicast: bool) -> Result<(), DropReason> {
        match self.pkttype {
            PACKET_OTHERHOST => Err(DropReason::OtherHost),
            PACKET_MULTICAST if !accept_multicast => Err(DropReason::Filtered),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP};

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const PEER: Mac = [2, 0, 0, 0, 0, 9];

    fn frame(dst: Mac, tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&PEER);
        for &(tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.resize(60, 0xEE);
        f
    }

    fn port(vlans: &VlanSet) -> L2Port<'_> {
        L2Port {
            mac: OURS,
            vlan_id: 0,
            vlans,
        }
    }

    #[test]
    fn pkttypes() {
        let none = VlanSet::default();
        let p = port(&none);
        let cases = [
            (OURS, PACKET_HOST),
            (BROADCAST_MAC, PACKET_BROADCAST),
            ([0x01, 0, 0x5e, 0, 0, 1], PACKET_MULTICAST),
            ([2, 0, 0, 0, 0, 7], PACKET_OTHERHOST),
        ];
        for (dst, want) in cases {
            let info = classify(&mut frame(dst, &[], ETH_P_IP), &p).unwrap();
            assert_eq!((info.pkttype, info.start, info.l3_offset), (want, 0, 14));
            assert_eq!(
                (info.ethertype, info.vlan_id, info.src_mac),
                (ETH_P_IP, 0, PEER)
            );
        }
    }

    #[test]
    fn for_stack_verdicts() {
        let mk = |pkttype| L2Info {
            start: 0,
            l3_offset: 14,
            ethertype: ETH_P_IP,
            vlan_id: 0,
            pkttype,
            src_mac: PEER,
        };
        assert_eq!(mk(PACKET_HOST).for_stack(false), Ok(()));
        assert_eq!(mk(PACKET_BROADCAST).for_stack(false), Ok(()));
        assert_eq!(
            mk(PACKET_MULTICAST).for_stack(false),
            Err(DropReason::Filtered)
        );
        assert_eq!(mk(PACKET_MULTICAST).for_stack(true), Ok(()));
        assert_eq!(
            mk(PACKET_OTHERHOST).for_stack(true),
            Err(DropReason::OtherHost)
        );
    }

    #[test]
    fn runts_are_malformed() {
        let none = VlanSet::default();
        let mut f = frame(OURS, &[(ETH_P_8021Q, 5)], ETH_P_IP);
        assert_eq!(
            classify(&mut f[..13], &port(&none)),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            classify(&mut f[..17], &port(&none)),
            Err(DropReason::Malformed)
        );
        let mut f = frame(OURS, &[(ETH_P_8021AD, 5), (ETH_P_8021Q, 6)], ETH_P_IP);
        assert_eq!(
            classify(&mut f[..21], &port(&none)),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn tags_outside_the_set_are_filtered_and_ours_popped() {
        let mut vlans = VlanSet::default();
        vlans.insert(42);
        let mut f = frame(OURS, &[(ETH_P_8021Q, 0x2000 | 41)], ETH_P_ARP);
        assert_eq!(classify(&mut f, &port(&vlans)), Err(DropReason::Filtered));

        let mut f = frame(OURS, &[(ETH_P_8021Q, 0x2000 | 42)], ETH_P_ARP);
        let info = classify(&mut f, &port(&vlans)).unwrap();
        assert_eq!((info.start, info.l3_offset, info.vlan_id), (4, 18, 42));
        assert_eq!((info.ethertype, info.pkttype), (ETH_P_ARP, PACKET_HOST));
        // the popped frame reads as an untagged one
        assert_eq!(&f[4..10], &OURS);
        assert_eq!(&f[10..16], &PEER);
        assert_eq!(&f[16..18], &ETH_P_ARP.to_be_bytes());

        // the port's own VLAN is always taken
        let none = VlanSet::default();
        let own = L2Port {
            mac: OURS,
            vlan_id: 7,
            vlans: &none,
        };
        let mut f = frame(OURS, &[(ETH_P_8021Q, 7)], ETH_P_IP);
        assert_eq!(classify(&mut f, &own).unwrap().vlan_id, 7);
        // untagged frames carry the port's VLAN
        assert_eq!(
            classify(&mut frame(OURS, &[], ETH_P_IP), &own)
                .unwrap()
                .vlan_id,
            7
        );
    }

    #[test]
    fn qinq_inner_tag_selects() {
        let mut vlans = VlanSet::default();
        vlans.insert(200);
        let mut f = frame(
            BROADCAST_MAC,
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
            ETH_P_IP,
        );
        let info = classify(&mut f, &port(&vlans)).unwrap();
        assert_eq!((info.start, info.l3_offset, info.vlan_id), (8, 22, 200));
        assert_eq!(info.pkttype, PACKET_BROADCAST);
        assert_eq!(&f[8..14], &BROADCAST_MAC);
        let mut f = frame(OURS, &[(ETH_P_8021AD, 200), (ETH_P_8021Q, 100)], ETH_P_IP);
        assert_eq!(classify(&mut f, &port(&vlans)), Err(DropReason::Filtered));
    }

    #[test]
    fn vlan_set() {
        let mut s = VlanSet::default();
        for vid in [0, 1, 63, 64, 4095] {
            assert!(!s.contains(vid));
            s.insert(vid);
            assert!(s.contains(vid));
        }
        s.remove(64);
        assert!(!s.contains(64) && s.contains(63));
    }
}

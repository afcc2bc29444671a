//! `ethernet::classify` on arbitrary frames. Byte 0 picks the port's own VLAN (0 or 5), byte 1
//! the oob VLAN set (bit i: VID i); the rest is the frame. An accepted frame reads as untagged
//! from `start`, with its L3 header at `l3_offset`.
#![no_main]
use _core::ethernet::{classify, L2Port, VlanSet, PACKET_BROADCAST, PACKET_HOST};
use _core::wire::parse_ethernet;
use libfuzzer_sys::fuzz_target;

const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let [sel, set, frame @ ..] = data else { return };
    let mut vlans = VlanSet::default();
    for vid in 0..8 {
        if set & (1 << vid) != 0 {
            vlans.insert(vid);
        }
    }
    let port = L2Port {
        mac: OURS,
        vlan_id: if sel & 1 != 0 { 5 } else { 0 },
        vlans: &vlans,
    };
    let mut f = frame.to_vec();
    let before = parse_ethernet(frame);
    match classify(&mut f, &port) {
        Ok(info) => {
            let eth = before.expect("classified frames parse");
            assert_eq!(info.l3_offset, info.start + 14);
            assert!(info.l3_offset <= f.len());
            let untagged = &f[info.start..];
            assert_eq!(&untagged[..6], &eth.dst);
            assert_eq!(&untagged[6..12], &eth.src);
            assert_eq!(
                u16::from_be_bytes([untagged[12], untagged[13]]),
                info.ethertype
            );
            assert_eq!(info.pkttype == PACKET_HOST, eth.dst == OURS);
            if info.pkttype == PACKET_BROADCAST {
                assert_eq!(eth.dst, [0xFF; 6]);
            }
        }
        Err(_) => assert_eq!(f, frame, "a refused frame is left as it was"),
    }
});

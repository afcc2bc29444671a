//! `wire::parse_udp` and `udp::input` on arbitrary bytes: the payload bounds they report lie
//! inside the segment. The first 8 bytes are the addresses of the pseudo header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let src = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let dst = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let seg = &data[8..];
    if let Ok(h) = _core::wire::parse_udp(seg) {
        assert!(usize::from(h.length) >= 8 && usize::from(h.length) <= seg.len());
    }
    if let Ok(u) = _core::udp::input(seg, src, dst) {
        assert!(u.payload_start == 8 && u.payload_start <= u.payload_end);
        assert!(u.payload_end <= seg.len());
    }
});

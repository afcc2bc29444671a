//! `wire::parse_ethernet` on arbitrary bytes: never panics, and what it reports lies inside the
//! frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = _core::wire::parse_ethernet(data) {
        assert!([14, 18, 22].contains(&h.header_len) && h.header_len <= data.len());
        assert_eq!(h.vlan_id.is_some(), h.header_len > 14);
        assert_eq!(&data[..6], &h.dst);
    }
});

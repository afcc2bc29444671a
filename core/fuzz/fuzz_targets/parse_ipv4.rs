//! `wire::parse_ipv4` (and `ipv4::validate`) on arbitrary bytes: an accepted header describes
//! bytes that are there and carries a checksum that verifies.
#![no_main]
use _core::wire::{internet_checksum, parse_ipv4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ip) = parse_ipv4(data) {
        assert!((20..=60).contains(&ip.header_len) && ip.header_len % 4 == 0);
        assert!(ip.header_len <= ip.total_len && ip.total_len <= data.len());
        assert!(ip.payload(data).is_some());
        assert_eq!(internet_checksum(&data[..ip.header_len], 0), 0);
        assert!(ip.frag_offset % 8 == 0 && ip.frag_offset <= 0x1FFF * 8);
        assert_eq!(
            _core::ipv4::validate(data).is_ok(),
            !_core::ipv4::is_martian_source(ip.src)
                || (ip.src == 0 && ip.dst == _core::wire::INADDR_BROADCAST)
        );
    } else {
        assert!(_core::ipv4::validate(data).is_err());
    }
});

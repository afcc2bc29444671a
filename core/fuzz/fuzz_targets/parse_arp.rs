//! `wire::parse_arp` and `arp::input` on arbitrary bytes; a request for us gets a well-formed
//! reply.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = _core::wire::parse_arp(data);
    let ours = [evlnet_core_fuzz::OUR_IP];
    match _core::arp::input(data, &ours) {
        Ok(a) => {
            assert_eq!(parsed, Ok(a.arp));
            if a.needs_reply() {
                let mut out = [0u8; 60];
                let n = _core::arp::build_reply(&mut out, &[2, 0, 0, 0, 0, 1], &a.arp).unwrap();
                let r = _core::arp::input(&out[14..n], &[a.arp.sender_ip]).unwrap();
                assert!(r.is_reply() && r.arp.target_ip == a.arp.sender_ip);
            }
        }
        Err(_) => assert!(parsed.is_err()),
    }
});

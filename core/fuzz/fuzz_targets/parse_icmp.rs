//! `wire::parse_icmp` on arbitrary bytes, and the echo path behind it (`icmp::accept_request`
//! and `EchoReply::write` of every fragment of the reply) on an IPv4 packet made of them.
#![no_main]
use _core::ethernet::PACKET_HOST;
use _core::icmp::{accept_request, EchoPolicy};
use _core::ipv4::{validate, DstKind, FragPlan, PortAddrs};
use _core::wire::{internet_checksum, parse_ipv4, IPPROTO_ICMP};
use evlnet_core_fuzz::{ipv4, Ip, OUR_IP, PEER_IP, PEER_MAC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = _core::wire::parse_icmp(data) {
        assert!(data.len() >= 8);
        assert_eq!(h.icmp_type, data[0]);
    }
    if data.len() < 4 || data.len() > 65515 {
        return;
    }
    // a checksum that verifies, so the reply side is reached
    let mut m = data.to_vec();
    m[2..4].fill(0);
    let c = internet_checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let pkt = ipv4(&Ip::new(PEER_IP, OUR_IP, IPPROTO_ICMP), &m);
    let ip = validate(&pkt).expect("built valid");
    let addrs = PortAddrs {
        unicast: &[OUR_IP],
        local: &[OUR_IP],
    };
    let Ok(reply) = accept_request(
        &pkt,
        &ip,
        PEER_MAC,
        PACKET_HOST,
        DstKind::Unicast,
        &addrs,
        EchoPolicy::default(),
    ) else {
        return;
    };
    let mut msg = Vec::new();
    let mut out = vec![0u8; 1514];
    for frag in FragPlan::new(reply.msg_len(), 1500).expect("fits") {
        let n = reply
            .write(&pkt, &[2, 0, 0, 0, 0, 1], 9, frag, &mut out)
            .expect("reply");
        let rip = parse_ipv4(&out[14..n]).expect("valid reply header");
        msg.extend_from_slice(rip.payload(&out[14..n]).expect("payload"));
    }
    assert_eq!(msg.len(), m.len());
    assert_eq!(msg[0], 0);
    assert_eq!(internet_checksum(&msg, 0), 0);
    assert_eq!(&msg[4..], &m[4..]);
});

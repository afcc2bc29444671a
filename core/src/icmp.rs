//! ICMP echo (RFC 792) answered on the oob stage, as EVL's newest kernels do (Linux's
//! `icmp_echo`): the reply goes back to the request's source MAC and IP, with no routing or
//! neighbour lookup. Nothing else of ICMP is handled here.
//!
//! What is not answered (RFC 1122 3.2.2.6 and Linux's sysctls): anything when
//! `icmp_echo_ignore_all`; a request sent to a broadcast or multicast address (IP destination,
//! or Ethernet destination as the Python stack judged) when `icmp_echo_ignore_broadcasts` (the
//! default); a request from a martian source, ever (the only one IPv4 validation lets through
//! is 0.0.0.0 to the limited broadcast). Those are `Filtered`. A request from a broadcast or
//! multicast source never gets this far: IPv4 validation drops it as martian.
//!
//! The reply is built as the Python stack did: a 20-byte IPv4 header (the request's options are
//! not echoed), TTL 64, TOS 0, a fresh identification, then the request's message with type 0
//! and a new checksum. A reply longer than the MTU (a reassembled request) goes out as IP
//! fragments, as Linux sends it: [`EchoReply::write`] writes any fragment of a [`FragPlan`].
//!
//! [`FragPlan`]: crate::ipv4::FragPlan

use crate::ethernet::PACKET_HOST;
use crate::ipv4::{is_martian_source, DstKind, Fragment, PortAddrs};
use crate::stats::DropReason;
use crate::wire::{
    checksum_sum, internet_checksum, pad_frame, parse_icmp, write_eth_ipv4, Ipv4Header, Ipv4Tx,
    Mac, WireError, IPPROTO_ICMP,
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// TTL of our replies (Linux's `ip_default_ttl`).
const REPLY_TTL: u8 = 64;

/// The stack's `icmp_echo_ignore_*` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoPolicy {
    pub ignore_all: bool,
    pub ignore_broadcasts: bool,
}

impl Default for EchoPolicy {
    /// Linux's defaults: answer unicast requests only.
    fn default() -> Self {
        EchoPolicy {
            ignore_all: false,
            ignore_broadcasts: true,
        }
    }
}

/// A request we answer, and what its reply needs besides the request's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoReply {
    /// The requester's MAC.
    pub dst_mac: Mac,
    /// Reply source: the address the request was sent to, or the port's primary address when
    /// that was a broadcast or multicast one.
    pub src: u32,
    pub dst: u32,
    msg_start: usize,
    msg_len: usize,
    checksum: u16,
}

/// Decide on the ICMP message of `ip_packet` (validated header `ip`, received from `peer_mac` as
/// `pkttype`, addressed as `dst`). `UnknownProto`: not an echo request (or shorter than its
/// header); `Filtered`: a request we ignore (see the module doc); `CsumErrors`: bad checksum.
pub fn accept_request(
    ip_packet: &[u8],
    ip: &Ipv4Header,
    peer_mac: Mac,
    pkttype: u8,
    dst: DstKind,
    addrs: &PortAddrs<'_>,
    policy: EchoPolicy,
) -> Result<EchoReply, DropReason> {
    let msg = ip.payload(ip_packet).ok_or(DropReason::IpErrors)?;
    let h = parse_icmp(msg).map_err(|_| DropReason::UnknownProto)?;
    if h.icmp_type != ICMP_ECHO_REQUEST || h.code != 0 {
        return Err(DropReason::UnknownProto);
    }
    let to_group = pkttype != PACKET_HOST || dst != DstKind::Unicast;
    if policy.ignore_all || (policy.ignore_broadcasts && to_group) || is_martian_source(ip.src) {
        return Err(DropReason::Filtered);
    }
    // One pass over the data: the sum past type, code and checksum both checks the request and
    // gives the reply's checksum (type 0, code 0: those words add nothing).
    let (head, rest) = msg.split_at(4.min(msg.len()));
    let rest_sum = checksum_sum(rest, 0);
    if internet_checksum(head, rest_sum) != 0 {
        return Err(DropReason::CsumErrors);
    }
    let src = match dst {
        DstKind::Unicast => ip.dst,
        _ => addrs.primary().ok_or(DropReason::Filtered)?,
    };
    Ok(EchoReply {
        dst_mac: peer_mac,
        src,
        dst: ip.src,
        msg_start: ip.header_len,
        msg_len: msg.len(),
        checksum: !(rest_sum as u16),
    })
}

impl EchoReply {
    /// Bytes of ICMP message the reply carries (for `FragPlan::new(len, mtu)`).
    pub fn msg_len(&self) -> usize {
        self.msg_len
    }

    /// Write fragment `frag` of the reply into `out` as a whole frame: Ethernet to the requester,
    /// IPv4 with `ident` (the same for every fragment), that part of the message; padded to the
    /// Ethernet minimum. `ip_packet` is the request's, as given to [`accept_request`]. Returns
    /// the frame length; `NoMem` when `out` cannot hold it.
    pub fn write(
        &self,
        ip_packet: &[u8],
        our_mac: &Mac,
        ident: u16,
        frag: Fragment,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let part = match frag.offset.checked_add(frag.len) {
            Some(end) if end <= self.msg_len => {
                ip_packet.get(self.msg_start + frag.offset..self.msg_start + end)
            }
            _ => None,
        }
        .ok_or(DropReason::IpErrors)?;
        let ip = Ipv4Tx {
            src: self.src,
            dst: self.dst,
            ident,
            ttl: REPLY_TTL,
            tos: 0,
            dont_fragment: false,
            more_fragments: frag.more,
            frag_offset: frag.offset,
        };
        let l4 = write_eth_ipv4(out, &self.dst_mac, our_mac, &ip, IPPROTO_ICMP, frag.len).map_err(
            |e| match e {
                WireError::Truncated => DropReason::NoMem,
                _ => DropReason::IpErrors,
            },
        )?;
        let body = out.get_mut(l4..l4 + frag.len).ok_or(DropReason::NoMem)?;
        body.copy_from_slice(part);
        if frag.offset == 0 {
            if let Some(h) = body.get_mut(..4) {
                h[0] = ICMP_ECHO_REPLY;
                h[2..4].copy_from_slice(&self.checksum.to_be_bytes());
            }
        }
        Ok(pad_frame(out, l4 + frag.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethernet::{PACKET_BROADCAST, PACKET_MULTICAST};
    use crate::ipv4::{validate, FragPlan};
    use crate::wire::{parse_ethernet, parse_ipv4, INADDR_BROADCAST};

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const PEER: Mac = [2, 0, 0, 0, 0, 9];
    const OUR_IP: u32 = 0x0A00_0001;
    const PEER_IP: u32 = 0x0A00_0009;
    const UNICAST: [u32; 1] = [OUR_IP];
    const LOCAL: [u32; 3] = [OUR_IP, 0x0A00_00FF, INADDR_BROADCAST];

    fn addrs() -> PortAddrs<'static> {
        PortAddrs {
            unicast: &UNICAST,
            local: &LOCAL,
        }
    }

    /// An echo request as an IP packet (no Ethernet header).
    fn request(src: u32, dst: u32, data_len: usize) -> Vec<u8> {
        let mut msg = vec![ICMP_ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0x00, 0x07];
        msg.extend((0..data_len).map(|i| (i * 13 + 1) as u8));
        let c = internet_checksum(&msg, 0);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![0u8; 34 + msg.len()];
        let ip = Ipv4Tx {
            src,
            dst,
            ident: 99,
            ttl: 1,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4(&mut f, &OURS, &PEER, &ip, IPPROTO_ICMP, msg.len()).unwrap();
        f[34..].copy_from_slice(&msg);
        f.split_off(14)
    }

    fn accept(
        pkt: &[u8],
        pkttype: u8,
        dst: DstKind,
        policy: EchoPolicy,
    ) -> Result<EchoReply, DropReason> {
        let ip = validate(pkt).unwrap();
        accept_request(pkt, &ip, PEER, pkttype, dst, &addrs(), policy)
    }

    #[test]
    fn reply_swaps_addresses_and_checksums() {
        for data_len in [0, 1, 56, 1472 - 8] {
            let req = request(PEER_IP, OUR_IP, data_len);
            let r = accept(&req, PACKET_HOST, DstKind::Unicast, EchoPolicy::default()).unwrap();
            let plan = FragPlan::new(r.msg_len(), 1500).unwrap();
            assert_eq!(plan.count(), 1);
            let mut out = [0xAAu8; 1514];
            let n = r
                .write(&req, &OURS, 5, plan.into_iter().next().unwrap(), &mut out)
                .unwrap();
            assert_eq!(n, (34 + 8 + data_len).max(60));
            let eth = parse_ethernet(&out[..n]).unwrap();
            assert_eq!((eth.dst, eth.src), (PEER, OURS));
            let ip = parse_ipv4(&out[14..n]).unwrap();
            assert_eq!(
                (ip.src, ip.dst, ip.ident, ip.ttl, ip.protocol),
                (OUR_IP, PEER_IP, 5, 64, 1)
            );
            let msg = ip.payload(&out[14..n]).unwrap();
            assert_eq!(msg[0], ICMP_ECHO_REPLY);
            assert_eq!(internet_checksum(msg, 0), 0);
            assert_eq!(&msg[4..], &req[24..]);
            let (h, payload) = etherparse::Icmpv4Header::from_slice(msg).unwrap();
            let want = etherparse::Icmpv4Header::with_checksum(h.icmp_type.clone(), payload);
            assert_eq!(h.checksum, want.checksum);
            assert!(out[n..].iter().all(|&b| b == 0xAA));
        }
    }

    #[test]
    fn big_reply_goes_out_in_fragments() {
        let req = request(PEER_IP, OUR_IP, 4000);
        let r = accept(&req, PACKET_HOST, DstKind::Unicast, EchoPolicy::default()).unwrap();
        let mut msg = Vec::new();
        let plan = FragPlan::new(r.msg_len(), 1500).unwrap();
        assert_eq!(plan.count(), 3);
        for frag in plan {
            let mut out = [0u8; 1514];
            let n = r.write(&req, &OURS, 77, frag, &mut out).unwrap();
            let ip = parse_ipv4(&out[14..n]).unwrap();
            assert_eq!(
                (ip.ident, ip.frag_offset, ip.more_fragments),
                (77, frag.offset, frag.more)
            );
            msg.extend_from_slice(ip.payload(&out[14..n]).unwrap());
        }
        assert_eq!(msg[0], ICMP_ECHO_REPLY);
        assert_eq!(internet_checksum(&msg, 0), 0);
        assert_eq!(&msg[4..], &req[24..]);
        let mut small = [0u8; 100];
        let first = FragPlan::new(r.msg_len(), 1500).unwrap().next().unwrap();
        assert_eq!(
            r.write(&req, &OURS, 1, first, &mut small),
            Err(DropReason::NoMem)
        );
        let beyond = Fragment {
            offset: 4000,
            len: 16,
            more: false,
        };
        assert_eq!(
            r.write(&req, &OURS, 1, beyond, &mut [0u8; 1514]),
            Err(DropReason::IpErrors)
        );
        let wrapping = Fragment {
            offset: usize::MAX,
            len: 2,
            more: false,
        };
        assert_eq!(
            r.write(&req, &OURS, 1, wrapping, &mut [0u8; 1514]),
            Err(DropReason::IpErrors)
        );
    }

    #[test]
    fn policy() {
        let dflt = EchoPolicy::default();
        let req = request(PEER_IP, OUR_IP, 8);
        let all = EchoPolicy {
            ignore_all: true,
            ..dflt
        };
        assert_eq!(
            accept(&req, PACKET_HOST, DstKind::Unicast, all),
            Err(DropReason::Filtered)
        );
        // to a broadcast or multicast address, at either layer
        let bc = request(PEER_IP, INADDR_BROADCAST, 8);
        assert_eq!(
            accept(&bc, PACKET_BROADCAST, DstKind::Broadcast, dflt),
            Err(DropReason::Filtered)
        );
        assert_eq!(
            accept(&req, PACKET_MULTICAST, DstKind::Unicast, dflt),
            Err(DropReason::Filtered)
        );
        // answered from the primary address when broadcasts are not ignored
        let open = EchoPolicy {
            ignore_broadcasts: false,
            ..dflt
        };
        let r = accept(&bc, PACKET_BROADCAST, DstKind::Broadcast, open).unwrap();
        assert_eq!((r.src, r.dst, r.dst_mac), (OUR_IP, PEER_IP, PEER));
        // 0.0.0.0 -> broadcast passes IPv4 validation, never gets an answer
        let dhcp = request(0, INADDR_BROADCAST, 8);
        assert_eq!(
            accept(&dhcp, PACKET_BROADCAST, DstKind::Broadcast, open),
            Err(DropReason::Filtered)
        );
        // no address to answer from
        let ip = validate(&bc).unwrap();
        let none = PortAddrs {
            unicast: &[],
            local: &[],
        };
        let got = accept_request(
            &bc,
            &ip,
            PEER,
            PACKET_BROADCAST,
            DstKind::Broadcast,
            &none,
            open,
        );
        assert_eq!(got, Err(DropReason::Filtered));
    }

    #[test]
    fn not_requests_and_bad_checksums() {
        let dflt = EchoPolicy::default();
        let mut req = request(PEER_IP, OUR_IP, 8);
        req[30] ^= 1; // corrupt the data
        assert_eq!(
            accept(&req, PACKET_HOST, DstKind::Unicast, dflt),
            Err(DropReason::CsumErrors)
        );
        for (at, value) in [(20, ICMP_ECHO_REPLY), (20, 13), (21, 1)] {
            let mut p = request(PEER_IP, OUR_IP, 8);
            p[at] = value;
            assert_eq!(
                accept(&p, PACKET_HOST, DstKind::Unicast, dflt),
                Err(DropReason::UnknownProto)
            );
        }
        // shorter than an ICMP header
        let mut f = vec![0u8; 34 + 4];
        let ip = Ipv4Tx {
            src: PEER_IP,
            dst: OUR_IP,
            ttl: 1,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4(&mut f, &OURS, &PEER, &ip, IPPROTO_ICMP, 4).unwrap();
        f[34] = ICMP_ECHO_REQUEST;
        assert_eq!(
            accept(&f[14..], PACKET_HOST, DstKind::Unicast, dflt),
            Err(DropReason::UnknownProto)
        );
    }
}

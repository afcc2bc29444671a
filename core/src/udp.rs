//! UDP over IPv4 (RFC 768): the input checks of Linux's `__udp4_lib_rcv`, before the socket
//! lookup.
//!
//! A UDP length shorter than the header or longer than the IP payload is `IpErrors` (as the
//! Python stack counted it); a checksum that does not verify is `CsumErrors`; a checksum field of
//! 0 means the sender computed none, and is accepted. Bytes after the UDP length (inside the IP
//! payload) are ignored, as Linux trims them. The TX checksum is [`checksum_for_tx`].

use crate::stats::DropReason;
use crate::wire::{internet_checksum, parse_udp, pseudo_header_sum, IPPROTO_UDP, UDP_HLEN};

/// The UDP TX checksum (pseudo header, header without its checksum field, payload; 0 sent as
/// 0xFFFF). It lives with the codecs, whose frame finisher uses it too.
pub use crate::wire::udp_checksum as checksum_for_tx;

/// A datagram that passed the checks: its ports and where its payload lies in the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpRx {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload bounds in the segment given to [`input`]: `segment[payload_start..payload_end]`.
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Check the UDP `segment` (the whole IPv4 payload, padding excluded) of a datagram from `src` to
/// `dst`.
pub fn input(segment: &[u8], src: u32, dst: u32) -> Result<UdpRx, DropReason> {
    let h = parse_udp(segment).map_err(|_| DropReason::IpErrors)?;
    let end = usize::from(h.length);
    if h.checksum != 0 {
        let sum = pseudo_header_sum(src, dst, IPPROTO_UDP, h.length);
        let covered = segment.get(..end).ok_or(DropReason::IpErrors)?;
        if internet_checksum(covered, sum) != 0 {
            return Err(DropReason::CsumErrors);
        }
    }
    Ok(UdpRx {
        src_port: h.src_port,
        dst_port: h.dst_port,
        payload_start: UDP_HLEN,
        payload_end: end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{finish_udp_checksum, write_eth_ipv4_udp, Ipv4Tx, ETH_IPV4_HLEN};

    const SRC: u32 = 0x0A00_0009;
    const DST: u32 = 0x0A00_0001;

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 42 + payload.len()];
        let ip = Ipv4Tx {
            src: SRC,
            dst: DST,
            ttl: 64,
            ..Ipv4Tx::default()
        };
        let off =
            write_eth_ipv4_udp(&mut f, &[0; 6], &[0; 6], &ip, 1234, 53, payload.len()).unwrap();
        f[off..].copy_from_slice(payload);
        finish_udp_checksum(&mut f).unwrap();
        f.split_off(ETH_IPV4_HLEN)
    }

    #[test]
    fn good_datagrams() {
        for payload in [&b""[..], b"x", b"hello", &[0xAB; 1001]] {
            let seg = datagram(payload);
            let rx = input(&seg, SRC, DST).unwrap();
            assert_eq!((rx.src_port, rx.dst_port), (1234, 53));
            assert_eq!(&seg[rx.payload_start..rx.payload_end], payload);
        }
    }

    #[test]
    fn checksum_zero_means_none_and_trailing_bytes_are_ignored() {
        let mut seg = datagram(b"abc");
        seg[6..8].fill(0);
        seg[8] ^= 0xFF; // would break any checksum
        seg.extend_from_slice(&[1, 2, 3]);
        let rx = input(&seg, SRC, DST).unwrap();
        assert_eq!(rx.payload_end, 11);
    }

    #[test]
    fn drops() {
        let seg = datagram(b"payload");
        assert_eq!(input(&seg[..7], SRC, DST), Err(DropReason::IpErrors));
        assert_eq!(input(&seg[..14], SRC, DST), Err(DropReason::IpErrors)); // length > bytes
        let mut short = seg.clone();
        short[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(input(&short, SRC, DST), Err(DropReason::IpErrors));
        let mut bad = seg.clone();
        bad[9] ^= 1;
        assert_eq!(input(&bad, SRC, DST), Err(DropReason::CsumErrors));
        // the pseudo header counts: same bytes, another destination
        assert_eq!(input(&seg, SRC, DST + 1), Err(DropReason::CsumErrors));
    }

    #[test]
    fn tx_checksum_matches_etherparse() {
        let seg = datagram(b"odd length!");
        let header: [u8; 8] = seg[..8].try_into().unwrap();
        let ours = checksum_for_tx(SRC, DST, &header, &seg[8..]);
        assert_eq!(ours.to_be_bytes(), [seg[6], seg[7]]);
        let (h, _) = etherparse::UdpHeader::from_slice(&seg).unwrap();
        let theirs = h.calc_checksum_ipv4_raw(SRC.to_be_bytes(), DST.to_be_bytes(), &seg[8..]);
        assert_eq!(ours, theirs.unwrap());
    }
}

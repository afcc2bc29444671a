//! Codecs (smoltcp's `wire` layer): header parsing, Internet checksums, the one TX header builder.
//!
//! Pure functions over byte slices: no state, no I/O, no allocation. Parsing goes through
//! etherparse's zero-copy header slices, which check lengths and the version/IHL fields; on top
//! we check what a receiver must and etherparse leaves to its caller (IPv4 total length against
//! the frame, the header checksum, UDP length) and return small `Copy` structs, so the layers
//! above hold no borrow of the frame. Emitting is a handful of byte stores: every TX path writes
//! its Ethernet + IPv4 (+ UDP) header with [`write_eth_ipv4`] / [`write_eth_ipv4_udp`], straight
//! into the TX buffer, header checksum included.
//!
//! IPv4 addresses are host-order `u32` throughout the stack; MAC addresses are `[u8; 6]`.

use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
use etherparse::{
    ArpHardwareId, ArpPacketSlice, EtherType, Ethernet2HeaderSlice, Icmpv4Slice, Ipv4HeaderSlice,
    SingleVlanHeaderSlice, UdpHeaderSlice,
};

/// A MAC address.
pub type Mac = [u8; 6];

pub const BROADCAST_MAC: Mac = [0xff; 6];
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// Minimum Ethernet frame without FCS: shorter frames are padded to it.
pub const ETH_ZLEN: usize = 60;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_UDP: u8 = 17;
pub const IPV4_HLEN: usize = 20;
/// IHL 15: the largest IPv4 header, options included.
pub const IPV4_MAX_HLEN: usize = 60;
/// The 16-bit total length field's limit.
pub const IPV4_MAX_LEN: usize = 65535;
pub const INADDR_BROADCAST: u32 = 0xFFFF_FFFF;
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFMASK: u16 = 0x1FFF;

pub const UDP_HLEN: usize = 8;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// Where the L4 header starts in every frame we build (we never send IP options).
pub const ETH_IPV4_HLEN: usize = ETH_HLEN + IPV4_HLEN;
/// Where a UDP payload starts in a frame we build.
pub const ETH_IPV4_UDP_HLEN: usize = ETH_IPV4_HLEN + UDP_HLEN;

/// Why a codec refused bytes (the Python `WireError` reasons). Each layer maps these to the
/// `DropReason` it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header needs (or an output buffer too small).
    Truncated,
    /// IP version is not 4.
    BadVersion,
    /// IPv4 header length below 5 words or past the end of the bytes.
    BadIhl,
    /// A length field disagrees with the bytes (or a length to emit does not fit its field).
    BadLength,
    /// The IPv4 header checksum does not verify.
    BadChecksum,
    /// Well formed, but not something the stack handles (ARP other than Ethernet/IPv4).
    Unsupported,
}

// -- checksums (RFC 1071) -------------------------------------------------------------------------

fn fold(mut sum: u64) -> u32 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u32
}

/// One's complement sum of `data` read as big-endian 16-bit words (an odd last byte is padded
/// with zero), added to the running sum `initial` and folded to 16 bits. Feed the result back as
/// `initial` to sum pieces; every piece but the last must have an even length.
pub fn checksum_sum(data: &[u8], initial: u32) -> u32 {
    // 32-bit words are summed as is: 2^16 == 1 (mod 0xFFFF), so folding gives the 16-bit sum.
    let mut sum = u64::from(initial);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    sum += match *words.remainder() {
        [a, b, c] => u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a] => u64::from(a) << 8,
        _ => 0,
    };
    fold(sum)
}

/// The Internet checksum of `data` on top of the running sum `initial`. Over bytes that carry a
/// correct checksum it is 0.
pub fn internet_checksum(data: &[u8], initial: u32) -> u16 {
    !(checksum_sum(data, initial) as u16)
}

/// Running sum of the IPv4 pseudo header UDP's checksum covers.
pub fn pseudo_header_sum(src: u32, dst: u32, protocol: u8, length: u16) -> u32 {
    let words = [src >> 16, src & 0xFFFF, dst >> 16, dst & 0xFFFF];
    fold(words.iter().map(|&w| u64::from(w)).sum::<u64>() + u64::from(protocol) + u64::from(length))
}

/// UDP checksum for TX (RFC 768) of the segment `header` + `payload`; the header's checksum field
/// is left out of the sum whatever it holds. A computed 0 is sent as 0xFFFF: 0 means "none".
pub fn udp_checksum(src: u32, dst: u32, header: &[u8; UDP_HLEN], payload: &[u8]) -> u16 {
    let length = u16::from_be_bytes([header[4], header[5]]);
    let sum = checksum_sum(
        &header[..6],
        pseudo_header_sum(src, dst, IPPROTO_UDP, length),
    );
    match internet_checksum(payload, sum) {
        0 => 0xFFFF,
        c => c,
    }
}

// -- RX: parsing --------------------------------------------------------------------------------

/// An Ethernet II header with its VLAN tags, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHeader {
    pub dst: Mac,
    pub src: Mac,
    /// The payload's EtherType, after the tags.
    pub ethertype: u16,
    /// The innermost tag's VLAN id (the one the payload belongs to), None when untagged.
    pub vlan_id: Option<u16>,
    /// 14, 18 or 22: where the payload starts.
    pub header_len: usize,
}

/// Parse the Ethernet header at the start of `frame`: one tag (802.1Q or 802.1ad), or QinQ (either
/// of those, then an inner 802.1Q tag).
pub fn parse_ethernet(frame: &[u8]) -> Result<EthHeader, WireError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| WireError::Truncated)?;
    let mut h = EthHeader {
        dst: eth.destination(),
        src: eth.source(),
        ethertype: eth.ether_type().0,
        vlan_id: None,
        header_len: ETH_HLEN,
    };
    let mut tags = 0;
    while h.ethertype == ETH_P_8021Q || (tags == 0 && h.ethertype == ETH_P_8021AD) {
        let rest = frame.get(h.header_len..).unwrap_or_default();
        let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| WireError::Truncated)?;
        h.vlan_id = Some(tag.vlan_identifier().value());
        h.ethertype = tag.ether_type().0;
        h.header_len += VLAN_HLEN;
        tags += 1;
        if tags == 2 {
            break;
        }
    }
    Ok(h)
}

/// A validated IPv4 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: u32,
    pub dst: u32,
    pub protocol: u8,
    /// IHL * 4, options included.
    pub header_len: usize,
    /// The total length field: the datagram ends there, whatever Ethernet padding follows.
    pub total_len: usize,
    pub ident: u16,
    /// Fragment offset in bytes.
    pub frag_offset: usize,
    pub more_fragments: bool,
    pub dont_fragment: bool,
    pub ttl: u8,
    pub tos: u8,
}

impl Ipv4Header {
    /// Whether this is one fragment of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// The payload of `packet` (the bytes this header was parsed from), padding excluded.
    pub fn payload<'a>(&self, packet: &'a [u8]) -> Option<&'a [u8]> {
        packet.get(self.header_len..self.total_len)
    }
}

/// Parse and validate the IPv4 header at the start of `packet` (which may run past the datagram:
/// Ethernet pads short frames): version, IHL, total length against the bytes, header checksum.
pub fn parse_ipv4(packet: &[u8]) -> Result<Ipv4Header, WireError> {
    let h = Ipv4HeaderSlice::from_slice(packet).map_err(|e| match e {
        HeaderSliceError::Len(l) if l.required_len > IPV4_HLEN => WireError::BadIhl,
        HeaderSliceError::Len(_) => WireError::Truncated,
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => WireError::BadVersion,
        HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
            WireError::BadIhl
        }
    })?;
    let header_len = h.slice().len();
    let total_len = usize::from(h.total_len());
    if total_len < header_len || total_len > packet.len() {
        return Err(WireError::BadLength);
    }
    if internet_checksum(h.slice(), 0) != 0 {
        return Err(WireError::BadChecksum);
    }
    Ok(Ipv4Header {
        src: u32::from_be_bytes(h.source()),
        dst: u32::from_be_bytes(h.destination()),
        protocol: h.protocol().0,
        header_len,
        total_len,
        ident: h.identification(),
        frag_offset: usize::from(h.fragments_offset().value()) * 8,
        more_fragments: h.more_fragments(),
        dont_fragment: h.dont_fragment(),
        ttl: h.ttl(),
        tos: (h.dcp().value() << 2) | h.ecn().value(),
    })
}

/// A UDP header whose length field fits the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    /// The length field: header plus payload.
    pub length: u16,
    /// 0: the sender computed none.
    pub checksum: u16,
}

/// Parse the UDP header of `segment` (the whole IPv4 payload). The checksum needs the IPv4
/// addresses: `udp::input` checks it.
pub fn parse_udp(segment: &[u8]) -> Result<UdpHeader, WireError> {
    let h = UdpHeaderSlice::from_slice(segment).map_err(|_| WireError::Truncated)?;
    let length = h.length();
    if usize::from(length) < UDP_HLEN || usize::from(length) > segment.len() {
        return Err(WireError::BadLength);
    }
    Ok(UdpHeader {
        src_port: h.source_port(),
        dst_port: h.destination_port(),
        length,
        checksum: h.checksum(),
    })
}

/// The first bytes of an ICMP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHeader {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: u16,
}

/// Parse the ICMP message that is all of `msg` (ICMP has no length field of its own).
pub fn parse_icmp(msg: &[u8]) -> Result<IcmpHeader, WireError> {
    let m = Icmpv4Slice::from_slice(msg).map_err(|_| WireError::Truncated)?;
    Ok(IcmpHeader {
        icmp_type: m.type_u8(),
        code: m.code_u8(),
        checksum: m.checksum(),
    })
}

/// An Ethernet/IPv4 ARP packet, the only kind the stack resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpHeader {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: u32,
    pub target_mac: Mac,
    pub target_ip: u32,
}

/// Parse the ARP packet at the start of `packet` (trailing Ethernet padding is ignored).
pub fn parse_arp(packet: &[u8]) -> Result<ArpHeader, WireError> {
    let a = ArpPacketSlice::from_slice(packet).map_err(|_| WireError::Truncated)?;
    if a.hw_addr_type() != ArpHardwareId::ETHERNET
        || a.proto_addr_type() != EtherType::IPV4
        || a.hw_addr_size() != 6
        || a.proto_addr_size() != 4
    {
        return Err(WireError::Unsupported);
    }
    let mac = |s: &[u8]| Mac::try_from(s).map_err(|_| WireError::Unsupported);
    let ip = |s: &[u8]| {
        <[u8; 4]>::try_from(s)
            .map(u32::from_be_bytes)
            .map_err(|_| WireError::Unsupported)
    };
    Ok(ArpHeader {
        op: a.operation().0,
        sender_mac: mac(a.sender_hw_addr())?,
        sender_ip: ip(a.sender_protocol_addr())?,
        target_mac: mac(a.target_hw_addr())?,
        target_ip: ip(a.target_protocol_addr())?,
    })
}

// -- TX: emitting -------------------------------------------------------------------------------

/// The IPv4 header fields a sender chooses (we never send options: the header is 20 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Tx {
    pub src: u32,
    pub dst: u32,
    pub ident: u16,
    pub ttl: u8,
    pub tos: u8,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Where this fragment's payload sits in the datagram, in bytes (a multiple of 8).
    pub frag_offset: usize,
}

/// Write the Ethernet and IPv4 headers for `payload_len` bytes of `protocol` at the start of
/// `buf`, header checksum included; returns where the payload goes (34). The payload must fit
/// after the header in `buf` (`Truncated` otherwise); the caller copies it there.
pub fn write_eth_ipv4(
    buf: &mut [u8],
    dst_mac: &Mac,
    src_mac: &Mac,
    ip: &Ipv4Tx,
    protocol: u8,
    payload_len: usize,
) -> Result<usize, WireError> {
    let total = IPV4_HLEN.saturating_add(payload_len);
    if total > IPV4_MAX_LEN
        || !ip.frag_offset.is_multiple_of(8)
        || ip.frag_offset / 8 > usize::from(IP_OFFMASK)
    {
        return Err(WireError::BadLength);
    }
    if buf.len() < ETH_HLEN + total {
        return Err(WireError::Truncated);
    }
    let h = buf.get_mut(..ETH_IPV4_HLEN).ok_or(WireError::Truncated)?;
    let mut frag = (ip.frag_offset / 8) as u16;
    if ip.dont_fragment {
        frag |= IP_DF;
    }
    if ip.more_fragments {
        frag |= IP_MF;
    }
    h[..6].copy_from_slice(dst_mac);
    h[6..12].copy_from_slice(src_mac);
    h[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    h[14] = 0x45;
    h[15] = ip.tos;
    h[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    h[18..20].copy_from_slice(&ip.ident.to_be_bytes());
    h[20..22].copy_from_slice(&frag.to_be_bytes());
    h[22] = ip.ttl;
    h[23] = protocol;
    h[24..26].fill(0);
    h[26..30].copy_from_slice(&ip.src.to_be_bytes());
    h[30..34].copy_from_slice(&ip.dst.to_be_bytes());
    let csum = internet_checksum(&h[ETH_HLEN..], 0);
    h[24..26].copy_from_slice(&csum.to_be_bytes());
    Ok(ETH_IPV4_HLEN)
}

/// Write a UDP header for `payload_len` bytes at the start of `buf`, checksum field 0 (see
/// [`finish_udp_checksum`] and [`udp_checksum`]); returns 8. A fragmented datagram's first
/// fragment carries it after its IPv4 header.
pub fn write_udp_header(
    buf: &mut [u8],
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Result<usize, WireError> {
    let length =
        u16::try_from(UDP_HLEN.saturating_add(payload_len)).map_err(|_| WireError::BadLength)?;
    let h = buf.get_mut(..UDP_HLEN).ok_or(WireError::Truncated)?;
    h[..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&length.to_be_bytes());
    h[6..8].fill(0);
    Ok(UDP_HLEN)
}

/// The TX header builder of unfragmented UDP: Ethernet + IPv4 + UDP (42 bytes) at the start of
/// `buf`; returns 42, where the payload goes. Copy the payload, then [`finish_udp_checksum`].
pub fn write_eth_ipv4_udp(
    buf: &mut [u8],
    dst_mac: &Mac,
    src_mac: &Mac,
    ip: &Ipv4Tx,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Result<usize, WireError> {
    let l4 = write_eth_ipv4(
        buf,
        dst_mac,
        src_mac,
        ip,
        IPPROTO_UDP,
        UDP_HLEN.saturating_add(payload_len),
    )?;
    let udp = buf.get_mut(l4..).ok_or(WireError::Truncated)?;
    Ok(l4 + write_udp_header(udp, src_port, dst_port, payload_len)?)
}

/// Fill in the UDP checksum of a frame built by [`write_eth_ipv4_udp`] once its payload is in.
pub fn finish_udp_checksum(frame: &mut [u8]) -> Result<(), WireError> {
    let addr = |at: usize| {
        frame
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
    };
    let (src, dst) = match (addr(26), addr(30)) {
        (Some(s), Some(d)) => (u32::from_be_bytes(s), u32::from_be_bytes(d)),
        _ => return Err(WireError::Truncated),
    };
    let udp = frame.get_mut(ETH_IPV4_HLEN..).ok_or(WireError::Truncated)?;
    let header = udp
        .get(..UDP_HLEN)
        .and_then(|h| <[u8; UDP_HLEN]>::try_from(h).ok())
        .ok_or(WireError::Truncated)?;
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let payload = udp.get(UDP_HLEN..length).ok_or(WireError::Truncated)?;
    let csum = udp_checksum(src, dst, &header, payload);
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Write a whole ARP frame (Ethernet header, `arp`, zero padding) at the start of `buf`;
/// returns its length, 60.
pub fn write_eth_arp(
    buf: &mut [u8],
    eth_dst: &Mac,
    eth_src: &Mac,
    arp: &ArpHeader,
) -> Result<usize, WireError> {
    let f = buf.get_mut(..ETH_ZLEN).ok_or(WireError::Truncated)?;
    f[..6].copy_from_slice(eth_dst);
    f[6..12].copy_from_slice(eth_src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // hardware Ethernet, protocol IPv4, address lengths 6 and 4
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    f[20..22].copy_from_slice(&arp.op.to_be_bytes());
    f[22..28].copy_from_slice(&arp.sender_mac);
    f[28..32].copy_from_slice(&arp.sender_ip.to_be_bytes());
    f[32..38].copy_from_slice(&arp.target_mac);
    f[38..42].copy_from_slice(&arp.target_ip.to_be_bytes());
    f[42..].fill(0);
    Ok(ETH_ZLEN)
}

/// Zero-pad a `len`-byte frame in `buf` to the Ethernet minimum; returns the length to send
/// (`len` when it is long enough already or `buf` has no room).
pub fn pad_frame(buf: &mut [u8], len: usize) -> usize {
    match buf.get_mut(len..ETH_ZLEN) {
        Some(tail) => {
            tail.fill(0);
            ETH_ZLEN
        }
        None => len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = [2, 0, 0, 0, 0, 1];
    const MAC_B: Mac = [2, 0, 0, 0, 0, 2];
    const IP_A: u32 = 0xC0A8_0001; // 192.168.0.1
    const IP_B: u32 = 0xC0A8_00C7; // 192.168.0.199

    #[test]
    fn rfc1071_vector_and_odd_lengths() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum_sum(&data, 0), 0xddf2);
        assert_eq!(internet_checksum(&data, 0), !0xddf2);
        // an odd length is padded with one zero byte, whatever the remainder size
        for n in 1..=8 {
            let mut padded = data[..n].to_vec();
            padded.push(0);
            assert_eq!(
                checksum_sum(&data[..n], 0),
                checksum_sum(&padded, 0),
                "n={n}"
            );
        }
        // chaining even pieces is the same as one pass
        assert_eq!(
            checksum_sum(&data[4..], checksum_sum(&data[..4], 0)),
            0xddf2
        );
        // all ones sum: a correct message checks to 0, never to 0xFFFF
        assert_eq!(internet_checksum(&[0xff, 0xff], 0), 0);
    }

    #[test]
    fn ipv4_header_vector() {
        // the classic example header: checksum b861
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr, 0), 0xb861);
        let mut pkt = hdr.to_vec();
        pkt[10..12].copy_from_slice(&[0xb8, 0x61]);
        pkt.resize(0x73, 0);
        let h = parse_ipv4(&pkt).unwrap();
        assert_eq!(
            (h.src, h.dst, h.protocol, h.total_len),
            (IP_A, IP_B, 17, 0x73)
        );
        assert!(h.dont_fragment && !h.is_fragment());
        pkt[11] ^= 1;
        assert_eq!(parse_ipv4(&pkt), Err(WireError::BadChecksum));
    }

    #[test]
    fn udp_frame_round_trip_matches_etherparse() {
        for len in [0usize, 1, 17, 18, 1472] {
            let mut frame = vec![0u8; ETH_IPV4_UDP_HLEN + len];
            let ip = Ipv4Tx {
                src: IP_A,
                dst: IP_B,
                ident: 7,
                ttl: 64,
                tos: 0x10,
                ..Ipv4Tx::default()
            };
            let off = write_eth_ipv4_udp(&mut frame, &MAC_B, &MAC_A, &ip, 4000, 5000, len).unwrap();
            assert_eq!(off, 42);
            for (i, b) in frame[off..].iter_mut().enumerate() {
                *b = (i * 7 + 3) as u8;
            }
            finish_udp_checksum(&mut frame).unwrap();

            let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ipv4)) = p.net else {
                panic!("not IPv4")
            };
            let h = ipv4.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(h.identification, 7);
            let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            let want =
                udp.to_header()
                    .calc_checksum_ipv4_raw(h.source, h.destination, udp.payload());
            assert_eq!(udp.checksum(), want.unwrap());
            assert_eq!((udp.source_port(), udp.destination_port()), (4000, 5000));

            let eth = parse_ethernet(&frame).unwrap();
            assert_eq!(
                (eth.dst, eth.src, eth.ethertype, eth.header_len),
                (MAC_B, MAC_A, ETH_P_IP, 14)
            );
            let iph = parse_ipv4(&frame[14..]).unwrap();
            assert_eq!((iph.tos, iph.ttl, iph.total_len), (0x10, 64, 28 + len));
            let seg = iph.payload(&frame[14..]).unwrap();
            let u = parse_udp(seg).unwrap();
            assert_eq!(usize::from(u.length), 8 + len);
            // a correct segment checks to 0 over the pseudo header
            let ph = pseudo_header_sum(IP_A, IP_B, IPPROTO_UDP, u.length);
            assert_eq!(internet_checksum(seg, ph), 0);
        }
    }

    #[test]
    fn udp_checksum_zero_is_sent_as_ffff() {
        // choose the payload so that the checksum computes to 0
        let mut frame = vec![0u8; ETH_IPV4_UDP_HLEN + 2];
        let ip = Ipv4Tx {
            src: IP_A,
            dst: IP_B,
            ttl: 64,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4_udp(&mut frame, &MAC_B, &MAC_A, &ip, 1, 2, 2).unwrap();
        let header: [u8; 8] = frame[34..42].try_into().unwrap();
        let sum = checksum_sum(&header[..6], pseudo_header_sum(IP_A, IP_B, 17, 10));
        // the payload word that brings the sum to 0xFFFF
        let word = 0xFFFF - sum as u16;
        frame[42..44].copy_from_slice(&word.to_be_bytes());
        finish_udp_checksum(&mut frame).unwrap();
        assert_eq!(&frame[40..42], &[0xff, 0xff]);
    }

    #[test]
    fn fragment_header_fields() {
        let mut frame = vec![0u8; 34 + 16];
        let ip = Ipv4Tx {
            src: IP_A,
            dst: IP_B,
            ident: 0x1234,
            ttl: 9,
            more_fragments: true,
            frag_offset: 1480,
            ..Ipv4Tx::default()
        };
        assert_eq!(
            write_eth_ipv4(&mut frame, &MAC_B, &MAC_A, &ip, IPPROTO_ICMP, 16),
            Ok(34)
        );
        let h = parse_ipv4(&frame[14..]).unwrap();
        assert_eq!(
            (h.frag_offset, h.more_fragments, h.ident, h.protocol),
            (1480, true, 0x1234, 1)
        );
        let bad = Ipv4Tx {
            frag_offset: 3,
            ..ip
        };
        assert_eq!(
            write_eth_ipv4(&mut frame, &MAC_B, &MAC_A, &bad, 1, 16),
            Err(WireError::BadLength)
        );
        assert_eq!(
            write_eth_ipv4(&mut frame, &MAC_B, &MAC_A, &ip, 1, 17),
            Err(WireError::Truncated)
        );
        assert_eq!(
            write_eth_ipv4(&mut frame, &MAC_B, &MAC_A, &ip, 1, 65516),
            Err(WireError::BadLength)
        );
        assert_eq!(
            write_udp_header(&mut frame, 1, 2, 65528),
            Err(WireError::BadLength)
        );
        for huge in [usize::MAX, usize::MAX - 7] {
            let got = write_eth_ipv4_udp(&mut frame, &MAC_B, &MAC_A, &ip, 1, 2, huge);
            assert_eq!(got, Err(WireError::BadLength));
        }
    }

    #[test]
    fn ipv4_parse_errors() {
        let mut frame = vec![0u8; 34 + 8];
        let ip = Ipv4Tx {
            src: IP_A,
            dst: IP_B,
            ttl: 1,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4(&mut frame, &MAC_B, &MAC_A, &ip, 99, 8).unwrap();
        let pkt = &frame[14..];
        assert_eq!(parse_ipv4(&pkt[..19]), Err(WireError::Truncated));
        assert_eq!(parse_ipv4(&pkt[..27]), Err(WireError::BadLength));
        let mut p = pkt.to_vec();
        p[0] = 0x65;
        assert_eq!(parse_ipv4(&p), Err(WireError::BadVersion));
        p[0] = 0x44;
        assert_eq!(parse_ipv4(&p), Err(WireError::BadIhl));
        p[0] = 0x4f; // 60-byte header in 28 bytes
        assert_eq!(parse_ipv4(&p), Err(WireError::BadIhl));
        p[0] = 0x46; // 24-byte header, total length 28: consistent lengths, stale checksum
        assert_eq!(parse_ipv4(&p), Err(WireError::BadChecksum));
        let mut p = pkt.to_vec();
        p[2..4].copy_from_slice(&19u16.to_be_bytes()); // total below the header
        assert_eq!(parse_ipv4(&p), Err(WireError::BadLength));
    }

    #[test]
    fn vlan_tags() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        f[14..16].copy_from_slice(&0x2064u16.to_be_bytes()); // PCP 1, VID 100
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[18..20].copy_from_slice(&0x00c8u16.to_be_bytes()); // VID 200
        f[20..22].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let h = parse_ethernet(&f).unwrap();
        assert_eq!(
            (h.vlan_id, h.ethertype, h.header_len),
            (Some(200), ETH_P_IP, 22)
        );
        // single tag
        f[16..18].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let h = parse_ethernet(&f).unwrap();
        assert_eq!(
            (h.vlan_id, h.ethertype, h.header_len),
            (Some(100), ETH_P_ARP, 18)
        );
        // a third tag is payload, not a tag
        f[16..18].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[20..22].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        assert_eq!(parse_ethernet(&f).unwrap().ethertype, ETH_P_8021Q);
        assert_eq!(parse_ethernet(&f[..19]), Err(WireError::Truncated));
        assert_eq!(parse_ethernet(&f[..13]), Err(WireError::Truncated));
    }

    #[test]
    fn arp_round_trip() {
        let req = ArpHeader {
            op: ARP_REQUEST,
            sender_mac: MAC_A,
            sender_ip: IP_A,
            target_mac: [0; 6],
            target_ip: IP_B,
        };
        let mut f = [0xAAu8; 64];
        assert_eq!(write_eth_arp(&mut f, &BROADCAST_MAC, &MAC_A, &req), Ok(60));
        assert!(f[42..60].iter().all(|&b| b == 0));
        let eth = parse_ethernet(&f).unwrap();
        assert_eq!(eth.ethertype, ETH_P_ARP);
        assert_eq!(parse_arp(&f[14..60]), Ok(req));
        let ep = etherparse::ArpPacketSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(ep.operation(), etherparse::ArpOperation::REQUEST);
        assert_eq!(parse_arp(&f[14..41]), Err(WireError::Truncated));
        f[15] = 6; // hardware type IEEE 802
        assert_eq!(parse_arp(&f[14..60]), Err(WireError::Unsupported));
        assert_eq!(
            write_eth_arp(&mut f[..59], &BROADCAST_MAC, &MAC_A, &req),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn icmp_and_udp_parse_errors() {
        assert_eq!(
            parse_icmp(&[8, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Truncated)
        );
        let h = parse_icmp(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]).unwrap();
        assert_eq!((h.icmp_type, h.code, h.checksum), (8, 0, 0xf7ff));
        assert_eq!(parse_udp(&[0; 7]), Err(WireError::Truncated));
        assert_eq!(
            parse_udp(&[0, 1, 0, 2, 0, 7, 0, 0]),
            Err(WireError::BadLength)
        );
        assert_eq!(
            parse_udp(&[0, 1, 0, 2, 0, 9, 0, 0]),
            Err(WireError::BadLength)
        );
    }

    #[test]
    fn padding() {
        let mut buf = [0xAAu8; 64];
        assert_eq!(pad_frame(&mut buf, 42), 60);
        assert!(buf[42..60].iter().all(|&b| b == 0) && buf[60] == 0xAA);
        assert_eq!(pad_frame(&mut buf, 61), 61);
        assert_eq!(pad_frame(&mut buf[..50], 42), 42);
    }
}

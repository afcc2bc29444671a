//! The harness shared by the cargo-fuzz targets and by `tests/rx_path.rs` (which includes this
//! file with `#[path]`, so both drive the RX path the same way and check the same things): a
//! seeded PRNG, frame builders and mutations, the input formats of the targets, and [`Rig`], a
//! real port on a virtual link whose RX ledger (see `_core::stats`) and pools can be checked.
//!
//! Frames are built for [`HOST_MAC`], a stand-in for the port's MAC (a virtual link's MACs
//! depend on how many links the process made before); [`Rig`] puts the real one in.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use _core::device::virtual_link::VirtualLink;
use _core::device::Device;
use _core::pool::PacketBuf;
use _core::port::{Addresses, Port, PortConfig};
use _core::reassembly::ReasmStats;
use _core::socket::SocketCore;
use _core::stack::{udp_key, PacketListener, StackCore};
use _core::wire::{
    internet_checksum, pseudo_header_sum, Mac, BROADCAST_MAC, ETH_P_ARP, ETH_P_IP,
    INADDR_BROADCAST, IPPROTO_ICMP, IPPROTO_UDP,
};

/// Stands for the port's MAC in built frames (see the module doc).
pub const HOST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x09];
pub const MCAST_MAC: Mac = [0x01, 0x00, 0x5e, 0, 0, 0xfb];
pub const OUR_IP: u32 = 0x0A00_0001;
pub const PEER_IP: u32 = 0x0A00_0009;
pub const DIRECTED_BCAST: u32 = 0x0A00_00FF;
pub const MCAST_IP: u32 = 0xE000_00FB;
/// Bound to `OUR_IP`.
pub const UDP_PORT: u16 = 7;
/// Bound to INADDR_ANY, with a small SO_RCVBUF (its queue fills: `rx_sock_full`).
pub const UDP_ANY_PORT: u16 = 9;
/// Nobody bound (`rx_no_receiver`).
pub const UDP_UNBOUND_PORT: u16 = 1234;
/// A packet socket takes frames of this EtherType.
pub const ETH_P_CUSTOM: u16 = 0x88B5;
/// Handed to the in-band stage.
pub const ETH_P_INBAND: u16 = 0x88B6;
pub const IPPROTO_INBAND: u8 = 253;
/// In the stack's oob VLAN set.
pub const OOB_VLAN: u16 = 5;
/// The largest UDP payload of an IPv4 datagram.
pub const MAX_UDP_PAYLOAD: usize = 65507;

// -- PRNG -------------------------------------------------------------------------------------

/// xorshift64: reproducible runs without a dependency.
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0, which xorshift cannot leave, is replaced).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True once in `n` on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// -- frame builders ---------------------------------------------------------------------------

/// An Ethernet frame, zero-padded to the 60-byte minimum as a NIC would.
pub fn ether(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len().max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// `frame` with an 802.1Q tag of `vid` after the MACs.
pub fn with_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let tag = [0x81, 0x00, (vid >> 8) as u8 & 0x0F, vid as u8];
    let at = f.len().min(12); // a runt stays one
    f.splice(at..at, tag);
    f
}

/// What an IPv4 header says (options: that many bytes of NOPs, a multiple of 4 up to 40).
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: u32,
    pub dst: u32,
    pub ident: u16,
    pub protocol: u8,
    pub options: usize,
    pub more: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub offset: usize,
}

impl Ip {
    pub fn new(src: u32, dst: u32, protocol: u8) -> Ip {
        Ip {
            src,
            dst,
            ident: 1,
            protocol,
            options: 0,
            more: false,
            offset: 0,
        }
    }
}

/// An IPv4 packet: header (checksummed) and `payload`. The total length field wraps past
/// 65535, as an attacker's would.
pub fn ipv4(ip: &Ip, payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + ip.options.min(40) / 4 * 4;
    let mut p = vec![0u8; hlen];
    p[0] = 0x40 | (hlen / 4) as u8;
    p[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&ip.ident.to_be_bytes());
    let frag = (ip.offset / 8) as u16 & 0x1FFF | if ip.more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = ip.protocol;
    p[12..16].copy_from_slice(&ip.src.to_be_bytes());
    p[16..20].copy_from_slice(&ip.dst.to_be_bytes());
    p[20..].fill(1); // NOP options
    let c = internet_checksum(&p, 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP segment (header and `data`), checksummed unless `checksum` is false (0: none).
pub fn udp_segment(
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    data: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let len = 8 + data.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(data);
    if checksum {
        let c = match internet_checksum(&s, pseudo_header_sum(src, dst, IPPROTO_UDP, len as u16)) {
            0 => 0xFFFF,
            c => c,
        };
        s[6..8].copy_from_slice(&c.to_be_bytes());
    }
    s
}

/// An ICMP echo request message.
pub fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = internet_checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A UDP datagram in one frame, to `dst_mac`.
pub fn udp_frame(dst_mac: Mac, src: u32, dst: u32, dport: u16, data: &[u8]) -> Vec<u8> {
    let seg = udp_segment(src, dst, 5000, dport, data, true);
    ether(
        dst_mac,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(src, dst, IPPROTO_UDP), &seg),
    )
}

/// An ARP packet in a frame (broadcast for a request).
pub fn arp_frame(op: u16, sender_ip: u32, target_ip: u32) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&PEER_MAC);
    a.extend_from_slice(&sender_ip.to_be_bytes());
    let (dst, target_mac) = if op == 1 {
        (BROADCAST_MAC, [0; 6])
    } else {
        (HOST_MAC, HOST_MAC)
    };
    a.extend_from_slice(&target_mac);
    a.extend_from_slice(&target_ip.to_be_bytes());
    ether(dst, PEER_MAC, ETH_P_ARP, &a)
}

/// The IP payload `payload` of datagram `ip` cut into fragments of `frag_len` bytes (rounded
/// down to a multiple of 8), as IP packets. Only the offset-0 fragment carries `ip.options`.
pub fn fragments(ip: &Ip, payload: &[u8], frag_len: usize) -> Vec<Vec<u8>> {
    let step = (frag_len / 8 * 8).max(8);
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let end = (off + step).min(payload.len());
        let f = Ip {
            options: if off == 0 { ip.options } else { 0 },
            more: end < payload.len(),
            offset: off,
            ..*ip
        };
        out.push(ipv4(&f, &payload[off..end]));
        if end == payload.len() {
            return out;
        }
        off = end;
    }
}

/// Frames carrying IP packets, from the peer to the port.
pub fn ip_frames(packets: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    packets
        .iter()
        .map(|p| ether(HOST_MAC, PEER_MAC, ETH_P_IP, p))
        .collect()
}

/// Issue 9's attack: the largest UDP datagram (65507 bytes of payload) in 46 fragments whose
/// offset-0 fragment carries 40 bytes of options (so it would make a 65575-byte datagram),
/// sent last or first.
pub fn ihl15_attack(ident: u16, first_last: bool) -> Vec<Vec<u8>> {
    let seg = udp_segment(
        PEER_IP,
        OUR_IP,
        5000,
        UDP_PORT,
        &pattern(MAX_UDP_PAYLOAD, ident as u8),
        true,
    );
    let ip = Ip {
        ident,
        options: 40,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP)
    };
    // 1440 bytes a fragment: with its 60-byte header the first one still fits a 1500-byte MTU
    // (a longer frame never reaches the port: the device counts it `rx_oversize`)
    let mut frags = fragments(&ip, &seg, 1440);
    if first_last {
        frags.rotate_left(1);
    }
    ip_frames(frags)
}

/// Reproducible payload bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Valid frames of every kind the port handles, one of each (for mutation and seed corpora).
pub fn seed_frames() -> Vec<Vec<u8>> {
    let mut out = vec![
        udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_PORT, b"hello"),
        udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_PORT, &pattern(600, 1)),
        udp_frame(
            BROADCAST_MAC,
            PEER_IP,
            DIRECTED_BCAST,
            UDP_ANY_PORT,
            b"to all",
        ),
        udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_UNBOUND_PORT, b"nobody"),
        udp_frame(MCAST_MAC, PEER_IP, MCAST_IP, UDP_ANY_PORT, b"group"),
        with_vlan(
            &udp_frame(HOST_MAC, PEER_IP, OUR_IP, UDP_PORT, b"tagged"),
            OOB_VLAN,
        ),
    ];
    // checksum 0 (none): mutated payloads are still delivered
    let seg = udp_segment(PEER_IP, OUR_IP, 5000, UDP_ANY_PORT, b"no checksum", false);
    out.push(ether(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP), &seg),
    ));
    let ping = icmp_echo(0x77, 1, &pattern(56, 2));
    out.push(ether(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, OUR_IP, IPPROTO_ICMP), &ping),
    ));
    out.push(ether(
        BROADCAST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, INADDR_BROADCAST, IPPROTO_ICMP), &ping),
    ));
    out.push(arp_frame(1, PEER_IP, OUR_IP));
    out.push(arp_frame(2, PEER_IP, OUR_IP));
    out.push(ether(HOST_MAC, PEER_MAC, ETH_P_CUSTOM, b"custom"));
    out.push(ether(HOST_MAC, PEER_MAC, ETH_P_INBAND, b"in-band"));
    out.push(ether(HOST_MAC, PEER_MAC, 0x9000, b"loopback test"));
    out.push(ether(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, OUR_IP, IPPROTO_INBAND), b"proto"),
    ));
    out.push(ether(
        HOST_MAC,
        PEER_MAC,
        ETH_P_IP,
        &ipv4(&Ip::new(PEER_IP, OUR_IP, 6), b"tcp?"),
    ));
    // fragments: a UDP datagram and an echo request, 3 pieces each
    let seg = udp_segment(PEER_IP, OUR_IP, 5000, UDP_PORT, &pattern(2000, 3), true);
    let ip = Ip {
        ident: 0x100,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_UDP)
    };
    out.extend(ip_frames(fragments(&ip, &seg, 800)));
    let ping = icmp_echo(0x78, 2, &pattern(1500, 4));
    let ip = Ip {
        ident: 0x101,
        ..Ip::new(PEER_IP, OUR_IP, IPPROTO_ICMP)
    };
    out.extend(ip_frames(fragments(&ip, &ping, 600)));
    out
}

/// Where the IPv4 header of an Ethernet frame starts (after up to two tags), if it is IPv4.
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    for _ in 0..3 {
        match frame.get(at..at + 2)? {
            [0x81, 0x00] | [0x88, 0xA8] => at += 4,
            [0x08, 0x00] => return Some(at + 2),
            _ => return None,
        }
    }
    None
}

/// Make the checksums of an IPv4 frame right again after a mutation: the header's, and with
/// `l4` an unfragmented datagram's UDP (unless 0) or ICMP one. Lets mutations reach the layers
/// behind the checks.
pub fn fix_checksums(frame: &mut [u8], l4: bool) {
    let Some(l3) = ipv4_offset(frame) else { return };
    let Some(&vihl) = frame.get(l3) else { return };
    let hlen = usize::from(vihl & 0xF) * 4;
    if hlen < 20 || frame.len() < l3 + hlen {
        return;
    }
    frame[l3 + 10..l3 + 12].fill(0);
    let c = internet_checksum(&frame[l3..l3 + hlen], 0);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let h = &frame[l3..];
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3FFF != 0;
    if !l4 || fragment || total < hlen || l3 + total > frame.len() {
        return;
    }
    let (proto, src, dst) = (h[9], read_u32(&h[12..16]), read_u32(&h[16..20]));
    let l4seg = &mut frame[l3 + hlen..l3 + total];
    match proto {
        IPPROTO_UDP if l4seg.len() >= 8 && l4seg[6..8] != [0, 0] => {
            let ulen = usize::from(u16::from_be_bytes([l4seg[4], l4seg[5]]));
            if (8..=l4seg.len()).contains(&ulen) {
                l4seg[6..8].fill(0);
                let c = internet_checksum(
                    &l4seg[..ulen],
                    pseudo_header_sum(src, dst, IPPROTO_UDP, ulen as u16),
                );
                let c = if c == 0 { 0xFFFF } else { c };
                l4seg[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        IPPROTO_ICMP if l4seg.len() >= 4 => {
            l4seg[2..4].fill(0);
            let c = internet_checksum(l4seg, 0);
            l4seg[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One to three random edits: bit flips, byte changes, truncation, extension, and edits of
/// IPv4 header fields (lengths, flags, offset, IHL) with the checksums made right again.
pub fn mutate(rng: &mut XorShift, f: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if f.is_empty() {
            f.push(rng.byte());
        }
        let at = rng.below(f.len());
        match rng.below(8) {
            0 => f[at] ^= 1 << rng.below(8),
            1 => f[at] = rng.byte(),
            2 => f.truncate(at),
            3 => {
                let n = rng.below(64);
                f.extend(rng.bytes(n));
            }
            4 => f[at] = *rng.pick(&[0, 0xFF, 0x7F, 0x80, 1]),
            _ => {
                let Some(l3) = ipv4_offset(f) else { continue };
                // version/IHL, total length, flags/offset, protocol
                let field = l3 + *rng.pick(&[0, 2, 3, 6, 7, 9]);
                if let Some(b) = f.get_mut(field) {
                    *b = match rng.below(3) {
                        0 => rng.byte(),
                        1 => *b ^ 0x20,
                        _ => b.wrapping_add(1),
                    };
                }
                let l4 = rng.one_in(2);
                fix_checksums(f, l4);
            }
        }
    }
}

// -- input formats of the fuzz targets --------------------------------------------------------

/// `rx_path` input: one byte of [`RxFlags`], then frames, each as a big-endian 16-bit length
/// and that many bytes (the last one gets what is left).
pub fn encode_rx_input(flags: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![flags];
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The flag bits of an `rx_path` input.
pub struct RxFlags;

impl RxFlags {
    pub const ACCEPT_MULTICAST: u8 = 1;
    pub const ECHO_IGNORE_ALL: u8 = 2;
    /// Answer echo requests sent to broadcast addresses (ignored by default, as on Linux).
    pub const ECHO_ANSWER_BROADCASTS: u8 = 4;
    /// Fix the IPv4 header checksum of every frame (see [`fix_checksums`]).
    pub const FIX_IP_CSUM: u8 = 8;
    /// Fix UDP and ICMP checksums too.
    pub const FIX_L4_CSUM: u8 = 16;
}

/// Split an `rx_path` input into its flags and frames (at most 256).
pub fn decode_rx_input(data: &[u8]) -> (u8, Vec<&[u8]>) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut frames = Vec::new();
    while rest.len() >= 2 && frames.len() < 256 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        frames.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    (flags, frames)
}

/// One fragment of a `reassembly` input, 8 bytes:
/// `[flags, ident, offset/8 (u16 BE, 13 bits), payload length (u16 BE), fill, time step]`,
/// flags: bit 0 MF, bit 1 ICMP (else UDP), bit 2 other source, bits 3-6 option words (up
/// to 10), bit 7 a length over 2047 (without it the length is taken modulo 2048: big payloads
/// make slow inputs, and offsets reach the end of a datagram anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragSpec {
    pub more: bool,
    pub icmp: bool,
    pub other_src: bool,
    pub option_words: u8,
    pub ident: u8,
    pub offset_units: u16,
    pub len: u16,
    pub fill: u8,
    /// Time passing before this fragment, in units of 10 ms.
    pub step: u8,
}

impl FragSpec {
    pub const SIZE: usize = 8;

    pub fn decode(r: &[u8]) -> Option<FragSpec> {
        let r: &[u8; 8] = r.get(..8)?.try_into().ok()?;
        Some(FragSpec {
            more: r[0] & 1 != 0,
            icmp: r[0] & 2 != 0,
            other_src: r[0] & 4 != 0,
            option_words: ((r[0] >> 3) & 0xF).min(10),
            ident: r[1],
            offset_units: u16::from_be_bytes([r[2], r[3]]) & 0x1FFF,
            len: u16::from_be_bytes([r[4], r[5]]) & if r[0] & 0x80 != 0 { 0xFFFF } else { 0x7FF },
            fill: r[6],
            step: r[7],
        })
    }

    pub fn encode(&self) -> [u8; 8] {
        let flags = u8::from(self.more)
            | u8::from(self.icmp) << 1
            | u8::from(self.other_src) << 2
            | (self.option_words & 0xF) << 3
            | u8::from(self.len > 0x7FF) << 7;
        let o = self.offset_units.to_be_bytes();
        let l = self.len.to_be_bytes();
        [
            flags, self.ident, o[0], o[1], l[0], l[1], self.fill, self.step,
        ]
    }

    /// The IP packet (valid header; the payload cut so the total length fits 16 bits).
    pub fn packet(&self) -> Vec<u8> {
        let options = usize::from(self.option_words) * 4;
        let len = usize::from(self.len).min(65535 - 20 - options);
        let ip = Ip {
            src: if self.other_src { PEER_IP + 1 } else { PEER_IP },
            dst: OUR_IP,
            ident: u16::from(self.ident),
            protocol: if self.icmp { IPPROTO_ICMP } else { IPPROTO_UDP },
            options,
            more: self.more,
            offset: usize::from(self.offset_units) * 8,
        };
        ipv4(&ip, &pattern(len, self.fill))
    }

    /// The specs of `packets` (IP packets as [`fragments`] makes them), time step 0.
    pub fn of(packets: &[Vec<u8>]) -> Vec<FragSpec> {
        packets
            .iter()
            .map(|p| {
                let hlen = usize::from(p[0] & 0xF) * 4;
                let frag = u16::from_be_bytes([p[6], p[7]]);
                FragSpec {
                    more: frag & 0x2000 != 0,
                    icmp: p[9] == IPPROTO_ICMP,
                    other_src: false,
                    option_words: ((hlen - 20) / 4) as u8,
                    ident: p[5],
                    offset_units: frag & 0x1FFF,
                    len: (p.len() - hlen) as u16,
                    fill: p.get(hlen).copied().unwrap_or(0),
                    step: 0,
                }
            })
            .collect()
    }
}

// -- the rig ----------------------------------------------------------------------------------

/// A port as the control plane sets it up, for tests and fuzzing.
pub fn port_config(
    tx_poolsz: usize,
    rx_poolsz: usize,
    ipfrag_time_ns: u64,
    tx_direct: bool,
) -> PortConfig {
    PortConfig {
        poolsz: tx_poolsz,
        bufsz: 2048,
        rx_poolsz,
        qdisc: "oob_fifo".to_string(),
        reasm_poolsz: 16,
        ipfrag_max_datagrams: 64,
        ipfrag_time_ns,
        busy_poll_defer_ns: 0,
        tx_direct,
        // deterministic: a reply leaves on the thread that made it, never on the TX thread
        tx_stream_handoff: false,
    }
}

/// Which socket [`Rig::drain_sockets`] popped a buffer from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Udp,
    UdpAny,
    Tap,
    Custom,
}

/// A stack with one port on end `b` of a virtual link (end `a` is the wire the peer sends
/// from): a UDP socket on `OUR_IP:UDP_PORT`, one on `*:UDP_ANY_PORT` with a small SO_RCVBUF, an
/// ETH_P_ALL packet socket, one for [`ETH_P_CUSTOM`], in-band handlers for [`ETH_P_INBAND`]
/// and [`IPPROTO_INBAND`], and VLAN [`OOB_VLAN`] in the oob set.
pub struct Rig {
    pub stack: Arc<StackCore>,
    pub link: VirtualLink,
    pub port: Arc<Port>,
    pub udp: Arc<SocketCore>,
    pub udp_any: Arc<SocketCore>,
    pub tap: Arc<SocketCore>,
    pub custom: Arc<SocketCore>,
    pub mac: Mac,
}

impl Rig {
    pub fn new(cfg: &PortConfig) -> Rig {
        let stack = StackCore::new("rig").expect("stack");
        let link = VirtualLink::new("wire0", "rx0", 1500);
        let dev: Arc<dyn Device> = link.b.clone();
        let port = Port::start(Arc::clone(&stack), 1, "rx0", dev, cfg).expect("port");
        stack.add_port(Arc::clone(&port));
        port.addrs.store(Arc::new(Addresses {
            unicast: vec![OUR_IP],
            local: vec![OUR_IP, DIRECTED_BCAST, INADDR_BROADCAST],
        }));
        let sock = || Arc::new(SocketCore::new().expect("socket"));
        let (udp, udp_any, tap, custom) = (sock(), sock(), sock(), sock());
        udp_any.set_rcvbuf(4 * (512 + 64));
        stack.update_demux(|d| {
            d.udp.insert(udp_key(OUR_IP, UDP_PORT), Arc::clone(&udp));
            d.udp.insert(udp_key(0, UDP_ANY_PORT), Arc::clone(&udp_any));
            d.packet_taps.push(PacketListener {
                sock: Arc::clone(&tap),
                ifindex: 0,
            });
            let l = PacketListener {
                sock: Arc::clone(&custom),
                ifindex: 0,
            };
            d.packet_by_type.entry(ETH_P_CUSTOM).or_default().push(l);
            d.inband_ethertypes.insert(ETH_P_INBAND);
            d.inband_ip_protocols.insert(IPPROTO_INBAND);
            d.vlans.insert(OOB_VLAN);
        });
        let mac = link.b.mac();
        Rig {
            stack,
            link,
            port,
            udp,
            udp_any,
            tap,
            custom,
            mac,
        }
    }

    /// `frame` with [`HOST_MAC`] as its destination replaced by the port's MAC.
    pub fn localize(&self, frame: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        if f.get(..6) == Some(&HOST_MAC[..]) {
            f[..6].copy_from_slice(&self.mac);
        }
        f
    }

    /// Deliver `frame` to the port's device as if from the wire (its RX thread processes it).
    pub fn inject(&self, frame: &[u8]) {
        self.link.b.inject(&self.localize(frame));
    }

    /// Run the RX path on `frame` on this thread; false when it does not fit an RX buffer.
    pub fn process(&self, frame: &[u8]) -> bool {
        let Some(mut buf) = self.port.rx_pool.take() else {
            return false;
        };
        if !buf.fill(&self.localize(frame)) {
            return false;
        }
        _core::rx::process(&self.port, buf);
        true
    }

    /// Set the stack's switches from `flags` ([`RxFlags`]).
    pub fn apply_flags(&self, flags: u8) {
        let s = &self.stack.settings;
        s.accept_multicast
            .store(flags & RxFlags::ACCEPT_MULTICAST != 0, Relaxed);
        s.icmp_echo_ignore_all
            .store(flags & RxFlags::ECHO_IGNORE_ALL != 0, Relaxed);
        s.icmp_echo_ignore_broadcasts
            .store(flags & RxFlags::ECHO_ANSWER_BROADCASTS == 0, Relaxed);
    }

    /// Pop every socket queue, showing each buffer to `seen`; returns how many.
    pub fn drain_sockets(&self, seen: &mut dyn FnMut(Queue, &PacketBuf)) -> usize {
        let mut n = 0;
        let socks = [
            (Queue::Udp, &self.udp),
            (Queue::UdpAny, &self.udp_any),
            (Queue::Tap, &self.tap),
            (Queue::Custom, &self.custom),
        ];
        for (q, s) in socks {
            while let Some(b) = s.pop() {
                seen(q, &b);
                n += 1;
            }
        }
        n
    }

    /// Pop the in-band queue (as the control plane's reader would); returns how many events.
    pub fn drain_inband(&self) -> usize {
        let mut n = 0;
        while self.stack.next_inband(Some(0)).is_some() {
            n += 1;
        }
        n
    }

    /// Pop every queue, look at nothing.
    pub fn drain_all(&self) -> usize {
        self.drain_sockets(&mut |_, _| {}) + self.drain_inband()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.port
            .counters
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| panic!("no counter {name}"), |(_, v)| v)
    }

    /// What the device dropped before the port saw a frame.
    pub fn device_drops(&self) -> u64 {
        let c = self.link.b.counters();
        [&c.rx_nomem, &c.rx_oversize, &c.rx_unclaimed, &c.rx_dropped]
            .iter()
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Reassembly: `(datagrams pending, stats)`.
    pub fn reasm(&self) -> (usize, ReasmStats) {
        let r = self.port.reasm.lock().unwrap_or_else(|e| e.into_inner());
        (r.pending(), r.stats())
    }

    /// Throw away every datagram in reassembly (as disabling the port does).
    pub fn clear_reasm(&self) {
        self.port
            .reasm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Check both equations of the RX ledger (`_core::stats`): meaningful when the port is
    /// quiet. Reassembly is locked meanwhile, so its expiry cannot run between the reads.
    pub fn check_ledger(&self) -> Result<(), String> {
        let r = self.port.reasm.lock().unwrap_or_else(|e| e.into_inner());
        let s = r.stats();
        let c = &self.port.counters;
        let (packets, fates) = c.rx_ledger();
        let held = c.rx_reasm_held.load(Relaxed);
        let ok = c.rx_reasm_ok.load(Relaxed);
        let reasm_side = ok + s.held_frames + s.merged_frames + s.dropped_frames;
        drop(r);
        if packets != fates || held != reasm_side {
            return Err(format!(
                "RX ledger off: packets in {packets} != fates {fates}, or rx_reasm_held {held} != \
                 rx_reasm_ok + reassembly's frames {reasm_side} ({s:?})\n{}",
                self.dump()
            ));
        }
        Ok(())
    }

    /// Check that every pool has all its buffers back.
    pub fn check_pools_full(&self) -> Result<(), String> {
        let p = &self.port;
        let r = p.reasm.lock().unwrap_or_else(|e| e.into_inner());
        let pools = [
            ("TX", p.tx_pool.free(), p.tx_pool.total()),
            ("RX", p.rx_pool.free(), p.rx_pool.total()),
            ("reassembly", r.pool_free(), r.pool_total()),
        ];
        for (name, free, total) in pools {
            if free != total {
                return Err(format!("{name} pool: {free} of {total} buffers free"));
            }
        }
        Ok(())
    }

    /// The non-zero counters, port's and device's, one per line.
    pub fn dump(&self) -> String {
        self.port
            .stats()
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| format!("  {n:<20} {v}\n"))
            .collect()
    }

    /// One `rx_path` fuzz input, start to finish on this thread: flags, frames through the RX
    /// path, every queue drained and reassembly cleared; then the ledger must balance and every
    /// pool be full. Inputs leave nothing behind, so each one can be replayed alone.
    pub fn run_rx_input(&self, data: &[u8]) -> Result<(), String> {
        let (flags, frames) = decode_rx_input(data);
        self.apply_flags(flags);
        for frame in frames {
            let mut f = frame.to_vec();
            if flags & RxFlags::FIX_IP_CSUM != 0 {
                fix_checksums(&mut f, flags & RxFlags::FIX_L4_CSUM != 0);
            }
            self.process(&f);
        }
        self.drain_all();
        self.clear_reasm();
        self.check_ledger()?;
        self.check_pools_full()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stack.remove_port(self.port.id);
        self.port.shutdown(0);
    }
}

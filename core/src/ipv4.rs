//! IPv4 (RFC 791): RX header validation and address checks (Linux's `ip_rcv` and the martian
//! tests of `ip_route_input_slow`), TX fragmentation plans and datagram identifiers.
//!
//! RX order: [`validate`] (header and source address), then [`PortAddrs::accept`] (our own
//! address as a source, is the destination ours), then reassembly for fragments. TTL plays no
//! part on RX: a host delivers whatever TTL it receives.

use std::sync::atomic::{AtomicU16, Ordering::Relaxed};

use crate::stats::DropReason;
use crate::wire::{parse_ipv4, Ipv4Header, INADDR_BROADCAST, IPV4_HLEN, IPV4_MAX_LEN};

/// RFC 791's smallest MTU every IPv4 link carries.
pub const IPV4_MIN_MTU: usize = 68;

/// Validate the IPv4 header at the start of `packet` (version, IHL, header checksum, total
/// length within the bytes) and its source address. Every refusal is `IpErrors`.
pub fn validate(packet: &[u8]) -> Result<Ipv4Header, DropReason> {
    let ip = parse_ipv4(packet).map_err(|_| DropReason::IpErrors)?;
    // RFC 1122 3.2.1.3: 0.0.0.0 is a source only while a host learns its address, which it
    // does by broadcast (BOOTP/DHCP); Linux lets exactly that through too.
    if is_martian_source(ip.src) && !(ip.src == 0 && ip.dst == INADDR_BROADCAST) {
        return Err(DropReason::IpErrors);
    }
    Ok(ip)
}

/// A source address no datagram may carry, whoever the receiver: 0.0.0.0/32, loopback
/// 127/8, multicast 224/4, class E 240/4 and the limited broadcast. (One of the receiving port's
/// own or broadcast addresses is martian too: see [`PortAddrs::accept`].)
pub fn is_martian_source(src: u32) -> bool {
    src == 0 || src >> 24 == 127 || src >> 28 >= 0xE
}

/// Class D, 224.0.0.0/4.
pub fn is_multicast(addr: u32) -> bool {
    addr >> 28 == 0xE
}

/// How a datagram was addressed to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstKind {
    Unicast,
    /// Limited (255.255.255.255) or directed broadcast.
    Broadcast,
    Multicast,
}

/// The receiving port's addresses, as the control plane publishes them.
#[derive(Clone, Copy, Debug)]
pub struct PortAddrs<'a> {
    /// The interface's unicast addresses, the primary one first.
    pub unicast: &'a [u32],
    /// Every destination that is ours: the unicast addresses plus the directed and the limited
    /// broadcasts.
    pub local: &'a [u32],
}

impl PortAddrs<'_> {
    pub fn is_unicast(&self, addr: u32) -> bool {
        self.unicast.contains(&addr)
    }

    pub fn is_broadcast(&self, addr: u32) -> bool {
        addr == INADDR_BROADCAST || (self.local.contains(&addr) && !self.is_unicast(addr))
    }

    /// The address replies go out from when the request's destination was not a unicast one.
    pub fn primary(&self) -> Option<u32> {
        self.unicast.first().copied()
    }

    /// Check a validated header against the port: one of our own addresses (unicast or
    /// broadcast) as the source is martian (`IpErrors`); a destination that is not ours is
    /// `OtherHost`, multicast included unless the stack accepts it.
    pub fn accept(&self, ip: &Ipv4Header, accept_multicast: bool) -> Result<DstKind, DropReason> {
        if self.is_unicast(ip.src) || self.is_broadcast(ip.src) {
            return Err(DropReason::IpErrors);
        }
        if self.is_unicast(ip.dst) {
            Ok(DstKind::Unicast)
        } else if self.is_broadcast(ip.dst) {
            Ok(DstKind::Broadcast)
        } else if accept_multicast && is_multicast(ip.dst) {
            Ok(DstKind::Multicast)
        } else {
            Err(DropReason::OtherHost)
        }
    }
}

/// One fragment of a TX plan: `len` payload bytes from `offset` of the datagram's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub offset: usize,
    pub len: usize,
    /// More fragments follow (the MF flag).
    pub more: bool,
}

/// How an IPv4 payload goes out over a link: fragments of the largest multiple of 8 that fits the
/// MTU after a 20-byte header, the last one shorter. Iterating yields them in order; a payload
/// that fits is one fragment (offset 0, no MF): a plain datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPlan {
    total: usize,
    max: usize,
    next: usize,
    done: bool,
}

impl FragPlan {
    /// None when the datagram cannot be sent at all: over 65535 bytes with its header
    /// (EMSGSIZE) or an MTU below IPv4's minimum.
    pub fn new(payload_len: usize, mtu: usize) -> Option<FragPlan> {
        if payload_len > IPV4_MAX_LEN - IPV4_HLEN || mtu < IPV4_MIN_MTU {
            return None;
        }
        let max = (mtu - IPV4_HLEN) & !7;
        Some(FragPlan {
            total: payload_len,
            max,
            next: 0,
            done: false,
        })
    }

    /// How many fragments the datagram takes (1: it fits the MTU as is).
    pub fn count(&self) -> usize {
        self.total.div_ceil(self.max).max(1)
    }
}

impl Iterator for FragPlan {
    type Item = Fragment;

    fn next(&mut self) -> Option<Fragment> {
        if self.done {
            return None;
        }
        let len = self.max.min(self.total - self.next);
        let frag = Fragment {
            offset: self.next,
            len,
            more: self.next + len < self.total,
        };
        self.next += len;
        self.done = !frag.more;
        Some(frag)
    }
}

/// The IPv4 identification counter of one sender (a port), shared by its TX paths.
#[derive(Debug, Default)]
pub struct IdentGen(AtomicU16);

impl IdentGen {
    /// Start after `seed` (seed it from the clock, so a restarted port does not reuse the ids
    /// its peer may still hold fragments of).
    pub fn new(seed: u16) -> Self {
        IdentGen(AtomicU16::new(seed))
    }

    /// The next identification, wrapping at 65535.
    pub fn next_ident(&self) -> u16 {
        self.0.fetch_add(1, Relaxed).wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{internet_checksum, write_eth_ipv4, Ipv4Tx};

    const OUR_IP: u32 = 0x0A00_0001;
    const PEER_IP: u32 = 0x0A00_0009;
    const DIRECTED: u32 = 0x0A00_00FF;

    fn packet(src: u32, dst: u32) -> Vec<u8> {
        let mut f = vec![0u8; 34 + 8];
        let ip = Ipv4Tx {
            src,
            dst,
            ttl: 0,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4(&mut f, &[0; 6], &[0; 6], &ip, 17, 8).unwrap();
        f.split_off(14)
    }

    fn addrs() -> (Vec<u32>, Vec<u32>) {
        (vec![OUR_IP], vec![OUR_IP, DIRECTED, INADDR_BROADCAST])
    }

    #[test]
    fn header_errors_and_ttl_zero() {
        let p = packet(PEER_IP, OUR_IP);
        assert_eq!(validate(&p).unwrap().ttl, 0);
        assert_eq!(validate(&p[..19]), Err(DropReason::IpErrors));
        let mut bad = p.clone();
        bad[0] = 0x46; // IHL 6, no matching checksum
        assert_eq!(validate(&bad), Err(DropReason::IpErrors));
        let mut bad = p.clone();
        bad[3] += 1; // total length past the bytes
        assert_eq!(validate(&bad), Err(DropReason::IpErrors));
    }

    #[test]
    fn martian_sources() {
        for src in [0, 0x7F00_0001, 0xE000_0001, 0xF000_0001, INADDR_BROADCAST] {
            assert!(is_martian_source(src));
            assert_eq!(
                validate(&packet(src, OUR_IP)),
                Err(DropReason::IpErrors),
                "{src:#x}"
            );
        }
        assert!(!is_martian_source(PEER_IP) && !is_martian_source(0xDFFF_FFFF));
        // DHCP-style 0.0.0.0 -> 255.255.255.255 passes
        assert!(validate(&packet(0, INADDR_BROADCAST)).is_ok());
        // one of our own addresses as the source
        let (u, l) = addrs();
        let a = PortAddrs {
            unicast: &u,
            local: &l,
        };
        for src in [OUR_IP, DIRECTED] {
            let ip = validate(&packet(src, OUR_IP)).unwrap();
            assert_eq!(a.accept(&ip, true), Err(DropReason::IpErrors));
        }
    }

    #[test]
    fn destinations() {
        let (u, l) = addrs();
        let a = PortAddrs {
            unicast: &u,
            local: &l,
        };
        let kind = |dst, mc| a.accept(&validate(&packet(PEER_IP, dst)).unwrap(), mc);
        assert_eq!(kind(OUR_IP, false), Ok(DstKind::Unicast));
        assert_eq!(kind(DIRECTED, false), Ok(DstKind::Broadcast));
        assert_eq!(kind(INADDR_BROADCAST, false), Ok(DstKind::Broadcast));
        assert_eq!(kind(0xE000_00FB, false), Err(DropReason::OtherHost));
        assert_eq!(kind(0xE000_00FB, true), Ok(DstKind::Multicast));
        assert_eq!(kind(0x0A00_0002, true), Err(DropReason::OtherHost));
        assert_eq!(a.primary(), Some(OUR_IP));
        // no address configured: only the limited broadcast is ours
        let none = PortAddrs {
            unicast: &[],
            local: &[],
        };
        assert!(none.is_broadcast(INADDR_BROADCAST) && none.primary().is_none());
    }

    #[test]
    fn fragmentation_plans() {
        let frags: Vec<_> = FragPlan::new(3000, 1500).unwrap().collect();
        assert_eq!(
            frags,
            [
                Fragment {
                    offset: 0,
                    len: 1480,
                    more: true
                },
                Fragment {
                    offset: 1480,
                    len: 1480,
                    more: true
                },
                Fragment {
                    offset: 2960,
                    len: 40,
                    more: false
                },
            ]
        );
        assert_eq!(FragPlan::new(3000, 1500).unwrap().count(), 3);
        // exact multiple: no empty tail fragment
        let p = FragPlan::new(2960, 1500).unwrap();
        assert_eq!((p.count(), p.count()), (2, p.collect::<Vec<_>>().len()));
        // fits: one plain datagram; empty payload too
        assert_eq!(
            FragPlan::new(1480, 1500).unwrap().collect::<Vec<_>>().len(),
            1
        );
        assert_eq!(
            FragPlan::new(0, 1500).unwrap().collect::<Vec<_>>(),
            [Fragment {
                offset: 0,
                len: 0,
                more: false
            }]
        );
        // odd MTU: fragments stay multiples of 8
        assert!(FragPlan::new(1000, 101)
            .unwrap()
            .all(|f| f.offset % 8 == 0 && (!f.more || f.len == 80)));
        // the largest datagram, and one byte more
        let big = FragPlan::new(65515, 1500).unwrap();
        assert_eq!(big.count(), 45);
        assert_eq!(big.map(|f| f.len).sum::<usize>(), 65515);
        assert!(FragPlan::new(65516, 1500).is_none());
        assert!(FragPlan::new(100, 67).is_none());
        assert!(FragPlan::new(usize::MAX, 1500).is_none());
    }

    #[test]
    fn fragments_emit_valid_headers() {
        let mut frame = vec![0u8; 1514];
        for f in FragPlan::new(3000, 1500).unwrap() {
            let ip = Ipv4Tx {
                src: OUR_IP,
                dst: PEER_IP,
                ident: 3,
                ttl: 64,
                more_fragments: f.more,
                frag_offset: f.offset,
                ..Ipv4Tx::default()
            };
            write_eth_ipv4(&mut frame, &[0; 6], &[0; 6], &ip, 17, f.len).unwrap();
            let h = validate(&frame[14..]).unwrap();
            assert_eq!(
                (h.frag_offset, h.more_fragments, h.total_len),
                (f.offset, f.more, 20 + f.len)
            );
            assert_eq!(internet_checksum(&frame[14..34], 0), 0);
        }
    }

    #[test]
    fn idents_wrap() {
        let g = IdentGen::new(65534);
        assert_eq!(
            [g.next_ident(), g.next_ident(), g.next_ident()],
            [65535, 0, 1]
        );
        assert_eq!(IdentGen::default().next_ident(), 1);
    }
}

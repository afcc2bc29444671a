//! The UDP send path (EVL's `udp_sendmsg` → `ip_output`): one header builder, the payload copied
//! once into a pool buffer, IP fragments when the datagram exceeds the MTU.

use std::sync::Arc;

use crate::ipv4::{FragPlan, IPV4_MIN_MTU};
use crate::pool::PacketBuf;
use crate::port::{Errno, Port, TxItem};
use crate::socket::SocketCore;
use crate::wire::{
    finish_udp_checksum, pad_frame, udp_checksum, write_eth_ipv4, write_eth_ipv4_udp, Ipv4Tx,
    ETH_IPV4_HLEN, ETH_IPV4_UDP_HLEN, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN,
};

/// Largest UDP payload over IPv4.
pub const UDP_MAX_PAYLOAD: usize = 65_507;

/// One datagram to send, its route already resolved.
pub struct UdpDatagram<'a> {
    pub dst_mac: [u8; 6],
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub tos: u8,
    /// IP_MTU_DISCOVER = IP_PMTUDISC_DO: EMSGSIZE rather than fragments.
    pub dont_fragment: bool,
    pub payload: &'a [u8],
    pub tsflags: u32,
    pub delivery_time: u64,
}

/// Why a send failed: an errno of the stack, or the buffer source's own error (a Python
/// exception when the caller waited for a buffer with the GIL released).
#[derive(Debug)]
pub enum SendError<E> {
    Errno(Errno),
    Buffer(E),
}

/// How a built frame is handed to the port: `Port::transmit`, possibly wrapped (the Python seam
/// releases the GIL around a transmit that goes straight to the device).
pub type Xmit<'a> = dyn FnMut(TxItem) -> Result<(), Errno> + 'a;

/// The socket a frame's TX timestamp record goes to: only when TX stamping is on, so that a
/// frame handed to the TX thread does not carry (and make two CPUs share) the socket's
/// reference count for nothing.
pub(crate) fn tx_record_sock(
    sock: Option<&Arc<SocketCore>>,
    tsflags: u32,
) -> Option<Arc<SocketCore>> {
    sock.filter(|_| tsflags & crate::socket::TS_TX != 0)
        .cloned()
}

/// Build and queue `d` on `port`; `get_buf` provides TX buffers (taking from the pool, waiting
/// if allowed), `xmit` hands each frame to the port. Returns the payload bytes sent.
/// A fragmented datagram is all or nothing: its buffers are reserved before the first leaves.
pub fn send_udp<E>(
    port: &Port,
    sock: Option<&Arc<SocketCore>>,
    d: &UdpDatagram<'_>,
    get_buf: &mut dyn FnMut() -> Result<PacketBuf, E>,
    xmit: &mut Xmit<'_>,
) -> Result<usize, SendError<E>> {
    let len = d.payload.len();
    if len > UDP_MAX_PAYLOAD {
        return Err(SendError::Errno(libc::EMSGSIZE));
    }
    port.check_sendable().map_err(SendError::Errno)?;
    let ip = Ipv4Tx {
        src: d.src,
        dst: d.dst,
        ident: port.next_ident(),
        ttl: d.ttl,
        tos: d.tos,
        // as the Python stack: DF on small datagrams (they never need fragmenting) and when asked
        dont_fragment: len + UDP_HLEN <= IPV4_MIN_MTU || d.dont_fragment,
        more_fragments: false,
        frag_offset: 0,
    };
    if IPV4_HLEN + UDP_HLEN + len <= port.mtu {
        let mut buf = get_buf().map_err(SendError::Buffer)?;
        let frame = buf.data_mut();
        if frame.len() < ETH_IPV4_UDP_HLEN + len {
            return Err(SendError::Errno(libc::EMSGSIZE));
        }
        write_eth_ipv4_udp(frame, &d.dst_mac, &port.mac, &ip, d.sport, d.dport, len)
            .map_err(|_| SendError::Errno(libc::EMSGSIZE))?;
        frame[ETH_IPV4_UDP_HLEN..ETH_IPV4_UDP_HLEN + len].copy_from_slice(d.payload);
        finish_udp_checksum(frame).map_err(|_| SendError::Errno(libc::EINVAL))?;
        let n = pad_frame(frame, ETH_IPV4_UDP_HLEN + len);
        buf.start = 0;
        buf.end = n;
        buf.times.delivery = d.delivery_time;
        let item = TxItem {
            buf,
            sock: tx_record_sock(sock, d.tsflags),
            tsflags: d.tsflags,
        };
        xmit(item).map_err(SendError::Errno)?;
        return Ok(len);
    }
    if d.dont_fragment {
        return Err(SendError::Errno(libc::EMSGSIZE));
    }
    send_fragments(port, sock, d, ip, get_buf, xmit)
}

/// A datagram above the MTU as IP fragments: the UDP checksum covers the whole datagram, the
/// UDP header travels in the first fragment; the last fragment carries the TX timestamp.
fn send_fragments<E>(
    port: &Port,
    sock: Option<&Arc<SocketCore>>,
    d: &UdpDatagram<'_>,
    ip: Ipv4Tx,
    get_buf: &mut dyn FnMut() -> Result<PacketBuf, E>,
    xmit: &mut Xmit<'_>,
) -> Result<usize, SendError<E>> {
    let len = d.payload.len();
    let ulen = (UDP_HLEN + len) as u16;
    let mut header = [0u8; UDP_HLEN];
    header[..2].copy_from_slice(&d.sport.to_be_bytes());
    header[2..4].copy_from_slice(&d.dport.to_be_bytes());
    header[4..6].copy_from_slice(&ulen.to_be_bytes());
    let csum = udp_checksum(d.src, d.dst, &header, d.payload);
    header[6..8].copy_from_slice(&csum.to_be_bytes());
    let plan = FragPlan::new(UDP_HLEN + len, port.mtu).ok_or(SendError::Errno(libc::EMSGSIZE))?;
    // All or nothing: take every buffer first (a datagram missing a fragment is worthless);
    // on failure the ones taken go back to the pool when `bufs` is dropped.
    let mut bufs = Vec::with_capacity(plan.count());
    for _ in 0..plan.count() {
        bufs.push(get_buf().map_err(SendError::Buffer)?);
    }
    for (frag, mut buf) in plan.zip(bufs) {
        let frame = buf.data_mut();
        let tx = Ipv4Tx {
            more_fragments: frag.more,
            frag_offset: frag.offset,
            ..ip
        };
        write_eth_ipv4(frame, &d.dst_mac, &port.mac, &tx, IPPROTO_UDP, frag.len)
            .map_err(|_| SendError::Errno(libc::EMSGSIZE))?;
        // bytes [offset, offset + len) of "UDP header ‖ payload"
        let mut at = ETH_IPV4_HLEN;
        let (mut from, end) = (frag.offset, frag.offset + frag.len);
        if from < UDP_HLEN {
            let n = UDP_HLEN.min(end) - from;
            frame[at..at + n].copy_from_slice(&header[from..from + n]);
            at += n;
            from += n;
        }
        if end > from {
            let n = end - from;
            frame[at..at + n].copy_from_slice(&d.payload[from - UDP_HLEN..end - UDP_HLEN]);
            at += n;
        }
        let n = pad_frame(frame, at);
        buf.start = 0;
        buf.end = n;
        buf.times.delivery = d.delivery_time;
        let last = !frag.more;
        let item = TxItem {
            buf,
            sock: if last {
                tx_record_sock(sock, d.tsflags)
            } else {
                None
            },
            tsflags: if last { d.tsflags } else { 0 },
        };
        xmit(item).map_err(SendError::Errno)?;
    }
    Ok(len)
}

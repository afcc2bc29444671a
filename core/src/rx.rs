//! The receive path of one frame, run by the port's RX thread (or a busy-polling receiver):
//! Ethernet/VLAN → packet sockets → IPv4 (checks, reassembly) → UDP to its socket queue, ICMP
//! echo answered, ARP answered and handed up for learning, custom protocols handed up to the
//! in-band stage. Every frame ends delivered, consumed (and counted as such) or dropped under a
//! named reason.

use std::sync::atomic::Ordering::Relaxed;

use crate::arp;
use crate::ethernet::{
    self, L2Info, L2Port, PACKET_BROADCAST, PACKET_HOST, PACKET_MULTICAST, PACKET_OTHERHOST,
};
use crate::filter::vm::VmFilter;
use crate::filter::Verdict;
use crate::icmp::{self, EchoPolicy};
use crate::ipv4::{self, FragPlan, PortAddrs};
use crate::pool::PacketBuf;
use crate::port::{Port, TxItem};
use crate::reassembly::ReasmOutcome;
use crate::stack::{udp_key, Demux, InbandKind};
use crate::stats::{DropReason, PortCounters};
use crate::timestamps::monotonic_ns;
use crate::udp;
use crate::wire::{ETH_HLEN, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP};

/// Process one received frame (`buf.payload()` is the whole frame).
pub fn process(port: &Port, mut buf: PacketBuf) {
    let c = &port.counters;
    buf.times.queuing = monotonic_ns();
    PortCounters::bump(&c.rx_packets);
    c.rx_bytes.fetch_add(buf.len() as u64, Relaxed);
    port.capture.rx(buf.payload(), buf.times.device);
    buf.meta.port_id = port.id as u32;
    if let Some(filter) = port.filter.load().as_deref() {
        match filter_verdict(port, filter, buf.payload()) {
            Verdict::Accept => {}
            Verdict::Skip => {
                PortCounters::bump(&c.rx_filter_skipped);
                port.post_inband(buf, InbandKind::Skipped, 0);
                return;
            }
            Verdict::Drop => return c.drop_for(DropReason::FilterDrop),
            _ => return c.drop_for(DropReason::FilterInvalid),
        }
    }
    if let Err(reason) = input(port, buf) {
        c.drop_for(reason);
    }
}

/// EVL's verdict on a frame (`Vlan` resolved by the VLAN rule: ACCEPT when it is IPv4 tagged
/// with a VID of the stack's set, SKIP otherwise).
fn filter_verdict(port: &Port, filter: &VmFilter, frame: &[u8]) -> Verdict {
    let pkttype = match frame.get(..6) {
        Some(dst) if dst == port.mac => PACKET_HOST,
        Some(dst) if dst == [0xff; 6] => PACKET_BROADCAST,
        Some(dst) if dst[0] & 1 != 0 => PACKET_MULTICAST,
        _ => PACKET_OTHERHOST,
    };
    match filter.run(frame, port.device.ifindex(), pkttype) {
        Verdict::Vlan => {
            let be16 = |at: usize| {
                frame
                    .get(at..at + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
            };
            let tagged_ipv4 = be16(12) == Some(ETH_P_8021Q) && be16(16) == Some(ETH_P_IP);
            let vid = be16(14).unwrap_or(0) & 0x0fff;
            if tagged_ipv4 && port.stack.demux().vlans.contains(vid) {
                Verdict::Accept
            } else {
                Verdict::Skip
            }
        }
        v => v,
    }
}

fn input(port: &Port, mut buf: PacketBuf) -> Result<(), DropReason> {
    let demux = port.stack.demux();
    let (start, end) = (buf.start, buf.end);
    let l2 = {
        let l2port = L2Port {
            mac: port.mac,
            vlan_id: port.vlan_id,
            vlans: &demux.vlans,
        };
        ethernet::classify(&mut buf.data_mut()[start..end], &l2port)?
    };
    buf.start += l2.start;
    buf.meta.pkttype = l2.pkttype;
    buf.meta.protocol = l2.ethertype;
    buf.meta.vlan_id = l2.vlan_id;
    buf.meta.src_mac = l2.src_mac;
    let Some(buf) = packet_sockets(port, &demux, buf, &l2)? else {
        return Ok(());
    };
    let settings = &port.stack.settings;
    l2.for_stack(settings.accept_multicast.load(Relaxed))?;
    let l3 = buf.start + ETH_HLEN;
    match l2.ethertype {
        ETH_P_IP => ipv4_input(port, &demux, buf, l3, &l2),
        ETH_P_ARP => arp_input(port, buf, l3),
        t if demux.inband_ethertypes.contains(&t) => {
            port.post_inband(buf, InbandKind::EtherType(t), ETH_HLEN);
            Ok(())
        }
        _ => Err(DropReason::UnknownProto),
    }
}

/// Packet sockets see a frame before IPv4 does (as in EVL): every ETH_P_ALL listener gets a
/// copy, the first listener of the EtherType takes the frame (None: taken). Copies have
/// counters of their own: they are not frames in (see the RX ledger in `stats`).
fn packet_sockets(
    port: &Port,
    demux: &Demux,
    buf: PacketBuf,
    l2: &L2Info,
) -> Result<Option<PacketBuf>, DropReason> {
    let ifindex = port.device.ifindex();
    let matches = |want: u32| want == 0 || want == ifindex;
    let c = &port.counters;
    for tap in demux.packet_taps.iter().filter(|l| matches(l.ifindex)) {
        let Some(mut copy) = port.rx_pool.take() else {
            PortCounters::bump(&c.rx_tap_nomem);
            continue;
        };
        copy.fill(buf.payload());
        copy.times = buf.times;
        copy.meta = buf.meta;
        match tap.sock.push(copy, port.stack.rx_stamping()) {
            Ok(()) => PortCounters::bump(&c.rx_tap_copies),
            Err(_full) => PortCounters::bump(&c.rx_tap_sock_full),
        }
    }
    if let Some(list) = demux.packet_by_type.get(&l2.ethertype) {
        if let Some(l) = list.iter().find(|l| matches(l.ifindex)) {
            l.sock
                .push(buf, port.stack.rx_stamping())
                .map_err(|_| DropReason::SockFull)?;
            PortCounters::bump(&c.rx_delivered);
            return Ok(None);
        }
    }
    Ok(Some(buf))
}

fn ipv4_input(
    port: &Port,
    demux: &Demux,
    mut buf: PacketBuf,
    mut l3: usize,
    l2: &L2Info,
) -> Result<(), DropReason> {
    let mut ip = ipv4::validate(buf.data().get(l3..buf.end).ok_or(DropReason::IpErrors)?)?;
    let addrs = port.addrs.load();
    let pa = PortAddrs {
        unicast: &addrs.unicast,
        local: &addrs.local,
    };
    let settings = &port.stack.settings;
    let dst_kind = pa.accept(&ip, settings.accept_multicast.load(Relaxed))?;
    if ip.is_fragment() {
        let outcome = {
            let mut r = port.reasm.lock().unwrap_or_else(|e| e.into_inner());
            r.input(&buf.data()[l3..buf.end], &ip, monotonic_ns())?
        };
        // the frame's fate: held, completing fragment included; the datagram's comes below
        PortCounters::bump(&port.counters.rx_reasm_held);
        match outcome {
            ReasmOutcome::Held => return Ok(()),
            ReasmOutcome::Complete(mut whole) => {
                PortCounters::bump(&port.counters.rx_reasm_ok);
                whole.times = buf.times;
                whole.meta = buf.meta;
                buf = whole;
                l3 = buf.start;
                ip = ipv4::validate(&buf.data()[l3..buf.end])?;
            }
        }
    }
    buf.meta.src_addr = ip.src;
    buf.meta.dst_addr = ip.dst;
    let l4 = l3 + ip.header_len;
    let end = l3 + ip.total_len;
    match ip.protocol {
        IPPROTO_UDP => {
            let seg = buf.data().get(l4..end).ok_or(DropReason::IpErrors)?;
            let u = udp::input(seg, ip.src, ip.dst)?;
            let sock = demux
                .udp
                .get(&udp_key(ip.dst, u.dst_port))
                .or_else(|| demux.udp.get(&udp_key(0, u.dst_port)))
                .ok_or(DropReason::NoReceiver)?;
            buf.start = l4 + u.payload_start;
            buf.end = l4 + u.payload_end;
            buf.meta.src_port = u.src_port;
            buf.meta.dst_port = u.dst_port;
            sock.push(buf, port.stack.rx_stamping())
                .map_err(|_| DropReason::SockFull)?;
            PortCounters::bump(&port.counters.rx_delivered);
            Ok(())
        }
        IPPROTO_ICMP => {
            let policy = EchoPolicy {
                ignore_all: settings.icmp_echo_ignore_all.load(Relaxed),
                ignore_broadcasts: settings.icmp_echo_ignore_broadcasts.load(Relaxed),
            };
            let pkt = &buf.data()[l3..buf.end];
            let reply =
                icmp::accept_request(pkt, &ip, l2.src_mac, l2.pkttype, dst_kind, &pa, policy)?;
            let plan = FragPlan::new(reply.msg_len(), port.mtu).ok_or(DropReason::IpErrors)?;
            let ident = port.next_ident();
            for frag in plan {
                let mut out = port.take_tx_now().ok_or(DropReason::ReplyFailed)?;
                // a TX buffer too small for the reply: no room for it either
                let n = match reply.write(pkt, &port.mac, ident, frag, out.data_mut()) {
                    Err(DropReason::NoMem) => return Err(DropReason::ReplyFailed),
                    written => written?,
                };
                out.start = 0;
                out.end = n;
                // port down or qdisc full: the TX side counts it too
                port.transmit(TxItem {
                    buf: out,
                    sock: None,
                    tsflags: 0,
                })
                .map_err(|_| DropReason::ReplyFailed)?;
            }
            PortCounters::bump(&port.counters.icmp_echo_replies);
            Ok(())
        }
        p if demux.inband_ip_protocols.contains(&p) => {
            let offset = l4 - buf.start;
            port.post_inband(buf, InbandKind::IpProtocol(p), offset);
            Ok(())
        }
        _ => Err(DropReason::UnknownProto),
    }
}

fn arp_input(port: &Port, buf: PacketBuf, l3: usize) -> Result<(), DropReason> {
    let addrs = port.addrs.load();
    let a = arp::input(
        buf.data().get(l3..buf.end).ok_or(DropReason::Malformed)?,
        &addrs.unicast,
    )?;
    if a.needs_reply() && port.enabled() {
        if let Some(mut out) = port.take_tx_now() {
            let n = arp::build_reply(out.data_mut(), &port.mac, &a.arp)?;
            out.start = 0;
            out.end = n;
            if port
                .transmit(TxItem {
                    buf: out,
                    sock: None,
                    tsflags: 0,
                })
                .is_ok()
            {
                PortCounters::bump(&port.counters.arp_replies);
            }
        }
    }
    // the control plane learns the sender (the neighbour cache lives in-band)
    port.post_inband(buf, InbandKind::Arp, ETH_HLEN);
    Ok(())
}

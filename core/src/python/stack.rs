//! `Stack`: the core half of one `evlnet.Stack` (demux tables, front cache, settings, the
//! in-band event queue).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ethernet::VlanSet;
use crate::frontcache::{Route, Snapshot};
use crate::stack::{udp_key, InbandKind, PacketListener, StackCore};

use super::buffers::mac_of;
use super::errors::ioerr;
use super::outside_gil;
use super::socket::PySocket;

/// The core half of one `evlnet.Stack`.
#[pyclass(module = "evlnet._core", name = "Stack", frozen)]
pub(super) struct PyStack {
    pub(super) core: Arc<StackCore>,
}

#[pymethods]
impl PyStack {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        Ok(PyStack {
            core: StackCore::new(name).map_err(|e| ioerr(e, "stack"))?,
        })
    }

    /// Stack-wide switches.
    #[pyo3(signature = (icmp_echo_ignore_all, icmp_echo_ignore_broadcasts, accept_multicast,
                        rx_wait_in_device=true))]
    fn configure(
        &self,
        icmp_echo_ignore_all: bool,
        icmp_echo_ignore_broadcasts: bool,
        accept_multicast: bool,
        rx_wait_in_device: bool,
    ) {
        let s = &self.core.settings;
        s.rx_wait_in_device.store(rx_wait_in_device, Relaxed);
        s.icmp_echo_ignore_all.store(icmp_echo_ignore_all, Relaxed);
        s.icmp_echo_ignore_broadcasts
            .store(icmp_echo_ignore_broadcasts, Relaxed);
        s.accept_multicast.store(accept_multicast, Relaxed);
    }

    /// Publish the broadcast addresses of the enabled ports (sends to one need SO_BROADCAST).
    fn set_broadcasts(&self, addrs: Vec<u32>) {
        self.core.set_broadcasts(addrs);
    }

    /// Whether `addr` is a broadcast address of the stack (255.255.255.255 always is).
    fn is_broadcast(&self, addr: u32) -> bool {
        self.core.is_broadcast(addr)
    }

    /// Publish a new front cache: routes `(dst, port_id, gateway, source, dead)`, neighbours
    /// `(address, mac)`.
    fn publish_frontcache(
        &self,
        routes: Vec<(u32, usize, u32, u32, bool)>,
        neighbours: Vec<(u32, Vec<u8>)>,
    ) -> PyResult<()> {
        let mut snap = Snapshot::default();
        for (dst, port, gateway, source, dead) in routes {
            snap.routes.insert(
                dst,
                Route {
                    port,
                    gateway,
                    source,
                    dead,
                },
            );
        }
        for (ip, mac) in neighbours {
            snap.neighbours.insert(ip, mac_of(&mac)?);
        }
        self.core.frontcache.publish(snap);
        Ok(())
    }

    /// Bind a UDP (address, port) to a socket's queue (None unbinds).
    fn bind_udp(&self, addr: u32, port: u16, sock: Option<PyRef<'_, PySocket>>) {
        let key = udp_key(addr, port);
        let target = sock.map(|s| Arc::clone(&s.core));
        self.core.update_demux(|d| {
            match target {
                Some(s) => d.udp.insert(key, s),
                None => d.udp.remove(&key),
            };
        });
    }

    /// A packet socket listens for `ethertype` (host order; 3 = ETH_P_ALL) on `ifindex` (0: any).
    fn listen_packet(&self, ethertype: u16, ifindex: u32, sock: PyRef<'_, PySocket>) {
        let l = PacketListener {
            sock: Arc::clone(&sock.core),
            ifindex,
        };
        self.core.update_demux(|d| {
            if ethertype == 3 {
                d.packet_taps.push(l);
            } else {
                d.packet_by_type.entry(ethertype).or_default().push(l);
            }
        });
    }

    /// Stop every listening of this socket.
    fn unlisten_packet(&self, sock: PyRef<'_, PySocket>) {
        let me = Arc::clone(&sock.core);
        self.core.update_demux(|d| {
            d.packet_taps.retain(|l| !Arc::ptr_eq(&l.sock, &me));
            for v in d.packet_by_type.values_mut() {
                v.retain(|l| !Arc::ptr_eq(&l.sock, &me));
            }
            d.packet_by_type.retain(|_, v| !v.is_empty());
        });
    }

    /// EtherTypes and IP protocols whose frames go up to Python (custom protocols).
    fn set_inband_protocols(&self, ethertypes: Vec<u16>, ip_protocols: Vec<u8>) {
        self.core.update_demux(|d| {
            d.inband_ethertypes = ethertypes.into_iter().collect();
            d.inband_ip_protocols = ip_protocols.into_iter().collect();
        });
    }

    /// EVL's oob VLAN set.
    fn set_vlans(&self, vids: Vec<u16>) {
        let mut set = VlanSet::default();
        for vid in vids {
            set.insert(vid);
        }
        self.core.update_demux(|d| d.vlans = set);
    }

    /// Sockets with RX timestamping on (process-wide), +1/-1.
    #[staticmethod]
    fn rx_stamping_add(delta: isize) {
        let s = &crate::socket::RX_STAMPING;
        if delta >= 0 {
            s.fetch_add(delta as usize, Relaxed);
        } else {
            s.fetch_sub(delta.unsigned_abs(), Relaxed);
        }
    }

    /// Sockets with RX timestamping on, process-wide.
    #[staticmethod]
    fn rx_stamping_count() -> usize {
        crate::socket::RX_STAMPING.load(Relaxed)
    }

    /// The next event for the in-band stage, waiting up to `timeout` seconds (GIL released):
    /// `(port_id, kind, arg, offset, frame, src_addr, src_mac, device_time, queuing_time)` or
    /// None. `kind` is "arp", "ethertype" (arg: the EtherType) or "ip" (arg: the protocol);
    /// `frame[offset:]` is the protocol's header.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> Option<InbandTuple<'py>> {
        let core = Arc::clone(&self.core);
        let ns = timeout.map(|t| (t.max(0.0) * 1e9) as u64);
        let ev = outside_gil(py, move || core.next_inband(ns))?;
        let (kind, arg) = match ev.kind {
            InbandKind::Arp => ("arp", 0),
            InbandKind::EtherType(t) => ("ethertype", t as u32),
            InbandKind::IpProtocol(p) => ("ip", p as u32),
            InbandKind::Link(up) => ("link", up as u32),
            InbandKind::Vanished => ("vanished", 0),
            InbandKind::Skipped => ("skipped", 0),
        };
        let b = ev.buf.as_ref();
        Some((
            ev.port,
            kind,
            arg,
            ev.offset,
            b.map(|b| PyBytes::new(py, b.payload())),
            b.map_or(0, |b| b.meta.src_addr),
            PyBytes::new(py, &b.map_or([0; 6], |b| b.meta.src_mac)),
            b.map_or(0, |b| b.times.device),
            b.map_or(0, |b| b.times.queuing),
        ))
    }

    /// Wake a `next_event` waiter.
    fn wake(&self) {
        self.core.wake_inband();
    }

    /// Events lost because the in-band queue was full.
    #[getter]
    fn inband_drops(&self) -> u64 {
        self.core.inband_drops.load(Relaxed)
    }
}

type InbandTuple<'py> = (
    usize,
    &'static str,
    u32,
    usize,
    Option<Bound<'py, PyBytes>>,
    u32,
    Bound<'py, PyBytes>,
    u64,
    u64,
);

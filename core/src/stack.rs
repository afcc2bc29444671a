//! What one stack's ports share: demultiplexing tables, the front cache, settings, the port
//! table and the queue of events going up to the in-band stage.
//!
//! Tables are published whole by the control plane (in-band) and read without locks by the oob
//! threads, as the front cache is.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;

use crate::ethernet::VlanSet;
use crate::eventfd::EventFd;
use crate::frontcache::FrontCache;
use crate::pool::PacketBuf;
use crate::port::Port;
use crate::socket::SocketCore;

/// A packet socket listening on a port (ifindex 0: any).
#[derive(Clone)]
pub struct PacketListener {
    pub sock: Arc<SocketCore>,
    pub ifindex: u32,
}

/// Who receives what: published in-band, read lock-free by the RX threads.
#[derive(Default, Clone)]
pub struct Demux {
    /// UDP bindings, keyed by `udp_key(addr, port)` (addr 0: INADDR_ANY).
    pub udp: HashMap<u64, Arc<SocketCore>>,
    /// ETH_P_ALL listeners: each gets a copy of every frame.
    pub packet_taps: Vec<PacketListener>,
    /// Listeners of one EtherType: the first matching one takes the frame.
    pub packet_by_type: HashMap<u16, Vec<PacketListener>>,
    /// Custom protocols handled by the in-band stage (Python handlers).
    pub inband_ethertypes: HashSet<u16>,
    pub inband_ip_protocols: HashSet<u8>,
    /// EVL's oob VLAN set (tagged traffic outside it is not taken).
    pub vlans: VlanSet,
}

/// The key of a UDP binding.
pub fn udp_key(addr: u32, port: u16) -> u64 {
    ((port as u64) << 32) | addr as u64
}

/// Why a frame or an event goes up to the in-band stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InbandKind {
    /// An ARP frame: the control plane learns neighbours from it.
    Arp,
    /// A frame of a custom EtherType; `offset` is where its payload starts.
    EtherType(u16),
    /// An IPv4 datagram of a custom protocol; `offset` is where its payload starts.
    IpProtocol(u8),
    /// A frame the RX filter left to the in-band stage (EVL_RX_SKIP, or the VLAN rule not met).
    Skipped,
    /// The port's link went up (true), down (false).
    Link(bool),
    /// The port's interface disappeared.
    Vanished,
}

/// One item on the in-band queue.
pub struct InbandEvent {
    pub port: usize,
    pub kind: InbandKind,
    pub offset: usize,
    pub buf: Option<PacketBuf>,
}

/// Stack-wide switches (EVL keeps them in /sys/class/evl/net and per netns).
#[derive(Default)]
pub struct Settings {
    pub icmp_echo_ignore_all: AtomicBool,
    pub icmp_echo_ignore_broadcasts: AtomicBool,
    pub accept_multicast: AtomicBool,
    /// Blocked receivers wait in the device themselves (one wake-up per datagram).
    pub rx_wait_in_device: AtomicBool,
}

/// The shared half of one stack.
pub struct StackCore {
    pub name: String,
    pub frontcache: FrontCache,
    demux: ArcSwap<Demux>,
    ports: ArcSwap<HashMap<usize, Arc<Port>>>,
    pub settings: Settings,
    inband: ArrayQueue<InbandEvent>,
    inband_ready: EventFd,
    /// Set by `wake_inband`: the next (or current) `next_inband` returns None once.
    inband_wakeup: AtomicBool,
    /// Events lost because the in-band queue was full.
    pub inband_drops: AtomicU64,
    /// The broadcast addresses of the enabled ports (limited and directed), published in-band:
    /// a send to one needs SO_BROADCAST.
    broadcasts: ArcSwap<Vec<u32>>,
}

/// Events waiting for the in-band stage at most.
pub const INBAND_QUEUE: usize = 1024;

impl StackCore {
    pub fn new(name: &str) -> std::io::Result<Arc<StackCore>> {
        let s = StackCore {
            name: name.to_string(),
            frontcache: FrontCache::default(),
            demux: ArcSwap::from_pointee(Demux::default()),
            ports: ArcSwap::from_pointee(HashMap::new()),
            settings: Settings::default(),
            inband: ArrayQueue::new(INBAND_QUEUE),
            inband_ready: EventFd::new()?,
            inband_wakeup: AtomicBool::new(false),
            inband_drops: AtomicU64::new(0),
            broadcasts: ArcSwap::from_pointee(vec![u32::MAX]),
        };
        s.settings.icmp_echo_ignore_broadcasts.store(true, Relaxed);
        Ok(Arc::new(s))
    }

    /// The demux tables now in force.
    pub fn demux(&self) -> arc_swap::Guard<Arc<Demux>> {
        self.demux.load()
    }

    /// In-band: change the demux tables (copy, edit, publish; writers are serialised by the
    /// control plane's lock).
    pub fn update_demux(&self, edit: impl FnOnce(&mut Demux)) {
        let mut next = Demux::clone(&self.demux.load());
        edit(&mut next);
        self.demux.store(Arc::new(next));
    }

    /// In-band: the broadcast addresses now in force.
    pub fn set_broadcasts(&self, addrs: Vec<u32>) {
        self.broadcasts.store(Arc::new(addrs));
    }

    /// Whether `addr` is a broadcast address of this stack (255.255.255.255 always is).
    pub fn is_broadcast(&self, addr: u32) -> bool {
        addr == u32::MAX || self.broadcasts.load().contains(&addr)
    }

    pub fn port(&self, id: usize) -> Option<Arc<Port>> {
        self.ports.load().get(&id).cloned()
    }

    /// The published port map itself, by id (the per-datagram paths: no copy, no allocation).
    pub fn ports_snapshot(&self) -> Arc<HashMap<usize, Arc<Port>>> {
        self.ports.load_full()
    }

    pub fn add_port(&self, port: Arc<Port>) {
        let mut next = HashMap::clone(&self.ports.load());
        next.insert(port.id, port);
        self.ports.store(Arc::new(next));
    }

    pub fn remove_port(&self, id: usize) -> Option<Arc<Port>> {
        let mut next = HashMap::clone(&self.ports.load());
        let gone = next.remove(&id);
        self.ports.store(Arc::new(next));
        gone
    }

    /// Oob side: hand an event up; false (and counted) when the queue is full.
    pub fn post_inband(&self, ev: InbandEvent) -> bool {
        if self.inband.push(ev).is_err() {
            self.inband_drops.fetch_add(1, Relaxed);
            return false;
        }
        self.inband_ready.set();
        true
    }

    /// In-band side: the next event, waiting up to `timeout_ns` (GIL released by the caller).
    pub fn next_inband(&self, timeout_ns: Option<u64>) -> Option<InbandEvent> {
        loop {
            if let Some(ev) = self.inband.pop() {
                return Some(ev);
            }
            if self.inband_wakeup.swap(false, Relaxed) {
                return None;
            }
            self.inband_ready.clear();
            // A push between the pop and the clear would be lost without this second look.
            if let Some(ev) = self.inband.pop() {
                return Some(ev);
            }
            if !self.inband_ready.wait(timeout_ns) {
                return None;
            }
        }
    }

    /// Wake the in-band reader (closing).
    pub fn wake_inband(&self) {
        self.inband_wakeup.store(true, Relaxed);
        self.inband_ready.set();
    }

    pub fn rx_stamping(&self) -> bool {
        crate::socket::rx_stamping()
    }
}

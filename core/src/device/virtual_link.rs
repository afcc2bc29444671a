//! The embedded virtual link: two in-process Ethernet interfaces joined by a wire, needing no
//! privileges and no kernel interface (a veth pair inside the process; in the Python version
//! `evlnet.drivers.virtual`).
//!
//! A frame transmitted on one end is copied, on the sender's thread, into an RX buffer of the
//! pool attached at the other end (as a NIC DMAs into its driver's RX ring), stamped
//! `times.device`, pushed on that end's bounded lock-free inbox and the receiver's doorbell rung.
//! Frames reaching an end with no port attached, or whose link is down, are dropped and counted
//! there (`rx_unclaimed`), as are frames too large for the receiver's buffers or longer than its MTU
//! allows (`rx_oversize`) and
//! frames finding no free buffer (`rx_nomem`): the sender never sees the receiver's trouble, and
//! a dropped frame never keeps a buffer (the Python version leaked one on oversize).
//!
//! VLAN devices ([`VirtualVlan`]) sit on an end as Linux VLAN devices sit on a NIC: they insert
//! their 802.1Q tag on TX and receive, untagged, the frames of their VID arriving at the parent
//! end. Frames tagged with a VID nobody claims go to the parent end, tagged.
//!
//! For tests that drive a raw wire, an end can record every frame reaching it (`set_tap`) and
//! have frames delivered to it as if from the wire (`inject`).
//!
//! Link state: `is_up()` is "administratively up and still joined to its peer". `set_up()` is
//! `ip link set up|down`; `remove()` is `ip link del`: the wire is cut, both ends lose carrier.
//! Changes are reported through the [`LinkListener`] of the affected devices.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::AcqRel, Ordering::Acquire};
use std::sync::atomic::{Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, TryLockError};

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_queue::ArrayQueue;

use super::{max_frame_len, Device, DeviceCounters, LinkListener, ListenerSlot, ETH_HLEN};
use crate::doorbell::Doorbell;
use crate::pool::{PacketBuf, Pool};
use crate::timestamps::monotonic_ns;

/// Frames a tap keeps before it forgets the oldest.
pub const TAP_LIMIT: usize = 65536;

static NEXT_IFINDEX: AtomicU32 = AtomicU32::new(1000);
static NEXT_MAC: AtomicU32 = AtomicU32::new(1);

fn next_ifindex() -> u32 {
    NEXT_IFINDEX.fetch_add(1, Relaxed)
}

/// A locally administered unicast MAC (02:65:76 = "\x02ev"), unique in the process.
fn make_mac() -> [u8; 6] {
    let n = NEXT_MAC.fetch_add(1, Relaxed);
    [0x02, 0x65, 0x76, (n >> 16) as u8, (n >> 8) as u8, n as u8]
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A frame on the wire: `head ++ tag ++ tail`. A VLAN device inserts its tag this way, without
/// copying the frame into a scratch buffer; a plain frame is all `head`.
#[derive(Clone, Copy)]
struct WireFrame<'a> {
    head: &'a [u8],
    tag: Option<[u8; 4]>,
    tail: &'a [u8],
}

impl<'a> WireFrame<'a> {
    fn plain(frame: &'a [u8]) -> Self {
        WireFrame {
            head: frame,
            tag: None,
            tail: &[],
        }
    }

    /// `frame` (at least the two MACs long) with `tag` inserted after the MACs.
    fn tagged(frame: &'a [u8], tag: [u8; 4]) -> Self {
        WireFrame {
            head: &frame[..12],
            tag: Some(tag),
            tail: &frame[12..],
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.tag.map_or(0, |t| t.len()) + self.tail.len()
    }

    /// The frame as up to three slices, in wire order.
    fn parts(&self) -> [&[u8]; 3] {
        match &self.tag {
            Some(t) => [self.head, t, self.tail],
            None => [self.head, &[], self.tail],
        }
    }

    /// For an 802.1Q-tagged frame of at least 18 bytes: the VID, and the frame without its tag.
    fn vlan(&self) -> Option<(u16, [&'a [u8]; 2])> {
        let vid = |t: &[u8]| u16::from_be_bytes([t[2], t[3]]) & 0x0FFF;
        if self.len() < ETH_HLEN + 4 {
            return None;
        }
        match self.tag {
            Some(t) if t[..2] == [0x81, 0x00] => Some((vid(&t), [self.head, self.tail])),
            Some(_) => None,
            None if self.head[12..14] == [0x81, 0x00] => Some((
                vid(&self.head[12..16]),
                [&self.head[..12], &self.head[16..]],
            )),
            None => None,
        }
    }
}

/// What `attach()` installs: the pool frames are copied into and the queue they wait in. One
/// `Arc` holds both, so a sender always pushes into the queue of the pool it took from, and the
/// queue (capacity: the pool's size) can never be full.
struct Attachment {
    pool: Arc<Pool>,
    inbox: ArrayQueue<PacketBuf>,
}

/// The receiving side shared by an end and a VLAN device: attachment, doorbell, counters.
struct Endpoint {
    name: String,
    ifindex: u32,
    att: ArcSwapOption<Attachment>,
    bell: Doorbell,
    /// Set by `wake()`/`detach()`: the next wait ends with 0 frames rather than sleep on.
    woken: AtomicBool,
    /// One consumer drains at a time, so frames reach the sinks in order whoever receives;
    /// held only while draining, never while waiting (see `Device::receive`).
    draining: Mutex<()>,
    counters: DeviceCounters,
    listener: ListenerSlot,
}

impl Endpoint {
    fn new(name: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            ifindex: next_ifindex(),
            att: ArcSwapOption::empty(),
            bell: Doorbell::new(),
            woken: AtomicBool::new(false),
            draining: Mutex::new(()),
            counters: DeviceCounters::default(),
            listener: ListenerSlot::default(),
        }
    }

    fn attach(&self, pool: Arc<Pool>) {
        // a wake-up meant for the receiver of an earlier attachment (detach() leaves one) must
        // not end the first wait of this one
        self.woken.store(false, Release);
        let inbox = ArrayQueue::new(pool.total().max(1));
        if let Some(old) = self.att.swap(Some(Arc::new(Attachment { pool, inbox }))) {
            while old.inbox.pop().is_some() {}
        }
    }

    fn detach(&self) {
        // A sender still holding the old attachment may push one more frame after this drain:
        // that buffer goes back when the sender drops its reference (the queue drops it).
        if let Some(old) = self.att.swap(None) {
            while old.inbox.pop().is_some() {}
        }
        self.wake();
    }

    fn wake(&self) {
        self.woken.store(true, Release);
        self.bell.ring();
    }

    /// Copy a frame (given as slices in wire order) into a buffer of the attached pool and
    /// queue it. Runs on the sender's thread.
    fn deliver(&self, up: bool, parts: &[&[u8]]) {
        let guard = self.att.load();
        let att = match guard.as_ref() {
            Some(att) if up => att,
            _ => return DeviceCounters::bump(&self.counters.rx_unclaimed),
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > att.pool.size() {
            return DeviceCounters::bump(&self.counters.rx_oversize);
        }
        let Some(mut buf) = att.pool.take() else {
            return DeviceCounters::bump(&self.counters.rx_nomem);
        };
        let data = buf.data_mut();
        let mut off = 0;
        for p in parts {
            data[off..off + p.len()].copy_from_slice(p);
            off += p.len();
        }
        buf.start = 0;
        buf.end = len;
        buf.times.device = monotonic_ns();
        if att.inbox.push(buf).is_err() {
            // cannot happen (the queue holds the whole pool); the buffer went back on drop
            return DeviceCounters::bump(&self.counters.rx_dropped);
        }
        drop(guard);
        self.bell.ring();
    }

    /// Hand up to `limit` queued frames to `sink`. `busy`: a busy poller's look, which returns
    /// 0 at once rather than wait for another consumer's drain.
    fn drain(&self, limit: usize, sink: &mut dyn FnMut(PacketBuf), busy: bool) -> usize {
        let _draining = if busy {
            match self.draining.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return 0,
            }
        } else {
            self.draining.lock().unwrap_or_else(|e| e.into_inner())
        };
        let guard = self.att.load();
        let Some(att) = guard.as_ref() else { return 0 };
        let mut n = 0;
        while n < limit {
            let Some(buf) = att.inbox.pop() else { break };
            sink(buf);
            n += 1;
        }
        n
    }

    fn receive(
        &self,
        limit: usize,
        timeout_ns: Option<u64>,
        sink: &mut dyn FnMut(PacketBuf),
    ) -> io::Result<usize> {
        if limit == 0 {
            return Ok(0);
        }
        if timeout_ns == Some(0) {
            return Ok(self.drain(limit, sink, true));
        }
        let deadline = timeout_ns.map(|t| monotonic_ns().saturating_add(t));
        loop {
            // Consume a pending ring before looking at the queue: any ring after this is for a
            // frame pushed after it, which the wait below will not miss.
            self.bell.wait(Some(0));
            let n = self.drain(limit, sink, false);
            if n > 0 {
                return Ok(n);
            }
            if self.woken.swap(false, AcqRel) {
                return Ok(0);
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = monotonic_ns();
                    if now >= d {
                        return Ok(0);
                    }
                    Some(d - now)
                }
            };
            self.bell.wait(left);
        }
    }

    fn ready(&self) -> bool {
        self.att
            .load()
            .as_ref()
            .is_some_and(|a| !a.inbox.is_empty())
    }
}

/// Frames recorded at an end for tests. Test-only path: recording allocates a `Vec` per frame,
/// which the data path proper never does.
#[derive(Default)]
struct Tap {
    enabled: AtomicBool,
    passthrough: AtomicBool,
    frames: Mutex<VecDeque<Vec<u8>>>,
    bell: Doorbell,
}

impl Tap {
    fn record(&self, frame: &WireFrame) {
        let mut v = Vec::with_capacity(frame.len());
        for p in frame.parts() {
            v.extend_from_slice(p);
        }
        let mut q = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= TAP_LIMIT {
            q.pop_front();
        }
        q.push_back(v);
        drop(q);
        self.bell.ring();
    }
}

/// A VLAN device's receiving side, as its parent end sees it.
struct VlanCore {
    vid: u16,
    ep: Endpoint,
}

/// Everything of an end that frames arriving from the peer need. The peer's handle keeps an
/// `Arc` of it (never the other way round, so the two ends form no reference cycle).
/// A test hook: while closed, transmits on the end wait inside the device (a deterministic
/// "slow device", to test qdisc queuing and teardown while a frame is in flight).
#[derive(Default)]
struct TxGate {
    closed: Mutex<bool>,
    cond: std::sync::Condvar,
    /// Transmits that waited at the gate, in all.
    entered: std::sync::atomic::AtomicUsize,
}

impl TxGate {
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            self.entered.fetch_add(1, AcqRel);
            while *closed {
                closed = self.cond.wait(closed).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.cond.notify_all();
    }
}

struct EndCore {
    ep: Endpoint,
    gate: TxGate,
    mac: [u8; 6],
    mtu: usize,
    admin_up: AtomicBool,
    removed: AtomicBool,
    /// Shared by both ends: false once either end is removed (the wire is cut).
    wire: Arc<AtomicBool>,
    /// The VLAN devices on this end, sorted by VID; replaced whole (copy on write) by
    /// `add_vlan`/`remove_vlan` under `vlan_lock`, read lock-free by arriving frames.
    vlans: ArcSwap<Vec<Arc<VlanCore>>>,
    vlan_lock: Mutex<()>,
    tap: Tap,
}

impl EndCore {
    fn is_up(&self) -> bool {
        self.admin_up.load(Acquire) && self.wire.load(Acquire)
    }

    /// A frame reaches this end from the wire (sender's thread).
    fn arrive(&self, frame: WireFrame) {
        if self.tap.enabled.load(Relaxed) {
            self.tap.record(&frame);
            if !self.tap.passthrough.load(Relaxed) {
                return;
            }
        }
        // A NIC drops what is longer than its MTU allows (Linux's veth: `is_skb_forwardable`,
        // MTU + header + one tag), whatever its buffers could hold: only `inject` (a raw wire)
        // can bring such a frame, the sending end refuses it.
        if frame.len() > max_frame_len(self.mtu) {
            return DeviceCounters::bump(&self.ep.counters.rx_oversize);
        }
        let up = self.is_up();
        if let Some((vid, untagged)) = frame.vlan() {
            let vlans = self.vlans.load();
            if let Ok(i) = vlans.binary_search_by_key(&vid, |v| v.vid) {
                return vlans[i].ep.deliver(up, &untagged);
            }
        }
        self.ep.deliver(up, &frame.parts());
    }

    /// Tell this end's listeners (the end's and its VLAN devices') about a link change.
    fn notify(&self, state: Option<bool>) {
        self.ep.listener.notify(state);
        for v in self.vlans.load().iter() {
            v.ep.listener.notify(state);
        }
    }
}

/// One end of a [`VirtualLink`]: a [`Device`].
pub struct VirtualEnd {
    core: Arc<EndCore>,
    peer: Arc<EndCore>,
}

/// Two [`VirtualEnd`]s joined by a wire.
pub struct VirtualLink {
    pub a: Arc<VirtualEnd>,
    pub b: Arc<VirtualEnd>,
}

impl VirtualLink {
    /// A new link between ends `name_a` and `name_b`, both of MTU `mtu`, up.
    pub fn new(name_a: &str, name_b: &str, mtu: usize) -> VirtualLink {
        let wire = Arc::new(AtomicBool::new(true));
        let core = |name: &str| {
            Arc::new(EndCore {
                ep: Endpoint::new(name),
                gate: TxGate::default(),
                mac: make_mac(),
                mtu,
                admin_up: AtomicBool::new(true),
                removed: AtomicBool::new(false),
                wire: Arc::clone(&wire),
                vlans: ArcSwap::from_pointee(Vec::new()),
                vlan_lock: Mutex::new(()),
                tap: Tap::default(),
            })
        };
        let (ca, cb) = (core(name_a), core(name_b));
        VirtualLink {
            a: Arc::new(VirtualEnd {
                core: Arc::clone(&ca),
                peer: Arc::clone(&cb),
            }),
            b: Arc::new(VirtualEnd { core: cb, peer: ca }),
        }
    }
}

impl VirtualEnd {
    /// `ip link set <end> up|down`. Reports `Some(is_up())` to this end's listeners and its VLAN
    /// devices'. (The peer keeps its carrier, as the Python version: frames it sends here are
    /// counted `rx_unclaimed`.) No-op once the end is removed.
    pub fn set_up(&self, up: bool) {
        if self.core.removed.load(Acquire) {
            return;
        }
        self.core.admin_up.store(up, Release);
        self.core.notify(Some(self.is_up()));
    }

    /// Test hook: close (true) or open the TX gate; while closed, every transmit on this end
    /// (and its VLAN devices) waits inside the device.
    pub fn hold_tx(&self, closed: bool) {
        self.core.gate.set(closed);
    }

    /// Test hook: how many transmits have waited at the gate.
    pub fn tx_held(&self) -> usize {
        self.core.gate.entered.load(Acquire)
    }

    /// `ip link del <end>`: the interface disappears (its listeners and its VLAN devices' get
    /// `None`) and the wire is cut, so the peer loses carrier (its listeners get `Some(false)`).
    /// Idempotent.
    pub fn remove(&self) {
        if self.core.removed.swap(true, AcqRel) {
            return;
        }
        self.core.admin_up.store(false, Release);
        let was_joined = self.core.wire.swap(false, AcqRel);
        self.core.notify(None);
        if was_joined && !self.peer.removed.load(Acquire) {
            self.peer.notify(Some(false));
        }
    }

    /// Create a VLAN device on this end (`ip link add link <end> name <name> type vlan id
    /// <vid>`); `name` defaults to `<end>.<vid>`. EINVAL for a VID outside 1..=4094, EEXIST when
    /// the end already has a device for it.
    pub fn add_vlan(
        self: &Arc<Self>,
        vid: u16,
        name: Option<&str>,
    ) -> io::Result<Arc<VirtualVlan>> {
        if !(1..=4094).contains(&vid) {
            return Err(errno(libc::EINVAL));
        }
        let _g = self
            .core
            .vlan_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.core.vlans.load_full();
        let Err(pos) = current.binary_search_by_key(&vid, |v| v.vid) else {
            return Err(errno(libc::EEXIST));
        };
        let default_name;
        let name = match name {
            Some(n) => n,
            None => {
                default_name = format!("{}.{vid}", self.core.ep.name);
                &default_name
            }
        };
        let vcore = Arc::new(VlanCore {
            vid,
            ep: Endpoint::new(name),
        });
        let mut next = Vec::clone(&current);
        next.insert(pos, Arc::clone(&vcore));
        self.core.vlans.store(Arc::new(next));
        Ok(Arc::new(VirtualVlan {
            parent: Arc::clone(self),
            core: vcore,
        }))
    }

    /// Delete the VLAN device of `vid` (its listener gets `None`); false if there is none.
    /// Frames of that VID then reach this end tagged.
    pub fn remove_vlan(&self, vid: u16) -> bool {
        let _g = self
            .core
            .vlan_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.core.vlans.load_full();
        let Ok(pos) = current.binary_search_by_key(&vid, |v| v.vid) else {
            return false;
        };
        let mut next = Vec::clone(&current);
        let gone = next.remove(pos);
        self.core.vlans.store(Arc::new(next));
        gone.ep.listener.notify(None);
        true
    }

    /// Record every frame reaching this end (`enabled`), then deliver it as usual
    /// (`passthrough`) or not at all (the end is a raw wire the test reads). Recorded frames are
    /// kept until taken (at most [`TAP_LIMIT`], the oldest forgotten first).
    pub fn set_tap(&self, enabled: bool, passthrough: bool) {
        self.core.tap.passthrough.store(passthrough, Relaxed);
        self.core.tap.enabled.store(enabled, Release);
    }

    /// The frames recorded so far, oldest first (they are forgotten here).
    pub fn take_tapped(&self) -> Vec<Vec<u8>> {
        let mut q = self
            .core
            .tap
            .frames
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }

    /// Wait up to `timeout_ns` (`None`: forever) for a frame to be recorded since the last
    /// call; true if one was.
    pub fn wait_tapped(&self, timeout_ns: Option<u64>) -> bool {
        self.core.tap.bell.wait(timeout_ns)
    }

    /// Deliver `frame` to this end as if it came from the wire (through the tap, if any).
    pub fn inject(&self, frame: &[u8]) {
        self.core.arrive(WireFrame::plain(frame));
    }

    /// Send a frame to the peer after the sender-side checks, counting refusals in `counters`.
    fn send(&self, frame: WireFrame, counters: &DeviceCounters) -> io::Result<()> {
        self.core.gate.pass();
        if !self.core.is_up() {
            return Err(errno(libc::ENETDOWN));
        }
        let len = frame.len();
        if len < ETH_HLEN {
            DeviceCounters::bump(&counters.tx_errors);
            return Err(errno(libc::EINVAL));
        }
        if len > max_frame_len(self.core.mtu) {
            DeviceCounters::bump(&counters.tx_errors);
            return Err(errno(libc::EMSGSIZE));
        }
        self.peer.arrive(frame);
        Ok(())
    }
}

impl Device for VirtualEnd {
    fn name(&self) -> &str {
        &self.core.ep.name
    }
    fn ifindex(&self) -> u32 {
        self.core.ep.ifindex
    }
    fn mac(&self) -> [u8; 6] {
        self.core.mac
    }
    fn mtu(&self) -> usize {
        self.core.mtu
    }
    /// The wire is in-process memory moved by the oob threads themselves.
    fn oob_capable(&self) -> bool {
        true
    }
    fn attach(&self, rx_pool: Arc<Pool>) -> io::Result<()> {
        self.core.ep.attach(rx_pool);
        Ok(())
    }
    fn detach(&self) {
        self.core.ep.detach();
    }
    fn receive(
        &self,
        limit: usize,
        timeout_ns: Option<u64>,
        sink: &mut dyn FnMut(PacketBuf),
    ) -> io::Result<usize> {
        self.core.ep.receive(limit, timeout_ns, sink)
    }
    fn ready(&self) -> bool {
        self.core.ep.ready()
    }
    fn transmit(&self, frame: &[u8]) -> io::Result<()> {
        self.send(WireFrame::plain(frame), &self.core.ep.counters)
    }
    fn wake(&self) {
        self.core.ep.wake();
    }
    fn is_up(&self) -> bool {
        self.core.is_up()
    }
    fn counters(&self) -> &DeviceCounters {
        &self.core.ep.counters
    }
    fn set_link_listener(&self, listener: Option<LinkListener>) {
        self.core.ep.listener.set(listener);
    }
}

/// A VLAN device on a [`VirtualEnd`]: tags its frames on TX, receives its VID untagged.
pub struct VirtualVlan {
    parent: Arc<VirtualEnd>,
    core: Arc<VlanCore>,
}

impl VirtualVlan {
    /// The end carrying this device's frames.
    pub fn parent(&self) -> &Arc<VirtualEnd> {
        &self.parent
    }
}

impl Device for VirtualVlan {
    fn name(&self) -> &str {
        &self.core.ep.name
    }
    fn ifindex(&self) -> u32 {
        self.core.ep.ifindex
    }
    fn mac(&self) -> [u8; 6] {
        self.parent.core.mac
    }
    fn mtu(&self) -> usize {
        self.parent.core.mtu
    }
    fn vlan_id(&self) -> u16 {
        self.core.vid
    }
    fn oob_capable(&self) -> bool {
        true
    }
    fn attach(&self, rx_pool: Arc<Pool>) -> io::Result<()> {
        self.core.ep.attach(rx_pool);
        Ok(())
    }
    fn detach(&self) {
        self.core.ep.detach();
    }
    fn receive(
        &self,
        limit: usize,
        timeout_ns: Option<u64>,
        sink: &mut dyn FnMut(PacketBuf),
    ) -> io::Result<usize> {
        self.core.ep.receive(limit, timeout_ns, sink)
    }
    fn ready(&self) -> bool {
        self.core.ep.ready()
    }
    /// Inserts the tag after the MACs and sends through the parent. The frame, untagged, may
    /// be `mtu + 14` bytes long (tagged, it is then the parent's longest).
    fn transmit(&self, frame: &[u8]) -> io::Result<()> {
        let counters = &self.core.ep.counters;
        if !self.parent.core.is_up() {
            return Err(errno(libc::ENETDOWN));
        }
        if frame.len() < ETH_HLEN {
            DeviceCounters::bump(&counters.tx_errors);
            return Err(errno(libc::EINVAL));
        }
        if frame.len() + 4 > max_frame_len(self.parent.core.mtu) {
            DeviceCounters::bump(&counters.tx_errors);
            return Err(errno(libc::EMSGSIZE));
        }
        let [hi, lo] = self.core.vid.to_be_bytes();
        let tag = [0x81, 0x00, hi & 0x0F, lo];
        self.parent.send(WireFrame::tagged(frame, tag), counters)
    }
    fn wake(&self) {
        self.core.ep.wake();
    }
    fn is_up(&self) -> bool {
        self.parent.core.is_up()
    }
    fn counters(&self) -> &DeviceCounters {
        &self.core.ep.counters
    }
    fn set_link_listener(&self, listener: Option<LinkListener>) {
        self.core.ep.listener.set(listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::thread;
    use std::time::Duration;

    fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn recv_all(dev: &dyn Device, timeout_ns: Option<u64>) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        dev.receive(64, timeout_ns, &mut |b| {
            out.push((b.payload().to_vec(), b.times.device))
        })
        .unwrap();
        out
    }

    fn counter(dev: &dyn Device, name: &str) -> u64 {
        dev.counters()
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    }

    #[test]
    fn round_trip_both_ways_with_device_time() {
        let link = VirtualLink::new("rt0", "rt1", 1500);
        let (a, b) = (&link.a, &link.b);
        assert_eq!((a.name(), b.name(), a.mtu()), ("rt0", "rt1", 1500));
        assert!(a.ifindex() >= 1000 && a.ifindex() != b.ifindex());
        assert_ne!(a.mac(), b.mac());
        assert_eq!(a.mac()[..3], [0x02, 0x65, 0x76]);
        assert!(a.is_up() && b.is_up() && a.oob_capable() && a.vlan_id() == 0);
        let (pa, pb) = (Pool::new("a", 8, 2048), Pool::new("b", 8, 2048));
        a.attach(Arc::clone(&pa)).unwrap();
        b.attach(Arc::clone(&pb)).unwrap();

        let f = frame(b.mac(), a.mac(), 0x88B5, b"hello");
        assert!(!b.ready());
        let t0 = monotonic_ns();
        a.transmit(&f).unwrap();
        let t1 = monotonic_ns();
        assert!(b.ready());
        let got = recv_all(&**b, Some(1_000_000_000));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, f);
        assert!(got[0].1 >= t0 && got[0].1 <= t1);
        assert!(!b.ready());

        let g = frame(a.mac(), b.mac(), 0x88B5, b"back");
        b.transmit(&g).unwrap();
        assert_eq!(recv_all(&**a, Some(0))[0].0, g);
        // nothing more: a non-blocking receive returns at once, a bounded one times out
        assert!(recv_all(&**a, Some(0)).is_empty());
        let t0 = monotonic_ns();
        assert!(recv_all(&**a, Some(20_000_000)).is_empty());
        assert!(monotonic_ns() - t0 >= 20_000_000);
        // limit is honoured
        for _ in 0..5 {
            a.transmit(&f).unwrap();
        }
        let mut n = 0;
        assert_eq!(b.receive(3, Some(0), &mut |_| n += 1).unwrap(), 3);
        assert_eq!(b.receive(0, None, &mut |_| n += 1).unwrap(), 0);
        assert_eq!(b.receive(10, None, &mut |_| n += 1).unwrap(), 2);
        assert_eq!(n, 5);
        assert_eq!(pa.free(), 8);
        assert_eq!(pb.free(), 8);
    }

    #[test]
    fn injected_frames_longer_than_the_mtu_allows_are_oversize() {
        // issue 9's corpus: a raw wire brought a 3042-byte frame to a 1500-byte MTU end whose
        // 4 KiB buffers could hold it, and it was delivered
        let link = VirtualLink::new("ov0", "ov1", 1500);
        let b = &link.b;
        let big = Pool::new("big", 4, 4096);
        b.attach(Arc::clone(&big)).unwrap();
        b.inject(&frame(b.mac(), [2; 6], 0x88B5, &[1u8; 1518 - 14]));
        assert_eq!(
            recv_all(&**b, Some(0)).len(),
            1,
            "MTU + header + one tag is allowed"
        );
        b.inject(&frame(b.mac(), [2; 6], 0x88B5, &[1u8; 1518 - 14 + 1]));
        b.inject(&frame(b.mac(), [2; 6], 0x88B5, &[1u8; 3028]));
        assert_eq!(counter(&**b, "rx_oversize"), 2);
        assert!(recv_all(&**b, Some(0)).is_empty());
        assert_eq!(big.free(), 4, "no buffer kept");
        b.detach();
    }

    #[test]
    fn each_drop_is_counted_where_it_happens() {
        let link = VirtualLink::new("dr0", "dr1", 1500);
        let (a, b) = (&link.a, &link.b);
        let f = frame(b.mac(), a.mac(), 0x88B5, &[7u8; 100]);

        // nobody attached at b: unclaimed, and the sender does not know
        a.transmit(&f).unwrap();
        assert_eq!(counter(&**b, "rx_unclaimed"), 1);

        // buffers too small at the receiver: counted there, no buffer taken
        let small = Pool::new("small", 4, 64);
        b.attach(Arc::clone(&small)).unwrap();
        a.transmit(&f).unwrap();
        assert_eq!(counter(&**b, "rx_oversize"), 1);
        assert_eq!(small.free(), 4);
        assert_eq!(counter(&**a, "tx_errors"), 0);

        // pool exhausted
        let two = Pool::new("two", 2, 2048);
        b.attach(Arc::clone(&two)).unwrap();
        assert_eq!(small.free(), 4);
        for _ in 0..3 {
            a.transmit(&f).unwrap();
        }
        assert_eq!(counter(&**b, "rx_nomem"), 1);
        assert_eq!(recv_all(&**b, Some(0)).len(), 2);

        // receiver down: unclaimed
        b.set_up(false);
        a.transmit(&f).unwrap();
        assert_eq!(counter(&**b, "rx_unclaimed"), 2);
        b.set_up(true);

        // sender-side refusals
        let big = vec![0u8; 1500 + 18 + 1];
        let e = a.transmit(&big).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
        assert!(a.transmit(&big[..1518]).is_ok()); // MTU + header + one tag is allowed
        assert_eq!(
            counter(&**b, "rx_oversize"),
            1,
            "1518 bytes fit b's 2 KiB buffers"
        );
        let e = a.transmit(&[0u8; 13]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(counter(&**a, "tx_errors"), 2);
        a.set_up(false);
        let e = a.transmit(&f).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN));
        assert_eq!(counter(&**a, "tx_errors"), 2, "down is not a device error");
        assert_eq!(counter(&**b, "rx_dropped"), 0);
        b.detach();
        assert_eq!(two.free(), 2);
    }

    #[test]
    fn vlan_devices_tag_and_untag() {
        let link = VirtualLink::new("vl0", "vl1", 1500);
        let (a, b) = (&link.a, &link.b);
        let va = a.add_vlan(42, None).unwrap();
        let vb = b.add_vlan(42, Some("vb42")).unwrap();
        assert_eq!((va.name(), vb.name()), ("vl0.42", "vb42"));
        assert_eq!((va.vlan_id(), va.mac(), va.mtu()), (42, a.mac(), 1500));
        assert!(va.ifindex() != a.ifindex() && va.is_up());
        for bad in [0u16, 4095, 5000] {
            let e = a.add_vlan(bad, None).err().unwrap();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        }
        assert_eq!(
            a.add_vlan(42, None).err().unwrap().raw_os_error(),
            Some(libc::EEXIST)
        );

        let (pb, pvb) = (Pool::new("b", 8, 2048), Pool::new("vb", 8, 2048));
        b.attach(Arc::clone(&pb)).unwrap();
        vb.attach(Arc::clone(&pvb)).unwrap();
        b.set_tap(true, true); // see the frames as they are on the wire, and deliver them

        let f = frame(b.mac(), a.mac(), 0x0800, b"over vlan 42");
        va.transmit(&f).unwrap();
        let wire = b.take_tapped();
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].len(), f.len() + 4);
        assert_eq!(wire[0][..12], f[..12]);
        assert_eq!(wire[0][12..16], [0x81, 0x00, 0x00, 42]);
        assert_eq!(wire[0][16..], f[12..]);
        assert_eq!(
            recv_all(&*vb, Some(0))[0].0,
            f,
            "the VLAN device gets it untagged"
        );
        assert!(recv_all(&**b, Some(0)).is_empty(), "not the parent");

        // a VID nobody claims reaches the parent, tagged; a plain frame too, untagged
        let mut other = wire[0].clone();
        other[15] = 43;
        a.transmit(&other).unwrap();
        let plain = frame(b.mac(), a.mac(), 0x0800, b"untagged");
        a.transmit(&plain).unwrap();
        let got = recv_all(&**b, Some(0));
        assert_eq!(
            got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
            [other, plain]
        );
        // the priority bits do not hide the VID
        let mut prio = wire[0].clone();
        prio[14] |= 0xE0;
        a.transmit(&prio).unwrap();
        assert_eq!(recv_all(&*vb, Some(0))[0].0, f);

        // size limits: untagged mtu + 14 is the largest a VLAN device sends
        let max = vec![0u8; 1514];
        va.transmit(&max).unwrap();
        let e = va.transmit(&[0u8; 1515]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(
            (counter(&*va, "tx_errors"), counter(&**a, "tx_errors")),
            (1, 0)
        );
        assert_eq!(recv_all(&*vb, Some(0)).len(), 1);

        // removed VLAN device: its frames reach the parent, tagged
        assert!(b.remove_vlan(42) && !b.remove_vlan(42));
        va.transmit(&f).unwrap();
        assert_eq!(recv_all(&**b, Some(0)).len(), 1);
        vb.detach();
        b.detach();
        assert_eq!((pb.free(), pvb.free()), (8, 8));
    }

    #[test]
    fn tap_and_inject_drive_a_raw_wire() {
        let link = VirtualLink::new("tp0", "tp1", 1500);
        let (a, b) = (&link.a, &link.b);
        let (pa, pb) = (Pool::new("a", 4, 2048), Pool::new("b", 4, 2048));
        a.attach(Arc::clone(&pa)).unwrap();
        b.attach(Arc::clone(&pb)).unwrap();
        a.set_tap(true, false); // a is a raw wire: what b sends is recorded, not delivered
        let f = frame(a.mac(), b.mac(), 0x88B5, b"to the wire");
        assert!(!a.wait_tapped(Some(0)));
        b.transmit(&f).unwrap();
        assert!(a.wait_tapped(Some(1_000_000_000)));
        assert_eq!(a.take_tapped(), std::slice::from_ref(&f));
        assert!(a.take_tapped().is_empty());
        assert!(recv_all(&**a, Some(0)).is_empty());
        assert_eq!(pa.free(), 4);

        // inject: delivered to that end as if from the wire
        let g = frame(b.mac(), a.mac(), 0x88B5, b"from the wire");
        b.inject(&g);
        assert_eq!(recv_all(&**b, Some(0))[0].0, g);

        // passthrough: recorded and delivered
        a.set_tap(true, true);
        b.transmit(&f).unwrap();
        assert_eq!(a.take_tapped().len(), 1);
        assert_eq!(recv_all(&**a, Some(0))[0].0, f);
        a.set_tap(false, false);
        b.transmit(&f).unwrap();
        assert!(a.take_tapped().is_empty());
        assert_eq!(recv_all(&**a, Some(0)).len(), 1);
    }

    #[test]
    fn down_and_remove_report_link_changes() {
        let link = VirtualLink::new("ln0", "ln1", 1500);
        let (a, b) = (&link.a, &link.b);
        let va = a.add_vlan(7, None).unwrap();
        type Events = Arc<Mutex<Vec<(&'static str, Option<bool>)>>>;
        let events: Events = Arc::default();
        let listen = |who: &'static str| -> LinkListener {
            let ev = Arc::clone(&events);
            Arc::new(move |s| ev.lock().unwrap().push((who, s)))
        };
        a.set_link_listener(Some(listen("a")));
        b.set_link_listener(Some(listen("b")));
        va.set_link_listener(Some(listen("va")));
        let take = || std::mem::take(&mut *events.lock().unwrap());

        a.set_up(false);
        assert!(!a.is_up() && !va.is_up() && b.is_up());
        assert_eq!(take(), [("a", Some(false)), ("va", Some(false))]);
        let f = frame(a.mac(), b.mac(), 0x88B5, b"x");
        assert_eq!(
            a.transmit(&f).unwrap_err().raw_os_error(),
            Some(libc::ENETDOWN)
        );
        assert_eq!(
            va.transmit(&f).unwrap_err().raw_os_error(),
            Some(libc::ENETDOWN)
        );
        a.set_up(true);
        assert_eq!(take(), [("a", Some(true)), ("va", Some(true))]);
        assert!(a.is_up() && va.is_up());

        a.remove();
        assert_eq!(take(), [("a", None), ("va", None), ("b", Some(false))]);
        a.remove();
        assert!(take().is_empty(), "remove is idempotent");
        assert!(!a.is_up() && !b.is_up());
        assert_eq!(
            b.transmit(&f).unwrap_err().raw_os_error(),
            Some(libc::ENETDOWN)
        );
        a.set_up(true);
        assert!(
            !a.is_up() && take().is_empty(),
            "a removed end stays removed"
        );
        b.set_link_listener(None);
        b.set_up(false);
        b.set_up(true);
        assert!(
            take().is_empty() && !b.is_up(),
            "no carrier once the wire is cut"
        );
    }

    #[test]
    fn detach_and_wake_end_a_blocked_receive_and_nothing_leaks() {
        let link = VirtualLink::new("lk0", "lk1", 1500);
        let (a, b) = (Arc::clone(&link.a), Arc::clone(&link.b));
        let pool = Pool::new("b", 16, 2048);
        b.attach(Arc::clone(&pool)).unwrap();
        let f = frame(b.mac(), a.mac(), 0x88B5, &[1u8; 60]);
        for _ in 0..10 {
            a.transmit(&f).unwrap();
        }
        assert_eq!(pool.free(), 6);
        b.detach();
        assert_eq!(pool.free(), 16, "queued frames went back");
        a.transmit(&f).unwrap();
        assert_eq!(pool.free(), 16);

        // wake() ends a blocked receive with 0; so does detach()
        b.attach(Arc::clone(&pool)).unwrap();
        for stop in ["wake", "detach"] {
            let b2 = Arc::clone(&b);
            let t = thread::spawn(move || b2.receive(8, None, &mut |_| ()).unwrap());
            thread::sleep(Duration::from_millis(30));
            assert!(!t.is_finished());
            if stop == "wake" {
                b.wake();
            } else {
                b.detach();
            }
            assert_eq!(t.join().unwrap(), 0, "{stop}");
        }
        // a wake before the wait is not lost either
        b.wake();
        assert_eq!(b.receive(8, Some(5_000_000_000), &mut |_| ()).unwrap(), 0);
        // a frame wakes a sleeper
        b.attach(Arc::clone(&pool)).unwrap();
        let b2 = Arc::clone(&b);
        let t = thread::spawn(move || {
            let mut got = Vec::new();
            b2.receive(8, Some(5_000_000_000), &mut |buf| {
                got.push(buf.payload().to_vec())
            })
            .unwrap();
            got
        });
        thread::sleep(Duration::from_millis(20));
        a.transmit(&f).unwrap();
        assert_eq!(t.join().unwrap(), [f]);
        assert_eq!(pool.free(), 16);
        drop(link);
        b.detach();
        assert_eq!(pool.free(), 16);
    }

    #[test]
    fn concurrent_senders_one_receiver() {
        const SENDERS: usize = 4;
        const PER_SENDER: u32 = 20_000;
        let link = VirtualLink::new("mt0", "mt1", 1500);
        let (a, b) = (Arc::clone(&link.a), Arc::clone(&link.b));
        let pool = Pool::new("b", 64, 256);
        b.attach(Arc::clone(&pool)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));

        let rx = {
            let (b, done, received) = (Arc::clone(&b), Arc::clone(&done), Arc::clone(&received));
            thread::spawn(move || {
                let mut last = [None::<u32>; SENDERS];
                loop {
                    let finished = done.load(Acquire);
                    let n = b
                        .receive(32, Some(10_000_000), &mut |buf| {
                            let p = buf.payload();
                            assert_eq!(p.len(), 14 + 8 + 40);
                            let who = p[14] as usize;
                            let seq = u32::from_be_bytes(p[15..19].try_into().unwrap());
                            assert!(p[22..].iter().all(|&x| x == p[14]));
                            // each sender's frames arrive in its order (some may be lost)
                            assert!(last[who].is_none_or(|l| seq > l));
                            last[who] = Some(seq);
                        })
                        .unwrap();
                    received.fetch_add(n as u64, Relaxed);
                    if finished && n == 0 {
                        return;
                    }
                }
            })
        };
        let txs: Vec<_> = (0..SENDERS)
            .map(|who| {
                let (a, dst, src) = (Arc::clone(&a), b.mac(), a.mac());
                thread::spawn(move || {
                    let mut payload = [who as u8; 48];
                    for seq in 0..PER_SENDER {
                        payload[1..5].copy_from_slice(&seq.to_be_bytes());
                        payload[5..8].fill(0);
                        a.transmit(&frame(dst, src, 0x88B5, &payload)).unwrap();
                        if seq % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in txs {
            t.join().unwrap();
        }
        done.store(true, Release);
        b.wake();
        rx.join().unwrap();
        let total = SENDERS as u64 * PER_SENDER as u64;
        let nomem = counter(&*b, "rx_nomem");
        assert_eq!(received.load(Relaxed) + nomem, total);
        assert!(received.load(Relaxed) > 0);
        assert_eq!(pool.free(), 64);
        b.detach();
        assert_eq!(pool.free(), 64);
    }
}

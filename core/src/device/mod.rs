//! The network device interface, as the port sees it (EVL: a `net_device` with an oob port
//! enabled on it; in the Python version `evlnet.drivers.base.Device`).
//!
//! Deliberately small, like smoltcp's `phy::Device`: receive a batch, transmit one frame, wake a
//! sleeping receiver, and a few facts (MAC, MTU, VLAN id, link state, counters). Queues, threads,
//! pools and protocols live above it, in the port.
//!
//! Lifecycle: `attach(rx_pool)` when a port is enabled on the device (received frames are copied
//! into that pool's buffers, as a NIC DMAs into its driver's RX ring), `detach()` when it is
//! disabled. `receive()` is called by one consumer at a time (the port's RX thread, or a
//! busy-polling receiver; the port serialises them); `transmit()` may be called from several
//! threads at once (the TX thread and run-to-completion senders).
//!
//! Backends:
//! - [`virtual_link`]: the embedded virtual link (two in-process ends joined by a wire, plus
//!   VLAN devices on them), for tests and demos without privileges;
//! - [`afpacket`]: a Linux interface through an AF_PACKET socket with a TPACKET_V2 RX ring.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::pool::{PacketBuf, Pool};

pub mod afpacket;
pub mod virtual_link;

/// Ethernet header length (two MACs and the EtherType).
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// The 802.1Q TPID.
pub const ETH_P_8021Q: u16 = 0x8100;

/// The longest frame `transmit()` accepts on a device of MTU `mtu`: the Ethernet header, one
/// 802.1Q tag and `mtu` bytes of payload (no FCS: devices add it).
#[inline]
pub const fn max_frame_len(mtu: usize) -> usize {
    mtu + ETH_HLEN + VLAN_HLEN
}

/// Called when a device's link changes: `Some(up)` when `is_up()` changes (administrative
/// state or carrier), `None` when the interface itself disappears.
///
/// It runs on whatever thread noticed the change (a control-plane call, a transmitter, the RX
/// thread), possibly with device locks held: it must not block, must not call back into the
/// device, and can never run Python. The port's listener sets atomics and rings doorbells.
pub type LinkListener = Arc<dyn Fn(Option<bool>) + Send + Sync>;

macro_rules! device_counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What a device drops or refuses itself, before the stack sees a frame. Relaxed atomics:
        /// bumped by the data path, read by the control plane (`get_stats()`).
        #[derive(Default, Debug)]
        pub struct DeviceCounters { $($(#[$doc])* pub $name: AtomicU64,)* }

        impl DeviceCounters {
            /// Every counter by name.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

device_counters!(
    /// Frame lost: no free buffer in the attached RX pool.
    rx_nomem,
    /// Frame lost for another device reason (queue full, nonsense ring header, ...).
    rx_dropped,
    /// Frame lost: larger than the RX pool's buffers (or than the device's RX ring slots).
    rx_oversize,
    /// Frame arrived with no port attached, or with the link down (virtual link).
    rx_unclaimed,
    /// Transmit refused by the device (too long, or a kernel error other than "down").
    tx_errors,
    /// AF_PACKET: frames the kernel dropped because the RX ring was full (`tp_drops`).
    kernel_drops,
    /// AF_PACKET: `tp_freeze_q_cnt` (TPACKET_V3 only; stays 0 with TPACKET_V2).
    kernel_freeze_q_cnt,
);

impl DeviceCounters {
    /// Add one to a counter.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// A network interface as the port sees it (see the module doc).
pub trait Device: Send + Sync {
    /// Interface name (as given at creation; renames are not followed).
    fn name(&self) -> &str;
    fn ifindex(&self) -> u32;
    fn mac(&self) -> [u8; 6];
    fn mtu(&self) -> usize;
    /// For a VLAN device its VID (its frames are tagged on the wire), else 0.
    fn vlan_id(&self) -> u16 {
        0
    }
    /// EVL's IFF_OOB_CAPABLE: frames move between the wire and the oob threads without going
    /// through the in-band kernel stack.
    fn oob_capable(&self) -> bool;

    /// A port was enabled on the device: received frames are copied into buffers of `rx_pool`.
    /// Attaching again replaces the pool (frames queued for the old one are dropped). Fails only
    /// for real devices (AF_PACKET: the interface vanished, the kernel refused the bind).
    fn attach(&self, rx_pool: Arc<Pool>) -> io::Result<()>;

    /// The port goes away: stop receiving, drop queued frames (their buffers go back to the pool)
    /// and wake a blocked `receive()`. Idempotent.
    fn detach(&self);

    /// Hand up to `limit` received frames to `sink`, each in a `PacketBuf` holding the whole
    /// frame (Ethernet header included, an 802.1Q tag the hardware stripped put back) in
    /// `data()[start..end]`, with `times.device` = CLOCK_MONOTONIC ns of its arrival. Waits up
    /// to `timeout_ns` (`None`: until a frame, `wake()` or `detach()`; `Some(0)`: never) for the
    /// first frame. Returns how many were handed over (0 on timeout or wake-up).
    ///
    /// A frame that finds no free buffer is dropped and counted in `rx_nomem`; one larger than
    /// the buffers in `rx_oversize`. Concurrent calls are safe and keep order: one caller at a
    /// time drains (its frames reach its `sink` before anyone takes the next ones), and a
    /// caller holds nothing while it waits, so a busy poller (`Some(0)`: 0 at once while
    /// another caller drains) is never stuck behind a waiter that has not run yet. `sink` runs
    /// on the caller's thread and must not call `receive()` on the same device.
    fn receive(
        &self,
        limit: usize,
        timeout_ns: Option<u64>,
        sink: &mut dyn FnMut(PacketBuf),
    ) -> io::Result<usize>;

    /// Whether a frame is waiting (cheap, no syscall, no lock: for busy polling). May be stale
    /// by the time `receive()` runs.
    fn ready(&self) -> bool;

    /// Put one complete Ethernet frame on the wire, from the caller's thread. Errors:
    /// ENETDOWN when the link is down (not counted: the port counts it), EMSGSIZE above
    /// `max_frame_len(mtu)` (counted in `tx_errors`), other errnos from the kernel (counted).
    fn transmit(&self, frame: &[u8]) -> io::Result<()>;

    /// Make a blocked `receive()` return early (or the next one, if none is blocked now).
    fn wake(&self);

    /// Whether the link is up (administratively and carrier).
    fn is_up(&self) -> bool;

    fn counters(&self) -> &DeviceCounters;

    /// Install (or remove) the link-change listener (see [`LinkListener`]). Devices whose link
    /// never changes may keep the default, which ignores it.
    fn set_link_listener(&self, listener: Option<LinkListener>) {
        let _ = listener;
    }

    /// The port is gone for good (called after `detach()`): hand back what the kernel holds
    /// for the device now, not when the last handle on it goes, which a garbage-collected
    /// language may delay indefinitely. Later calls fail cleanly (ENETDOWN, empty receives).
    /// Devices that hold nothing of the kernel's keep the default, which does nothing.
    fn release(&self) {}
}

/// The listener slot both backends keep: cloned out under a short lock and called without it,
/// so that a listener may take its own locks freely.
#[derive(Default)]
pub(crate) struct ListenerSlot(std::sync::Mutex<Option<LinkListener>>);

impl ListenerSlot {
    pub(crate) fn set(&self, listener: Option<LinkListener>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = listener;
    }

    pub(crate) fn notify(&self, state: Option<bool>) {
        let l = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(l) = l {
            l(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_snapshot_names_every_counter() {
        let c = DeviceCounters::default();
        DeviceCounters::bump(&c.rx_oversize);
        let snap = c.snapshot();
        let names: Vec<_> = snap.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "rx_nomem",
                "rx_dropped",
                "rx_oversize",
                "rx_unclaimed",
                "tx_errors",
                "kernel_drops",
                "kernel_freeze_q_cnt"
            ]
        );
        assert_eq!(snap[2].1, 1);
        assert_eq!(max_frame_len(1500), 1518);
    }
}

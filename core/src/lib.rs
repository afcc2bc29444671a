//! evlnet's compiled core: the out-of-band data path, in threads that never take the GIL.
//!
//! Layers, bottom up (each module uses only those above it in this list):
//! `stats`, `timestamps`, `pool` → `wire` → `device` → `ethernet`/`arp`/`ipv4`/`reassembly`/
//! `udp`/`icmp` → `qdisc`, `frontcache`, `socket` → `port` → `python` (the seam with the
//! Python control plane; the only module that knows about Python).

pub mod stats;
pub mod timestamps;
pub mod pool;
pub mod eventfd;
pub mod qdisc;
pub mod frontcache;
pub mod socket;
pub mod device;
pub mod doorbell;
pub mod wire;
pub mod ethernet;
pub mod arp;
pub mod ipv4;
pub mod reassembly;
pub mod udp;
pub mod icmp;
pub mod stack;
pub mod port;
pub mod rx;
pub mod tx;
#[cfg(feature = "python")]
mod python;

//! evlnet's compiled core: the out-of-band data path, in threads that never take the GIL.
//!
//! Layers, bottom up (each module uses only those above it in this list):
//! `stats`, `timestamps`, `pool` → `wire` → `device` → `ethernet`/`arp`/`ipv4`/`reassembly`/
//! `udp`/`icmp` → `capture`, `qdisc`, `frontcache`, `socket` → `port` → `python` (the seam with the
//! Python control plane; the only module that knows about Python).

pub mod arp;
pub mod capture;
pub mod device;
pub mod doorbell;
pub mod ethernet;
pub mod eventfd;
pub mod filter;
pub mod frontcache;
pub mod icmp;
pub mod ipv4;
pub mod pool;
pub mod port;
#[cfg(feature = "python")]
mod python;
pub mod qdisc;
pub mod reassembly;
pub mod rx;
pub mod socket;
pub mod stack;
pub mod stats;
pub mod timestamps;
pub mod tx;
pub mod udp;
pub mod wire;

//! EVL's front cache: routes and neighbours the oob path reads without locks.
//!
//! Only in-band code (the Python control plane, fed by netlink or the stack's own ARP) changes
//! it, by publishing a whole new immutable snapshot; an oob sender loads the current snapshot
//! with one atomic operation (`arc_swap`) and never waits for a writer. A miss sends the datagram
//! to the in-band stage (EVL demotes it).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// How to reach one destination: through which port, via which gateway, from which source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the port in the stack's port table.
    pub port: usize,
    /// Next hop, 0 when on-link.
    pub gateway: u32,
    /// Source address to use.
    pub source: u32,
    /// The route's port was disabled: senders get ENETDOWN (EVL keeps such tombstones).
    pub dead: bool,
}

/// One immutable view of the cache.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub routes: HashMap<u32, Route>,
    pub neighbours: HashMap<u32, [u8; 6]>,
}

/// What an oob sender gets for a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit {
        route: Route,
        mac: [u8; 6],
    },
    /// Route known but its port is disabled.
    Down,
    /// Not cached: the in-band stage must resolve it.
    Miss,
}

/// The cache: the current snapshot behind an atomic pointer.
#[derive(Default)]
pub struct FrontCache {
    current: ArcSwap<Snapshot>,
}

impl FrontCache {
    /// Route, then neighbour of the next hop; lock-free.
    pub fn lookup(&self, dst: u32) -> Lookup {
        let snap = self.current.load();
        let Some(route) = snap.routes.get(&dst) else {
            return Lookup::Miss;
        };
        if route.dead {
            return Lookup::Down;
        }
        let hop = if route.gateway != 0 {
            route.gateway
        } else {
            dst
        };
        match snap.neighbours.get(&hop) {
            Some(mac) => Lookup::Hit {
                route: *route,
                mac: *mac,
            },
            None => Lookup::Miss,
        }
    }

    /// In-band: install a new snapshot (the old one lives on until its last reader is done).
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// The snapshot now in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_gateway_and_tombstones() {
        let fc = FrontCache::default();
        assert_eq!(fc.lookup(1), Lookup::Miss);
        let mut s = Snapshot::default();
        let r = Route {
            port: 0,
            gateway: 9,
            source: 5,
            dead: false,
        };
        s.routes.insert(1, r);
        s.routes.insert(2, Route { dead: true, ..r });
        fc.publish(s);
        assert_eq!(fc.lookup(1), Lookup::Miss); // gateway not resolved yet
        assert_eq!(fc.lookup(2), Lookup::Down);
        let mut s = Snapshot::default();
        s.routes.insert(1, r);
        s.neighbours.insert(9, [1; 6]);
        fc.publish(s);
        assert_eq!(
            fc.lookup(1),
            Lookup::Hit {
                route: r,
                mac: [1; 6]
            }
        );
    }
}

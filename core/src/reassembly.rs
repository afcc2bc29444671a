//! IPv4 reassembly (RFC 791, RFC 815's hole list; Linux's `ip_fragment.c`), per port, under a
//! timeout and memory bounds.
//!
//! Each datagram in reassembly owns one buffer of the reassembly pool (`REASM_BUF_SIZE` bytes,
//! preallocated). A fragment's payload is copied into it at once, at its offset, so the caller
//! drops every fragment's RX buffer straight away and a fragment flood can only exhaust the
//! reassembly pool, never the RX pool. The header kept is the offset-0 fragment's (IHL and
//! options included) in whichever order fragments arrive; it sits just before the payload, so a
//! complete datagram is one contiguous IP packet. Received data is tracked as up to `MAX_RUNS`
//! disjoint runs in a fixed array: no allocation per packet.
//!
//! Limits: `max_datagrams` in reassembly at once per port, the pool's buffers, a quarter of
//! those (`PER_SOURCE_SHARE`) per source address (a flood from one address leaves room for the
//! others' fragmented traffic; Linux has no such bound), and a timeout
//! counted from a datagram's first fragment (Linux's `ipfrag_time`, 30 s by default) enforced by
//! [`Reassembler::expire`]. At a limit, new datagrams are refused and those in progress are kept,
//! as Linux does (`inet_frag_find` creates no queue over `ipfrag_high_thresh`): a flood of
//! fragments cannot push out a datagram about to complete.
//!
//! # Accounting
//!
//! [`Reassembler::input`] answers every fragment with exactly one of:
//! - `Ok(Held)`: its bytes are copied and it is not lost (yet): the caller drops the frame and
//!   counts nothing.
//! - `Ok(Complete(buf))`: it completed a datagram, which goes up the stack like any packet; the
//!   caller counts `rx_reasm_ok`.
//! - `Err(reason)`: this frame is dropped; the caller counts it under `reason`:
//!   - `Malformed`: wrong on its own (no payload, or a non-last fragment whose payload is not a
//!     multiple of 8 bytes); its datagram is left as it was.
//!   - `ReasmDuplicate`: every byte it carries is held already (an exact duplicate, a duplicated
//!     first fragment, or one inside received data, which Linux treats the same); the first
//!     copy's bytes and header are kept and the datagram goes on.
//!   - `ReasmFails`: its datagram cannot be reassembled, and is dropped with it: a partial
//!     overlap, data past the end the last fragment fixed, a second last fragment with another
//!     end, an end past 65515 (the largest payload), over 65535 bytes with the first fragment's
//!     header, more than `MAX_RUNS` holes; or the port's `max_datagrams` are all in use, or
//!     its source's share of them.
//!   - `NoMem`: the reassembly pool has no buffer for a new datagram.
//!   - `IpErrors`: the header does not describe the bytes (the caller skipped validation).
//!
//! Fragments that were `Held` and are lost later, with their datagram (dropped by a
//! `ReasmFails` fragment, timed out, or thrown away by [`Reassembler::clear`]), are counted in
//! [`ReasmStats`]: 1 in `dropped_datagrams` per such datagram, each fragment in `dropped_frames`.
//! `expire` returns how many datagrams timed out and the caller counts each under `ReasmFails`,
//! so `rx_reasm_fails` counts each failed datagram once (by the fragment that failed it, or by
//! its expiry) plus the fragments refused at the datagram limit. At all times:
//! fragments answered `Held` == `held_frames` + `merged_frames` + `dropped_frames`.

use std::sync::Arc;

use crate::pool::{PacketBuf, Pool};
use crate::stats::DropReason;
use crate::wire::{internet_checksum, Ipv4Header, IPV4_HLEN, IPV4_MAX_HLEN, IPV4_MAX_LEN, IP_DF};

/// Where the payload starts in a reassembly buffer; the kept header ends there.
const PAYLOAD_OFFSET: usize = IPV4_MAX_HLEN;
/// The largest payload an IPv4 datagram can carry (with a 20-byte header).
pub const MAX_PAYLOAD: usize = IPV4_MAX_LEN - IPV4_HLEN;
/// Size the reassembly pool's buffers need: the largest header and the largest payload.
pub const REASM_BUF_SIZE: usize = PAYLOAD_OFFSET + MAX_PAYLOAD;
/// Disjoint runs of received data one datagram may have (holes between them).
pub const MAX_RUNS: usize = 64;
/// One source address may hold at most 1/`PER_SOURCE_SHARE` of the datagrams that can be in
/// reassembly at once (at least one).
pub const PER_SOURCE_SHARE: usize = 4;

/// What [`Reassembler::input`] did with a fragment it kept (see the module doc).
pub enum ReasmOutcome {
    /// Copied into its datagram: drop the frame, count nothing.
    Held,
    /// The datagram is complete: `buf.payload()` is the IP packet (header with its total length,
    /// no MF, offset 0 and a fresh checksum; then the payload). `times` and `meta` are the
    /// caller's to fill.
    Complete(PacketBuf),
}

/// Fragment figures of one reassembler (see the module doc for how they add up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasmStats {
    /// Fragments held now.
    pub held_frames: u64,
    /// Held fragments delivered as part of a completed datagram.
    pub merged_frames: u64,
    /// Datagrams dropped after some of their fragments had been held.
    pub dropped_datagrams: u64,
    /// The held fragments of those datagrams.
    pub dropped_frames: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Run {
    start: usize,
    end: usize,
}

/// Linux's `ipq` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    src: u32,
    dst: u32,
    ident: u16,
    protocol: u8,
}

/// Why a datagram refused a fragment.
enum Refusal {
    Duplicate,
    Fail,
}

/// One datagram in reassembly.
struct Datagram {
    key: Key,
    buf: PacketBuf,
    first_seen: u64,
    /// The offset-0 fragment's header length; 0 until it arrived.
    header_len: usize,
    /// The payload length, fixed by the last fragment (MF clear).
    end: Option<usize>,
    runs: [Run; MAX_RUNS],
    nruns: usize,
    /// Fragments held.
    frames: u64,
}

impl Datagram {
    fn runs(&self) -> &[Run] {
        &self.runs[..self.nruns]
    }

    fn complete(&self) -> bool {
        matches!(self.runs(), [r] if r.start == 0 && Some(r.end) == self.end)
    }

    /// Check the fragment against what is held (every check before any change), then copy it.
    fn add(&mut self, ip: &Ipv4Header, header: &[u8], payload: &[u8]) -> Result<(), Refusal> {
        let start = ip.frag_offset;
        let end = start + payload.len();
        let max_end = self.runs().last().map_or(0, |r| r.end);
        // The last fragment fixes the end: nothing may lie past it, and another last fragment
        // must agree (ip_frag_queue's "corrupted segment").
        if !ip.more_fragments {
            if self.end.is_some_and(|e| e != end) || max_end > end {
                return Err(Refusal::Fail);
            }
        } else if self.end.is_some_and(|e| end > e) {
            return Err(Refusal::Fail);
        }
        for r in self.runs() {
            if start >= r.start && end <= r.end {
                return Err(Refusal::Duplicate);
            }
            if start < r.end && r.start < end {
                return Err(Refusal::Fail);
            }
        }
        // Not a duplicate, so an offset-0 fragment here is the first one: its header counts.
        let header_len = if start == 0 {
            ip.header_len
        } else {
            self.header_len
        };
        if header_len + max_end.max(end) > IPV4_MAX_LEN {
            return Err(Refusal::Fail);
        }
        self.insert_run(start, end)?;
        let data = self.buf.data_mut();
        let to = data
            .get_mut(PAYLOAD_OFFSET + start..PAYLOAD_OFFSET + end)
            .ok_or(Refusal::Fail)?;
        to.copy_from_slice(payload);
        if start == 0 {
            let to = data
                .get_mut(PAYLOAD_OFFSET - header_len..PAYLOAD_OFFSET)
                .ok_or(Refusal::Fail)?;
            to.copy_from_slice(header);
            self.header_len = header_len;
        }
        if !ip.more_fragments {
            self.end = Some(end);
        }
        Ok(())
    }

    /// Add `[start, end)`, which overlaps no run, merging it with the runs it touches.
    fn insert_run(&mut self, start: usize, end: usize) -> Result<(), Refusal> {
        let n = self.nruns;
        let left = self.runs().iter().position(|r| r.end == start);
        let right = self.runs().iter().position(|r| r.start == end);
        match (left, right) {
            (Some(l), Some(r)) => {
                self.runs[l].end = self.runs[r].end;
                self.runs.copy_within(r + 1..n, r);
                self.nruns -= 1;
            }
            (Some(l), None) => self.runs[l].end = end,
            (None, Some(r)) => self.runs[r].start = start,
            (None, None) if n == MAX_RUNS => return Err(Refusal::Fail),
            (None, None) => {
                let at = self
                    .runs()
                    .iter()
                    .position(|r| r.start > start)
                    .unwrap_or(n);
                self.runs.copy_within(at..n, at + 1);
                self.runs[at] = Run { start, end };
                self.nruns += 1;
            }
        }
        Ok(())
    }
}

/// Rewrite the kept first-fragment header for the whole datagram: total length, MF and offset
/// cleared (DF kept), new checksum.
fn finish_header(h: &mut [u8], total_len: u16) {
    if h.len() < IPV4_HLEN {
        return;
    }
    let df = u16::from_be_bytes([h[6], h[7]]) & IP_DF;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[6..8].copy_from_slice(&df.to_be_bytes());
    h[10..12].fill(0);
    let csum = internet_checksum(h, 0);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// The reassembly state of one port (used by its RX path only).
pub struct Reassembler {
    pool: Arc<Pool>,
    max_datagrams: usize,
    timeout_ns: u64,
    pending: Vec<Datagram>,
    stats: ReasmStats,
}

impl Reassembler {
    /// Reassembly with buffers from `pool`, at most `max_datagrams` at once, each given
    /// `timeout_ns` from its first fragment.
    ///
    /// # Panics
    /// When `pool`'s buffers are smaller than `REASM_BUF_SIZE` (a set-up error).
    pub fn new(pool: Arc<Pool>, max_datagrams: usize, timeout_ns: u64) -> Self {
        assert!(
            pool.size() >= REASM_BUF_SIZE,
            "reassembly buffers need {REASM_BUF_SIZE} bytes"
        );
        Reassembler {
            // each datagram holds a pool buffer: no more can be pending, and pushing never grows
            // the vector
            pending: Vec::with_capacity(max_datagrams.min(pool.total())),
            pool,
            max_datagrams,
            timeout_ns,
            stats: ReasmStats::default(),
        }
    }

    /// Take one fragment: `packet` is the IP packet `ip` was validated from (Ethernet padding
    /// may follow). See the module doc for what each answer means and who counts it.
    pub fn input(
        &mut self,
        packet: &[u8],
        ip: &Ipv4Header,
        now_ns: u64,
    ) -> Result<ReasmOutcome, DropReason> {
        let (Some(header), Some(payload)) = (packet.get(..ip.header_len), ip.payload(packet))
        else {
            return Err(DropReason::IpErrors);
        };
        if !(IPV4_HLEN..=IPV4_MAX_HLEN).contains(&ip.header_len) {
            return Err(DropReason::IpErrors);
        }
        if payload.is_empty() || (ip.more_fragments && payload.len() % 8 != 0) {
            return Err(DropReason::Malformed);
        }
        let key = Key {
            src: ip.src,
            dst: ip.dst,
            ident: ip.ident,
            protocol: ip.protocol,
        };
        let found = self.pending.iter().position(|d| d.key == key);
        if ip.frag_offset.saturating_add(payload.len()) > MAX_PAYLOAD {
            if let Some(i) = found {
                self.discard(i);
            }
            return Err(DropReason::ReasmFails);
        }
        let i = match found {
            Some(i) => i,
            None => self.create(key, now_ns)?,
        };
        let dg = &mut self.pending[i];
        match dg.add(ip, header, payload) {
            Ok(()) if dg.complete() => Ok(ReasmOutcome::Complete(self.finish(i))),
            Ok(()) => {
                dg.frames += 1;
                self.stats.held_frames += 1;
                Ok(ReasmOutcome::Held)
            }
            Err(Refusal::Duplicate) => Err(DropReason::ReasmDuplicate),
            Err(Refusal::Fail) => {
                self.discard(i);
                Err(DropReason::ReasmFails)
            }
        }
    }

    fn create(&mut self, key: Key, now_ns: u64) -> Result<usize, DropReason> {
        if self.pending.len() >= self.max_datagrams {
            return Err(DropReason::ReasmFails);
        }
        // One source never holds more than a quarter of what can be in reassembly at once, so
        // a flood of first fragments from one address leaves room for everyone else's.
        let capacity = self.max_datagrams.min(self.pool.total());
        let per_source = (capacity / PER_SOURCE_SHARE).max(1);
        if self.pending.iter().filter(|d| d.key.src == key.src).count() >= per_source {
            return Err(DropReason::ReasmFails);
        }
        let buf = self.pool.take().ok_or(DropReason::NoMem)?;
        self.pending.push(Datagram {
            key,
            buf,
            first_seen: now_ns,
            header_len: 0,
            end: None,
            runs: [Run::default(); MAX_RUNS],
            nruns: 0,
            frames: 0,
        });
        Ok(self.pending.len() - 1)
    }

    fn finish(&mut self, i: usize) -> PacketBuf {
        let dg = self.pending.swap_remove(i);
        self.stats.held_frames -= dg.frames;
        self.stats.merged_frames += dg.frames;
        let mut buf = dg.buf;
        // add() saw to it: 20 <= header_len <= 60 and header_len + payload <= 65535.
        let len = dg.end.unwrap_or(0);
        buf.start = PAYLOAD_OFFSET - dg.header_len;
        buf.end = PAYLOAD_OFFSET + len;
        debug_assert!(dg.header_len + len <= IPV4_MAX_LEN);
        let total = (dg.header_len + len) as u16;
        if let Some(h) = buf
            .data_mut()
            .get_mut(PAYLOAD_OFFSET - dg.header_len..PAYLOAD_OFFSET)
        {
            finish_header(h, total);
        }
        buf
    }

    /// Drop datagram `i`; its buffer goes back to the pool.
    fn discard(&mut self, i: usize) {
        let dg = self.pending.swap_remove(i);
        self.stats.held_frames -= dg.frames;
        if dg.frames > 0 {
            self.stats.dropped_datagrams += 1;
            self.stats.dropped_frames += dg.frames;
        }
    }

    /// Drop the datagrams whose first fragment came more than the timeout before `now_ns`;
    /// returns how many (the caller counts each under `ReasmFails`).
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.pending.len();
        let mut i = 0;
        while i < self.pending.len() {
            if now_ns.saturating_sub(self.pending[i].first_seen) > self.timeout_ns {
                self.discard(i);
            } else {
                i += 1;
            }
        }
        before - self.pending.len()
    }

    /// Drop everything (the port is disabled); counted in the stats only.
    pub fn clear(&mut self) {
        while !self.pending.is_empty() {
            self.discard(self.pending.len() - 1);
        }
    }

    /// Datagrams in reassembly now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn pool_total(&self) -> usize {
        self.pool.total()
    }

    pub fn pool_free(&self) -> usize {
        self.pool.free()
    }

    pub fn stats(&self) -> ReasmStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4::validate;
    use crate::wire::{checksum_sum, INADDR_BROADCAST};

    const SRC: u32 = 0x0A00_0009;
    const DST: u32 = 0x0A00_0001;
    const SEC: u64 = 1_000_000_000;

    /// A fragment as an IP packet: `ihl` words of header (options are NOPs), protocol UDP.
    fn frag(ident: u16, ihl: u8, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
        frag_from(SRC, ident, ihl, offset, more, payload)
    }

    fn frag_from(
        src: u32,
        ident: u16,
        ihl: u8,
        offset: usize,
        more: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let hl = usize::from(ihl) * 4;
        let mut p = vec![1u8; hl];
        p[0] = 0x40 | ihl;
        p[1] = 0;
        p[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&ident.to_be_bytes());
        let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[10..12].fill(0);
        p[12..16].copy_from_slice(&src.to_be_bytes());
        p[16..20].copy_from_slice(&DST.to_be_bytes());
        let c = internet_checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn refresh_checksum(p: &mut [u8]) {
        p[10..12].fill(0);
        let c = internet_checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }

    fn feed(r: &mut Reassembler, pkt: &[u8], now: u64) -> Result<ReasmOutcome, DropReason> {
        let ip = validate(pkt).expect("test fragments are valid IPv4");
        r.input(pkt, &ip, now)
    }

    fn held(r: &mut Reassembler, pkt: &[u8]) -> bool {
        matches!(feed(r, pkt, 0), Ok(ReasmOutcome::Held))
    }

    fn reasm(buffers: usize, max_datagrams: usize) -> (Arc<Pool>, Reassembler) {
        let pool = Pool::new("reasm", buffers, REASM_BUF_SIZE);
        let r = Reassembler::new(Arc::clone(&pool), max_datagrams, 30 * SEC);
        (pool, r)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// `payload` cut at `size` bytes, the first fragment with an `ihl`-word header.
    fn split(ident: u16, ihl: u8, payload: &[u8], size: usize) -> Vec<Vec<u8>> {
        let n = payload.len().div_ceil(size);
        (0..n)
            .map(|i| {
                let end = ((i + 1) * size).min(payload.len());
                let h = if i == 0 { ihl } else { 5 };
                frag(ident, h, i * size, i + 1 < n, &payload[i * size..end])
            })
            .collect()
    }

    fn invariant(r: &Reassembler, held_answers: u64) {
        let s = r.stats();
        assert_eq!(
            held_answers,
            s.held_frames + s.merged_frames + s.dropped_frames,
            "{s:?}"
        );
    }

    #[test]
    fn completes_in_any_order() {
        let payload = data(3000);
        let frags = split(7, 5, &payload, 1200);
        for order in [[0, 1, 2], [2, 0, 1], [2, 1, 0], [1, 2, 0]] {
            let (pool, mut r) = reasm(2, 4);
            assert!(held(&mut r, &frags[order[0]]));
            assert!(held(&mut r, &frags[order[1]]));
            let Ok(ReasmOutcome::Complete(buf)) = feed(&mut r, &frags[order[2]], 0) else {
                panic!("order {order:?} did not complete");
            };
            let ip = validate(buf.payload()).unwrap();
            assert_eq!(
                (ip.total_len, ip.frag_offset, ip.more_fragments),
                (3020, 0, false)
            );
            assert_eq!((ip.src, ip.dst, ip.ident, ip.protocol), (SRC, DST, 7, 17));
            assert_eq!(ip.payload(buf.payload()).unwrap(), &payload[..]);
            assert_eq!(r.pending(), 0);
            assert_eq!(r.stats().merged_frames, 2);
            invariant(&r, 2);
            drop(buf);
            assert_eq!(pool.free(), 2);
        }
    }

    #[test]
    fn first_fragment_header_is_kept_whenever_it_arrives() {
        let payload = data(100);
        let (_pool, mut r) = reasm(1, 4);
        // later fragments with a 20-byte header, the first one with 40 bytes of options, last
        assert!(held(&mut r, &frag(3, 5, 64, false, &payload[64..])));
        let Ok(ReasmOutcome::Complete(buf)) =
            feed(&mut r, &frag(3, 15, 0, true, &payload[..64]), 0)
        else {
            panic!("not complete")
        };
        let ip = validate(buf.payload()).unwrap();
        assert_eq!((ip.header_len, ip.total_len), (60, 160));
        assert!(buf.payload()[20..60].iter().all(|&b| b == 1)); // the options
        assert_eq!(ip.payload(buf.payload()).unwrap(), &payload[..]);
        drop(buf);
        // DF is kept, MF and the offset cleared
        let mut f = frag(4, 5, 0, true, &payload[..64]);
        f[6] |= 0x40;
        refresh_checksum(&mut f);
        assert!(held(&mut r, &f));
        let Ok(ReasmOutcome::Complete(buf)) =
            feed(&mut r, &frag(4, 5, 64, false, &payload[64..]), 0)
        else {
            panic!("not complete")
        };
        assert_eq!(&buf.payload()[6..8], &[0x40, 0]);
    }

    /// A 65507-byte UDP datagram (65515 bytes of IP payload) in 45 fragments.
    fn largest(ihl: u8) -> Vec<Vec<u8>> {
        let frags = split(9, ihl, &data(MAX_PAYLOAD), 1480);
        assert_eq!(frags.len(), 45);
        frags
    }

    #[test]
    fn oversize_with_the_first_fragment_last_is_dropped() {
        let (pool, mut r) = reasm(16, 64);
        let frags = largest(15);
        for f in &frags[1..] {
            assert!(held(&mut r, f));
        }
        assert_eq!(
            feed(&mut r, &frags[0], 0).err(),
            Some(DropReason::ReasmFails)
        );
        let s = r.stats();
        assert_eq!(
            (s.dropped_datagrams, s.dropped_frames, s.held_frames),
            (1, 44, 0)
        );
        assert_eq!((r.pending(), pool.free()), (0, 16));
        invariant(&r, 44);
    }

    #[test]
    fn oversize_with_the_first_fragment_first_is_dropped() {
        let (pool, mut r) = reasm(16, 64);
        let frags = largest(15);
        for f in &frags[..44] {
            assert!(held(&mut r, f));
        }
        // the last fragment takes it past 65535 with the 60-byte header
        assert_eq!(
            feed(&mut r, &frags[44], 0).err(),
            Some(DropReason::ReasmFails)
        );
        assert_eq!(r.stats().dropped_datagrams, 1);
        assert_eq!((r.pending(), pool.free()), (0, 16));
    }

    #[test]
    fn the_largest_datagram_completes() {
        let (pool, mut r) = reasm(1, 64);
        let mut frags = largest(5);
        frags.reverse();
        for f in &frags[..44] {
            assert!(held(&mut r, f));
        }
        let Ok(ReasmOutcome::Complete(buf)) = feed(&mut r, &frags[44], 0) else {
            panic!()
        };
        assert_eq!(validate(buf.payload()).unwrap().total_len, 65535);
        drop(buf);
        assert_eq!(pool.free(), 1);
    }

    #[test]
    fn past_the_largest_payload_is_dropped_at_once() {
        let (pool, mut r) = reasm(2, 64);
        assert!(held(&mut r, &frag(1, 5, 0, true, &[0; 8])));
        let over = frag(1, 5, 65512, false, &[0; 8]);
        assert_eq!(feed(&mut r, &over, 0).err(), Some(DropReason::ReasmFails));
        assert_eq!(
            (r.pending(), pool.free(), r.stats().dropped_datagrams),
            (0, 2, 1)
        );
        // alone, it holds nothing and counts no datagram
        assert_eq!(feed(&mut r, &over, 0).err(), Some(DropReason::ReasmFails));
        assert_eq!((r.pending(), r.stats().dropped_datagrams), (0, 1));
    }

    #[test]
    fn duplicates_are_counted_and_the_datagram_goes_on() {
        let payload = data(48);
        let (pool, mut r) = reasm(1, 4);
        let first = frag(5, 5, 0, true, &payload[..16]);
        let middle = frag(5, 5, 16, true, &payload[16..32]);
        assert!(held(&mut r, &first));
        assert!(held(&mut r, &middle));
        assert_eq!(
            feed(&mut r, &middle, 0).err(),
            Some(DropReason::ReasmDuplicate)
        );
        assert_eq!(
            feed(&mut r, &first, 0).err(),
            Some(DropReason::ReasmDuplicate)
        );
        // a duplicated first fragment with another header (IHL 15) changes nothing
        let other = frag(5, 15, 0, true, &[0xEE; 16]);
        assert_eq!(
            feed(&mut r, &other, 0).err(),
            Some(DropReason::ReasmDuplicate)
        );
        // inside received data (Linux counts it a duplicate too)
        let inside = frag(5, 5, 8, true, &[0xEE; 16]);
        assert_eq!(
            feed(&mut r, &inside, 0).err(),
            Some(DropReason::ReasmDuplicate)
        );
        let Ok(ReasmOutcome::Complete(buf)) =
            feed(&mut r, &frag(5, 5, 32, false, &payload[32..]), 0)
        else {
            panic!()
        };
        let ip = validate(buf.payload()).unwrap();
        assert_eq!(
            (ip.header_len, ip.payload(buf.payload()).unwrap()),
            (20, &payload[..])
        );
        drop(buf);
        assert_eq!(pool.free(), 1);
        invariant(&r, 2);
    }

    #[test]
    fn partial_overlap_drops_the_datagram() {
        let (pool, mut r) = reasm(1, 4);
        assert!(held(&mut r, &frag(6, 5, 0, true, &[1; 16])));
        assert!(held(&mut r, &frag(6, 5, 32, true, &[1; 16])));
        assert_eq!(
            feed(&mut r, &frag(6, 5, 8, true, &[2; 16]), 0).err(),
            Some(DropReason::ReasmFails)
        );
        let s = r.stats();
        assert_eq!(
            (
                s.dropped_datagrams,
                s.dropped_frames,
                r.pending(),
                pool.free()
            ),
            (1, 2, 0, 1)
        );
        // bridging two runs with overlap at one end
        assert!(held(&mut r, &frag(6, 5, 0, true, &[1; 16])));
        assert!(held(&mut r, &frag(6, 5, 32, true, &[1; 16])));
        assert_eq!(
            feed(&mut r, &frag(6, 5, 16, true, &[2; 24]), 0).err(),
            Some(DropReason::ReasmFails)
        );
        invariant(&r, 4);
    }

    #[test]
    fn malformed_fragments_leave_the_datagram_alone() {
        let (_pool, mut r) = reasm(1, 4);
        assert!(held(&mut r, &frag(8, 5, 0, true, &[1; 16])));
        assert_eq!(
            feed(&mut r, &frag(8, 5, 16, true, &[]), 0).err(),
            Some(DropReason::Malformed)
        );
        assert_eq!(
            feed(&mut r, &frag(8, 5, 24, false, &[]), 0).err(),
            Some(DropReason::Malformed)
        );
        assert_eq!(
            feed(&mut r, &frag(8, 5, 16, true, &[1; 12]), 0).err(),
            Some(DropReason::Malformed)
        );
        assert!(matches!(
            feed(&mut r, &frag(8, 5, 16, false, &[1; 12]), 0),
            Ok(ReasmOutcome::Complete(_))
        ));
        assert_eq!(r.stats().dropped_datagrams, 0);
    }

    #[test]
    fn the_end_is_fixed_by_the_last_fragment() {
        let (pool, mut r) = reasm(1, 4);
        // past the known end
        assert!(held(&mut r, &frag(2, 5, 32, false, &[1; 8])));
        assert_eq!(
            feed(&mut r, &frag(2, 5, 40, true, &[1; 8]), 0).err(),
            Some(DropReason::ReasmFails)
        );
        assert_eq!(r.pending(), 0);
        // a second last fragment with another end
        assert!(held(&mut r, &frag(2, 5, 32, false, &[1; 8])));
        assert_eq!(
            feed(&mut r, &frag(2, 5, 48, false, &[1; 8]), 0).err(),
            Some(DropReason::ReasmFails)
        );
        // a last fragment ending before data already received
        assert!(held(&mut r, &frag(2, 5, 32, true, &[1; 8])));
        assert_eq!(
            feed(&mut r, &frag(2, 5, 16, false, &[1; 8]), 0).err(),
            Some(DropReason::ReasmFails)
        );
        assert_eq!((r.stats().dropped_datagrams, pool.free()), (3, 1));
        // a repeated last fragment is a duplicate
        assert!(held(&mut r, &frag(2, 5, 32, false, &[1; 8])));
        assert_eq!(
            feed(&mut r, &frag(2, 5, 32, false, &[1; 8]), 0).err(),
            Some(DropReason::ReasmDuplicate)
        );
        invariant(&r, 4);
    }

    #[test]
    fn timeout() {
        let (pool, mut r) = reasm(2, 4);
        assert!(matches!(
            feed(&mut r, &frag(1, 5, 0, true, &[0; 8]), 5),
            Ok(ReasmOutcome::Held)
        ));
        assert!(matches!(
            feed(&mut r, &frag_from(SRC + 1, 2, 5, 0, true, &[0; 8]), SEC),
            Ok(ReasmOutcome::Held)
        ));
        assert_eq!(r.expire(30 * SEC + 5), 0);
        assert_eq!(r.expire(30 * SEC + 6), 1);
        assert_eq!((r.pending(), pool.free()), (1, 1));
        assert_eq!(r.expire(u64::MAX), 1);
        assert_eq!(
            (r.pending(), pool.free(), r.stats().dropped_datagrams),
            (0, 2, 2)
        );
        // a clock that went back expires nothing
        assert!(matches!(
            feed(&mut r, &frag(1, 5, 0, true, &[0; 8]), 100 * SEC),
            Ok(ReasmOutcome::Held)
        ));
        assert_eq!(r.expire(SEC), 0);
        invariant(&r, 3);
    }

    #[test]
    fn limits_refuse_new_datagrams_and_keep_old_ones() {
        let (_pool, mut r) = reasm(8, 2);
        assert!(held(&mut r, &frag(1, 5, 0, true, &[0; 8])));
        assert!(held(&mut r, &frag_from(SRC + 1, 2, 5, 0, true, &[0; 8])));
        let third = frag_from(SRC + 2, 3, 5, 0, true, &[0; 8]);
        assert_eq!(feed(&mut r, &third, 0).err(), Some(DropReason::ReasmFails));
        assert!(matches!(
            feed(&mut r, &frag(1, 5, 8, false, &[0; 8]), 0),
            Ok(ReasmOutcome::Complete(_))
        ));
        assert!(held(&mut r, &third));

        let (pool, mut r) = reasm(1, 64);
        assert!(held(&mut r, &frag(1, 5, 0, true, &[0; 8])));
        assert_eq!(
            feed(&mut r, &frag_from(SRC + 1, 2, 5, 0, true, &[0; 8]), 0).err(),
            Some(DropReason::NoMem)
        );
        assert!(held(&mut r, &frag(1, 5, 8, true, &[0; 8])));
        r.clear();
        assert_eq!((pool.free(), r.stats().dropped_frames), (1, 2));
    }

    #[test]
    fn too_many_holes() {
        let (pool, mut r) = reasm(1, 4);
        for i in 0..MAX_RUNS {
            assert!(held(&mut r, &frag(1, 5, i * 16, true, &[0; 8])), "run {i}");
        }
        // filling a hole merges runs, a new run is refused
        assert!(held(&mut r, &frag(1, 5, 8, true, &[0; 8])));
        assert!(held(&mut r, &frag(1, 5, MAX_RUNS * 16, true, &[0; 8])));
        let new_run = frag(1, 5, MAX_RUNS * 16 + 16, true, &[0; 8]);
        assert_eq!(
            feed(&mut r, &new_run, 0).err(),
            Some(DropReason::ReasmFails)
        );
        assert_eq!(
            (r.stats().dropped_frames, pool.free()),
            (MAX_RUNS as u64 + 2, 1)
        );
    }

    #[test]
    fn one_source_holds_at_most_a_quarter_of_the_datagrams() {
        // capacity min(16 buffers, 64 datagrams) = 16: four per source
        let (pool, mut r) = reasm(16, 64);
        for ident in 0..4 {
            assert!(held(&mut r, &frag(ident, 5, 0, true, &[0; 8])), "{ident}");
        }
        let fifth = frag(4, 5, 0, true, &[0; 8]);
        assert_eq!(feed(&mut r, &fifth, 0).err(), Some(DropReason::ReasmFails));
        // the flooding source's datagrams in progress go on; other sources still get in
        assert!(held(&mut r, &frag(0, 5, 8, true, &[0; 8])));
        for other in 1..=12 {
            assert!(held(
                &mut r,
                &frag_from(SRC + other, 9, 5, 0, true, &[0; 8])
            ));
        }
        assert_eq!((r.pending(), pool.free()), (16, 0));
        // one completes: its source may start another
        assert!(matches!(
            feed(&mut r, &frag(1, 5, 8, false, &[0; 8]), 0),
            Ok(ReasmOutcome::Complete(_))
        ));
        assert!(held(&mut r, &fifth));
        // a port of one reassembly buffer still takes one datagram from anyone
        let (_pool, mut r) = reasm(1, 64);
        assert!(held(&mut r, &frag(1, 5, 0, true, &[0; 8])));
    }

    #[test]
    fn key_is_source_destination_id_protocol() {
        let (_pool, mut r) = reasm(8, 8);
        let a = frag(1, 5, 0, true, &[0; 8]);
        let mut b = a.clone();
        b[9] = 1; // ICMP
        refresh_checksum(&mut b);
        assert!(held(&mut r, &a));
        assert!(held(&mut r, &b));
        assert_eq!(r.pending(), 2);
    }

    #[test]
    fn inconsistent_header_is_an_ip_error() {
        let (_pool, mut r) = reasm(1, 4);
        let pkt = frag(1, 5, 0, true, &[0; 8]);
        let mut ip = validate(&pkt).unwrap();
        ip.total_len = 100;
        assert_eq!(r.input(&pkt, &ip, 0).err(), Some(DropReason::IpErrors));
        ip.total_len = 28;
        ip.header_len = 12;
        assert_eq!(r.input(&pkt, &ip, 0).err(), Some(DropReason::IpErrors));
    }

    // -- the whole RX path under mutated frames ------------------------------------------------

    use crate::ethernet::{classify, L2Port, VlanSet};
    use crate::ipv4::{FragPlan, PortAddrs};
    use crate::wire::{
        finish_udp_checksum, write_eth_ipv4, write_eth_ipv4_udp, write_udp_header, Ipv4Tx, Mac,
        ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP,
    };
    use crate::{arp, icmp, udp};

    const OURS: Mac = [2, 0, 0, 0, 0, 1];
    const PEER: Mac = [2, 0, 0, 0, 0, 9];

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Delivered,
        Replied,
        Held,
        Dropped(DropReason),
    }

    /// Frames the mutations start from: UDP (plain, tagged, in fragments), ICMP echo, ARP.
    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let udp_frame = |len: usize| {
            let mut f = vec![0u8; 42 + len];
            let ip = Ipv4Tx {
                src: SRC,
                dst: DST,
                ident: 1,
                ttl: 64,
                ..Ipv4Tx::default()
            };
            write_eth_ipv4_udp(&mut f, &OURS, &PEER, &ip, 9, 7, len).unwrap();
            f[42..].copy_from_slice(&data(len));
            finish_udp_checksum(&mut f).unwrap();
            f
        };
        out.push(udp_frame(18));
        out.push(udp_frame(300));
        let mut tagged = udp_frame(40);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        out.push(tagged);
        // a 3000-byte UDP datagram in fragments
        let seg_len = 8 + 2992;
        let mut seg = vec![0u8; seg_len];
        write_udp_header(&mut seg, 9, 7, 2992).unwrap();
        seg[8..].copy_from_slice(&data(2992));
        for frag in FragPlan::new(seg_len, 1500).unwrap() {
            let mut f = vec![0u8; 34 + frag.len];
            let ip = Ipv4Tx {
                src: SRC,
                dst: DST,
                ident: 2,
                ttl: 64,
                more_fragments: frag.more,
                frag_offset: frag.offset,
                ..Ipv4Tx::default()
            };
            write_eth_ipv4(&mut f, &OURS, &PEER, &ip, IPPROTO_UDP, frag.len).unwrap();
            f[34..].copy_from_slice(&seg[frag.offset..frag.offset + frag.len]);
            out.push(f);
        }
        let mut ping = vec![0u8; 34 + 64];
        let ip = Ipv4Tx {
            src: SRC,
            dst: DST,
            ident: 3,
            ttl: 64,
            ..Ipv4Tx::default()
        };
        write_eth_ipv4(&mut ping, &OURS, &PEER, &ip, IPPROTO_ICMP, 64).unwrap();
        ping[34] = 8;
        let c = internet_checksum(&ping[34..], 0);
        ping[36..38].copy_from_slice(&c.to_be_bytes());
        out.push(ping);
        let mut a = vec![0u8; 60];
        arp::build_request(&mut a, &PEER, SRC, DST).unwrap();
        out.push(a);
        out
    }

    fn mutate(rng: &mut XorShift, f: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(f.len());
            match rng.below(6) {
                0 => f[at] ^= 1 << rng.below(8),
                1 => f[at] = rng.next() as u8,
                2 => f.truncate(at),
                3 => f.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                // fragment fields and lengths, with a checksum that still verifies, so the
                // mutation reaches reassembly and UDP instead of failing at the IP checksum
                _ if f.len() >= 34 && f[12..14] == ETH_P_IP.to_be_bytes() => {
                    let field = [2, 3, 4, 5, 6, 7, 0][rng.below(7)];
                    f[14 + field] = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => f[14 + field] ^ 0x20,
                        _ => f[14 + field].wrapping_add(1),
                    };
                    f[24..26].fill(0);
                    let ihl = usize::from(f[14] & 0xF) * 4;
                    if let Some(h) = f.get(14..14 + ihl) {
                        let c = internet_checksum(h, 0);
                        f[24..26].copy_from_slice(&c.to_be_bytes());
                    }
                }
                _ => {}
            }
            if f.is_empty() {
                break;
            }
        }
    }

    /// The RX path the port runs, from frame to verdict.
    fn rx(frame: &mut [u8], r: &mut Reassembler, now: u64, out: &mut [u8]) -> Verdict {
        rx_layers(frame, r, now, out).unwrap_or_else(Verdict::Dropped)
    }

    fn rx_layers(
        frame: &mut [u8],
        r: &mut Reassembler,
        now: u64,
        out: &mut [u8],
    ) -> Result<Verdict, DropReason> {
        let mut vlans = VlanSet::default();
        vlans.insert(5);
        let port = L2Port {
            mac: OURS,
            vlan_id: 0,
            vlans: &vlans,
        };
        let unicast = [DST];
        let local = [DST, 0x0A00_00FF, INADDR_BROADCAST];
        let addrs = PortAddrs {
            unicast: &unicast,
            local: &local,
        };
        let l2 = classify(frame, &port)?;
        l2.for_stack(false)?;
        let l3 = frame.get(l2.l3_offset..).unwrap_or_default();
        match l2.ethertype {
            ETH_P_ARP => {
                let a = arp::input(l3, &unicast)?;
                if a.needs_reply() {
                    arp::build_reply(out, &OURS, &a.arp)?;
                    return Ok(Verdict::Replied);
                }
                Ok(Verdict::Delivered)
            }
            ETH_P_IP => {
                let ip = crate::ipv4::validate(l3)?;
                let kind = addrs.accept(&ip, false)?;
                let held_buf;
                let (pkt, ip) = if ip.is_fragment() {
                    match r.input(l3, &ip, now)? {
                        ReasmOutcome::Held => return Ok(Verdict::Held),
                        ReasmOutcome::Complete(buf) => {
                            held_buf = buf;
                            let ip = crate::ipv4::validate(held_buf.payload())
                                .expect("reassembled datagrams are valid");
                            (held_buf.payload(), ip)
                        }
                    }
                } else {
                    (l3, ip)
                };
                let body = ip.payload(pkt).ok_or(DropReason::IpErrors)?;
                match ip.protocol {
                    IPPROTO_UDP => {
                        let u = udp::input(body, ip.src, ip.dst)?;
                        assert!(u.payload_end <= body.len());
                        Ok(Verdict::Delivered)
                    }
                    IPPROTO_ICMP => {
                        let policy = icmp::EchoPolicy::default();
                        let e = icmp::accept_request(
                            pkt, &ip, l2.src_mac, l2.pkttype, kind, &addrs, policy,
                        )?;
                        for f in FragPlan::new(e.msg_len(), 1500).ok_or(DropReason::IpErrors)? {
                            e.write(pkt, &OURS, 1, f, out)?;
                        }
                        Ok(Verdict::Replied)
                    }
                    _ => Err(DropReason::UnknownProto),
                }
            }
            _ => Err(DropReason::UnknownProto),
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_every_buffer_comes_back() {
        let seeds = seeds();
        let pool = Pool::new("reasm", 4, REASM_BUF_SIZE);
        let mut r = Reassembler::new(Arc::clone(&pool), 8, SEC / 2);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut out = vec![0u8; 1514];
        let mut verdicts = std::collections::HashMap::new();
        let mut held_answers = 0;
        for n in 0..20_000u64 {
            let mut f = seeds[rng.below(seeds.len())].clone();
            if f.len() >= 34 && f[12..14] == [8, 0] && rng.below(2) == 0 {
                // one of four sources, so that the per-source share is not the only limit hit
                let src = SRC + rng.below(4) as u32;
                f[26..30].copy_from_slice(&src.to_be_bytes());
                refresh_checksum(&mut f[14..]);
            }
            if rng.below(8) != 0 {
                mutate(&mut rng, &mut f);
            }
            let now = n * 10_000_000; // 10 ms a frame: datagrams expire as the run goes
            let v = rx(&mut f, &mut r, now, &mut out);
            if v == Verdict::Held {
                held_answers += 1;
            }
            *verdicts.entry(format!("{v:?}")).or_insert(0u32) += 1;
            if n % 100 == 0 {
                r.expire(now);
            }
            invariant(&r, held_answers);
            assert_eq!(pool.free() + r.pending(), pool.total());
        }
        r.clear();
        assert_eq!(pool.free(), pool.total());
        invariant(&r, held_answers);
        // the run reached every layer's verdicts
        for v in [
            "Delivered",
            "Replied",
            "Held",
            "Dropped(Malformed)",
            "Dropped(IpErrors)",
            "Dropped(CsumErrors)",
            "Dropped(ReasmFails)",
            "Dropped(ReasmDuplicate)",
            "Dropped(UnknownProto)",
            "Dropped(OtherHost)",
            "Dropped(Filtered)",
            "Dropped(NoMem)",
        ] {
            assert!(verdicts.contains_key(v), "{v} never seen: {verdicts:?}");
        }
    }

    #[test]
    fn random_bytes_through_every_parser() {
        let mut rng = XorShift(12345);
        let (pool, mut r) = reasm(2, 4);
        let mut out = vec![0u8; 1514];
        for n in 0..5000u64 {
            let len = rng.below(120);
            let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len > 14 && rng.below(2) == 0 {
                f[..6].copy_from_slice(&OURS);
                let et = [ETH_P_IP, ETH_P_ARP, ETH_P_8021Q][rng.below(3)];
                f[12..14].copy_from_slice(&et.to_be_bytes());
            }
            let _ = rx(&mut f, &mut r, n, &mut out);
            let _ = checksum_sum(&f, rng.next() as u32 & 0xFFFF);
        }
        r.clear();
        assert_eq!(pool.free(), pool.total());
    }
}

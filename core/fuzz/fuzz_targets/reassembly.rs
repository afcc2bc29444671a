//! `reassembly::Reassembler` fed a sequence of fragments (format: `evlnet_core_fuzz::FragSpec`,
//! after one byte choosing the pool size and datagram limit), checked against a model: every
//! answer keeps the reassembler's books (held + merged + dropped == fragments held), no buffer
//! is lost, and a completed datagram is a valid IPv4 packet of at most 65535 bytes with the
//! first fragment's header and exactly the bytes the accepted fragments carried.
#![no_main]
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use _core::ipv4::validate;
use _core::pool::Pool;
use _core::reassembly::{ReasmOutcome, Reassembler, REASM_BUF_SIZE};
use _core::stats::DropReason;
use evlnet_core_fuzz::FragSpec;
use libfuzzer_sys::fuzz_target;

const TIMEOUT_NS: u64 = 1_000_000_000;

/// Pools of 1 to 4 buffers, made once: every input gives all their buffers back (checked).
fn pool(n: usize) -> Arc<Pool> {
    static POOLS: OnceLock<Vec<Arc<Pool>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| {
        (1..=4)
            .map(|n| Pool::new("fuzz", n, REASM_BUF_SIZE))
            .collect()
    });
    Arc::clone(&pools[n - 1])
}

/// What the model knows of one datagram: when it started, its first fragment's header length,
/// and the fragments accepted (offset, bytes).
#[derive(Default)]
struct Model {
    first_seen: u64,
    header_len: Option<usize>,
    parts: Vec<(usize, Vec<u8>)>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, records)) = data.split_first() else {
        return;
    };
    let pool = pool(1 + usize::from(cfg & 3));
    let mut r = Reassembler::new(pool.clone(), 1 + usize::from(cfg >> 2 & 3), TIMEOUT_NS);
    let mut model: HashMap<(u32, u16, u8), Model> = HashMap::new();
    let (mut now, mut answered_held) = (0u64, 0u64);
    for rec in records.chunks_exact(FragSpec::SIZE).take(512) {
        let spec = FragSpec::decode(rec).expect("8 bytes");
        now += u64::from(spec.step) * 10_000_000;
        let expired = r.expire(now);
        let before = model.len();
        model.retain(|_, m| now.saturating_sub(m.first_seen) <= TIMEOUT_NS);
        assert_eq!(expired, before - model.len(), "expiry");
        let pkt = spec.packet();
        let Ok(ip) = validate(&pkt) else { continue };
        if !ip.is_fragment() {
            continue;
        }
        let key = (ip.src, ip.ident, ip.protocol);
        let payload = ip.payload(&pkt).expect("valid").to_vec();
        match r.input(&pkt, &ip, now) {
            Ok(ReasmOutcome::Held) => {
                answered_held += 1;
                let m = model.entry(key).or_insert_with(|| Model {
                    first_seen: now,
                    ..Model::default()
                });
                if ip.frag_offset == 0 {
                    m.header_len = Some(ip.header_len);
                }
                m.parts.push((ip.frag_offset, payload));
            }
            Ok(ReasmOutcome::Complete(buf)) => {
                let mut m = model.remove(&key).unwrap_or_default();
                if ip.frag_offset == 0 {
                    m.header_len = Some(ip.header_len);
                }
                m.parts.push((ip.frag_offset, payload));
                let whole = buf.payload();
                assert!(whole.len() <= 65535, "oversize datagram delivered");
                let h = validate(whole).expect("a reassembled datagram is valid");
                assert!(!h.is_fragment() && h.total_len == whole.len());
                assert_eq!(
                    (h.src, h.dst, h.ident, h.protocol),
                    (ip.src, ip.dst, ip.ident, ip.protocol)
                );
                assert_eq!(
                    Some(h.header_len),
                    m.header_len,
                    "the first fragment's header"
                );
                let body = h.payload(whole).expect("payload");
                let mut want = vec![None; body.len()];
                for (off, bytes) in &m.parts {
                    for (i, b) in bytes.iter().enumerate() {
                        let slot = want.get_mut(off + i).expect("accepted bytes lie inside");
                        assert!(slot.is_none(), "byte {} accepted twice", off + i);
                        *slot = Some(*b);
                    }
                }
                let want: Vec<u8> = want.into_iter().map(|b| b.expect("no hole")).collect();
                assert!(body == want.as_slice(), "reassembled bytes differ");
            }
            Err(DropReason::ReasmFails) => {
                model.remove(&key);
            }
            Err(DropReason::ReasmDuplicate | DropReason::Malformed | DropReason::NoMem) => {}
            Err(e) => panic!("unexpected verdict {e:?} for a valid fragment"),
        }
        let s = r.stats();
        assert_eq!(
            answered_held,
            s.held_frames + s.merged_frames + s.dropped_frames
        );
        assert_eq!(r.pending(), model.len(), "datagrams pending");
        assert_eq!(
            pool.free() + r.pending(),
            pool.total(),
            "a buffer went missing"
        );
    }
    r.clear();
    assert_eq!(pool.free(), pool.total());
    assert_eq!(r.stats().held_frames, 0);
});

//! The RTT floor: a UDP ping-pong over a veth pair through evlnet's own device layer, and
//! nothing else (issue 8: "the C-speed floor for reference (raw ring from Rust, no stack)").
//!
//! ```text
//! rtt_floor echo   IFNAME SECONDS
//! rtt_floor client IFNAME SRC_MAC DST_MAC SRC_IP DST_IP N WARMUP [MAX_SECONDS]
//! ```
//!
//! What it measures: the round trip of a 64-byte UDP datagram when each end is a compiled
//! busy-polling loop over [`AfPacket`] (the TPACKET_V2 RX ring, `send()` for TX) and a [`Pool`]
//! (the buffers the ring's frames are copied into) -- no ports, no protocol layers, no socket
//! queues, no threads handing frames over, no Python. evlnet's port drives the very same device
//! calls (`receive(limit, Some(0), sink)` when busy polling, `transmit(frame)`), so what evlnet
//! adds on top of this floor is its own cost: the stack, the socket queue and the Python
//! application loop. `bench/run.py` measures this path side by side with the others and prints
//! "evlnet p50 / floor p50" against issue 8's target (<= 1.5x).
//!
//! `echo` prints one line on stdout once its ring listens, then answers every IPv4/UDP frame
//! sent to the bench's RTT port ([`RTT_PORT`]) by swapping the MACs, the IP addresses and the UDP
//! ports in place (the IPv4 and UDP checksums are sums of 16-bit words, so swapping words keeps
//! them valid) and transmitting it. It busy-polls the ring while frames come, falls back to a
//! blocking wait after [`BUSY_WINDOW_NS`] without one (as evlnet's receivers do with the bench's
//! `busy_poll_us=100000`), or at once when a client says it is done (a probe carrying
//! [`BYE_SEQ`], not answered): an idle echo must not eat a CPU the other paths of the run need
//! (under SCHED_FIFO it would stall them). It exits after SECONDS, when the interface goes away
//! or when its parent dies.
//!
//! `client` builds one frame template (untagged Ethernet, IPv4 with a valid header checksum and
//! DF, UDP from [`CLIENT_PORT`] to [`RTT_PORT`] with checksum 0, 64 bytes of payload), then per
//! round trip writes a sequence number (u64, little-endian, as the bench's Python loops) into the
//! payload, reads the clock, sends, and busy-polls the ring for the reply carrying that sequence
//! number (anything else is ignored; no reply within 1 s counts as lost). WARMUP round trips are
//! done first and not recorded (the echo wakes from its blocking wait, caches and branch
//! predictors warm up). Then N measured ones, stopping early after MAX_SECONDS (default 600),
//! and a last probe carrying [`BYE_SEQ`] that sends the echo back to its blocking wait.
//! It prints one JSON line on stdout:
//! `{"n": got, "lost": lost, "truncated": bool, "elapsed_ns": ..., "samples": [rtt_ns, ...]}`;
//! the bench records the samples into its HdrHistograms like every other path's.
//!
//! Build: `cargo build --release --example rtt_floor` in `core/` (no `python` feature). Needs
//! CAP_NET_RAW (AF_PACKET) and an Ethernet interface (a veth end); the bench runs each end in
//! its own network namespace.

use std::cell::Cell;
use std::env;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;

use _core::device::afpacket::AfPacket;
use _core::device::Device;
use _core::pool::{PacketBuf, Pool};
use _core::timestamps::monotonic_ns;

/// The bench's RTT port (latmus' UDP port): the echo answers datagrams sent to it.
const RTT_PORT: u16 = 59059;
/// The bench's client port: the source port of the probes.
const CLIENT_PORT: u16 = 40000;
/// UDP payload bytes of a probe.
const PAYLOAD: usize = 64;
const ETH_HLEN: usize = 14;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Where the sequence number goes: the start of the UDP payload of an untagged frame.
const SEQ_OFF: usize = ETH_HLEN + IP_HLEN + UDP_HLEN;
const FRAME_LEN: usize = SEQ_OFF + PAYLOAD;
/// A reply later than this is counted as lost.
const REPLY_TIMEOUT_NS: u64 = 1_000_000_000;
/// The echo keeps busy-polling this long after the last frame, then waits in `poll()`.
const BUSY_WINDOW_NS: u64 = 100_000_000;
/// The sequence number of a client's last probe: "done, stop busy-polling" (never answered).
const BYE_SEQ: u64 = u64::MAX;
/// RX ring slots and pool buffers per end (one frame in flight at a time: plenty).
const RING_FRAMES: usize = 256;
const POOL_BUFS: usize = 64;
const BUF_SIZE: usize = 2048;
const USAGE: &str = "usage: rtt_floor echo IFNAME SECONDS\n       \
     rtt_floor client IFNAME SRC_MAC DST_MAC SRC_IP DST_IP N WARMUP [MAX_SECONDS]";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("echo") => parse_echo(&args[1..]).and_then(|(ifname, secs)| echo(&ifname, secs)),
        Some("client") => parse_client(&args[1..]).and_then(|cfg| client(&cfg)),
        _ => Err(format!("bad arguments\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtt_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------------
// arguments
// ------------------------------------------------------------------------------------------

struct ClientCfg {
    ifname: String,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    n: usize,
    warmup: usize,
    max_ns: u64,
}

fn parse_echo(args: &[String]) -> Result<(String, f64), String> {
    match args {
        [ifname, secs] => Ok((ifname.clone(), parse_seconds(secs)?)),
        _ => Err(format!("echo takes IFNAME SECONDS\n{USAGE}")),
    }
}

fn parse_client(args: &[String]) -> Result<ClientCfg, String> {
    let (rest, max) = match args.len() {
        7 => (args, 600.0),
        8 => (&args[..7], parse_seconds(&args[7])?),
        _ => return Err(format!("client takes 7 or 8 arguments\n{USAGE}")),
    };
    let count = |s: &String| s.parse::<usize>().map_err(|_| format!("bad count {s:?}"));
    let ip = |s: &String| s.parse::<Ipv4Addr>().map_err(|_| format!("bad IPv4 {s:?}"));
    Ok(ClientCfg {
        ifname: rest[0].clone(),
        src_mac: parse_mac(&rest[1])?,
        dst_mac: parse_mac(&rest[2])?,
        src_ip: ip(&rest[3])?,
        dst_ip: ip(&rest[4])?,
        n: count(&rest[5])?,
        warmup: count(&rest[6])?,
        max_ns: (max * 1e9) as u64,
    })
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("bad number of seconds {s:?}")),
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2);
        *b = p
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("bad MAC {s:?}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("bad MAC {s:?}"));
    }
    Ok(mac)
}

// ------------------------------------------------------------------------------------------
// frames
// ------------------------------------------------------------------------------------------

/// RFC 1071 sum of `bytes` (even length), folded and complemented.
fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The probe template: Ethernet, IPv4 (valid header checksum, DF), UDP (checksum 0: "none").
fn probe_template(cfg: &ClientCfg) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&cfg.dst_mac);
    f[6..12].copy_from_slice(&cfg.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IP_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_HLEN + UDP_HLEN + PAYLOAD) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes()); // identification
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&cfg.src_ip.octets());
    ip[16..20].copy_from_slice(&cfg.dst_ip.octets());
    let csum = inet_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[ETH_HLEN + IP_HLEN..SEQ_OFF];
    udp[0..2].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&RTT_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HLEN + PAYLOAD) as u16).to_be_bytes());
    f
}

/// The UDP header offset of an untagged, unfragmented IPv4/UDP frame (None otherwise).
fn udp_offset(f: &[u8]) -> Option<usize> {
    if f.len() < ETH_HLEN + IP_HLEN || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF; // MF or a fragment offset
    if ip[0] >> 4 != 4 || ihl < IP_HLEN || ip[9] != 17 || frag != 0 {
        return None;
    }
    let udp = ETH_HLEN + ihl;
    (f.len() >= udp + UDP_HLEN).then_some(udp)
}

fn udp_ports(f: &[u8], udp: usize) -> (u16, u16) {
    (
        u16::from_be_bytes([f[udp], f[udp + 1]]),
        u16::from_be_bytes([f[udp + 2], f[udp + 3]]),
    )
}

/// The sequence number at the start of the UDP payload, if there are 8 bytes.
fn seq_of(f: &[u8], udp: usize) -> Option<u64> {
    let p = udp + UDP_HLEN;
    let b: [u8; 8] = f.get(p..p + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Turn a datagram into its answer, in place: MACs, IPv4 addresses and UDP ports swapped.
fn swap_reply(f: &mut [u8], udp: usize) {
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(ETH_HLEN + 12 + i, ETH_HLEN + 16 + i);
    }
    for i in 0..2 {
        f.swap(udp + i, udp + 2 + i);
    }
}

// ------------------------------------------------------------------------------------------
// the two ends
// ------------------------------------------------------------------------------------------

fn open(ifname: &str) -> Result<(AfPacket, Arc<Pool>), String> {
    let dev = AfPacket::open(ifname, RING_FRAMES).map_err(|e| format!("open {ifname}: {e}"))?;
    let pool = Pool::new("floor-rx", POOL_BUFS, BUF_SIZE);
    dev.attach(Arc::clone(&pool))
        .map_err(|e| format!("attach {ifname}: {e}"))?;
    Ok((dev, pool))
}

/// Die with the parent (the bench's worker), so that a killed bench leaves no echo behind.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and reads no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
}

fn echo(ifname: &str, seconds: f64) -> Result<(), String> {
    die_with_parent();
    let (dev, _pool) = open(ifname)?;
    // the bench waits for this line: the ring is attached, probes will be answered
    println!("rtt_floor echo: ready on {ifname}");
    let end = monotonic_ns().saturating_add((seconds * 1e9) as u64);
    let mut last_frame = 0u64;
    let mut bye = false;
    let mut echoed = 0u64;
    let mut tx_error: Option<io::Error> = None;
    loop {
        let now = monotonic_ns();
        if now >= end {
            break;
        }
        let mut answer = |mut buf: PacketBuf| {
            let (start, stop) = (buf.start, buf.end);
            let f = &mut buf.data_mut()[start..stop];
            let Some(udp) = udp_offset(f) else { return };
            if udp_ports(f, udp).1 != RTT_PORT {
                return;
            }
            if seq_of(f, udp) == Some(BYE_SEQ) {
                bye = true;
                return;
            }
            swap_reply(f, udp);
            match dev.transmit(f) {
                Ok(()) => echoed += 1,
                Err(e) => tx_error = Some(e),
            }
        };
        let n = if now.saturating_sub(last_frame) < BUSY_WINDOW_NS {
            // busy: a cheap look at the ring's next slot, no syscall
            if !dev.ready() {
                continue;
            }
            dev.receive(16, Some(0), &mut answer)
        } else {
            dev.receive(16, Some(100_000_000), &mut answer)
        }
        .map_err(|e| format!("receive: {e}"))?;
        if bye {
            bye = false;
            last_frame = 0; // back to the blocking wait
        } else if n > 0 {
            last_frame = monotonic_ns();
        } else if !dev.is_up() {
            break; // the interface went down or away (the bench is over)
        }
        if let Some(e) = tx_error.take() {
            if e.raw_os_error() == Some(libc::ENETDOWN) {
                break;
            }
            return Err(format!("transmit: {e}"));
        }
    }
    eprintln!("rtt_floor echo: {echoed} datagrams echoed");
    Ok(())
}

fn client(cfg: &ClientCfg) -> Result<(), String> {
    let (dev, _pool) = open(&cfg.ifname)?;
    let mut frame = probe_template(cfg);
    let mut samples: Vec<u64> = Vec::with_capacity(cfg.n);
    let mut seq = 0u64;
    let mut lost = 0usize;
    // the sequence number waited for, and whether its reply arrived (set by the sink)
    let want = Cell::new(0u64);
    let matched = Cell::new(false);
    let mut sink = |buf: PacketBuf| {
        let f = buf.payload();
        let Some(udp) = udp_offset(f) else { return };
        if udp_ports(f, udp) != (RTT_PORT, CLIENT_PORT) {
            return;
        }
        if seq_of(f, udp) == Some(want.get()) {
            matched.set(true);
        }
    };
    let t_start = monotonic_ns();
    let deadline = t_start.saturating_add(cfg.max_ns);
    for i in 0..cfg.warmup + cfg.n {
        seq += 1;
        frame[SEQ_OFF..SEQ_OFF + 8].copy_from_slice(&seq.to_le_bytes());
        want.set(seq);
        matched.set(false);
        let t0 = monotonic_ns();
        dev.transmit(&frame).map_err(|e| format!("transmit: {e}"))?;
        let rtt = loop {
            if dev.ready() {
                dev.receive(16, Some(0), &mut sink)
                    .map_err(|e| format!("receive: {e}"))?;
                if matched.get() {
                    break Some(monotonic_ns() - t0);
                }
            }
            if monotonic_ns() - t0 > REPLY_TIMEOUT_NS {
                break None;
            }
        };
        if i >= cfg.warmup {
            match rtt {
                Some(ns) => samples.push(ns),
                None => lost += 1,
            }
        }
        if t0 > deadline {
            break;
        }
    }
    let elapsed = monotonic_ns() - t_start;
    // done: the echo may stop busy-polling (a lost goodbye only costs its busy window)
    frame[SEQ_OFF..SEQ_OFF + 8].copy_from_slice(&BYE_SEQ.to_le_bytes());
    let _ = dev.transmit(&frame);
    let truncated = samples.len() + lost < cfg.n;
    let mut out = String::with_capacity(64 + 8 * samples.len());
    out.push_str(&format!(
        "{{\"n\": {}, \"lost\": {lost}, \"truncated\": {truncated}, \"elapsed_ns\": {elapsed}, \
         \"samples\": [",
        samples.len()
    ));
    for (k, s) in samples.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&s.to_string());
    }
    out.push_str("]}\n");
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_checksums_hold_under_the_swap() {
        let cfg = parse_client(
            &[
                "veth0",
                "02:00:00:00:00:01",
                "02:00:00:00:00:02",
                "203.0.113.17",
                "203.0.113.18",
                "10",
                "1",
            ]
            .map(String::from),
        )
        .unwrap();
        let mut f = probe_template(&cfg);
        assert_eq!(inet_checksum(&f[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
        let udp = udp_offset(&f).unwrap();
        assert_eq!(udp_ports(&f, udp), (CLIENT_PORT, RTT_PORT));
        swap_reply(&mut f, udp);
        assert_eq!(inet_checksum(&f[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
        assert_eq!(udp_ports(&f, udp), (RTT_PORT, CLIENT_PORT));
        assert_eq!(f[0..6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(f[ETH_HLEN + 12..ETH_HLEN + 16], [203, 0, 113, 18]);
        assert_eq!(seq_of(&f, udp), Some(0));
        assert_eq!(seq_of(&f[..SEQ_OFF + 7], udp), None);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:01:02").is_err());
        assert!(parse_seconds("0").is_err());
    }
}

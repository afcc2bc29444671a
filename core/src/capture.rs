//! Packet capture: a port's oob RX and TX frames written to a pcap file (`evl-net capture`).
//!
//! The oob threads never write a file. Each port has a [`CaptureSlot`]; while it is empty (no
//! capture) a frame costs one relaxed atomic load. While a capture runs, the RX path (first thing
//! in `rx::process`) and the TX path (a frame as it is handed to the device, in `Port::xmit`,
//! where Linux's taps see it too) copy the frame into a buffer of the capture's own
//! preallocated pool and push it on a bounded lock-free queue (`crossbeam_queue::ArrayQueue`):
//! no allocation, no lock, no syscall. A writer thread
//! (`<if>.capture`) drains the queue into the file. A frame that finds no free buffer or a full
//! queue is counted as a capture drop, never silently lost.
//!
//! Bounds (frames, file bytes) are reserved by the producers, so a bounded capture holds
//! exactly the first frames that fit; once a bound is reached the capture accepts nothing more
//! and the writer finishes.
//!
//! File format: classic pcap with nanosecond timestamps (magic `0xa1b23c4d`), link type
//! Ethernet, native byte order — what tcpdump, tshark and scapy read. Timestamps are the
//! frames' CLOCK_MONOTONIC times (RX: `device_time` when the device gave one) converted to
//! CLOCK_REALTIME with the offset taken when the capture started.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;

use crate::pool::{PacketBuf, Pool};
use crate::timestamps::{monotonic_ns, realtime_offset_ns};

/// pcap's global header (24 bytes).
pub const PCAP_HEADER_LEN: u64 = 24;
/// pcap's per-record header (16 bytes).
pub const PCAP_RECORD_LEN: u64 = 16;
/// Magic of nanosecond-resolution pcap files.
pub const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Frames queued for the writer by default.
pub const DEFAULT_QUEUE_LEN: usize = 1024;
/// How long the writer sleeps when the queue is empty.
const WRITER_IDLE: Duration = Duration::from_millis(2);

/// An errno value.
pub type Errno = i32;

/// How a capture is bounded and sized.
#[derive(Clone, Copy, Debug)]
pub struct CaptureConfig {
    /// Bytes kept of each frame (pcap's snaplen); frames are at most a pool buffer anyway.
    pub snaplen: usize,
    /// Stop after this many frames (0: no bound).
    pub max_frames: u64,
    /// Stop before the file would exceed this many bytes, headers included (0: no bound).
    pub max_bytes: u64,
    /// Frames that may wait for the writer (the capture's preallocated buffers).
    pub queue_len: usize,
}

/// A direction a frame was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Rx,
    Tx,
}

struct Captured {
    buf: PacketBuf,
    t_ns: u64,
    orig_len: u32,
}

/// What a capture did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames written to the file.
    pub frames: u64,
    /// Bytes of the file (headers included).
    pub bytes: u64,
    /// Frames lost because the writer was behind (no buffer or a full queue).
    pub drops: u64,
    /// RX and TX frames accepted (written or about to be).
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// The errno of a failed write (0: none); the capture ends on it.
    pub error: Errno,
    /// Whether the writer is done (a bound reached, stopped, or a write error).
    pub finished: bool,
}

/// One running capture: the producers' side (bounded queue of frame copies) and the writer's
/// state.
pub struct CaptureSink {
    pool: Arc<Pool>,
    queue: ArrayQueue<Captured>,
    cfg: CaptureConfig,
    offset_ns: i64,
    /// Producers inside `push` right now (the writer finishes only when none is).
    in_flight: AtomicUsize,
    reserved_frames: AtomicU64,
    reserved_bytes: AtomicU64,
    /// A bound was reached, or the capture was stopped: accept nothing more.
    closed: AtomicBool,
    drops: AtomicU64,
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    error: AtomicI32,
    finished: Mutex<bool>,
    finished_cond: Condvar,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl CaptureSink {
    /// Write the pcap header to `file` and start the writer thread `<name>.capture`.
    /// EINVAL for a snaplen, queue length or byte bound that cannot hold a frame.
    pub fn start(name: &str, file: File, cfg: CaptureConfig) -> io::Result<Arc<CaptureSink>> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        if cfg.snaplen == 0 || cfg.snaplen > 262_144 || cfg.queue_len == 0 {
            return Err(einval());
        }
        if cfg.max_bytes != 0 && cfg.max_bytes < PCAP_HEADER_LEN + PCAP_RECORD_LEN + 14 {
            return Err(einval());
        }
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(&pcap_header(cfg.snaplen as u32))?;
        out.flush()?;
        let sink = Arc::new(CaptureSink {
            pool: Pool::new(&format!("{name} capture"), cfg.queue_len, cfg.snaplen),
            queue: ArrayQueue::new(cfg.queue_len),
            cfg,
            offset_ns: realtime_offset_ns(),
            in_flight: AtomicUsize::new(0),
            reserved_frames: AtomicU64::new(0),
            reserved_bytes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            drops: AtomicU64::new(0),
            rx_frames: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(PCAP_HEADER_LEN),
            error: AtomicI32::new(0),
            finished: Mutex::new(false),
            finished_cond: Condvar::new(),
            writer: Mutex::new(None),
        });
        let me = Arc::clone(&sink);
        let handle = std::thread::Builder::new()
            .name(format!("{name}.capture"))
            .spawn(move || me.writer_loop(out))?;
        *sink.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(sink)
    }

    /// Producer side (oob threads): copy `frame` in, or count a drop. Never blocks.
    pub fn push(&self, dir: Direction, frame: &[u8], t_ns: u64) {
        self.in_flight.fetch_add(1, SeqCst);
        self.push_inner(dir, frame, t_ns);
        self.in_flight.fetch_sub(1, SeqCst);
    }

    fn push_inner(&self, dir: Direction, frame: &[u8], t_ns: u64) {
        if self.closed.load(SeqCst) {
            return;
        }
        let caplen = frame.len().min(self.cfg.snaplen);
        let rec = PCAP_RECORD_LEN + caplen as u64;
        if self.cfg.max_frames != 0
            && self.reserved_frames.fetch_add(1, Relaxed) >= self.cfg.max_frames
        {
            self.closed.store(true, SeqCst);
            return;
        }
        if self.cfg.max_bytes != 0
            && PCAP_HEADER_LEN + self.reserved_bytes.fetch_add(rec, Relaxed) + rec
                > self.cfg.max_bytes
        {
            self.closed.store(true, SeqCst);
            return;
        }
        let captured = self.pool.take().map(|mut buf| {
            buf.fill(&frame[..caplen]);
            Captured {
                buf,
                t_ns: if t_ns != 0 { t_ns } else { monotonic_ns() },
                orig_len: frame.len() as u32,
            }
        });
        let Some(captured) = captured else {
            return self.drop_one(rec);
        };
        if self.queue.push(captured).is_err() {
            return self.drop_one(rec);
        }
        match dir {
            Direction::Rx => self.rx_frames.fetch_add(1, Relaxed),
            Direction::Tx => self.tx_frames.fetch_add(1, Relaxed),
        };
    }

    /// A frame that did not fit: counted, and its reservation given back.
    fn drop_one(&self, rec: u64) {
        self.drops.fetch_add(1, Relaxed);
        if self.cfg.max_frames != 0 {
            self.reserved_frames.fetch_sub(1, Relaxed);
        }
        if self.cfg.max_bytes != 0 {
            self.reserved_bytes.fetch_sub(rec, Relaxed);
        }
    }

    fn writer_loop(self: Arc<Self>, mut out: BufWriter<File>) {
        loop {
            let mut wrote = false;
            while let Some(c) = self.queue.pop() {
                wrote = true;
                if self.error.load(Relaxed) == 0 {
                    if let Err(e) = self.write_record(&mut out, &c) {
                        self.fail(e);
                    }
                }
                drop(c);
            }
            if wrote && self.error.load(Relaxed) == 0 {
                if let Err(e) = out.flush() {
                    self.fail(e);
                }
            }
            let max = self.cfg.max_frames;
            if max != 0 && self.frames.load(Relaxed) >= max {
                self.closed.store(true, SeqCst);
            }
            // Done once closed and no producer can still push (Dekker with `push`: both SeqCst).
            if self.closed.load(SeqCst) && self.in_flight.load(SeqCst) == 0 && self.queue.is_empty()
            {
                break;
            }
            if !wrote {
                std::thread::park_timeout(WRITER_IDLE);
            }
        }
        let _ = out.flush();
        *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.finished_cond.notify_all();
    }

    fn write_record(&self, out: &mut BufWriter<File>, c: &Captured) -> io::Result<()> {
        let data = c.buf.payload();
        let real = (c.t_ns as i64).saturating_add(self.offset_ns).max(0) as u64;
        let mut hdr = [0u8; PCAP_RECORD_LEN as usize];
        hdr[0..4].copy_from_slice(&((real / 1_000_000_000) as u32).to_ne_bytes());
        hdr[4..8].copy_from_slice(&((real % 1_000_000_000) as u32).to_ne_bytes());
        hdr[8..12].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        hdr[12..16].copy_from_slice(&c.orig_len.to_ne_bytes());
        out.write_all(&hdr)?;
        out.write_all(data)?;
        self.frames.fetch_add(1, Relaxed);
        self.bytes
            .fetch_add(PCAP_RECORD_LEN + data.len() as u64, Relaxed);
        Ok(())
    }

    fn fail(&self, e: io::Error) {
        self.error
            .store(e.raw_os_error().unwrap_or(libc::EIO), Relaxed);
        self.closed.store(true, SeqCst);
    }

    /// Stop accepting frames; the writer writes what is queued and finishes.
    pub fn stop(&self) {
        self.closed.store(true, SeqCst);
        if let Some(h) = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.thread().unpark();
        }
    }

    /// Wait up to `timeout_ns` (None: forever) for the writer to finish; true if it has.
    pub fn wait(&self, timeout_ns: Option<u64>) -> bool {
        let mut done = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = timeout_ns.map(|ns| monotonic_ns().saturating_add(ns));
        while !*done {
            let wait = match deadline {
                None => Duration::from_millis(100),
                Some(d) => {
                    let now = monotonic_ns();
                    if now >= d {
                        return false;
                    }
                    Duration::from_nanos(d - now)
                }
            };
            done = self
                .finished_cond
                .wait_timeout(done, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(done);
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        true
    }

    /// What the capture did so far.
    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            drops: self.drops.load(Relaxed),
            rx_frames: self.rx_frames.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
            error: self.error.load(Relaxed),
            finished: *self.finished.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// pcap's global header: nanosecond magic, version 2.4, snaplen, Ethernet.
pub fn pcap_header(snaplen: u32) -> [u8; PCAP_HEADER_LEN as usize] {
    let mut h = [0u8; PCAP_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&PCAP_MAGIC_NS.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs: 0
    h[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    h
}

/// A port's capture point: empty unless a capture runs. Checking it is one relaxed load.
#[derive(Default)]
pub struct CaptureSlot {
    on: AtomicBool,
    sink: ArcSwapOption<CaptureSink>,
    /// Serialises install/remove (control plane only; the oob path never takes it).
    control: Mutex<()>,
}

impl CaptureSlot {
    /// A frame the port received (`device_ns`: its device time, 0 if none).
    #[inline]
    pub fn rx(&self, frame: &[u8], device_ns: u64) {
        if self.on.load(Relaxed) {
            self.record(Direction::Rx, frame, device_ns);
        }
    }

    /// A frame about to be handed to the device.
    #[inline]
    pub fn tx(&self, frame: &[u8]) {
        if self.on.load(Relaxed) {
            self.record(Direction::Tx, frame, 0);
        }
    }

    #[cold]
    fn record(&self, dir: Direction, frame: &[u8], t_ns: u64) {
        if let Some(sink) = self.sink.load().as_ref() {
            sink.push(dir, frame, t_ns);
        }
    }

    /// Install `sink`; EBUSY when a capture already runs on this port.
    pub fn install(&self, sink: Arc<CaptureSink>) -> Result<(), Errno> {
        let _g = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if self.sink.load().is_some() {
            return Err(libc::EBUSY);
        }
        self.sink.store(Some(sink));
        self.on.store(true, Release);
        Ok(())
    }

    /// Remove `sink` if it is the installed one (a later capture is left alone).
    pub fn remove(&self, sink: &Arc<CaptureSink>) {
        let _g = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.sink.load_full();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, sink)) {
            self.on.store(false, Release);
            self.sink.store(None);
        }
    }

    /// Whether a capture is installed.
    pub fn active(&self) -> bool {
        self.on.load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn temp_file(tag: &str) -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "evlnet-capture-{tag}-{}-{}.pcap",
            std::process::id(),
            monotonic_ns()
        ));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (f, path)
    }

    fn cfg(max_frames: u64, max_bytes: u64, queue_len: usize) -> CaptureConfig {
        CaptureConfig {
            snaplen: 2048,
            max_frames,
            max_bytes,
            queue_len,
        }
    }

    /// (caplen, orig_len, data) of each record.
    fn records(path: &std::path::Path) -> Vec<(u32, u32, Vec<u8>)> {
        let mut f = File::open(path).unwrap();
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(&all[0..4], &PCAP_MAGIC_NS.to_ne_bytes());
        assert_eq!(&all[20..24], &LINKTYPE_ETHERNET.to_ne_bytes());
        let mut out = Vec::new();
        let mut at = PCAP_HEADER_LEN as usize;
        while at < all.len() {
            let u = |o: usize| u32::from_ne_bytes(all[at + o..at + o + 4].try_into().unwrap());
            let (caplen, orig) = (u(8), u(12));
            let start = at + PCAP_RECORD_LEN as usize;
            out.push((caplen, orig, all[start..start + caplen as usize].to_vec()));
            at = start + caplen as usize;
        }
        out
    }

    #[test]
    fn slot_off_records_nothing_and_count_bound_is_exact() {
        let slot = CaptureSlot::default();
        slot.rx(&[1u8; 60], 0); // no capture: nothing happens
        let (f, path) = temp_file("count");
        let sink = CaptureSink::start("t", f, cfg(3, 0, 16)).unwrap();
        slot.install(Arc::clone(&sink)).unwrap();
        assert_eq!(slot.install(Arc::clone(&sink)).unwrap_err(), libc::EBUSY);
        for i in 0..5u8 {
            slot.rx(&[i; 60], 0);
        }
        slot.tx(&[9u8; 70]);
        assert!(sink.wait(Some(2_000_000_000)));
        slot.remove(&sink);
        assert!(!slot.active());
        let st = sink.stats();
        assert_eq!(
            (st.frames, st.drops, st.rx_frames, st.tx_frames),
            (3, 0, 3, 0)
        );
        let recs = records(&path);
        assert_eq!(recs.len(), 3);
        for (i, (caplen, orig, data)) in recs.iter().enumerate() {
            assert_eq!((*caplen, *orig), (60, 60));
            assert!(data.iter().all(|&b| b == i as u8));
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            st.bytes,
            "bytes counted = file size"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn byte_bound_and_snaplen_and_drops() {
        let (f, path) = temp_file("bytes");
        // header 24 + two records of 16+60 = 176; a third would exceed 200
        let sink = CaptureSink::start("t", f, cfg(0, 200, 16)).unwrap();
        for _ in 0..4 {
            sink.push(Direction::Tx, &[7u8; 60], 0);
        }
        assert!(sink.wait(Some(2_000_000_000)));
        assert_eq!(sink.stats().frames, 2);
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        let _ = std::fs::remove_file(&path);

        // snaplen truncates but keeps the original length
        let (f, path) = temp_file("snap");
        let mut c = cfg(1, 0, 4);
        c.snaplen = 32;
        let sink = CaptureSink::start("t", f, c).unwrap();
        sink.push(Direction::Rx, &[1u8; 100], 0);
        assert!(sink.wait(Some(2_000_000_000)));
        assert_eq!(records(&path), vec![(32, 100, vec![1u8; 32])]);
        let _ = std::fs::remove_file(&path);

        // a full queue counts drops (the writer is stopped from finishing by no bound)
        let (f, path) = temp_file("drops");
        let sink = CaptureSink::start("t", f, cfg(0, 0, 2)).unwrap();
        for _ in 0..1000 {
            sink.push(Direction::Rx, &[3u8; 60], 0);
        }
        sink.stop();
        assert!(sink.wait(Some(2_000_000_000)));
        let st = sink.stats();
        assert_eq!(st.frames + st.drops, 1000);
        assert_eq!(records(&path).len() as u64, st.frames);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_configs_are_einval() {
        let (f, path) = temp_file("bad");
        let mut c = cfg(0, 30, 4);
        assert_eq!(
            CaptureSink::start("t", f.try_clone().unwrap(), c)
                .err()
                .and_then(|e| e.raw_os_error()),
            Some(libc::EINVAL)
        );
        c.max_bytes = 0;
        c.snaplen = 0;
        assert!(CaptureSink::start("t", f, c).is_err());
        let _ = std::fs::remove_file(path);
    }
}

//! `Port`: an enabled port (the datapath handle), its pcap `Capture`, and the TX helpers the
//! seam's sends share (`take_buffer`, `transmit`).

use std::sync::Arc;

use pyo3::prelude::*;

use crate::capture::{CaptureConfig, CaptureSink};
use crate::pool::PacketBuf;
use crate::port::{Errno, Port, PortConfig, TxItem};

use super::buffers::with_payload;
use super::device::device_of;
use super::errors::{ioerr, oserr};
use super::outside_gil;
use super::socket::PySocket;
use super::stack::PyStack;

/// An enabled port (the core's RX/TX threads, pools, qdisc and counters).
#[pyclass(module = "evlnet._core", name = "Port", frozen)]
pub(super) struct PyPort {
    pub(super) port: Arc<Port>,
}

#[pymethods]
impl PyPort {
    #[new]
    #[pyo3(signature = (stack, id, name, device, poolsz, bufsz, rx_poolsz, qdisc="oob_fifo",
                        reasm_poolsz=16, ipfrag_max_datagrams=64, ipfrag_time=30.0,
                        busy_poll_defer_us=2000, tx_direct=true, tx_stream_handoff=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        stack: PyRef<'_, PyStack>,
        id: usize,
        name: &str,
        device: &Bound<'_, PyAny>,
        poolsz: usize,
        bufsz: usize,
        rx_poolsz: usize,
        qdisc: &str,
        reasm_poolsz: usize,
        ipfrag_max_datagrams: usize,
        ipfrag_time: f64,
        busy_poll_defer_us: u64,
        tx_direct: bool,
        tx_stream_handoff: bool,
    ) -> PyResult<Self> {
        let cfg = PortConfig {
            poolsz,
            bufsz,
            rx_poolsz,
            qdisc: qdisc.to_string(),
            reasm_poolsz,
            ipfrag_max_datagrams,
            ipfrag_time_ns: (ipfrag_time * 1e9) as u64,
            busy_poll_defer_ns: busy_poll_defer_us * 1000,
            tx_direct,
            tx_stream_handoff,
        };
        let dev = device_of(device)?;
        let port = Port::start(Arc::clone(&stack.core), id, name, dev, &cfg)
            .map_err(|e| ioerr(e, "enable port"))?;
        stack.core.add_port(Arc::clone(&port));
        Ok(PyPort { port })
    }

    #[getter]
    fn id(&self) -> usize {
        self.port.id
    }

    /// The interface's addresses: unicast ones, and every destination we accept.
    fn set_addresses(&self, unicast: Vec<u32>, local: Vec<u32>) {
        self.port
            .addrs
            .store(Arc::new(crate::port::Addresses { unicast, local }));
    }

    fn set_link(&self, up: bool) {
        self.port.set_link(up);
    }

    #[getter]
    fn enabled(&self) -> bool {
        self.port.enabled()
    }

    #[getter]
    fn link_up(&self) -> bool {
        self.port.link_up()
    }

    /// Stop the port (queued frames leave first, up to `drain` seconds); GIL released.
    fn shutdown(&self, py: Python<'_>, stack: PyRef<'_, PyStack>, drain: f64) {
        let port = Arc::clone(&self.port);
        stack.core.remove_port(port.id);
        outside_gil(py, move || port.shutdown((drain * 1e9) as u64));
    }

    #[getter]
    fn threads_alive(&self) -> bool {
        self.port.threads_alive()
    }

    /// Counters by name (port and device).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.port.counters.snapshot()
    }

    /// `(tx_size, tx_total, tx_free, rx_total, rx_free)`.
    fn pools(&self) -> (usize, usize, usize, usize, usize) {
        let p = &self.port;
        (
            p.tx_pool.size(),
            p.tx_pool.total(),
            p.tx_pool.free(),
            p.rx_pool.total(),
            p.rx_pool.free(),
        )
    }

    /// Datagrams in reassembly and the reassembly pool's `(total, free)`.
    fn reassembly(&self) -> (usize, usize, usize) {
        let r = self.port.reasm.lock().unwrap_or_else(|e| e.into_inner());
        (r.pending(), r.pool_total(), r.pool_free())
    }

    /// Transmit one complete frame built in-band (ARP requests, packet sockets, custom
    /// protocols). Raises ENETDOWN, EWOULDBLOCK (pool empty), EMSGSIZE.
    #[pyo3(signature = (frame, sock=None, tsflags=0, delivery_time=0, nonblock=true,
                        deadline_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn transmit(
        &self,
        py: Python<'_>,
        frame: &Bound<'_, PyAny>,
        sock: Option<PyRef<'_, PySocket>>,
        tsflags: u32,
        delivery_time: u64,
        nonblock: bool,
        deadline_ns: Option<u64>,
    ) -> PyResult<usize> {
        let port = &self.port;
        port.check_sendable().map_err(|e| oserr(e, "transmit"))?;
        let mut buf = take_buffer(py, port, nonblock, deadline_ns)?;
        let n = with_payload(frame, |bytes| {
            if !buf.fill(bytes) {
                return Err(oserr(
                    libc::EMSGSIZE,
                    "frame larger than the port's buffers",
                ));
            }
            Ok(bytes.len())
        })??;
        if buf.len() < 60 {
            let end = buf.end;
            buf.data_mut()[end..60].fill(0);
            buf.end = 60;
        }
        buf.times.delivery = delivery_time;
        let item = TxItem {
            buf,
            sock: crate::tx::tx_record_sock(sock.as_ref().map(|s| &s.core), tsflags),
            tsflags,
        };
        transmit(py, port, item).map_err(|e| oserr(e, "transmit"))?;
        Ok(n)
    }

    /// Real-time levers for the port's RX and TX threads: CPU affinity and SCHED_FIFO.
    /// Returns `[(thread, lever, errno)]` with errno 0 where the lever was applied; refused ones
    /// are reported, not raised.
    #[pyo3(signature = (cpus=None, fifo_priority=None))]
    fn set_realtime(
        &self,
        cpus: Option<Vec<usize>>,
        fifo_priority: Option<i32>,
    ) -> Vec<(&'static str, &'static str, i32)> {
        self.port
            .set_realtime(cpus.as_deref(), fifo_priority)
            .into_iter()
            .map(|(t, l, r)| (t, l, r.err().unwrap_or(0)))
            .collect()
    }

    /// Start capturing the port's oob RX and TX frames into the pcap file open on `fd` (the
    /// core writes a duplicate of it; the caller keeps and closes its own). `snaplen` 0 keeps
    /// whole frames; `max_frames`/`max_bytes` 0 set no bound. EBUSY when a capture already
    /// runs on this port, EINVAL for bad sizes, EBADF or another errno when the file cannot be
    /// written.
    #[pyo3(signature = (fd, snaplen=0, max_frames=0, max_bytes=0, queue_len=1024))]
    fn start_capture(
        &self,
        fd: i32,
        snaplen: usize,
        max_frames: u64,
        max_bytes: u64,
        queue_len: usize,
    ) -> PyResult<PyCapture> {
        let port = &self.port;
        let whole = port.tx_pool.size().max(port.rx_pool.size());
        let cfg = CaptureConfig {
            snaplen: if snaplen == 0 { whole } else { snaplen },
            max_frames,
            max_bytes,
            queue_len,
        };
        let file = dup_file(fd).map_err(|e| ioerr(e, "capture file"))?;
        let sink = CaptureSink::start(&port.name, file, cfg).map_err(|e| ioerr(e, "capture"))?;
        if let Err(errno) = port.capture.install(Arc::clone(&sink)) {
            sink.stop();
            return Err(oserr(errno, "a capture already runs on this port"));
        }
        Ok(PyCapture {
            sink,
            port: Arc::clone(port),
        })
    }

    /// Test hook: park the port's RX thread (only busy pollers consume) or release it;
    /// returns whether it is parked now.
    fn pause_rx_thread(&self, paused: bool) -> bool {
        self.port.pause_rx_thread(paused)
    }

    #[getter]
    fn rx_thread_parked(&self) -> bool {
        self.port.rx_thread_parked()
    }

    #[getter]
    fn qdisc_len(&self) -> usize {
        self.port.qdisc_len()
    }

    #[getter]
    fn direct_tx(&self) -> bool {
        self.port.direct_tx()
    }

    /// Busy poll once from the calling thread (testing and tools).
    fn poll_rx(&self) -> usize {
        self.port.poll_rx()
    }
}

/// A duplicate of the open file descriptor `fd` as a `File` (close-on-exec).
fn dup_file(fd: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads `fd` (any value is safe: a bad one gives EBADF).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a descriptor we just created and nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dup) }))
}

/// A running capture of one port (`Port.start_capture`): its writer thread writes the pcap
/// file; `stop()` ends it (also when the handle is dropped).
#[pyclass(module = "evlnet._core", name = "Capture", frozen)]
pub(super) struct PyCapture {
    sink: Arc<CaptureSink>,
    port: Arc<Port>,
}

#[pymethods]
impl PyCapture {
    /// Stop capturing: the frames already queued are written, then the file is flushed.
    /// Returns the final stats (see `stats`). Idempotent.
    fn stop(&self, py: Python<'_>) -> (u64, u64, u64, u64, u64, i32, bool) {
        self.port.capture.remove(&self.sink);
        self.sink.stop();
        let sink = Arc::clone(&self.sink);
        outside_gil(py, move || sink.wait(Some(5_000_000_000)));
        self.stats()
    }

    /// Wait up to `timeout` seconds (None: forever) for the capture to finish by itself (a
    /// bound reached, a write error), with the GIL released; True if it has finished.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> bool {
        let ns = timeout.map(|t| (t.max(0.0) * 1e9) as u64);
        let sink = Arc::clone(&self.sink);
        let done = outside_gil(py, move || sink.wait(ns));
        if done {
            self.port.capture.remove(&self.sink);
        }
        done
    }

    /// `(frames, bytes, drops, rx_frames, tx_frames, errno, finished)`: frames written, file
    /// bytes, frames dropped because the writer was behind, RX/TX frames accepted, the errno of
    /// a failed write (0: none), whether the capture is over.
    fn stats(&self) -> (u64, u64, u64, u64, u64, i32, bool) {
        let s = self.sink.stats();
        (
            s.frames,
            s.bytes,
            s.drops,
            s.rx_frames,
            s.tx_frames,
            s.error,
            s.finished,
        )
    }
}

impl Drop for PyCapture {
    fn drop(&mut self) {
        self.port.capture.remove(&self.sink);
        self.sink.stop();
    }
}

/// Hand a frame to the port: with the GIL held when it only joins the qdisc, released when it
/// goes straight to the device (a syscall on Linux ports, and a device may hold it).
pub(super) fn transmit(py: Python<'_>, port: &Arc<Port>, item: TxItem) -> Result<(), Errno> {
    if port.would_transmit_directly() {
        let port = Arc::clone(port);
        outside_gil(py, move || port.transmit(item))
    } else {
        port.transmit(item)
    }
}

/// A TX buffer: at once with the GIL held, or waiting for one with the GIL released (spinning
/// first while the TX thread is carrying a stream: it gives a buffer back every transmit).
pub(super) fn take_buffer(
    py: Python<'_>,
    port: &Arc<Port>,
    nonblock: bool,
    deadline_ns: Option<u64>,
) -> PyResult<PacketBuf> {
    /// How long a sender spins for a buffer the busy TX thread is about to give back.
    const TX_BUFFER_SPIN_NS: u64 = 50_000;
    if let Some(b) = port.take_tx_now() {
        return Ok(b);
    }
    if nonblock {
        return Err(oserr(libc::EWOULDBLOCK, "TX pool is empty"));
    }
    let pool = Arc::clone(&port.tx_pool);
    let spin_ns = if port.tx_thread_awake() {
        TX_BUFFER_SPIN_NS
    } else {
        0
    };
    outside_gil(py, move || pool.take_spin_wait(spin_ns, deadline_ns)).map_err(|e| match e {
        crate::pool::TakeError::TimedOut => oserr(libc::ETIMEDOUT, "no free TX buffer"),
        crate::pool::TakeError::Closed => oserr(libc::ENETDOWN, "port was disabled"),
    })
}

//! `Socket`: the core half of an oob socket, its receive and send paths, and the fast path
//! (`try_sendmsg`, `try_recvmsg_into`) with the argument-shape checks it makes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple};

use crate::frontcache::Lookup;
use crate::pool::PacketBuf;
use crate::port::{Port, TxItem};
use crate::socket::{SocketCore, WaitEnd};
use crate::stack::StackCore;
use crate::timestamps::{monotonic_ns, TX_RING_SIZE};
use crate::tx::{self, SendError, UdpDatagram};

use super::buffers::{copy_out, mac_of, with_exported, with_payload, writable_len};
use super::errors::{ioerr, oserr};
use super::outside_gil;
use super::port::{take_buffer, transmit, PyPort};
use super::stack::PyStack;

/// The core half of an oob socket: its queue, TX ring, readiness fd and TX settings.
#[pyclass(module = "evlnet._core", name = "Socket")]
pub(super) struct PySocket {
    pub(super) core: Arc<SocketCore>,
    stack: Arc<StackCore>,
    #[pyo3(get, set)]
    local_addr: u32,
    #[pyo3(get, set)]
    local_port: u16,
    #[pyo3(get, set)]
    ttl: u8,
    #[pyo3(get, set)]
    tos: u8,
    #[pyo3(get, set)]
    dont_fragment: bool,
    #[pyo3(get, set)]
    broadcast: bool,
    /// SO_BINDTODEVICE as a port id (None: any).
    #[pyo3(get, set)]
    bound_port: Option<usize>,
    /// The connected peer (0, 0: not connected), for sends without an address.
    #[pyo3(get, set)]
    remote_addr: u32,
    #[pyo3(get, set)]
    remote_port: u16,
    /// The last sender's address as text: a receiver mostly hears one peer, and reusing the
    /// string keeps the receive path free of allocations for it.
    peer_text: Mutex<Option<(u32, Py<PyString>)>>,
}

type RecvResult = (usize, usize, u32, u16, u64, u64, u64);
/// A front-cache hit: the port, the next hop's MAC, the route's source address.
type FastRoute = (Arc<Port>, [u8; 6], u32);

/// `oob_recvmsg_into`'s result: `(nbytes, ancdata, msg_flags, (host, port))`.
type FastRecv<'py> = (usize, Bound<'py, PyList>, i32, (Bound<'py, PyString>, u16));

/// `flags` when it is a plain int with no bit outside `allowed`.
fn exact_flags(flags: &Bound<'_, PyAny>, allowed: i32) -> Option<i32> {
    let v = flags.cast_exact::<PyInt>().ok()?.extract::<i32>().ok()?;
    (v & !allowed == 0).then_some(v)
}

/// The one payload of `buffers`: a bytes, a bytearray or a contiguous byte memoryview (an
/// echo's `mv[:n]`), alone or as a one-item list, of at most a UDP datagram's payload.
fn single_payload<'py>(buffers: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let item = match buffers.cast_exact::<PyList>() {
        Ok(list) if list.len() == 1 => list.get_item(0).ok()?,
        Ok(_) => return None,
        Err(_) => buffers.clone(),
    };
    let len = if let Ok(b) = item.cast_exact::<PyBytes>() {
        b.as_bytes().len()
    } else if let Ok(b) = item.cast_exact::<PyByteArray>() {
        b.len()
    } else if item.cast_exact::<PyMemoryView>().is_ok() {
        // `with_payload` reads it the same way; a strided view takes the general path
        with_exported(&item, false, |_, len| len).ok()?
    } else {
        return None;
    };
    (len <= tx::UDP_MAX_PAYLOAD).then_some(item)
}

/// The one bytearray of `buffers`, alone or as a one-item list.
fn single_bytearray<'py>(buffers: &Bound<'py, PyAny>) -> Option<Bound<'py, PyByteArray>> {
    match buffers.cast_exact::<PyList>() {
        Ok(list) if list.len() == 1 => list.get_item(0).ok()?.cast_into_exact().ok(),
        Ok(_) => None,
        Err(_) => buffers.clone().cast_into_exact().ok(),
    }
}

/// `(host, port)` with host in plain dotted-quad form (what `inet_aton` reads the same way).
fn dotted_quad_address(address: &Bound<'_, PyAny>) -> Option<(u32, u16)> {
    let t = address.cast_exact::<PyTuple>().ok()?;
    if t.len() != 2 {
        return None;
    }
    let host = t.get_item(0).ok()?;
    let host = host.cast_exact::<PyString>().ok()?.to_str().ok()?;
    let ip: std::net::Ipv4Addr = host.parse().ok()?;
    let port = t.get_item(1).ok()?;
    let port = port.cast_exact::<PyInt>().ok()?.extract::<u16>().ok()?;
    Some((u32::from(ip), port))
}

type FrameResult<'py> = (
    usize,
    usize,
    usize,
    u16,
    u8,
    Bound<'py, PyBytes>,
    u64,
    u64,
    u64,
);

impl PySocket {
    /// Where the front cache sends `dst` from this socket: the port, the next hop's MAC and the
    /// route's source. None on a miss, or for a route off the socket's SO_BINDTODEVICE port (the
    /// caller demotes the datagram to the in-band stage); ENETDOWN when the route's port is
    /// disabled or gone.
    fn fast_route(&self, dst: u32) -> PyResult<Option<FastRoute>> {
        let (route, mac) = match self.stack.frontcache.lookup(dst) {
            Lookup::Hit { route, mac } => (route, mac),
            Lookup::Down => return Err(oserr(libc::ENETDOWN, "the route's port is disabled")),
            Lookup::Miss => return Ok(None),
        };
        if self.bound_port.is_some_and(|bound| bound != route.port) {
            return Ok(None);
        }
        let port = self
            .stack
            .port(route.port)
            .ok_or_else(|| oserr(libc::ENETDOWN, "port gone"))?;
        Ok(Some((port, mac, route.source)))
    }

    /// `addr` as dotted-quad text, reusing the string of the previous datagram's sender.
    fn peer_text<'py>(&self, py: Python<'py>, addr: u32) -> Bound<'py, PyString> {
        let mut cached = self.peer_text.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, text)) = cached.as_ref() {
            if *a == addr {
                return text.bind(py).clone();
            }
        }
        let text = PyString::new(py, &std::net::Ipv4Addr::from(addr).to_string());
        *cached = Some((addr, text.clone().unbind()));
        text
    }

    /// Pop a datagram: at once with the GIL held when one is there, else wait with it released.
    fn pop_or_wait(
        &self,
        py: Python<'_>,
        nonblock: bool,
        deadline_ns: Option<u64>,
        busy_poll_us: u64,
    ) -> PyResult<PacketBuf> {
        loop {
            if let Some(b) = self.core.pop() {
                return Ok(b);
            }
            let err = self.core.error();
            if err != 0 {
                return Err(oserr(err, "oob port went down"));
            }
            if nonblock {
                return Err(oserr(libc::EWOULDBLOCK, "no datagram queued"));
            }
            if let Some(d) = deadline_ns {
                if monotonic_ns() >= d {
                    return Err(oserr(libc::ETIMEDOUT, "receive timed out"));
                }
            }
            let core = Arc::clone(&self.core);
            let in_device = self.stack.settings.rx_wait_in_device.load(Relaxed);
            // the published map itself: a reference count, nothing allocated per wait
            let ports = self.stack.ports_snapshot();
            let end = outside_gil(py, move || {
                if busy_poll_us > 0 && !ports.is_empty() {
                    // Busy poll (SO_BUSY_POLL): this thread runs the ports' RX processing and
                    // their RX threads park meanwhile; registered only while spinning, so a
                    // receiver that goes to sleep never keeps an RX thread parked.
                    for p in ports.values() {
                        p.spin_enter();
                    }
                    let got = core.spin(deadline_ns, busy_poll_us * 1000, &mut || {
                        for p in ports.values() {
                            p.poll_rx();
                        }
                    });
                    for p in ports.values() {
                        p.spin_exit();
                    }
                    if got {
                        return WaitEnd::Ready;
                    }
                }
                // wait in the device the datagrams come from: one thread wake-up per datagram
                // instead of two (bench/ANALYSIS.md). With one port, that one; with several,
                // the port of the last datagram (a push by any other port's RX thread wakes
                // the device); before the first, on the socket.
                if in_device {
                    let port = if ports.len() == 1 {
                        ports.values().next()
                    } else {
                        core.last_port().and_then(|id| ports.get(&id))
                    };
                    if let Some(port) = port {
                        let end = if port.receiver_blocks()
                            && core.claim_device_wait(Arc::clone(&port.device))
                        {
                            let end = wait_in_device(&core, port, deadline_ns, busy_poll_us > 0);
                            core.release_device_wait();
                            end
                        } else {
                            core.wait(deadline_ns)
                        };
                        port.receiver_unblocks();
                        return end;
                    }
                }
                core.wait(deadline_ns)
            });
            if end == WaitEnd::TimedOut && self.core.is_empty() {
                return Err(oserr(libc::ETIMEDOUT, "receive timed out"));
            }
            py.check_signals()?;
        }
    }
}

/// A blocked receiver waits in the port's device itself and runs the RX processing when a frame
/// comes (the RX thread parks meanwhile, as for busy polling): one thread wake-up per datagram
/// instead of two (RX thread, then receiver). The caller has claimed the socket's device wait
/// (`SocketCore::claim_device_wait`), so what other threads queue for it wakes the device.
/// When another receiver is blocked in the device, it waits on its socket briefly and tries
/// again; while another receiver busy-polls the port, it leaves the device to that one and
/// waits on its socket (two consumers would race on one CPU).
///
/// `spun`: this receiver busy-polled just before (its budget ran out): it does not step back for
/// its own spinning.
fn wait_in_device(core: &SocketCore, port: &Port, deadline_ns: Option<u64>, spun: bool) -> WaitEnd {
    const SLICE_NS: u64 = 100_000_000;
    /// How long a receiver that stepped back for a spinning one waits on its socket before it
    /// looks again (the spinner may have left meanwhile).
    const STEP_BACK_NS: u64 = 200_000;
    port.device_wait_enter();
    // None: leave the device to the RX thread and wait on the socket
    let end = loop {
        if !core.is_empty() || core.error() != 0 {
            break Some(WaitEnd::Ready);
        }
        if !port.enabled() || !port.receiver_alone() {
            // the port is going away (nothing more comes from its device), or another receiver
            // blocks on it: the RX thread serves both (see `Port::receiver_blocks`)
            break None;
        }
        let now = monotonic_ns();
        let slice = match deadline_ns {
            Some(d) if now >= d => break Some(WaitEnd::TimedOut),
            Some(d) => (d - now).min(SLICE_NS),
            None => SLICE_NS,
        };
        if port.spinning(now, spun) {
            core.wait(Some(now + STEP_BACK_NS.min(slice)));
            continue;
        }
        core.set_in_device(true);
        if !core.is_empty() {
            core.set_in_device(false);
            continue; // queued by another thread just now: no need to block
        }
        let got = port.wait_rx(slice);
        core.set_in_device(false);
        if got.is_none() {
            // another receiver is blocked in the device: take what it delivers meanwhile (the
            // RX thread never holds the device: if it is in there too, it parks after its
            // next frame, since a receiver waits)
            core.wait(Some(monotonic_ns() + 1_000_000.min(slice)));
        }
    };
    port.device_wait_exit();
    end.unwrap_or_else(|| {
        port.resume_rx_thread();
        core.wait(deadline_ns)
    })
}

#[pymethods]
impl PySocket {
    #[new]
    fn new(stack: PyRef<'_, PyStack>) -> PyResult<Self> {
        Ok(PySocket {
            core: Arc::new(SocketCore::new().map_err(|e| ioerr(e, "socket"))?),
            stack: Arc::clone(&stack.core),
            local_addr: 0,
            local_port: 0,
            ttl: 64,
            tos: 0,
            dont_fragment: false,
            broadcast: false,
            bound_port: None,
            remote_addr: 0,
            remote_port: 0,
            peer_text: Mutex::new(None),
        })
    }

    /// Share another socket's queue (SO_REUSEPORT owners of one binding).
    fn share_queue_of(&mut self, other: PyRef<'_, PySocket>) {
        self.core = Arc::clone(&other.core);
    }

    /// Use a private queue again (after leaving a shared binding).
    fn private_queue(&mut self) -> PyResult<()> {
        let fresh = SocketCore::new().map_err(|e| ioerr(e, "socket"))?;
        fresh.set_rcvbuf(self.core.rcvbuf());
        self.core = Arc::new(fresh);
        Ok(())
    }

    /// The readiness fd: readable while a datagram, a TX record or an error is pending.
    fn fileno(&self) -> i32 {
        self.core.fd()
    }

    #[getter]
    fn rcvbuf(&self) -> usize {
        self.core.rcvbuf()
    }

    #[setter]
    fn set_rcvbuf(&self, v: usize) {
        self.core.set_rcvbuf(v);
    }

    #[getter]
    fn tsflags(&self) -> u32 {
        self.core.tsflags()
    }

    #[setter]
    fn set_tsflags(&self, v: u32) {
        self.core.set_tsflags(v);
    }

    #[getter]
    fn error(&self) -> i32 {
        self.core.error()
    }

    #[setter]
    fn set_error(&self, err: i32) {
        self.core.set_error(err);
    }

    /// Datagrams queued.
    fn __len__(&self) -> usize {
        self.core.len()
    }

    /// Free queued datagrams (those received on port `port_id` only, when given).
    #[pyo3(signature = (port_id=None))]
    fn purge(&self, port_id: Option<usize>) {
        let _ = port_id; // frames do not record their port yet: purge all
        self.core.purge(|_| false);
    }

    /// Receive one datagram into `buffer`: `(copied, length, src_addr, src_port, device_time,
    /// queuing_time, delivery_time)`.
    #[pyo3(signature = (buffer, nonblock=false, deadline_ns=None, busy_poll_us=0))]
    fn recv_into(
        &self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        nonblock: bool,
        deadline_ns: Option<u64>,
        busy_poll_us: u64,
    ) -> PyResult<RecvResult> {
        let b = self.pop_or_wait(py, nonblock, deadline_ns, busy_poll_us)?;
        let n = copy_out(buffer, b.payload())?;
        let m = b.meta;
        Ok((
            n,
            b.len(),
            m.src_addr,
            m.src_port,
            b.times.device,
            b.times.queuing,
            b.times.delivery,
        ))
    }

    /// Receive one frame (packet sockets): `(copied, length, port_id, protocol, pkttype,
    /// src_mac, device_time, queuing_time, delivery_time)`.
    #[pyo3(signature = (buffer, nonblock=false, deadline_ns=None, busy_poll_us=0))]
    fn recv_frame_into<'py>(
        &self,
        py: Python<'py>,
        buffer: &Bound<'_, PyAny>,
        nonblock: bool,
        deadline_ns: Option<u64>,
        busy_poll_us: u64,
    ) -> PyResult<FrameResult<'py>> {
        let b = self.pop_or_wait(py, nonblock, deadline_ns, busy_poll_us)?;
        let n = copy_out(buffer, b.payload())?;
        let m = b.meta;
        Ok((
            n,
            b.len(),
            m.port_id as usize,
            m.protocol,
            m.pkttype,
            PyBytes::new(py, &m.src_mac),
            b.times.device,
            b.times.queuing,
            b.times.delivery,
        ))
    }

    /// Queue data delivered by an in-band protocol handler (custom protocols); false when over
    /// SO_RCVBUF or no buffer is free (both counted on the port).
    #[pyo3(signature = (stack, port_id, data, src_addr=0, src_port=0, src_mac=None, protocol=0))]
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        stack: PyRef<'_, PyStack>,
        port_id: usize,
        data: &[u8],
        src_addr: u32,
        src_port: u16,
        src_mac: Option<&[u8]>,
        protocol: u16,
    ) -> PyResult<bool> {
        let port = stack
            .core
            .port(port_id)
            .ok_or_else(|| oserr(libc::ENETDOWN, "no such port"))?;
        // Not a frame in: the port's RX ledger does not count it; the caller (a custom
        // protocol handler) counts what it could not deliver.
        let Some(mut b) = port.rx_pool.take() else {
            return Ok(false);
        };
        if !b.fill(data) {
            return Err(oserr(
                libc::EMSGSIZE,
                "datagram larger than the port's buffers",
            ));
        }
        b.meta.src_addr = src_addr;
        b.meta.src_port = src_port;
        b.meta.port_id = port_id as u32;
        b.meta.protocol = protocol;
        if let Some(mac) = src_mac {
            b.meta.src_mac = mac_of(mac)?;
        }
        Ok(self.core.push(b, stack.core.rx_stamping()).is_ok())
    }

    /// `oob_sendmsg` for the common argument shapes, checked here so that no Python code runs
    /// per datagram: one bytes, bytearray or contiguous byte memoryview (alone or as a
    /// one-item list), an `(str, int)` address in dotted-quad form or none on a connected
    /// socket, flags 0 or MSG_DONTWAIT, a bound socket, no broadcast without SO_BROADCAST, a
    /// front-cache hit. Returns the bytes sent, or None for anything else: the caller then
    /// takes the general path, which owns every refusal (and its errno) and the demotion to the
    /// in-band stage.
    fn try_sendmsg(
        &self,
        py: Python<'_>,
        buffers: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        flags: &Bound<'_, PyAny>,
        nonblocking: bool,
    ) -> PyResult<Option<usize>> {
        let Some(flags) = exact_flags(flags, libc::MSG_DONTWAIT) else {
            return Ok(None);
        };
        let Some(data) = single_payload(buffers) else {
            return Ok(None);
        };
        let (dst, dport) = if address.is_none() {
            (self.remote_addr, self.remote_port)
        } else {
            match dotted_quad_address(address) {
                Some(a) => a,
                None => return Ok(None),
            }
        };
        if dst == 0 || dport == 0 || self.local_port == 0 {
            return Ok(None);
        }
        if !self.broadcast && self.stack.is_broadcast(dst) {
            return Ok(None);
        }
        // a disabled or vanished port: the general path raises its errno
        let Ok(Some((port, mac, source))) = self.fast_route(dst) else {
            return Ok(None);
        };
        let nonblock = nonblocking || flags != 0;
        let tsflags = self.core.tsflags();
        self.send_via(
            py, &port, mac, source, dst, dport, &data, tsflags, nonblock, None,
        )
        .map(Some)
    }

    /// `oob_recvmsg_into` for the common argument shapes: one bytearray (alone or as a
    /// one-item list), flags 0 or MSG_DONTWAIT, a timeout of None or seconds >= 0, no control
    /// buffer. Returns `(nbytes, [], msg_flags, (host, port))`, or None for anything else (the
    /// caller takes the general path). Errors (EWOULDBLOCK, ETIMEDOUT, the port's) are raised
    /// here as the general path would raise them.
    fn try_recvmsg_into<'py>(
        &self,
        py: Python<'py>,
        buffers: &Bound<'py, PyAny>,
        flags: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        nonblocking: bool,
        busy_poll_us: u64,
    ) -> PyResult<Option<FastRecv<'py>>> {
        let Some(flags) = exact_flags(flags, libc::MSG_DONTWAIT) else {
            return Ok(None);
        };
        let Some(target) = single_bytearray(buffers) else {
            return Ok(None);
        };
        let deadline_ns = if timeout.is_none() {
            None
        } else {
            let secs = if let Ok(f) = timeout.cast_exact::<PyFloat>() {
                f.value()
            } else if let Ok(i) = timeout.cast_exact::<PyInt>() {
                match i.extract::<u32>() {
                    Ok(v) => f64::from(v),
                    Err(_) => return Ok(None),
                }
            } else {
                return Ok(None);
            };
            if secs.is_nan() || secs < 0.0 {
                return Ok(None);
            }
            // seconds beyond what a u64 of ns holds (~584 years): no deadline at all
            let ns = secs * 1e9;
            (ns < 1.8e19).then(|| monotonic_ns().saturating_add(ns as u64))
        };
        let nonblock = nonblocking || flags != 0;
        let b = self.pop_or_wait(py, nonblock, deadline_ns, busy_poll_us)?;
        let payload = b.payload();
        // SAFETY: the GIL is held from here to the end of the copy and no Python code runs
        // meanwhile, so nothing can resize or free the bytearray while the slice lives.
        let dst = unsafe { target.as_bytes_mut() };
        let n = payload.len().min(dst.len());
        dst[..n].copy_from_slice(&payload[..n]);
        let length = b.len();
        let (src_addr, src_port) = (b.meta.src_addr, b.meta.src_port);
        drop(b); // back to the pool before any Python object is made
        let mflags = if n < length { libc::MSG_TRUNC } else { 0 };
        let host = self.peer_text(py, src_addr);
        Ok(Some((n, PyList::empty(py), mflags, (host, src_port))))
    }

    /// Send a UDP datagram through the front cache (the oob fast path). Returns the bytes sent,
    /// or -1 on a front-cache miss (the caller demotes the datagram to the in-band stage).
    #[pyo3(signature = (dst, dport, data, tsflags=0, nonblock=false, deadline_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn sendto(
        &self,
        py: Python<'_>,
        dst: u32,
        dport: u16,
        data: &Bound<'_, PyAny>,
        tsflags: u32,
        nonblock: bool,
        deadline_ns: Option<u64>,
    ) -> PyResult<isize> {
        let Some((port, mac, source)) = self.fast_route(dst)? else {
            return Ok(-1);
        };
        self.send_via(
            py,
            &port,
            mac,
            source,
            dst,
            dport,
            data,
            tsflags,
            nonblock,
            deadline_ns,
        )
        .map(|n| n as isize)
    }

    /// Send a UDP datagram once route and neighbour are known (demoted sends, resolved in-band).
    #[pyo3(signature = (port, dst_mac, source, dst, dport, data, tsflags=0, nonblock=false,
                        deadline_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn send_resolved(
        &self,
        py: Python<'_>,
        port: PyRef<'_, PyPort>,
        dst_mac: &[u8],
        source: u32,
        dst: u32,
        dport: u16,
        data: &Bound<'_, PyAny>,
        tsflags: u32,
        nonblock: bool,
        deadline_ns: Option<u64>,
    ) -> PyResult<usize> {
        let mac = mac_of(dst_mac)?;
        let port = Arc::clone(&port.port);
        self.send_via(
            py,
            &port,
            mac,
            source,
            dst,
            dport,
            data,
            tsflags,
            nonblock,
            deadline_ns,
        )
    }

    /// `oob_recvmsg(MSG_TIMESTAMP)`: TX records into `buffer`, `(bytes, truncated)`.
    #[pyo3(signature = (buffer, nonblock=false, deadline_ns=None))]
    fn collect_tx(
        &self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        nonblock: bool,
        deadline_ns: Option<u64>,
    ) -> PyResult<(usize, bool)> {
        let room = writable_len(buffer)? / 24;
        if room == 0 {
            return Err(oserr(
                libc::EINVAL,
                "buffer holds less than one 24-byte record",
            ));
        }
        loop {
            let mut out = [0u8; 24 * TX_RING_SIZE];
            let (n, trunc) = self.core.pop_tx_records(&mut out, room.min(TX_RING_SIZE));
            if n > 0 {
                copy_out(buffer, &out[..n * 24])?;
                return Ok((n * 24, trunc));
            }
            if self.core.tsflags() & crate::socket::TS_TX == 0 {
                return Err(oserr(
                    libc::EINVAL,
                    "TX timestamping is off (SO_TIMESTAMP_OOB)",
                ));
            }
            let err = self.core.error();
            if err == libc::EBADF {
                return Err(oserr(err, "socket closed while collecting TX timestamps"));
            }
            if nonblock {
                return Err(oserr(libc::EWOULDBLOCK, "no TX timestamp queued"));
            }
            let core = Arc::clone(&self.core);
            if outside_gil(py, move || core.wait_tx_records(deadline_ns)) == WaitEnd::TimedOut
                && self.core.tx_records() == 0
            {
                return Err(oserr(
                    libc::ETIMEDOUT,
                    "no TX timestamp before the deadline",
                ));
            }
            py.check_signals()?;
        }
    }

    /// TX records waiting.
    #[getter]
    fn tx_records(&self) -> usize {
        self.core.tx_records()
    }

    /// TX records lost to ring overflows since SO_TIMESTAMP_OOB was last set.
    #[getter]
    fn tx_records_dropped(&self) -> u64 {
        self.core.tx_records_dropped()
    }

    /// Threads blocked in a receive or a TX record collection right now.
    #[getter]
    fn waiters(&self) -> usize {
        self.core.waiters()
    }
}

impl PySocket {
    #[allow(clippy::too_many_arguments)]
    fn send_via(
        &self,
        py: Python<'_>,
        port: &Arc<Port>,
        mac: [u8; 6],
        source: u32,
        dst: u32,
        dport: u16,
        data: &Bound<'_, PyAny>,
        tsflags: u32,
        nonblock: bool,
        deadline_ns: Option<u64>,
    ) -> PyResult<usize> {
        port.check_sendable().map_err(|e| oserr(e, "send"))?;
        let src = if self.local_addr == 0 || self.local_addr == u32::MAX {
            source
        } else {
            self.local_addr
        };
        let delivery = if tsflags & crate::socket::TS_TX != 0 {
            monotonic_ns()
        } else {
            0
        };
        let sock = Arc::clone(&self.core);
        with_payload(data, |payload| {
            let dgram = UdpDatagram {
                dst_mac: mac,
                src,
                dst,
                sport: self.local_port,
                dport,
                ttl: self.ttl,
                tos: self.tos,
                dont_fragment: self.dont_fragment,
                payload,
                tsflags,
                delivery_time: delivery,
            };
            let mut get = || take_buffer(py, port, nonblock, deadline_ns);
            let mut xmit = |item: TxItem| transmit(py, port, item);
            tx::send_udp(port, Some(&sock), &dgram, &mut get, &mut xmit).map_err(|e| match e {
                SendError::Errno(errno) => oserr(errno, "send"),
                SendError::Buffer(err) => err,
            })
        })?
    }
}

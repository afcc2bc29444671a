//! The devices a port can be enabled on: the ends and VLAN devices of an embedded virtual link
//! (`VirtualEnd`, `VirtualVlan`, `virtual_link`) and Linux interfaces (`AfPacket`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::device::afpacket::AfPacket;
use crate::device::virtual_link::{VirtualEnd, VirtualLink, VirtualVlan};
use crate::device::Device;

use super::errors::{ioerr, oserr};
use super::outside_gil;

/// Anything a port can be enabled on.
pub(super) fn device_of(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn Device>> {
    if let Ok(e) = obj.cast::<PyVirtualEnd>() {
        return Ok(e.get().end.clone() as Arc<dyn Device>);
    }
    if let Ok(v) = obj.cast::<PyVirtualVlan>() {
        return Ok(v.get().vlan.clone() as Arc<dyn Device>);
    }
    if let Ok(a) = obj.cast::<PyAfPacket>() {
        return Ok(a.get().dev.clone() as Arc<dyn Device>);
    }
    Err(oserr(libc::EINVAL, "not a core device"))
}

/// One end of an embedded virtual link.
#[pyclass(module = "evlnet._core", name = "VirtualEnd", frozen)]
pub(super) struct PyVirtualEnd {
    end: Arc<VirtualEnd>,
}

#[pymethods]
impl PyVirtualEnd {
    #[getter]
    fn name(&self) -> String {
        self.end.name().to_string()
    }
    #[getter]
    fn ifindex(&self) -> u32 {
        self.end.ifindex()
    }
    #[getter]
    fn mac<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.end.mac())
    }
    #[getter]
    fn mtu(&self) -> usize {
        self.end.mtu()
    }
    fn is_up(&self) -> bool {
        self.end.is_up()
    }
    /// `ip link set <end> up|down`.
    fn set_up(&self, up: bool) {
        self.end.set_up(up);
    }
    /// `ip link del <end>`.
    fn remove(&self) {
        self.end.remove();
    }
    /// A VLAN device on this end.
    fn add_vlan(&self, vid: u16, name: &str) -> PyResult<PyVirtualVlan> {
        let vlan = self
            .end
            .add_vlan(vid, Some(name))
            .map_err(|e| ioerr(e, "add VLAN"))?;
        Ok(PyVirtualVlan { vlan })
    }
    /// Put a frame on the wire from Python (tests, tools).
    fn transmit(&self, frame: &[u8]) -> PyResult<()> {
        self.end.transmit(frame).map_err(|e| ioerr(e, "transmit"))
    }
    /// Deliver a frame to this end as if it came from the wire.
    fn inject(&self, frame: &[u8]) {
        self.end.inject(frame);
    }
    /// Record the frames arriving here (and deliver them too with `passthrough`).
    fn set_tap(&self, enabled: bool, passthrough: bool) {
        self.end.set_tap(enabled, passthrough);
    }
    fn take_tapped<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.end
            .take_tapped()
            .iter()
            .map(|f| PyBytes::new(py, f))
            .collect()
    }
    /// Wait up to `timeout` seconds for a recorded frame (GIL released).
    fn wait_tapped(&self, py: Python<'_>, timeout: f64) -> bool {
        let end = Arc::clone(&self.end);
        let ns = (timeout.max(0.0) * 1e9) as u64;
        outside_gil(py, move || end.wait_tapped(Some(ns)))
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.end.counters().snapshot()
    }
    /// Test hook: close (true) or open the TX gate (transmits wait inside the device).
    fn hold_tx(&self, py: Python<'_>, closed: bool) {
        let end = Arc::clone(&self.end);
        outside_gil(py, move || end.hold_tx(closed));
    }
    /// Test hook: transmits that waited at the gate.
    fn tx_held(&self) -> usize {
        self.end.tx_held()
    }
}

/// A VLAN device on a virtual end.
#[pyclass(module = "evlnet._core", name = "VirtualVlan", frozen)]
pub(super) struct PyVirtualVlan {
    vlan: Arc<VirtualVlan>,
}

#[pymethods]
impl PyVirtualVlan {
    #[getter]
    fn name(&self) -> String {
        self.vlan.name().to_string()
    }
    #[getter]
    fn ifindex(&self) -> u32 {
        self.vlan.ifindex()
    }
    #[getter]
    fn vlan_id(&self) -> u16 {
        self.vlan.vlan_id()
    }
    fn is_up(&self) -> bool {
        self.vlan.is_up()
    }
    fn transmit(&self, frame: &[u8]) -> PyResult<()> {
        self.vlan.transmit(frame).map_err(|e| ioerr(e, "transmit"))
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.vlan.counters().snapshot()
    }
}

/// `(a, b)`: the two ends of a new virtual link.
#[pyfunction]
pub(super) fn virtual_link(name_a: &str, name_b: &str, mtu: usize) -> (PyVirtualEnd, PyVirtualEnd) {
    let link = VirtualLink::new(name_a, name_b, mtu);
    (PyVirtualEnd { end: link.a }, PyVirtualEnd { end: link.b })
}

/// A Linux interface through an AF_PACKET TPACKET_V2 ring (made in the caller's netns).
#[pyclass(module = "evlnet._core", name = "AfPacket", frozen)]
pub(super) struct PyAfPacket {
    pub(super) dev: Arc<AfPacket>,
    /// The RX pool of a driver test (`attach`); a port brings its own.
    test_pool: std::sync::Mutex<Option<Arc<crate::pool::Pool>>>,
}

#[pymethods]
impl PyAfPacket {
    #[new]
    fn new(ifname: &str, rx_frames: usize) -> PyResult<Self> {
        let dev = AfPacket::open(ifname, rx_frames).map_err(|e| ioerr(e, ifname))?;
        Ok(PyAfPacket {
            dev: Arc::new(dev),
            test_pool: std::sync::Mutex::new(None),
        })
    }
    #[getter]
    fn ifindex(&self) -> u32 {
        self.dev.ifindex()
    }
    #[getter]
    fn mac<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.dev.mac())
    }
    #[getter]
    fn mtu(&self) -> usize {
        self.dev.mtu()
    }
    #[getter]
    fn hatype(&self) -> u16 {
        self.dev.hatype()
    }
    /// `(frame size, frames)` of the RX ring.
    #[getter]
    fn ring_geometry(&self) -> (usize, usize) {
        self.dev.ring_geometry()
    }
    fn is_up(&self) -> bool {
        self.dev.is_up()
    }
    /// Driver tests: attach an RX pool of `count` buffers of `size` bytes (a port does this
    /// itself when it is enabled on the device).
    fn attach(&self, count: usize, size: usize) -> PyResult<()> {
        let pool = crate::pool::Pool::new("driver test", count, size);
        self.dev
            .attach(Arc::clone(&pool))
            .map_err(|e| ioerr(e, "attach"))?;
        *self.test_pool.lock().unwrap_or_else(|e| e.into_inner()) = Some(pool);
        Ok(())
    }
    fn detach(&self) {
        self.dev.detach();
        self.test_pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
    /// Driver tests: up to `limit` frames as `(frame, device_time)`, waiting up to `timeout`
    /// seconds (None: until one arrives or `wake()`) with the GIL released.
    #[pyo3(signature = (limit, timeout=None))]
    fn receive<'py>(
        &self,
        py: Python<'py>,
        limit: usize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, u64)>> {
        let dev = Arc::clone(&self.dev);
        let ns = timeout.map(|t| (t.max(0.0) * 1e9) as u64);
        let got = outside_gil(py, move || {
            let mut out = Vec::new();
            dev.receive(limit, ns, &mut |b| {
                out.push((b.payload().to_vec(), b.times.device))
            })
            .map(|_| out)
        })
        .map_err(|e| ioerr(e, "receive"))?;
        Ok(got
            .into_iter()
            .map(|(f, t)| (PyBytes::new(py, &f), t))
            .collect())
    }
    /// Whether a frame is waiting in the ring (one memory read).
    fn ready(&self) -> bool {
        self.dev.ready()
    }
    fn wake(&self) {
        self.dev.wake();
    }
    /// Driver tests: free buffers of the attached pool.
    fn pool_free(&self) -> usize {
        self.test_pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |p| p.free())
    }
    fn fileno(&self) -> i32 {
        self.dev.fd()
    }
    fn set_vlan_id(&self, vid: u16) {
        self.dev.set_vlan_id(vid);
    }
    fn set_link_up(&self, up: bool) {
        self.dev.set_link_up(up);
    }
    fn set_link_gone(&self) {
        self.dev.set_link_gone();
    }
    /// Attach a classic BPF socket filter (`(code, jt, jf, k)` tuples).
    fn set_filter(&self, prog: Vec<(u16, u8, u8, u32)>) -> PyResult<()> {
        self.dev
            .set_filter(&prog)
            .map_err(|e| ioerr(e, "the kernel rejected the BPF program"))
    }
    fn clear_filter(&self) -> PyResult<()> {
        self.dev
            .clear_filter()
            .map_err(|e| ioerr(e, "detach filter"))
    }
    /// `(tp_packets, tp_drops, tp_freeze_q_cnt)` since the last read.
    fn read_kernel_stats(&self) -> PyResult<(u64, u64, u64)> {
        self.dev
            .read_kernel_stats()
            .map_err(|e| ioerr(e, "PACKET_STATISTICS"))
    }
    fn transmit(&self, frame: &[u8]) -> PyResult<()> {
        self.dev.transmit(frame).map_err(|e| ioerr(e, "transmit"))
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.dev.counters().snapshot()
    }
}

//! The seam between the compiled core and the Python control plane (PyO3).
//!
//! This is the only module that knows about Python. Everything it exposes is a handle on core
//! state. GIL discipline (measured): a receive checks its queue with the GIL held and returns at
//! once when data is there; it releases the GIL only to wait; a short send keeps the GIL (taking
//! and releasing it costs more than the send). No core thread ever takes the GIL: events go up
//! through the stack's in-band queue, read by a Python thread with `next_event`.
//!
//! One file per handle: `stack` (`Stack`), `device` (`VirtualEnd`, `VirtualVlan`,
//! `virtual_link`, `AfPacket`), `port` (`Port`, `Capture`, the TX helpers), `socket` (`Socket`
//! and its fast path), `filter` (the eBPF filters); `errors` and `buffers` hold what they share.

mod buffers;
mod device;
mod errors;
mod filter;
mod port;
mod socket;
mod stack;

use pyo3::prelude::*;

use crate::timestamps::monotonic_ns;

/// The `evlnet._core` extension module.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<stack::PyStack>()?;
    m.add_class::<port::PyPort>()?;
    m.add_class::<port::PyCapture>()?;
    m.add_class::<socket::PySocket>()?;
    m.add_class::<device::PyVirtualEnd>()?;
    m.add_class::<device::PyVirtualVlan>()?;
    m.add_class::<device::PyAfPacket>()?;
    m.add_function(wrap_pyfunction!(device::virtual_link, m)?)?;
    m.add_function(wrap_pyfunction!(monotonic_ns_py, m)?)?;
    filter::register(m)?;
    Ok(())
}

/// CLOCK_MONOTONIC in ns, as the core reads it.
#[pyfunction(name = "monotonic_ns")]
fn monotonic_ns_py() -> u64 {
    monotonic_ns()
}

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

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use pyo3::marker::Ungil;
use pyo3::prelude::*;

use crate::timestamps::monotonic_ns;

/// Python threads inside the core with the GIL released (`outside_gil`).
static THREADS_OUTSIDE_GIL: AtomicUsize = AtomicUsize::new(0);

/// Run `f` with the GIL released, counted in `threads_outside_gil`. At exit, evlnet closes its
/// stacks (which wakes every waiter) and then waits for the count to reach 0: a thread that
/// takes the GIL back once the interpreter finalizes is ended by CPython with `pthread_exit`,
/// and that forced unwinding through the core's frames aborts the process.
pub(crate) fn outside_gil<T: Ungil, F: Ungil + FnOnce() -> T>(py: Python<'_>, f: F) -> T {
    /// Counts the thread out when `detach` has returned (the GIL is held again), even on a
    /// panic.
    struct Inside;
    impl Drop for Inside {
        fn drop(&mut self) {
            THREADS_OUTSIDE_GIL.fetch_sub(1, SeqCst);
        }
    }
    THREADS_OUTSIDE_GIL.fetch_add(1, SeqCst);
    let _inside = Inside;
    py.detach(f)
}

/// In a forked child: the parent's threads are not there (the forking one holds the GIL).
extern "C" fn forget_threads_outside_gil() {
    THREADS_OUTSIDE_GIL.store(0, SeqCst);
}

/// How many Python threads are inside the core with the GIL released (waiting, or in a
/// device call): evlnet's exit hook waits for none to be left.
#[pyfunction]
fn threads_outside_gil() -> usize {
    THREADS_OUTSIDE_GIL.load(SeqCst)
}

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
    m.add_function(wrap_pyfunction!(threads_outside_gil, m)?)?;
    // SAFETY: registers a plain `extern "C"` function as a fork child handler; it only stores
    // to an atomic, which is async-signal-safe, and takes no arguments.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_threads_outside_gil)) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc).into());
    }
    filter::register(m)?;
    Ok(())
}

/// CLOCK_MONOTONIC in ns, as the core reads it.
#[pyfunction(name = "monotonic_ns")]
fn monotonic_ns_py() -> u64 {
    monotonic_ns()
}

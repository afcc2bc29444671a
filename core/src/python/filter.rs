//! The seam's eBPF filter part (see `filter`): programs loaded from object files, run by a
//! port's RX path in the VM or loaded into the kernel for a Linux port's two hooks.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::filter::kernel::{self, Counter, Hook, KernelCounters, TcxLink};
use crate::filter::vm::VmFilter;
use crate::filter::{FilterError, Program};

use super::device::PyAfPacket;
use super::errors::oserr;
use super::outside_gil;
use super::port::PyPort;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFilterProgram>()?;
    m.add_class::<PyKernelProgram>()?;
    m.add_class::<PyKernelCounters>()?;
    m.add_class::<PyTcxLink>()?;
    m.add_function(wrap_pyfunction!(set_port_filter, m)?)?;
    m.add_function(wrap_pyfunction!(attach_socket_filter, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_floor_program, m)?)?;
    Ok(())
}

fn filter_err(e: FilterError) -> PyErr {
    PyOSError::new_err((e.errno, e.message))
}

/// A filter program taken from an eBPF object file and verified (EINVAL otherwise).
#[pyclass(module = "evlnet._core", name = "FilterProgram", frozen)]
struct PyFilterProgram {
    program: Program,
}

#[pymethods]
impl PyFilterProgram {
    #[new]
    fn new(py: Python<'_>, data: Vec<u8>) -> PyResult<Self> {
        let program = outside_gil(py, || Program::from_object(&data)).map_err(filter_err)?;
        Ok(PyFilterProgram { program })
    }
    /// The ELF section the program came from.
    #[getter]
    fn section(&self) -> String {
        self.program.section.clone()
    }
    #[getter]
    fn insn_count(&self) -> usize {
        self.program.insns.len()
    }
    /// Stack bytes the program uses.
    #[getter]
    fn stack_depth(&self) -> i64 {
        self.program.facts.stack_depth
    }
    /// Benchmark hook: run the program `runs` times on `frame` in the VM, as the RX path does
    /// (GIL released), JIT-compiled where the RX path would be, or in the interpreter when
    /// `interpreted`: `(verdict, ns per run)`, -1 for a faulted run.
    #[pyo3(signature = (frame, runs, interpreted = false))]
    fn time_vm(
        &self,
        py: Python<'_>,
        frame: Vec<u8>,
        runs: u32,
        interpreted: bool,
    ) -> PyResult<(i64, f64)> {
        let vm = VmFilter::new(self.program.clone()).map_err(filter_err)?;
        Ok(outside_gil(py, || {
            let start = std::time::Instant::now();
            let mut r0 = None;
            for _ in 0..runs.max(1) {
                let frame = std::hint::black_box(&frame);
                r0 = std::hint::black_box(if interpreted {
                    vm.run_r0_interpreted(frame, 1, 0)
                } else {
                    vm.run_r0(frame, 1, 0)
                });
            }
            let ns = start.elapsed().as_nanos() as f64 / runs.max(1) as f64;
            (r0.map_or(-1, |v| v as i64), ns)
        }))
    }
    /// Whether the RX path runs this program JIT-compiled (x86-64, short enough for the JIT's
    /// page), else in the interpreter.
    #[getter]
    fn jitted(&self) -> PyResult<bool> {
        Ok(VmFilter::new(self.program.clone())
            .map_err(filter_err)?
            .is_jitted())
    }
    /// Load the program into the kernel for `hook` ("socket" or "tc"), the VLAN verdict
    /// accepting `vids`, the tc program counting into `counters`. OSError with the kernel's
    /// errno and the end of its verifier log when refused.
    fn kernel_load(
        &self,
        hook: &str,
        vids: Vec<u16>,
        counters: PyRef<'_, PyKernelCounters>,
        name: &str,
    ) -> PyResult<PyKernelProgram> {
        let hook = match hook {
            "socket" => Hook::Socket,
            "tc" => Hook::Tc,
            _ => return Err(PyOSError::new_err((libc::EINVAL, "hook: socket or tc"))),
        };
        let p = kernel::load(&self.program, hook, &vids, &counters.counters, name)
            .map_err(filter_err)?;
        Ok(PyKernelProgram { fd: Some(p.fd) })
    }
}

/// A program loaded into the kernel (its fd; closed by `close()` or when collected).
#[pyclass(module = "evlnet._core", name = "KernelProgram")]
struct PyKernelProgram {
    fd: Option<OwnedFd>,
}

#[pymethods]
impl PyKernelProgram {
    fn fileno(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
    fn close(&mut self) {
        self.fd = None;
    }
    /// Benchmark hook: run the program `repeat` times on `frame` in the kernel
    /// (BPF_PROG_TEST_RUN): `(return value, ns per run)` as the kernel measured.
    fn test_run(&self, py: Python<'_>, frame: Vec<u8>, repeat: u32) -> PyResult<(u32, u32)> {
        let prog = program_of(self)?;
        outside_gil(py, || prog.test_run(&frame, repeat))
            .map_err(|e| PyOSError::new_err((e, "BPF_PROG_TEST_RUN")))
    }
}

/// A tc ingress program attached by a tcx link: detached when closed, collected, or when the
/// process dies.
#[pyclass(module = "evlnet._core", name = "TcxLink")]
struct PyTcxLink {
    link: Option<TcxLink>,
}

fn program_of(p: &PyKernelProgram) -> PyResult<kernel::KernelProgram> {
    let fd =
        p.fd.as_ref()
            .ok_or_else(|| oserr(libc::EBADF, "closed program"))?;
    Ok(kernel::KernelProgram {
        fd: fd
            .try_clone()
            .map_err(|e| oserr(e.raw_os_error().unwrap_or(libc::EIO), "dup"))?,
    })
}

#[pymethods]
impl PyTcxLink {
    /// Attach `program` (loaded for "tc") at interface `ifindex`'s tcx ingress.
    #[new]
    fn new(program: PyRef<'_, PyKernelProgram>, ifindex: u32) -> PyResult<Self> {
        let prog = program_of(&program)?;
        let link = TcxLink::attach(&prog, ifindex).map_err(|e| oserr(e, "tcx attach"))?;
        Ok(PyTcxLink { link: Some(link) })
    }
    /// Swap the attached program for `program`, atomically.
    fn update(&self, program: PyRef<'_, PyKernelProgram>) -> PyResult<()> {
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| oserr(libc::EBADF, "closed link"))?;
        link.update(&program_of(&program)?)
            .map_err(|e| oserr(e, "tcx update"))
    }
    /// Detach the program.
    fn close(&mut self) {
        self.link = None;
    }
}

/// The per-CPU counters of a port's kernel filter.
#[pyclass(module = "evlnet._core", name = "KernelCounters", frozen)]
struct PyKernelCounters {
    counters: KernelCounters,
}

#[pymethods]
impl PyKernelCounters {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(PyKernelCounters {
            counters: KernelCounters::new().map_err(filter_err)?,
        })
    }
    /// `{"dropped", "invalid", "skipped", "accepted"}`, summed over the CPUs.
    fn read(&self) -> Vec<(&'static str, u64)> {
        [
            ("dropped", Counter::Dropped),
            ("invalid", Counter::Invalid),
            ("skipped", Counter::Skipped),
            ("accepted", Counter::Accepted),
        ]
        .into_iter()
        .map(|(n, c)| (n, self.counters.read(c)))
        .collect()
    }
}

/// Run `program` in `port`'s RX path (None: no filter there). The swap is atomic: a frame is
/// judged by the old program or the new one, and frames already queued are not touched.
#[pyfunction]
#[pyo3(signature = (port, program=None))]
fn set_port_filter(
    port: PyRef<'_, PyPort>,
    program: Option<PyRef<'_, PyFilterProgram>>,
) -> PyResult<()> {
    let vm = match program {
        Some(p) => Some(Arc::new(
            VmFilter::new(p.program.clone()).map_err(filter_err)?,
        )),
        None => None,
    };
    port.port.filter.store(vm);
    Ok(())
}

/// Attach a kernel program as an AF_PACKET device's socket filter (replacing any filter).
#[pyfunction]
fn attach_socket_filter(
    dev: PyRef<'_, PyAfPacket>,
    program: PyRef<'_, PyKernelProgram>,
) -> PyResult<()> {
    dev.dev.set_ebpf_filter(program.fileno()).map_err(|e| {
        PyOSError::new_err((
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("SO_ATTACH_BPF: {e}"),
        ))
    })
}

/// Benchmark hook: a program that only returns, loaded for "xdp", "tc" or "socket" (the cost
/// of a hook itself, to compare where a filter could run).
#[pyfunction]
fn kernel_floor_program(hook: &str) -> PyResult<PyKernelProgram> {
    let p = kernel::load_floor(hook).map_err(filter_err)?;
    Ok(PyKernelProgram { fd: Some(p.fd) })
}

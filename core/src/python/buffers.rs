//! Bytes across the seam: payloads read from Python objects without a copy, data copied into
//! Python buffers, MAC addresses.

use std::mem::MaybeUninit;

use pyo3::buffer::PyBuffer;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::oserr;

pub(super) fn mac_of(b: &[u8]) -> PyResult<[u8; 6]> {
    b.try_into()
        .map_err(|_| oserr(libc::EINVAL, "a MAC address has 6 bytes"))
}

/// Run `f` on the bytes `obj` exports through the buffer protocol: C-contiguous and
/// byte-addressed (`PyBUF_SIMPLE`), writable too if asked (`PyBUF_WRITABLE`). The `Py_buffer`
/// lives on this stack frame: pyo3's `PyBuffer` boxes it, which cost one heap allocation per
/// datagram on the send and receive paths. Err: the exporter's own error (TypeError for an
/// object without the buffer protocol, BufferError for a read-only or non-contiguous one).
///
/// `f` gets the start and the length; the bytes stay valid and the object unresizable (a
/// bytearray refuses to resize while exported) until `f` returns.
pub(super) fn with_exported<R>(
    obj: &Bound<'_, PyAny>,
    writable: bool,
    f: impl FnOnce(*mut u8, usize) -> R,
) -> PyResult<R> {
    /// Gives the export back on every way out of `with_exported`, a panic in `f` included.
    struct Release(*mut ffi::Py_buffer);
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer, is released once,
            // and the GIL is held: `f` may release it only within its own scope (`outside_gil`).
            unsafe { ffi::PyBuffer_Release(self.0) }
        }
    }
    let flags = if writable {
        ffi::PyBUF_WRITABLE
    } else {
        ffi::PyBUF_SIMPLE
    };
    let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `view` is storage for one Py_buffer that stays on this frame, never moved, until
    // `Release` gives it back; `obj` is a live object and the GIL is held (it is bound).
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    let _release = Release(view.as_mut_ptr());
    // SAFETY: PyObject_GetBuffer succeeded, so it initialised the view.
    let view = unsafe { &*view.as_ptr() };
    Ok(f(
        view.buf as *mut u8,
        usize::try_from(view.len).unwrap_or(0),
    ))
}

/// Copy `src` into a writable Python buffer (bytearray, memoryview, array...); returns the
/// bytes copied (at most the buffer's length).
pub(super) fn copy_out(target: &Bound<'_, PyAny>, src: &[u8]) -> PyResult<usize> {
    let copied = with_exported(target, true, |dst, len| {
        let n = src.len().min(len);
        // SAFETY: `dst` starts `len` writable bytes that stay valid while `with_exported`
        // holds the export; `n` fits both, and a Python buffer never overlaps a pool buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) };
        n
    });
    copied.map_err(|_| not_writable(target))
}

/// The length of a writable Python buffer (see `copy_out`).
pub(super) fn writable_len(target: &Bound<'_, PyAny>) -> PyResult<usize> {
    with_exported(target, true, |_, len| len).map_err(|_| not_writable(target))
}

/// Why `target` cannot receive bytes: TypeError for an object without the buffer protocol (as
/// the buffer protocol says it), EINVAL for a read-only or non-contiguous buffer.
fn not_writable(target: &Bound<'_, PyAny>) -> PyErr {
    match PyBuffer::<u8>::get(target) {
        Err(e) => e,
        Ok(_) => oserr(
            libc::EINVAL,
            "receive buffer must be writable and contiguous",
        ),
    }
}

/// Payload bytes of a Python object, without a copy: bytes directly, anything else (bytearray,
/// memoryview, array) through the buffer protocol. `f` reads the bytes only with the GIL held:
/// it may release the GIL to wait for a TX buffer, but copies the payload after taking it back.
pub(super) fn with_payload<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let mut f = Some(f);
    let exported = with_exported(data, false, |start, len| {
        let f = f.take().expect("called once");
        if len == 0 {
            return f(&[]);
        }
        // SAFETY: `start` begins `len` contiguous bytes that the export keeps alive and
        // unresizable until `with_exported` returns, which outlasts `f`. Python code can only
        // write them with the GIL, and `f` only reads them with the GIL held (see above).
        f(unsafe { std::slice::from_raw_parts(start as *const u8, len) })
    });
    match (exported, f) {
        (Ok(r), _) => Ok(r),
        // not C-contiguous (a strided memoryview): a copy, off the common path
        (Err(_), Some(f)) => {
            let buf = PyBuffer::<u8>::get(data)?;
            Ok(f(&buf.to_vec(data.py())?))
        }
        (Err(e), None) => Err(e),
    }
}

//! Bytes across the seam: payloads read from Python objects without a copy, data copied into
//! Python buffers, MAC addresses.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::oserr;

pub(super) fn mac_of(b: &[u8]) -> PyResult<[u8; 6]> {
    b.try_into()
        .map_err(|_| oserr(libc::EINVAL, "a MAC address has 6 bytes"))
}

/// Copy `src` into a writable Python buffer (bytearray, memoryview, array...); returns the
/// bytes copied (at most the buffer's length).
pub(super) fn copy_out(py: Python<'_>, target: &Bound<'_, PyAny>, src: &[u8]) -> PyResult<usize> {
    let buf = PyBuffer::<u8>::get(target)?;
    if buf.readonly() || !buf.is_c_contiguous() {
        return Err(oserr(
            libc::EINVAL,
            "receive buffer must be writable and contiguous",
        ));
    }
    let n = src.len().min(buf.len_bytes());
    // SAFETY: `buf` holds an exported, writable, C-contiguous buffer of `len_bytes()` bytes that
    // stays valid while `buf` lives and the GIL is held (it is: `py` is bound); `n` fits both.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.buf_ptr() as *mut u8, n) };
    let _ = py;
    Ok(n)
}

/// Payload bytes of a Python object, without a copy: bytes directly, anything else (bytearray,
/// memoryview, array) through the buffer protocol. `f` reads the bytes only with the GIL held:
/// it may release the GIL to wait for a TX buffer, but copies the payload after taking it back.
pub(super) fn with_payload<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(data)?;
    if !buf.is_c_contiguous() {
        return Ok(f(&buf.to_vec(data.py())?));
    }
    // SAFETY: `buf` keeps the exporter's memory alive and unresizable (a bytearray refuses to
    // resize while exported) for as long as it lives, which outlasts `f`; the region is
    // `len_bytes()` contiguous bytes. Python code can only write it with the GIL, and `f` only
    // reads it with the GIL held (see above), so the read never races a writer.
    let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(f(bytes))
}

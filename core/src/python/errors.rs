//! Core errors as Python exceptions: an errno becomes an `OSError` with the errno's text.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::port::Errno;

pub(super) fn oserr(errno: Errno, what: &str) -> PyErr {
    let msg = std::io::Error::from_raw_os_error(errno).to_string();
    PyOSError::new_err((errno, format!("{what}: {msg}")))
}

pub(super) fn ioerr(e: std::io::Error, what: &str) -> PyErr {
    oserr(e.raw_os_error().unwrap_or(libc::EIO), what)
}

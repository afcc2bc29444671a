//! A Linux eventfd used as a level-triggered readiness flag: readable while its owner has
//! something queued, so `poll()`, `select()`, `selectors` and asyncio's `add_reader` work on it,
//! and waiters block in `poll()` without holding the GIL.

use std::io;
use std::os::fd::RawFd;

/// An owned, non-blocking eventfd.
pub struct EventFd {
    fd: RawFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Make the fd readable.
    pub fn set(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own fd; EAGAIN (counter at max) is
        // harmless since the fd is readable then anyway.
        unsafe { libc::write(self.fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Make the fd unreadable again.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking fd.
        unsafe { libc::read(self.fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }

    /// Block until readable or `timeout_ns` passes (None: forever). True when readable.
    pub fn wait(&self, timeout_ns: Option<u64>) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout_ns.map(|ns| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one valid pollfd and an optional valid timespec, both outliving the call.
        let n = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
        n > 0
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own the fd and close it once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_wait() {
        let e = EventFd::new().unwrap();
        assert!(!e.wait(Some(0)));
        e.set();
        e.set();
        assert!(e.wait(Some(0)));
        e.clear();
        assert!(!e.wait(Some(1_000_000)));
    }
}

//! Waiting on several descriptors at once, for the threads that are not in the event loop
//! (device I/O threads, the pre-boot API loop). Owns no descriptors.

use std::io;
use std::os::fd::RawFd;

/// A descriptor to wait on for `events`.
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits for any of `fds` (`timeout_ms` -1: for ever); returns how many are ready. An
/// interruption by a signal is not an error: it returns 0 with no event set.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfds of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        fds.iter_mut().for_each(|fd| fd.revents = 0);
        return Ok(0);
    }
    Ok(n as usize)
}

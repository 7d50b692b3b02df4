//! Waiting on several descriptors at once, for the threads that are not in the event loop
//! (device I/O threads, the pre-boot API loop, the API socket server). Owns no descriptors.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

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

/// The [`poll`] timeout that wakes at `at`: milliseconds from now, rounded up so the wake-up
/// is not early; -1 (for ever) for `None`.
pub fn timeout_ms(at: Option<Instant>) -> libc::c_int {
    at.map_or(-1, |at| {
        let left = at.saturating_duration_since(Instant::now());
        libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A pipe: (read end, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn readiness_is_reported() {
        let (rd, wr) = pipe();
        let mut fds = [pollfd(rd.as_raw_fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, 0).unwrap(), 0);
        let mut wr = std::fs::File::from(wr);
        wr.write_all(&[1]).unwrap();
        assert_eq!(poll(&mut fds, -1).unwrap(), 1);
        assert_eq!(fds[0].revents, libc::POLLIN);
    }

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn an_interrupted_wait_is_a_round_with_nothing_ready() {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for SIGUSR1, which
        // nothing else in this test binary uses; the zeroed sigaction has an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
                0
            );
        }
        let (rd, _wr) = pipe();
        let fd = rd.as_raw_fd();
        let (done_tx, done_rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            // Nothing ever writes the pipe: only a signal ends this wait.
            let mut fds = [pollfd(fd, libc::POLLIN)];
            fds[0].revents = libc::POLLIN; // stale, as from an earlier round
            let n = poll(&mut fds, -1);
            done_tx.send(()).unwrap();
            (n.map_err(|e| e.to_string()), fds[0].revents)
        });
        // The signal may come before the thread waits: send it until the wait ends.
        while done_rx.recv_timeout(Duration::from_millis(10)).is_err() {
            // SAFETY: the thread is not joined yet, so its id is valid (one that has ended
            // keeps it until joined); the signal's handler does nothing.
            unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) };
        }
        assert_eq!(waiter.join().unwrap(), (Ok(0), 0));
    }

    #[test]
    fn timeouts_wake_at_the_deadline_not_before() {
        assert_eq!(timeout_ms(None), -1);
        let now = Instant::now();
        assert_eq!(timeout_ms(Some(now)), 0, "a deadline passed is now");
        // Rounded up: however long the call takes, waiting what it says ends at or after the
        // deadline.
        let at = Instant::now() + Duration::from_micros(2500);
        let wait = timeout_ms(Some(at));
        assert!(
            Instant::now() + Duration::from_millis(wait as u64) >= at,
            "{wait} ms is early"
        );
        let far = Instant::now() + Duration::from_secs(100 * 24 * 3600);
        assert_eq!(timeout_ms(Some(far)), libc::c_int::MAX);
    }
}

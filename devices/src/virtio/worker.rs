//! The device side of an I/O worker: a device's readiness rules, without the thread.
//!
//! The VMM gives each device an I/O thread that waits on the descriptors the device's
//! [`IoHandler`] names (and on its own stop and pause events) and hands the handler what became
//! ready. What to wait for, and what to do about it, is the device's business: the handler
//! decides, round by round, which descriptors matter and for which readiness, so a device that
//! waits for nothing costs no CPU. The handler never blocks and never spawns threads.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::timerfd::TimerFd;

/// One descriptor a handler waits on, and for what. A watch that wants neither readiness is
/// not waited on at all this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// The descriptor, which the handler keeps open.
    pub fd: RawFd,
    /// Wake when it has data to read (or an event to consume).
    pub readable: bool,
    /// Wake when it has room to write.
    pub writable: bool,
    /// Wake when it reports an error or hang-up, even when neither readiness is wanted (a
    /// socket that another thread reads, watched only for its peer going away).
    pub hangup: bool,
}

impl Watch {
    /// The watch as a `pollfd`. A watch that wants nothing (not even hang-ups) gets a
    /// negative descriptor, which poll skips: its descriptor is not watched this round.
    pub fn pollfd(&self) -> libc::pollfd {
        let mut events = 0;
        if self.readable {
            events |= libc::POLLIN;
        }
        if self.writable {
            events |= libc::POLLOUT;
        }
        // poll reports errors and hang-ups whatever the events asked for.
        let skip = events == 0 && !self.hangup;
        libc::pollfd {
            fd: if skip { -1 } else { self.fd },
            events,
            revents: 0,
        }
    }

    /// A watch for readability (an eventfd's count, a frame to read).
    pub fn readable(fd: RawFd) -> Self {
        Self {
            fd,
            readable: true,
            writable: false,
            hangup: false,
        }
    }

    /// A watch for an error or hang-up only.
    pub fn hangup(fd: RawFd) -> Self {
        Self {
            fd,
            readable: false,
            writable: false,
            hangup: true,
        }
    }
}

/// What became ready on one watched descriptor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// It can be read.
    pub readable: bool,
    /// It can be written.
    pub writable: bool,
    /// It reported an error or hang-up; the next read or write tells which.
    pub failed: bool,
}

impl Ready {
    /// What `poll(2)` reported in a watch's `revents`.
    pub fn from_revents(revents: libc::c_short) -> Self {
        Self {
            readable: revents & libc::POLLIN != 0,
            writable: revents & libc::POLLOUT != 0,
            failed: revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        }
    }

    /// Whether anything at all happened on it.
    pub fn any(&self) -> bool {
        self.readable || self.writable || self.failed
    }
}

/// A non-blocking timer for a handler to watch (readable once it expires): how a device
/// resumes work that waits for time rather than for an event (a rate limiter's refill, a TCP
/// retransmission).
pub fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    // SAFETY: F_SETFL on a descriptor this function owns; no memory is passed.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// A device's I/O readiness rules, run by the VMM's I/O worker thread.
pub trait IoHandler: Send {
    /// Replaces the contents of `watches` with what to wait on before the next call to
    /// [`IoHandler::ready`]. Called before every wait, so it may change from round to round.
    fn interest(&mut self, watches: &mut Vec<Watch>);

    /// Handles a round: `ready[i]` says what became ready on the `i`-th watch of the last
    /// [`IoHandler::interest`] (nothing at all when called only because work was pending).
    /// Does a bounded batch of work and returns whether more is pending, in which case the
    /// worker calls again without sleeping (after checking its stop and pause events).
    fn ready(&mut self, ready: &[Ready]) -> bool;

    /// The VM resumed after a pause, during which nothing was served and events were left
    /// pending; returns whether to serve before waiting again.
    fn resumed(&mut self) -> bool;
}

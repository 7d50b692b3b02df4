//! Pausing a running VM (`PATCH /vm`): vCPUs park between two `KVM_RUN`s and device I/O threads
//! stop serving until the VM resumes. The gate is a flag with a condvar; parked threads block
//! on it (no polling), and an eventfd that stays readable while paused wakes the I/O threads
//! out of `poll`. Pausing waits until every vCPU has parked, so a paused guest runs no code.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::bus::lock;
use vmm_sys_util::eventfd::EventFd;

struct State {
    paused: bool,
    parked: usize,
}

/// The VM-wide pause gate.
pub struct PauseGate {
    /// Mirrors `state.paused` for the vCPUs' check on every exit, which must not take a lock.
    closed: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    evt: EventFd,
}

impl PauseGate {
    /// An open gate.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                paused: false,
                parked: 0,
            }),
            changed: Condvar::new(),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Readable while the VM is paused, for I/O threads to poll.
    pub fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the gate; threads park at their next check. The caller kicks the vCPUs out of
    /// `KVM_RUN` and then waits with [`PauseGate::wait_parked`].
    pub fn pause(&self) -> io::Result<()> {
        lock(&self.state).paused = true;
        self.closed.store(true, Ordering::Release);
        self.evt.write(1)
    }

    /// Waits until `count` threads are parked; false after `limit`.
    pub fn wait_parked(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = lock(&self.state);
        while state.paused && state.parked < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Opens the gate and wakes every parked thread.
    pub fn resume(&self) {
        let mut state = lock(&self.state);
        state.paused = false;
        self.closed.store(false, Ordering::Release);
        // Drains the count, so the eventfd stops being readable.
        let _ = self.evt.read();
        drop(state);
        self.changed.notify_all();
    }

    /// Blocks the calling thread while the gate is closed, unless `stop` is set (the VM ends:
    /// its teardown opens the gate first).
    pub fn park(&self, stop: Option<&AtomicBool>) {
        let mut state = lock(&self.state);
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        state.parked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::{poll, pollfd};
    use std::sync::Arc;

    #[test]
    fn threads_park_while_paused_and_go_on_when_resumed() {
        let gate = Arc::new(PauseGate::new().unwrap());
        gate.park(None); // open: returns at once
        gate.pause().unwrap();
        assert!(gate.is_paused());
        let mut fds = [pollfd(gate.fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, 0).unwrap(), 1);
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.park(None))
            })
            .collect();
        assert!(gate.wait_parked(3, Duration::from_secs(5)));
        assert!(!gate.wait_parked(4, Duration::from_millis(50)));
        gate.resume();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(poll(&mut fds, 0).unwrap(), 0);
        // A stop flag releases a parked thread even while paused.
        gate.pause().unwrap();
        let stop = Arc::new(AtomicBool::new(true));
        gate.park(Some(&stop));
    }
}

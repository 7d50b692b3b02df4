//! Pausing a running VM (`PATCH /vm`): vCPUs park between two `KVM_RUN`s and device I/O threads
//! stop serving until the VM resumes. The gate is a flag with a condvar; parked threads block
//! on it (no polling), and an eventfd that stays readable while paused wakes the I/O threads
//! out of `poll`. Pausing waits until every vCPU and every device I/O thread has parked, so a
//! paused guest runs no code and its devices touch neither guest memory nor backing files.
//! vCPUs and I/O threads are counted apart: one kind parking must never stand in for the other.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::sync::{self, lock};
use vmm_sys_util::eventfd::EventFd;

struct State {
    paused: bool,
    /// Parked threads, by kind.
    vcpus: usize,
    workers: usize,
}

/// Which kind of thread parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parker {
    /// A vCPU thread, between two `KVM_RUN`s.
    Vcpu,
    /// A device I/O thread, between two batches.
    Worker,
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
                vcpus: 0,
                workers: 0,
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

    /// Waits until `vcpus` vCPU threads and `workers` I/O threads are parked; false after
    /// `limit`.
    pub fn wait_parked(&self, vcpus: usize, workers: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = lock(&self.state);
        while state.paused && (state.vcpus < vcpus || state.workers < workers) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = sync::wait_timeout(&self.changed, state, left).0;
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

    /// Blocks the calling thread, counted as `who`, while the gate is closed, unless `stop`
    /// is set (the VM ends: its teardown opens the gate first).
    pub fn park(&self, who: Parker, stop: Option<&AtomicBool>) {
        let mut state = lock(&self.state);
        if !state.paused {
            return;
        }
        *state.count(who) += 1;
        self.changed.notify_all();
        while state.paused && !stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            state = sync::wait(&self.changed, state);
        }
        *state.count(who) -= 1;
    }
}

impl State {
    fn count(&mut self, who: Parker) -> &mut usize {
        match who {
            Parker::Vcpu => &mut self.vcpus,
            Parker::Worker => &mut self.workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use utils::poll::{poll, pollfd};

    #[test]
    fn threads_park_while_paused_and_go_on_when_resumed() {
        let gate = Arc::new(PauseGate::new().unwrap());
        gate.park(Parker::Vcpu, None); // open: returns at once
        gate.pause().unwrap();
        assert!(gate.is_paused());
        let mut fds = [pollfd(gate.fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, 0).unwrap(), 1);
        let threads: Vec<_> = [Parker::Vcpu, Parker::Vcpu, Parker::Worker]
            .into_iter()
            .map(|who| {
                let g = gate.clone();
                std::thread::spawn(move || g.park(who, None))
            })
            .collect();
        assert!(gate.wait_parked(2, 1, Duration::from_secs(5)));
        assert!(!gate.wait_parked(3, 1, Duration::from_millis(50)));
        gate.resume();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(poll(&mut fds, 0).unwrap(), 0);
        // A stop flag releases a parked thread even while paused.
        gate.pause().unwrap();
        let stop = Arc::new(AtomicBool::new(true));
        gate.park(Parker::Vcpu, Some(&stop));
    }

    #[test]
    fn parked_io_threads_never_count_as_parked_vcpus() {
        let gate = Arc::new(PauseGate::new().unwrap());
        gate.pause().unwrap();
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.park(Parker::Worker, None))
            })
            .collect();
        assert!(gate.wait_parked(0, 3, Duration::from_secs(5)));
        // One vCPU still runs: three parked I/O threads must not make the pause look done.
        assert!(!gate.wait_parked(1, 3, Duration::from_millis(100)));
        gate.resume();
        for w in workers {
            w.join().unwrap();
        }
    }
}

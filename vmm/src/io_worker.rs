//! The one shape of a device I/O thread: a named thread that waits on the descriptors a
//! device's [`IoHandler`] names, plus the VM's stop event and pause gate, and hands the
//! handler what became ready. The readiness rules belong to the device (see
//! `devices::virtio::worker`); the thread, stopping and pausing belong here.
//!
//! Each round: ask the handler what to wait on, wait (not at all if the handler said more work
//! was pending), end if stop was written, park while the VM is paused (then let the handler
//! serve what waited), else call the handler. Since the gate is checked before every batch, a
//! pause stops the worker between two batches and a paused worker touches neither guest
//! memory nor backing files.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::virtio::worker::{IoHandler, Ready, Watch};
use log::warn;
use utils::poll::{poll, pollfd};
use vmm_sys_util::eventfd::EventFd;

use crate::pause::{Parker, PauseGate};
use crate::seccomp::{self, ThreadKind};

/// Index of the stop event and of the pause gate in each round's descriptors; the handler's
/// watches follow.
const STOP: usize = 0;
const GATE: usize = 1;
const FIRST_WATCH: usize = 2;

/// Starts the thread `name`, filtered as a `kind` thread, running `handler` until `stop` is
/// written.
pub fn spawn<H: IoHandler + 'static>(
    name: String,
    kind: ThreadKind,
    handler: H,
    stop: EventFd,
    gate: Arc<PauseGate>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        seccomp::apply_or_exit(kind);
        run(handler, &stop, &gate);
    })
}

fn run<H: IoHandler>(mut handler: H, stop: &EventFd, gate: &PauseGate) {
    let mut watches = Vec::new();
    let mut fds = Vec::new();
    let mut ready = Vec::new();
    let mut more = false;
    loop {
        handler.interest(&mut watches);
        fds.clear();
        fds.push(pollfd(stop.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(gate.fd(), libc::POLLIN));
        fds.extend(watches.iter().map(Watch::pollfd));
        if let Err(err) = poll(&mut fds, if more { 0 } else { -1 }) {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            warn!("{name}: the I/O thread stops: {err}");
            return;
        }
        if fds[STOP].revents != 0 {
            return;
        }
        if fds[GATE].revents != 0 {
            // Paused: events that arrive meanwhile stay pending for afterwards.
            gate.park(Parker::Worker, None);
            more = handler.resumed();
            continue;
        }
        ready.clear();
        ready.extend(
            fds[FIRST_WATCH..]
                .iter()
                .map(|fd| Ready::from_revents(fd.revents)),
        );
        more = handler.ready(&ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Serves one unit of work per round from a count the test sets, woken by `evt`.
    struct Counter {
        evt: EventFd,
        work: Arc<Mutex<(usize, usize)>>, // (pending, served)
    }

    impl IoHandler for Counter {
        fn interest(&mut self, watches: &mut Vec<Watch>) {
            watches.clear();
            watches.push(Watch::readable(self.evt.as_raw_fd()));
        }

        fn ready(&mut self, ready: &[Ready]) -> bool {
            if ready[0].readable {
                let _ = self.evt.read();
            }
            let mut work = self.work.lock().unwrap();
            if work.0 > 0 {
                work.0 -= 1;
                work.1 += 1;
            }
            work.0 > 0
        }

        fn resumed(&mut self) -> bool {
            true
        }
    }

    fn wait_for(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out");
    }

    #[test]
    fn a_worker_serves_pending_work_parks_while_paused_and_ends_on_stop() {
        let gate = Arc::new(PauseGate::new().unwrap());
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let work = Arc::new(Mutex::new((3, 0)));
        let handler = Counter {
            evt: evt.try_clone().unwrap(),
            work: work.clone(),
        };
        let thread = spawn(
            "ember_test_worker".into(),
            ThreadKind::Block,
            handler,
            stop.try_clone().unwrap(),
            gate.clone(),
        )
        .unwrap();
        // One notification: all three units are served, as "more" keeps the worker going.
        evt.write(1).unwrap();
        wait_for(|| *work.lock().unwrap() == (0, 3));
        // Paused: the worker parks, and work notified meanwhile waits for the resume.
        gate.pause().unwrap();
        assert!(gate.wait_parked(0, 1, Duration::from_secs(5)));
        *work.lock().unwrap() = (2, 3);
        evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*work.lock().unwrap(), (2, 3));
        gate.resume();
        wait_for(|| *work.lock().unwrap() == (0, 5));
        stop.write(1).unwrap();
        thread.join().unwrap();
    }
}

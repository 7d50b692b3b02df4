//! What every vhost-user device (virtio-fs, vhost-user-blk) shares: its connection to the
//! backend across the driver's activations and resets, and the [`Monitor`] that watches the
//! backend's socket, takes the queues over when it hangs up and, for a backend ember reached by
//! a socket path, connects again once a new backend listens there.
//!
//! The device ([`Link`]) and its monitor share the connection and the active queues under one
//! lock. The vCPU that activates or resets the device takes it after the transport's lock; the
//! monitor takes only this one, so the two never wait on each other in a cycle.
//!
//! Reconnecting replays what activation sent (ownership and protocol features on connect, then
//! the negotiated features, the memory table, and for each queue its size, addresses, start
//! index, call and kick fds and enable), then kicks every queue so the new backend serves what
//! waited meanwhile. The start index is the used ring's index as the guest sees it in its
//! memory, since the dead backend cannot be asked (`GET_VRING_BASE`): requests it took but never
//! answered are served again. Without the inflight-tracking protocol feature this is exact only
//! for a backend that completes each queue's requests in order (as QEMU's reconnect is); one that
//! completed out of order when it died may have a request redone and one left unanswered.
//!
//! What happens to the queues while no backend serves them is the device's choice
//! ([`Orphan`]): virtio-fs answers every request itself with EIO, virtio-blk leaves them in the
//! ring for the next backend.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{Backend, BackendError};
use crate::sync::lock;
use crate::virtio::worker::{IoHandler, Ready, Watch, nonblocking_timer};
use crate::virtio::{ActivateError, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioInterrupt};

/// The first wait before connecting again after a hang-up; it doubles after each failure.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to reach a restarted backend.
const LAST_RETRY: Duration = Duration::from_secs(2);

/// What a device does with its queues while no backend serves them.
pub trait Orphan: Send {
    /// What happens to the guest's requests meanwhile, for the log.
    fn meanwhile(&self) -> &'static str;
    /// Whether the monitor should wait on the queues' kicks and call [`Orphan::serve`].
    fn serves(&self) -> bool;
    /// The backend hung up while `queues` (with `features`) were active: take them over.
    fn take_over(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap, features: u64);
    /// Serves what waits on the queues; returns whether more may wait.
    fn serve(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        interrupt: &VirtioInterrupt,
    ) -> bool;
}

/// The connection and the queues, shared by the device and its monitor.
#[derive(Default)]
struct State {
    /// The backend, while it is connected.
    backend: Option<Backend>,
    /// The active queues as the driver set them up, and the negotiated features.
    active: Option<(Vec<Queue>, u64)>,
}

/// The events and memory both the device and its monitor hand to a backend.
struct Wiring {
    name: String,
    /// Where the backend listens, when ember may connect again after a hang-up.
    path: Option<PathBuf>,
    queues: usize,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    kicks: Vec<EventFd>,
    /// The call fd of a queue the driver wants no interrupt from: nothing reads it.
    muted: EventFd,
}

impl Wiring {
    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            name: self.name.clone(),
            path: self.path.clone(),
            queues: self.queues,
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            kicks: self
                .kicks
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<_, _>>()?,
            muted: self.muted.try_clone()?,
        })
    }

    /// Hands `queues` to `backend` with each queue's irqfd (or the muted event) as its call fd.
    fn activate(
        &self,
        backend: &mut Backend,
        queues: &[Queue],
        features: u64,
    ) -> Result<(), BackendError> {
        let calls: Vec<&EventFd> = (0..queues.len())
            .map(|q| self.interrupt.queue_irqfd(q).unwrap_or(&self.muted))
            .collect();
        backend.activate(&self.mem, features, queues, &self.kicks, &calls)
    }
}

/// The vhost-user part of a device: its backend, across activations, resets and reconnects.
pub struct Link {
    state: Arc<Mutex<State>>,
    wiring: Wiring,
}

impl Link {
    /// The link of the device `name` with `kicks.len()` queues to `backend`; `path` is where
    /// it listens when ember may reconnect to a restarted backend there. The backend raises
    /// `interrupt` itself.
    pub fn new(
        name: String,
        backend: Backend,
        path: Option<PathBuf>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        kicks: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        interrupt.set_raised_by_backend();
        let state = State {
            backend: Some(backend),
            active: None,
        };
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            wiring: Wiring {
                name,
                path,
                queues: kicks.len(),
                mem,
                interrupt,
                kicks,
                muted: EventFd::new(libc::EFD_NONBLOCK)?,
            },
        })
    }

    /// Hands the driver's queues to the backend. Without a backend, a device that can
    /// reconnect keeps them for the next one; one that cannot fails.
    pub fn activate(&mut self, mut queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        // Should ember serve the queues itself (the backend gone), it must honour the ring
        // features the driver negotiated.
        for q in &mut queues {
            q.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        }
        let mut state = lock(&self.state);
        match state.backend.as_mut() {
            Some(backend) => self
                .wiring
                .activate(backend, &queues, features)
                .map_err(ActivateError::Backend)?,
            None if self.wiring.path.is_some() => warn!(
                "{}: no vhost-user backend is connected; the queues wait for one",
                self.wiring.name
            ),
            None => return Err(ActivateError::Backend(BackendError::Gone)),
        }
        state.active = Some((queues, features));
        Ok(())
    }

    /// The driver reset the device: the backend stops serving the queues.
    pub fn reset(&mut self) {
        let mut state = lock(&self.state);
        state.active = None;
        if let Some(backend) = state.backend.as_mut()
            && let Err(err) = backend.reset()
        {
            warn!("{}: cannot reset the backend: {err}", self.wiring.name);
        }
    }

    /// The device's I/O handler, which watches the backend (see [`Monitor`]).
    pub fn monitor<O: Orphan>(&self, orphan: O) -> std::io::Result<Monitor<O>> {
        let socket = match lock(&self.state).backend.as_ref() {
            Some(backend) => Some(dup_fd(backend.socket_fd())?),
            None => None,
        };
        Ok(Monitor {
            state: self.state.clone(),
            wiring: self.wiring.try_clone()?,
            socket,
            timer: nonblocking_timer()?,
            retry: FIRST_RETRY,
            orphan,
        })
    }
}

/// A duplicate of `fd`, owned.
fn dup_fd(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the backend keeps `fd` open for as long as this borrow lasts.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Watches a vhost-user backend's socket for a hang-up; then lets the device's [`Orphan`]
/// serve the queues and, for a backend reached by path, retries connecting with a bounded
/// backoff (one attempt per timer expiry, never a busy loop) until a new backend answers.
pub struct Monitor<O> {
    state: Arc<Mutex<State>>,
    wiring: Wiring,
    /// The backend's socket, while it is connected.
    socket: Option<OwnedFd>,
    /// When to try connecting again.
    timer: TimerFd,
    /// How long the next failed attempt waits before the one after.
    retry: Duration,
    orphan: O,
}

impl<O: Orphan> Monitor<O> {
    /// The backend hung up: drop it, let the orphan take the queues over, and plan a retry.
    fn hung_up(&mut self) -> bool {
        self.socket = None;
        let mut state = lock(&self.state);
        state.backend = None;
        let retry = if self.wiring.path.is_some() {
            "; ember reconnects when a backend listens on its socket again"
        } else {
            ""
        };
        error!(
            "{}: the vhost-user backend hung up; {}{retry}",
            self.wiring.name,
            self.orphan.meanwhile()
        );
        if let Some((queues, features)) = state.active.as_mut() {
            self.orphan.take_over(queues, &self.wiring.mem, *features);
        }
        drop(state);
        self.retry = FIRST_RETRY;
        self.arm();
        self.serve()
    }

    fn arm(&mut self) {
        if self.wiring.path.is_none() {
            return;
        }
        if let Err(err) = self.timer.reset(self.retry, None) {
            warn!(
                "{}: cannot arm the reconnect timer: {err}",
                self.wiring.name
            );
        }
    }

    /// One attempt to reach a new backend and hand it the active queues.
    fn reconnect(&mut self) {
        let Some(path) = self.wiring.path.clone() else {
            return;
        };
        match self.try_reconnect(&path) {
            Ok(()) => {
                warn!(
                    "{}: reconnected to the vhost-user backend at {}",
                    self.wiring.name,
                    path.display()
                );
                for kick in &self.wiring.kicks {
                    // Wakes the new backend for what waited meanwhile; a full counter
                    // wakes it as well.
                    let _ = kick.write(1);
                }
            }
            Err(err) => {
                if self.retry == FIRST_RETRY {
                    warn!(
                        "{}: cannot reconnect yet ({err}); retrying every {} s at most",
                        self.wiring.name,
                        LAST_RETRY.as_secs()
                    );
                }
                self.retry = (self.retry * 2).min(LAST_RETRY);
                self.arm();
            }
        }
    }

    fn try_reconnect(&mut self, path: &std::path::Path) -> Result<(), BackendError> {
        let mut backend = Backend::connect(path, self.wiring.queues)?;
        let mut state = lock(&self.state);
        if let Some((queues, features)) = state.active.as_mut() {
            let offered = backend.device_features() | (1 << VIRTIO_F_VERSION_1);
            if *features & !offered != 0 {
                return Err(BackendError::FewerFeatures(*features & !offered));
            }
            for q in queues.iter_mut() {
                // The dead backend cannot say where it stopped: resume after the last
                // request the guest saw answered.
                if let Ok(used) = q.used_idx(&self.wiring.mem, Ordering::Acquire) {
                    q.set_next_avail(used.0);
                    q.set_next_used(used.0);
                }
            }
            self.wiring.activate(&mut backend, queues, *features)?;
        }
        self.socket = Some(dup_fd(backend.socket_fd()).map_err(BackendError::Socket)?);
        state.backend = Some(backend);
        Ok(())
    }

    fn serve(&mut self) -> bool {
        if !self.orphan.serves() {
            return false;
        }
        let mut state = lock(&self.state);
        let Some((queues, _)) = state.active.as_mut() else {
            return false;
        };
        self.orphan
            .serve(queues, &self.wiring.mem, &self.wiring.interrupt)
    }
}

impl<O: Orphan> IoHandler for Monitor<O> {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        watches.clear();
        if let Some(socket) = &self.socket {
            // Only the hang-up: the replies on this socket are for the vCPU that asked.
            watches.push(Watch::hangup(socket.as_raw_fd()));
            return;
        }
        if self.orphan.serves() {
            let kicks = self.wiring.kicks.iter();
            watches.extend(kicks.map(|k| Watch::readable(k.as_raw_fd())));
        }
        if self.wiring.path.is_some() {
            watches.push(Watch::readable(self.timer.as_raw_fd()));
        }
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        if self.socket.is_some() {
            if !ready.first().is_some_and(|r| r.failed) {
                return false;
            }
            return self.hung_up();
        }
        let kicks = if self.orphan.serves() {
            self.wiring.kicks.len()
        } else {
            0
        };
        for (kick, r) in self
            .wiring
            .kicks
            .iter()
            .zip(&ready[..kicks.min(ready.len())])
        {
            if r.readable {
                // Only the wake-up matters; the count is irrelevant.
                let _ = kick.read();
            }
        }
        let more = self.serve();
        if ready.get(kicks).is_some_and(|r| r.readable) {
            // The expiry count is irrelevant; a failed read leaves the timer to the retry.
            let _ = self.timer.wait();
            self.reconnect();
        }
        more && self.socket.is_none()
    }

    fn resumed(&mut self) -> bool {
        self.socket.is_none() && self.orphan.serves()
    }
}

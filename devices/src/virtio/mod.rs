//! virtio devices and their transports, virtio-mmio and virtio-pci (virtio 1.2, "modern" only).
//!
//! A device implements [`VirtioDevice`]: its identity, features, configuration space, and what
//! to do when the driver activates or resets it. [`transport::TransportState`] owns everything
//! the driver negotiates (status, features, queue addresses) and hands the device its queues on
//! DRIVER_OK; [`mmio::MmioTransport`] and [`pci::VirtioPci`] only map their registers onto it.
//! Queue notifications reach a device as writes to its queue `EventFd`s (which the VMM
//! registers as KVM ioeventfds, so vCPUs never run device code for a notify); interrupts leave
//! through [`VirtioInterrupt`], which devices tell what happened (a queue's index or a
//! configuration change) and which picks the line or MSI-X vector.

pub mod block;
pub mod chain;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod transport;
pub mod vhost_user;
pub mod vsock;
pub mod worker;

pub use interrupt::{
    INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_RING, InterruptSource, NO_VECTOR, VirtioInterrupt,
};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Feature bit: the device complies with virtio 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the used/avail event index scheme suppresses notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bits, set by the driver as it brings the device up.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive it.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// What the VMM does to a running device, whichever transport carries it (a drive swap
/// changes the device and tells the driver its configuration changed). Both transports keep
/// what the driver negotiated in one [`transport::TransportState`]; everything here reads it.
pub trait Transport<D: VirtioDevice>: Send {
    /// The negotiated state the transport keeps.
    fn state(&self) -> &transport::TransportState<D>;
    /// The negotiated state, mutably.
    fn state_mut(&mut self) -> &mut transport::TransportState<D>;

    /// The device model.
    fn device(&self) -> &D {
        self.state().device()
    }
    /// The device model, mutably.
    fn device_mut(&mut self) -> &mut D {
        self.state_mut().device_mut()
    }
    /// Whether the driver has activated the device.
    fn is_active(&self) -> bool {
        self.state().is_active()
    }
    /// The device status, with DEVICE_NEEDS_RESET once the device asked for it.
    fn status(&self) -> u32 {
        self.state().status()
    }
    /// Tells the driver that the configuration space changed (new generation, config
    /// interrupt).
    fn config_changed(&mut self) {
        self.state_mut().config_changed();
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up the queues the device needs.
    #[error("the driver did not make queue {0} ready")]
    QueueNotReady(usize),
    /// A queue's rings lie outside guest memory or are misaligned.
    #[error("queue {0} is not valid (rings outside guest memory or misaligned)")]
    InvalidQueue(usize),
    /// The process that serves the queues (a vhost-user backend) refused them.
    #[error("the device's backend cannot take the queues")]
    Backend(#[source] vhost_user::BackendError),
}

/// What a device model provides to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 for block, 1 for net, 4 for an entropy source).
    fn device_type(&self) -> u32;
    /// Every feature bit the device offers.
    fn features(&self) -> u64;
    /// The most descriptors each queue may have; also the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The configuration space as the device fills it.
    fn config(&self) -> &[u8];
    /// Reads the configuration space at `offset`; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config().get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }
    /// Writes the configuration space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving `queues` with `features` negotiated.
    fn activate(&mut self, queues: Vec<Queue>, features: u64) -> Result<(), ActivateError>;
    /// The driver reset the device: forget the queues and features, keep the backend.
    fn reset(&mut self);
}

/// What a device did with one descriptor chain (see [`serve_chains`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Done: return it with this many bytes written, and go on.
    Used(u32),
    /// Done, and this call has done enough: return it and stop (more may be waiting).
    UsedLast(u32),
    /// Taken: the device returns it itself when the host has finished it (asynchronous
    /// I/O), and go on.
    Kept,
    /// Taken, and this call has done enough.
    KeptLast,
    /// The backend cannot take it now: leave it available and stop.
    Retry,
}

/// What a [`serve_chains`] call got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Chains returned to the driver (not counting those the device kept).
    pub count: usize,
    /// More chains may be waiting (the budget ran out or the device asked to stop).
    pub more: bool,
}

/// Errors that make a queue unusable until the driver resets the device.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The rings cannot be read or written.
    #[error("the queue is unusable ({0}); waiting for a reset")]
    Unusable(#[from] virtio_queue::Error),
    /// The available index announces buffers that cannot be taken.
    #[error("the guest corrupted the available ring; waiting for a reset")]
    CorruptAvail,
}

/// Pops chains and hands each to `serve` (as a [`chain::Chain`], which refuses indirect tables
/// and loops) until the queue is empty, `budget` chains are done or `serve` says stop, with
/// notifications re-enabled and re-checked so no buffer the driver adds meanwhile is missed.
/// An available index that announces buffers which cannot be popped twice in a row is
/// corrupt, reported rather than spun on.
pub fn serve_chains<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    budget: usize,
    mut serve: impl FnMut(chain::Chain<'m>) -> Step,
) -> Result<Served, QueueError> {
    serve_chain_runs(queue, mem, budget, |chain, _| serve(chain))
}

/// [`serve_chains`] for a device that may fill a run of chains at once (several packets from
/// one host read): `serve` may also take the chains available after the one it serves, with
/// [`Following`]. Those it keeps are returned to the driver right after the served one, in
/// the order taken, and count toward `budget`; [`Step::Retry`] leaves them available too.
pub fn serve_chain_runs<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    budget: usize,
    mut serve: impl FnMut(chain::Chain<'m>, &mut Following<'_, 'm>) -> Step,
) -> Result<Served, QueueError> {
    let (mut count, mut taken) = (0, 0);
    let mut empty_rounds = 0;
    let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
    let mut following = Vec::new();
    loop {
        queue.disable_notification(mem)?;
        let before = taken;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            following.clear();
            let mut more = Following {
                queue: &mut *queue,
                mem,
                taken: &mut following,
                room: budget.saturating_sub(taken + 1),
            };
            let (used, last) =
                match serve(chain::Chain::in_table(mem, table, size, head), &mut more) {
                    Step::Used(len) => (Some(len), false),
                    Step::UsedLast(len) => (Some(len), true),
                    Step::Kept => (None, false),
                    Step::KeptLast => (None, true),
                    Step::Retry => {
                        let back = 1 + following.len() as u16;
                        queue.set_next_avail(queue.next_avail().wrapping_sub(back));
                        return Ok(Served { count, more: true });
                    }
                };
            if let Some(len) = used {
                queue.add_used(mem, head, len)?;
                count += 1;
            }
            for &(head, len) in &following {
                queue.add_used(mem, head, len)?;
                count += 1;
            }
            taken += 1 + following.len();
            if last || taken >= budget {
                return Ok(Served { count, more: true });
            }
        }
        empty_rounds = if taken == before { empty_rounds + 1 } else { 0 };
        match queue.enable_notification(mem)? {
            true if empty_rounds > 1 => return Err(QueueError::CorruptAvail),
            true => {}
            false => return Ok(Served { count, more: false }),
        }
    }
}

/// The chains available after the one [`serve_chain_runs`] hands its device, for the device
/// to take while it serves that one.
pub struct Following<'a, 'm> {
    queue: &'a mut Queue,
    mem: &'m GuestMemoryMmap,
    /// The chains taken, each with the bytes written to it.
    taken: &'a mut Vec<(u16, u32)>,
    /// How many more the round's budget allows.
    room: usize,
}

impl<'m> Following<'_, 'm> {
    /// The next available chain, or `None` when there is none or the round's budget is spent.
    pub fn take(&mut self) -> Option<chain::Chain<'m>> {
        if self.taken.len() >= self.room {
            return None;
        }
        let head = self.queue.pop_descriptor_chain(self.mem)?.head_index();
        self.taken.push((head, 0));
        Some(chain::Chain::new(self.mem, self.queue, head))
    }

    /// Records that `len` bytes were written to the `i`-th chain taken.
    pub fn set_used(&mut self, i: usize, len: u32) {
        if let Some(chain) = self.taken.get_mut(i) {
            chain.1 = len;
        }
    }

    /// Keeps the first `n` chains taken; the rest stay available, as if never taken.
    pub fn keep(&mut self, n: usize) {
        let back = self.taken.len().saturating_sub(n);
        let next = self.queue.next_avail().wrapping_sub(back as u16);
        self.queue.set_next_avail(next);
        self.taken.truncate(n);
    }
}

/// Raises queue `index`'s used-buffer interrupt after `count` chains were returned to
/// `queue`, unless the driver suppressed it.
pub fn signal_used(
    queue: &mut Queue,
    index: u16,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    count: usize,
) {
    if count > 0 && queue.needs_notification(mem).unwrap_or(true) {
        if let Err(err) = interrupt.trigger(InterruptSource::Queue(index)) {
            log::warn!("virtio: cannot raise the interrupt: {err}");
        }
    }
}

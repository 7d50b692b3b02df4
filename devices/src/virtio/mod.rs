//! virtio devices on the virtio-mmio transport (virtio 1.2, "modern" register layout only).
//!
//! A device implements [`VirtioDevice`]: its identity, features, configuration space, and what
//! to do when the driver activates or resets it. [`mmio::MmioTransport`] owns everything the
//! driver negotiates (status, features, queue addresses) and hands the device its queues on
//! DRIVER_OK. Queue notifications reach a device as writes to its queue `EventFd`s (which the
//! VMM registers as KVM ioeventfds, so vCPUs never run device code for a notify); interrupts
//! leave through [`VirtioInterrupt`] (an irqfd).

pub mod block;
pub mod chain;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vhost_user;
pub mod vsock;
pub mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the used/avail event index scheme suppresses notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Interrupt status bit: a queue has new used buffers.
pub const INTERRUPT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

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

/// A device's interrupt line and its interrupt status register, shared between the transport
/// (which the guest reads and acknowledges) and the device (which raises it).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
    /// The device stopped using a queue it cannot trust (virtio 1.2, 2.1.2: DEVICE_NEEDS_RESET).
    needs_reset: AtomicBool,
    /// Another process (a vhost-user backend) raises the used-buffer interrupt by writing the
    /// irqfd itself, so the status bit is never set here.
    raised_by_backend: AtomicBool,
}

impl VirtioInterrupt {
    /// An interrupt raised by writing `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
            needs_reset: AtomicBool::new(false),
            raised_by_backend: AtomicBool::new(false),
        }
    }

    /// The used-buffer interrupt is raised by a backend writing the irqfd directly (vhost-user),
    /// which cannot set the status bit. From now on the status register always shows it:
    /// Linux's virtio-mmio handler looks at the used rings only when the bit is set, so
    /// without it every interrupt of the backend would be dropped. A spurious bit costs the
    /// driver a look at rings with nothing new.
    pub fn set_raised_by_backend(&self) {
        self.raised_by_backend.store(true, Ordering::Release);
    }

    /// The irqfd, for the VMM to register.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.irq.write(1)
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        let backend = if self.raised_by_backend.load(Ordering::Acquire) {
            INTERRUPT_USED_RING
        } else {
            0
        };
        self.status.load(Ordering::Acquire) | backend
    }

    /// The driver acknowledged `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The device hit an error it cannot recover from without a reset (a corrupt ring): the
    /// status register shows DEVICE_NEEDS_RESET and the driver gets a configuration-change
    /// interrupt, as virtio 1.2 (2.1.2) asks, so it can reset the device.
    pub fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        if let Err(err) = self.trigger(INTERRUPT_CONFIG_CHANGE) {
            log::warn!("virtio: cannot interrupt the guest for a device reset: {err}");
        }
    }

    /// Whether the device asked for a reset since the last one.
    pub fn reset_needed(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
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
    let (mut count, mut taken) = (0, 0);
    let mut empty_rounds = 0;
    let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
    loop {
        queue.disable_notification(mem)?;
        let before = taken;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let (used, last) = match serve(chain::Chain::in_table(mem, table, size, head)) {
                Step::Used(len) => (Some(len), false),
                Step::UsedLast(len) => (Some(len), true),
                Step::Kept => (None, false),
                Step::KeptLast => (None, true),
                Step::Retry => {
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    return Ok(Served { count, more: true });
                }
            };
            if let Some(len) = used {
                queue.add_used(mem, head, len)?;
                count += 1;
            }
            taken += 1;
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

/// Raises the used-buffer interrupt after `count` chains were returned, unless the driver
/// suppressed it.
pub fn signal_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    count: usize,
) {
    if count > 0 && queue.needs_notification(mem).unwrap_or(true) {
        if let Err(err) = interrupt.trigger(INTERRUPT_USED_RING) {
            log::warn!("virtio: cannot raise the interrupt: {err}");
        }
    }
}

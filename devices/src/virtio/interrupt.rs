//! How a virtio device interrupts its driver, whatever the transport.
//!
//! Devices say what happened ([`InterruptSource::Queue`] with the queue's index, or
//! [`InterruptSource::Config`]) and never which line or vector that is. [`VirtioInterrupt`]
//! owns the mapping:
//! - with one interrupt line (virtio-mmio, and virtio-pci while MSI-X is off, through INTx):
//!   the ISR status bits record the cause and the line's irqfd is written;
//! - with MSI-X enabled: the vector the driver assigned to that queue, or to configuration
//!   changes, in the common configuration fires through [`Msix`], which holds it pending
//!   while masked; [`NO_VECTOR`] means no interrupt at all.
//!
//! Device worker threads call [`VirtioInterrupt::trigger`]: it takes no lock.
//!
//! A device whose queues another process serves (vhost-user) gives that process
//! [`VirtioInterrupt::queue_irqfd`] for each queue and calls
//! [`VirtioInterrupt::set_raised_by_backend`], as the process raises interrupts by writing the
//! eventfd and cannot set the ISR status bit.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::pci::msix::Msix;

/// Interrupt status bit: a queue has new used buffers.
pub const INTERRUPT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;
/// The MSI-X vector that means "no interrupt" (virtio 1.2, 4.1.4.3).
pub const NO_VECTOR: u16 = 0xffff;

/// What a device interrupts its driver for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptSource {
    /// Queue `n` has new used buffers.
    Queue(u16),
    /// The configuration space changed (or the device needs a reset).
    Config,
}

/// The vectors a virtio-pci driver assigned.
#[derive(Debug)]
struct Vectors {
    msix: Arc<Msix>,
    config: AtomicU16,
    queues: Box<[AtomicU16]>,
}

/// A device's interrupt, shared between the transport (which the driver programs and reads)
/// and the device (which raises it).
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
    /// The device stopped using a queue it cannot trust (virtio 1.2, 2.1.2: DEVICE_NEEDS_RESET).
    needs_reset: AtomicBool,
    vectors: Option<Vectors>,
    /// Another process (a vhost-user backend) raises the queues' interrupts by writing their
    /// eventfds itself, so the used-ring status bit is never set here.
    raised_by_backend: AtomicBool,
}

impl VirtioInterrupt {
    /// An interrupt raised by writing `irq` (an irqfd): virtio-mmio.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
            needs_reset: AtomicBool::new(false),
            vectors: None,
            raised_by_backend: AtomicBool::new(false),
        }
    }

    /// A virtio-pci interrupt for a device with `queues` queues: MSI-X vectors from `msix`
    /// once the driver enables it, INTx through `irq` until then.
    pub fn with_msix(irq: EventFd, msix: Arc<Msix>, queues: usize) -> Self {
        let vectors = Vectors {
            msix,
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        };
        Self {
            vectors: Some(vectors),
            ..Self::new(irq)
        }
    }

    /// The interrupt line's irqfd (INTx under PCI), for the VMM to register.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// The MSI-X table, if the transport is PCI.
    pub fn msix(&self) -> Option<&Arc<Msix>> {
        self.vectors.as_ref().map(|v| &v.msix)
    }

    /// How many queues have an MSI-X vector field (0 without MSI-X).
    pub fn vector_queues(&self) -> usize {
        self.vectors.as_ref().map_or(0, |v| v.queues.len())
    }

    /// Tells the driver about `source`.
    pub fn trigger(&self, source: InterruptSource) -> io::Result<()> {
        let bit = match source {
            InterruptSource::Queue(_) => INTERRUPT_USED_RING,
            InterruptSource::Config => INTERRUPT_CONFIG_CHANGE,
        };
        if let Some(v) = self.vectors.as_ref().filter(|v| v.msix.enabled()) {
            let vector = match source {
                InterruptSource::Queue(q) => v
                    .queues
                    .get(usize::from(q))
                    .map_or(NO_VECTOR, |q| q.load(Ordering::Acquire)),
                InterruptSource::Config => {
                    // The config bit is set under MSI-X too (virtio 1.2, 4.1.4.5.1).
                    self.status.fetch_or(bit, Ordering::AcqRel);
                    v.config.load(Ordering::Acquire)
                }
            };
            if vector == NO_VECTOR {
                return Ok(());
            }
            return v.msix.trigger(vector);
        }
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.irq.write(1)
    }

    /// The queues' interrupts are raised by a backend writing [`VirtioInterrupt::queue_irqfd`]
    /// directly (vhost-user), which cannot set the status bit. From now on, while the device
    /// interrupts through its one line (virtio-mmio, or virtio-pci with MSI-X off), the status
    /// always shows the used-ring bit: Linux's handlers for that line look at the used rings
    /// only when the bit is set, so without it every interrupt of the backend would be
    /// dropped. A spurious bit costs the driver a look at rings with nothing new.
    pub fn set_raised_by_backend(&self) {
        self.raised_by_backend.store(true, Ordering::Release);
    }

    /// The eventfd that raises queue `queue`'s interrupt when another process writes it: the
    /// irqfd of the MSI-X vector the driver assigned to the queue while MSI-X is enabled,
    /// else the line's irqfd. `None`: the driver wants no interrupt from this queue
    /// ([`NO_VECTOR`]). Drivers assign vectors before DRIVER_OK, so a device asks on
    /// activation. Such writes reach KVM without [`Msix`]: a vector masked meanwhile is not
    /// held pending for them.
    pub fn queue_irqfd(&self, queue: usize) -> Option<&EventFd> {
        match self.vectors.as_ref().filter(|v| v.msix.enabled()) {
            Some(v) => {
                let vector = v.queues.get(queue)?.load(Ordering::Acquire);
                v.msix.irq(vector)
            }
            None => Some(&self.irq),
        }
    }

    /// The used-ring bit a backend's interrupts stand for, while they arrive on the line.
    fn backend_status(&self) -> u32 {
        let on_line = self.vectors.as_ref().is_none_or(|v| !v.msix.enabled());
        if on_line && self.raised_by_backend.load(Ordering::Acquire) {
            INTERRUPT_USED_RING
        } else {
            0
        }
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire) | self.backend_status()
    }

    /// Reads and clears the interrupt status (the virtio-pci ISR register).
    pub fn take_status(&self) -> u32 {
        self.status.swap(0, Ordering::AcqRel) | self.backend_status()
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
        if let Err(err) = self.trigger(InterruptSource::Config) {
            log::warn!("virtio: cannot interrupt the guest for a device reset: {err}");
        }
    }

    /// Whether the device asked for a reset since the last one.
    pub fn reset_needed(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The configuration-change vector (NO_VECTOR without MSI-X).
    pub fn config_vector(&self) -> u16 {
        self.vectors
            .as_ref()
            .map_or(NO_VECTOR, |v| v.config.load(Ordering::Acquire))
    }

    /// Queue `queue`'s vector (NO_VECTOR without MSI-X or past the last queue).
    pub fn queue_vector(&self, queue: usize) -> u16 {
        self.vectors
            .as_ref()
            .and_then(|v| v.queues.get(queue))
            .map_or(NO_VECTOR, |q| q.load(Ordering::Acquire))
    }

    /// The driver assigns `vector` to configuration changes. A vector past the table is
    /// refused: the field then reads NO_VECTOR, which tells the driver (virtio 1.2, 4.1.5.1.2).
    pub fn set_config_vector(&self, vector: u16) {
        if let Some(v) = &self.vectors {
            v.config.store(checked(&v.msix, vector), Ordering::Release);
        }
    }

    /// The driver assigns `vector` to queue `queue`, refused as for
    /// [`VirtioInterrupt::set_config_vector`].
    pub fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(v) = &self.vectors {
            if let Some(q) = v.queues.get(queue) {
                q.store(checked(&v.msix, vector), Ordering::Release);
            }
        }
    }

    /// A device reset: no status, no reset request, no vectors assigned. The MSI-X table and
    /// its enable bit belong to the PCI function, not to the virtio device, and stay.
    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
        if let Some(v) = &self.vectors {
            v.config.store(NO_VECTOR, Ordering::Release);
            for q in v.queues.iter() {
                q.store(NO_VECTOR, Ordering::Release);
            }
        }
    }
}

fn checked(msix: &Msix, vector: u16) -> u16 {
    if vector < msix.vectors() {
        vector
    } else {
        NO_VECTOR
    }
}

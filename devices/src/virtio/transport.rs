//! What every virtio transport shares: the state the driver negotiates and its rules
//! (virtio 1.2, sections 2 and 3), independent of where the registers sit.
//!
//! [`TransportState`] owns the device status and its state machine, the feature pages, queue
//! selection and each queue's size, readiness and ring addresses, activation and reset.
//! Features are accepted only if they are a subset of the offered ones and include
//! VIRTIO_F_VERSION_1; queues can be configured only before DRIVER_OK; the device is activated
//! on DRIVER_OK only with valid queues, and a failed activation sets DEVICE_NEEDS_RESET.
//! Writing 0 to the status resets the device, its interrupt state and any MSI-X vector
//! assignments, after which it is as new. Transports ([`super::mmio`], [`super::pci`]) map
//! their registers onto these methods and own nothing of this themselves; nothing a guest
//! writes through them can panic the VMM.

use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, InterruptSource, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt, status,
};

/// Every status bit virtio defines.
const STATUS_BITS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::DRIVER_OK
    | status::FEATURES_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;

/// Which ring address of the selected queue a driver writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Desc,
    /// The driver (available) ring.
    Driver,
    /// The device (used) ring.
    Device,
}

/// A virtio device and everything its driver negotiated.
pub struct TransportState<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_events: Vec<EventFd>,
    /// The queues as the driver configured them; the device gets copies on activation.
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl<D: VirtioDevice> TransportState<D> {
    /// Wraps `device`; `queue_events` are the eventfds its queues are notified through (one per
    /// queue, as the VMM registered them as ioeventfds), `interrupt` is its interrupt.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queue_events: Vec<EventFd>,
    ) -> Self {
        let queues = fresh_queues(&device);
        Self {
            device,
            mem,
            interrupt,
            queue_events,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
        }
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device status, with DEVICE_NEEDS_RESET once the device asked for it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.reset_needed() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// The configuration generation, which changes whenever the configuration space does.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Tells the driver that the configuration space changed (new generation, config
    /// interrupt).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(err) = self.interrupt.trigger(InterruptSource::Config) {
            warn!("virtio: cannot raise the configuration interrupt: {err}");
        }
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The device feature page the driver selected (zero past the second).
    pub fn device_features_page(&self) -> u32 {
        page(self.device.features(), self.device_features_sel)
    }

    /// The device feature page selector.
    pub fn device_features_sel(&self) -> u32 {
        self.device_features_sel
    }

    /// Selects a device feature page.
    pub fn set_device_features_sel(&mut self, sel: u32) {
        self.device_features_sel = sel;
    }

    /// The driver feature page the driver selected, as it wrote it.
    pub fn driver_features_page(&self) -> u32 {
        page(self.driver_features, self.driver_features_sel)
    }

    /// The driver feature page selector.
    pub fn driver_features_sel(&self) -> u32 {
        self.driver_features_sel
    }

    /// Selects a driver feature page.
    pub fn set_driver_features_sel(&mut self, sel: u32) {
        self.driver_features_sel = sel;
    }

    /// The driver writes the selected feature page (ignored once FEATURES_OK is set).
    pub fn set_driver_features_page(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 {
            debug!("virtio: driver features written after FEATURES_OK; ignored");
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffff << shift)) | u64::from(value) << shift;
    }

    /// The selected queue's index.
    pub fn queue_sel(&self) -> u32 {
        self.queue_sel
    }

    /// Selects a queue (one that does not exist reads as absent).
    pub fn set_queue_sel(&mut self, sel: u32) {
        self.queue_sel = sel;
    }

    /// The selected queue, if it exists.
    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Changes the selected queue with `f`, only before DRIVER_OK (queues are configured
    /// between FEATURES_OK and DRIVER_OK).
    pub fn with_selected_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.status & status::DRIVER_OK != 0 {
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            f(q);
        }
    }

    /// The driver sets the selected queue's size.
    pub fn set_queue_size(&mut self, size: u32) {
        self.with_selected_queue(|q| q.set_size(u16::try_from(size).unwrap_or(0)));
    }

    /// The driver enables (1) or disables the selected queue.
    pub fn set_queue_ready(&mut self, ready: u32) {
        self.with_selected_queue(|q| q.set_ready(ready == 1));
    }

    /// The driver writes half (`high` or not) of one of the selected queue's ring addresses.
    pub fn set_queue_address(&mut self, ring: Ring, high: bool, value: u32) {
        let (lo, hi) = if high {
            (None, Some(value))
        } else {
            (Some(value), None)
        };
        self.with_selected_queue(|q| match ring {
            Ring::Desc => q.set_desc_table_address(lo, hi),
            Ring::Driver => q.set_avail_ring_address(lo, hi),
            Ring::Device => q.set_used_ring_address(lo, hi),
        });
    }

    /// One of the selected queue's ring addresses (zero if there is no such queue).
    pub fn queue_address(&self, ring: Ring) -> u64 {
        self.selected_queue().map_or(0, |q| match ring {
            Ring::Desc => q.desc_table(),
            Ring::Driver => q.avail_ring(),
            Ring::Device => q.used_ring(),
        })
    }

    /// A notification for queue `index` that reached the transport instead of its ioeventfd
    /// (another width, or before the VMM registered it): forwarded the same way.
    pub fn notify(&self, index: u32) {
        if let Some(evt) = self.queue_events.get(index as usize) {
            if let Err(err) = evt.write(1) {
                warn!("virtio: cannot forward a queue notification: {err}");
            }
        }
    }

    /// The driver writes the device status.
    pub fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits virtio does not define are reserved: never stored.
        let value = value & STATUS_BITS;
        // The driver only ever adds bits until it resets the device.
        if value & self.status != self.status {
            debug!(
                "virtio: status {value:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let mut value = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver its feature set was refused.
            value &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            if value & status::FEATURES_OK == 0 {
                debug!("virtio: DRIVER_OK without FEATURES_OK; ignored");
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        let ok = self.driver_features & !offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
        if !ok {
            warn!(
                "virtio: driver features {:#x} refused (offered {offered:#x}, VERSION_1 required)",
                self.driver_features
            );
        }
        ok
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                warn!("virtio: {}", ActivateError::QueueNotReady(i));
                return self.needs_reset();
            }
            if !q.is_valid(&self.mem) {
                warn!("virtio: {}", ActivateError::InvalidQueue(i));
                return self.needs_reset();
            }
        }
        // The device owns the queues from now on; the transport keeps what the driver
        // configured so it still reads back, and a reset gives it new ones.
        let configured = self.queues.iter().filter_map(configured_copy).collect();
        let queues = std::mem::replace(&mut self.queues, configured);
        match self.device.activate(queues, self.driver_features) {
            Ok(()) => self.active = true,
            Err(err) => {
                warn!("virtio: activation failed: {err}");
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_changed();
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.queues = fresh_queues(&self.device);
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }
}

/// Feature page `sel` of `features` (zero past the second).
fn page(features: u64, sel: u32) -> u32 {
    match sel {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

/// A queue configured as `q` is (size, rings, readiness), with none of its ring state.
fn configured_copy(q: &Queue) -> Option<Queue> {
    let mut copy = Queue::new(q.max_size()).ok()?;
    copy.set_size(q.size());
    let halves = |addr: u64| (Some(addr as u32), Some((addr >> 32) as u32));
    let (lo, hi) = halves(q.desc_table());
    copy.set_desc_table_address(lo, hi);
    let (lo, hi) = halves(q.avail_ring());
    copy.set_avail_ring_address(lo, hi);
    let (lo, hi) = halves(q.used_ring());
    copy.set_used_ring_address(lo, hi);
    copy.set_ready(q.ready());
    Some(copy)
}

/// Unconfigured queues of the sizes the device allows.
fn fresh_queues<D: VirtioDevice>(device: &D) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|max| Queue::new(*max).ok())
        .collect()
}

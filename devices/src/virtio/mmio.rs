//! The virtio-mmio transport, register layout version 2 (virtio 1.2, section 4.2.2).
//!
//! The transport owns the state the driver negotiates: device status, the feature pages, and
//! each queue's size and ring addresses. It enforces the status state machine: features are
//! accepted only if they are a subset of the offered ones and include VIRTIO_F_VERSION_1, and
//! the device is activated on DRIVER_OK only with valid queues; a failed activation sets
//! DEVICE_NEEDS_RESET. Writing 0 to the status register resets the device, after which it is
//! as new. Registers are 32 bits wide; other widths are ignored (reads return 0), and nothing
//! a guest writes here can panic the VMM.

use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt, status};
use crate::bus::BusDevice;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "EMBR", ember's vendor id.
const VENDOR_ID: u32 = 0x5242_4d45;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Queue notifications; the VMM registers an ioeventfd here.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Every status bit virtio defines.
const STATUS_BITS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::DRIVER_OK
    | status::FEATURES_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;

/// A virtio device behind its MMIO registers.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue_events: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
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

    /// The device model, for the VMM's counters.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, for the VMM's queue handling.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device status register, with DEVICE_NEEDS_RESET once the device asked for it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.reset_needed() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// Tells the driver that the configuration space changed (new generation, config
    /// interrupt).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(err) = self.interrupt.trigger(super::INTERRUPT_CONFIG_CHANGE) {
            warn!("virtio: cannot raise the configuration interrupt: {err}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are configured only between FEATURES_OK and DRIVER_OK.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let features = self.device.features();
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length all ones means "none".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    debug!("virtio: driver features written after FEATURES_OK; ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; a write that bypassed it (another width)
                // is forwarded the same way.
                if let Some(evt) = self.queue_events.get(value as usize) {
                    if let Err(err) = evt.write(1) {
                        warn!("virtio: cannot forward a queue notification: {err}");
                    }
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.set_status(value),
            REG_SHM_SEL => {}
            _ => debug!("virtio: write to register {offset:#x} ignored"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
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
                warn!("virtio: {}", super::ActivateError::QueueNotReady(i));
                return self.needs_reset();
            }
            if !q.is_valid(&self.mem) {
                warn!("virtio: {}", super::ActivateError::InvalidQueue(i));
                return self.needs_reset();
            }
        }
        // The device owns the queues from now on; a reset gives the transport new ones.
        let queues = std::mem::take(&mut self.queues);
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

/// Unconfigured queues of the sizes the device allows.
fn fresh_queues<D: VirtioDevice>(device: &D) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|max| Queue::new(*max).ok())
        .collect()
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => debug!(
                "virtio: {}-byte register write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::device::tests::image;
    use crate::virtio::block::{Block, Disk};
    use vm_memory::GuestAddress;

    const DESC: u32 = 0x1000;
    const AVAIL: u32 = 0x2000;
    const USED: u32 = 0x3000;

    fn transport(name: &str) -> MmioTransport<Block> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let disk = Disk::open(&image(name, 4096), false, true).unwrap();
        let block = Block::new(
            disk,
            None,
            "t",
            mem.clone(),
            irq.clone(),
            EventFd::new(0).unwrap(),
        );
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        MmioTransport::new(block, mem, irq, vec![notify])
    }

    fn read(t: &mut MmioTransport<Block>, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport<Block>, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The driver's bring-up sequence; `features_hi` is the upper feature page it accepts.
    fn bring_up(t: &mut MmioTransport<Block>, features_hi: u32, desc: u32) {
        write(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(t, REG_DRIVER_FEATURES_SEL, 1);
        write(t, REG_DRIVER_FEATURES, features_hi);
        write(
            t,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        write(t, REG_QUEUE_SEL, 0);
        write(t, REG_QUEUE_NUM, 16);
        write(t, REG_QUEUE_DESC_LOW, desc);
        write(t, REG_QUEUE_DRIVER_LOW, AVAIL);
        write(t, REG_QUEUE_DEVICE_LOW, USED);
        write(t, REG_QUEUE_READY, 1);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        write(t, REG_STATUS, all);
    }

    #[test]
    fn identity_registers() {
        let mut t = transport("mmio-id");
        assert_eq!(read(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(read(&mut t, REG_VERSION), 2);
        assert_eq!(read(&mut t, REG_DEVICE_ID), 2);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 256);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read(&mut t, REG_DEVICE_FEATURES) & 1,
            1,
            "VERSION_1 offered"
        );
    }

    #[test]
    fn a_proper_bring_up_activates_the_device() {
        let mut t = transport("mmio-up");
        bring_up(&mut t, 1, DESC);
        assert!(t.is_active());
        assert_eq!(t.status() & status::DRIVER_OK, status::DRIVER_OK);
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let mut t = transport("mmio-features");
        bring_up(&mut t, 0, DESC);
        assert_eq!(
            t.status() & status::FEATURES_OK,
            0,
            "legacy drivers are refused"
        );
        assert!(!t.is_active());
        let mut t = transport("mmio-features2");
        bring_up(&mut t, 1 | (1 << 20), DESC);
        assert_eq!(
            t.status() & status::FEATURES_OK,
            0,
            "a feature the device never offered"
        );
    }

    #[test]
    fn an_invalid_queue_needs_a_reset_and_a_reset_makes_the_device_reusable() {
        let mut t = transport("mmio-reset");
        bring_up(&mut t, 1, 0xfff0_0000); // a descriptor table outside guest memory
        assert!(!t.is_active());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(
            read(&mut t, REG_INTERRUPT_STATUS) & 2,
            0,
            "config interrupt raised"
        );

        write(&mut t, REG_STATUS, 0);
        assert_eq!(t.status(), 0);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0);
        bring_up(&mut t, 1, DESC);
        assert!(t.is_active(), "the device works again after a reset");
        // And once more, resetting an active device.
        write(&mut t, REG_STATUS, 0);
        assert!(!t.is_active());
        bring_up(&mut t, 1, DESC);
        assert!(t.is_active());
    }

    #[test]
    fn a_device_that_gives_up_on_its_queue_shows_needs_reset_until_the_driver_resets_it() {
        let mut t = transport("mmio-device-reset");
        bring_up(&mut t, 1, DESC);
        assert_eq!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        t.interrupt.needs_reset();
        assert_ne!(read(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(
            read(&mut t, REG_INTERRUPT_STATUS) & 2,
            0,
            "config interrupt"
        );
        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_STATUS), 0);
        bring_up(&mut t, 1, DESC);
        assert!(t.is_active());
        assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok_and_status_bits_cannot_be_cleared() {
        let mut t = transport("mmio-frozen");
        bring_up(&mut t, 1, DESC);
        write(&mut t, REG_QUEUE_NUM, 8);
        write(&mut t, REG_QUEUE_READY, 0);
        assert!(t.is_active());
        let before = t.status();
        write(&mut t, REG_STATUS, status::ACKNOWLEDGE);
        assert_eq!(t.status(), before);
    }

    #[test]
    fn undefined_status_bits_are_not_stored() {
        let mut t = transport("mmio-bits");
        write(&mut t, REG_STATUS, 0xb04c_b501);
        assert_eq!(t.status(), 0x01);
        write(&mut t, REG_STATUS, 0x0000_0003);
        assert_eq!(t.status(), 0x03, "the driver can still make progress");
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let mut t = transport("mmio-random");
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x >> 8) % 0x180;
            let width = [1usize, 2, 4, 8][(x % 4) as usize];
            let value = (x >> 32).to_le_bytes();
            if x & 0x10 == 0 {
                let mut data = vec![0u8; width];
                t.read(offset, &mut data);
            } else {
                t.write(offset, &value[..width]);
            }
        }
    }
}

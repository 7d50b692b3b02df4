//! The virtio-mmio transport, register layout version 2 (virtio 1.2, section 4.2.2).
//!
//! This module owns only the register map: where each register sits and that registers are
//! 32 bits wide (other widths are ignored, reads return 0). Everything the driver negotiates,
//! and the rules for it, live in [`TransportState`], which the PCI transport shares; nothing a
//! guest writes here can panic the VMM.

use std::sync::Arc;

use log::debug;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::transport::{Ring, TransportState};
use super::{VirtioDevice, VirtioInterrupt};
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

/// A virtio device behind its MMIO registers.
pub struct MmioTransport<D: VirtioDevice> {
    state: TransportState<D>,
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
        Self {
            state: TransportState::new(device, mem, interrupt, queue_events),
        }
    }

    /// The device model, for the VMM's counters.
    pub fn device(&self) -> &D {
        self.state.device()
    }

    /// The device model, for the VMM's queue handling.
    pub fn device_mut(&mut self) -> &mut D {
        self.state.device_mut()
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    /// The device status register, with DEVICE_NEEDS_RESET once the device asked for it.
    pub fn status(&self) -> u32 {
        self.state.status()
    }

    /// Tells the driver that the configuration space changed (new generation, config
    /// interrupt).
    pub fn config_changed(&mut self) {
        self.state.config_changed();
    }

    fn read_register(&self, offset: u64) -> u32 {
        let s = &self.state;
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => s.device().device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => s.device_features_page(),
            REG_QUEUE_NUM_MAX => s.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => s.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => s.interrupt().status(),
            REG_STATUS => s.status(),
            // No shared memory regions: length all ones means "none".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => s.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let s = &mut self.state;
        match offset {
            REG_DEVICE_FEATURES_SEL => s.set_device_features_sel(value),
            REG_DRIVER_FEATURES_SEL => s.set_driver_features_sel(value),
            REG_DRIVER_FEATURES => s.set_driver_features_page(value),
            REG_QUEUE_SEL => s.set_queue_sel(value),
            REG_QUEUE_NUM => s.set_queue_size(value),
            REG_QUEUE_READY => s.set_queue_ready(value),
            REG_QUEUE_DESC_LOW => s.set_queue_address(Ring::Desc, false, value),
            REG_QUEUE_DESC_HIGH => s.set_queue_address(Ring::Desc, true, value),
            REG_QUEUE_DRIVER_LOW => s.set_queue_address(Ring::Driver, false, value),
            REG_QUEUE_DRIVER_HIGH => s.set_queue_address(Ring::Driver, true, value),
            REG_QUEUE_DEVICE_LOW => s.set_queue_address(Ring::Device, false, value),
            REG_QUEUE_DEVICE_HIGH => s.set_queue_address(Ring::Device, true, value),
            // Normally caught by the ioeventfd.
            REG_QUEUE_NOTIFY => s.notify(value),
            REG_INTERRUPT_ACK => s.interrupt().acknowledge(value),
            REG_STATUS => s.set_status(value),
            REG_SHM_SEL => {}
            _ => debug!("virtio: write to register {offset:#x} ignored"),
        }
    }
}

impl<D: VirtioDevice> super::Transport<D> for MmioTransport<D> {
    fn device(&self) -> &D {
        MmioTransport::device(self)
    }

    fn device_mut(&mut self) -> &mut D {
        MmioTransport::device_mut(self)
    }

    fn config_changed(&mut self) {
        MmioTransport::config_changed(self);
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.state.device().read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.state
                .device_mut()
                .write_config(offset - CONFIG_SPACE, data);
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
    use crate::virtio::status;
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
        t.state.interrupt().needs_reset();
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

//! The virtio-pci transport, modern devices only (virtio 1.2, section 4.1).
//!
//! [`VirtioPci`] is one PCI function: vendor 0x1af4, device 0x1040 + the virtio device type,
//! revision 1. It owns its configuration space (header, one 64-bit memory BAR, the virtio
//! vendor capabilities and the MSI-X capability) and the register map of its BAR; what the
//! driver negotiates lives in the shared [`TransportState`], so the rules are the MMIO
//! transport's. It is both a [`PciFunction`] (configuration space, reached through the PCI
//! bus) and a [`BusDevice`] (the BAR, which the VMM places on the MMIO bus at
//! [`VirtioPci::bar_address`]).
//!
//! BAR 0 layout ([`BAR_SIZE`] bytes; MSI-X structures on 4 KiB pages of their own, as the
//! PCI spec asks):
//!
//! | offset   | length | structure                                                   |
//! |----------|--------|-------------------------------------------------------------|
//! | 0x0000   | 0x38   | common configuration (4.1.4.3)                              |
//! | 0x0400   | 0x4    | ISR status (reading clears it)                              |
//! | 0x0800   | 0x800  | notifications: queue `n` at 0x800 + 4n (notify_off_multiplier 4) |
//! | 0x1000   | 0x1000 | device configuration                                        |
//! | 0x2000   | 0x1000 | MSI-X table (16 bytes per vector)                           |
//! | 0x3000   | 0x1000 | MSI-X pending-bit array                                     |
//!
//! Configuration space also carries the VIRTIO_PCI_CAP_PCI_CFG window into the BAR.
//!
//! The VMM registers one ioeventfd per queue at `bar_address() + notify_offset(n)`; a
//! notification that reaches the BAR anyway is forwarded to the same eventfd. Interrupts go
//! through the device's [`VirtioInterrupt`], built with [`VirtioInterrupt::with_msix`]: INTx
//! until the driver enables MSI-X, then the vectors it assigned here.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use log::debug;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::transport::{Ring, TransportState};
use super::{VirtioDevice, VirtioInterrupt};
use crate::bus::BusDevice;
use crate::pci::config::{ConfigError, Header};
use crate::pci::msix::{self, Msix};
use crate::pci::{BarKind, BarMove, ConfigSpace, PciFunction};

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x4000;
/// The BAR everything lives in.
const BAR_INDEX: u8 = 0;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR: u64 = 0x0400;
const ISR_LEN: u64 = 0x4;
const NOTIFY: u64 = 0x0800;
const NOTIFY_LEN: u64 = 0x800;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const DEVICE_CONFIG: u64 = 0x1000;
const DEVICE_CONFIG_LEN: u64 = 0x1000;
const MSIX_TABLE: u64 = 0x2000;
const MSIX_PBA: u64 = 0x3000;
const MSIX_REGION_LEN: u64 = 0x1000;

const VENDOR_ID: u16 = 0x1af4;
const DEVICE_ID_BASE: u16 = 0x1040;
/// The PCI capability id of vendor-specific capabilities, which virtio's are.
const VENDOR_CAPABILITY: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

// Common configuration fields (virtio 1.2, 4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Errors building a virtio-pci function (VMM bugs, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum PciTransportError {
    /// The interrupt was built without MSI-X.
    #[error("a virtio-pci device needs an interrupt built with VirtioInterrupt::with_msix")]
    NoMsix,
    /// The MSI-X table cannot give each queue and configuration changes a vector.
    #[error("{queues} queues need {} MSI-X vectors (one per queue and one for configuration changes) within {max}, not {vectors}", queues + 1)]
    Vectors {
        /// The device's queues.
        queues: usize,
        /// The table's vectors.
        vectors: usize,
        /// The most the BAR has room for.
        max: u64,
    },
    /// The interrupt was built for another number of queues.
    #[error("the device has {queues} queues but its interrupt was built for {interrupt}")]
    InterruptQueues {
        /// The device's queues.
        queues: usize,
        /// The queues the interrupt has vectors for.
        interrupt: usize,
    },
    /// The configuration space refused the BAR or a capability.
    #[error("cannot lay out the configuration space")]
    Config(#[from] ConfigError),
}

/// MSI-X vectors a device with `queues` queues gets: one per queue, one for configuration
/// changes. The VMM creates this many irqfds for [`Msix::new`].
pub fn vectors_needed(queues: usize) -> usize {
    queues + 1
}

/// Offset of queue `queue`'s notification address in the BAR.
pub fn notify_offset(queue: u16) -> u64 {
    NOTIFY + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// A virtio device as a PCI function.
pub struct VirtioPci<D: VirtioDevice> {
    state: TransportState<D>,
    config: ConfigSpace,
    msix: Arc<Msix>,
    /// The register holding the MSI-X message control (in its upper half).
    msix_control_reg: usize,
    /// The first register of the VIRTIO_PCI_CAP_PCI_CFG capability.
    pci_cfg_reg: usize,
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// Wraps `device` with its BAR at `bar_address` (aligned to [`BAR_SIZE`], in the VMM's
    /// 64-bit window). `interrupt` must come from [`VirtioInterrupt::with_msix`] with
    /// [`vectors_needed`] vectors; `queue_events` are the queues' notification eventfds.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queue_events: Vec<EventFd>,
        bar_address: u64,
    ) -> Result<Self, PciTransportError> {
        let msix = interrupt.msix().ok_or(PciTransportError::NoMsix)?.clone();
        let queues = device.queue_max_sizes().len();
        let vectors = usize::from(msix.vectors());
        if interrupt.vector_queues() != queues {
            return Err(PciTransportError::InterruptQueues {
                queues,
                interrupt: interrupt.vector_queues(),
            });
        }
        // The table's region also bounds the queues far below the notification region's room.
        if vectors < vectors_needed(queues) || msix.table_len() > MSIX_REGION_LEN {
            return Err(PciTransportError::Vectors {
                queues,
                vectors,
                max: MSIX_REGION_LEN / msix::ENTRY_SIZE,
            });
        }
        let device_id = DEVICE_ID_BASE + device.device_type() as u16;
        let (class, subclass) = match device.device_type() {
            super::net::DEVICE_TYPE_NET => (0x02, 0x00),
            super::block::DEVICE_TYPE_BLOCK => (0x01, 0x80),
            _ => (0xff, 0x00),
        };
        let mut config = ConfigSpace::new(Header {
            vendor: VENDOR_ID,
            device: device_id,
            revision: 1,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor: VENDOR_ID,
            subsystem: device_id,
            interrupt_pin: 1,
        });
        config.add_bar(BAR_INDEX, BarKind::Memory64, bar_address, BAR_SIZE)?;
        add_virtio_capabilities(&mut config)?;
        let pci_cfg_reg = add_pci_cfg_capability(&mut config)?;
        let body = msix.capability(BAR_INDEX, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(msix::CAPABILITY_ID, &body)?;
        let msix_control_reg = msix_cap / 4;
        config.set_writable(
            msix_control_reg,
            u32::from(msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK) << 16,
        );
        Ok(Self {
            state: TransportState::new(device, mem, interrupt, queue_events),
            config,
            msix,
            msix_control_reg,
            pci_cfg_reg,
        })
    }

    /// The device model.
    pub fn device(&self) -> &D {
        self.state.device()
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        self.state.device_mut()
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    /// The device status, with DEVICE_NEEDS_RESET once the device asked for it.
    pub fn status(&self) -> u32 {
        self.state.status()
    }

    /// Tells the driver that the configuration space changed.
    pub fn config_changed(&mut self) {
        self.state.config_changed();
    }

    /// Where BAR 0 is decoded now (it moves only when the VMM accepts a move).
    pub fn bar_address(&self) -> u64 {
        self.config.bar_address(BAR_INDEX).unwrap_or(0)
    }

    /// Number of queues (each with a notification address at [`notify_offset`]).
    pub fn num_queues(&self) -> usize {
        self.state.num_queues()
    }

    /// Sets the interrupt line register: the GSI the VMM wired INTx to.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.config.write(0x3c, &[line]);
    }

    fn read_common(&self, offset: u64, len: usize) -> Option<u64> {
        let s = &self.state;
        let queue = s.selected_queue();
        let value = match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(s.device_features_sel()),
            (DEVICE_FEATURE, 4) => u64::from(s.device_features_page()),
            (DRIVER_FEATURE_SELECT, 4) => u64::from(s.driver_features_sel()),
            (DRIVER_FEATURE, 4) => u64::from(s.driver_features_page()),
            (CONFIG_MSIX_VECTOR, 2) => u64::from(s.interrupt().config_vector()),
            (NUM_QUEUES, 2) => s.num_queues() as u64,
            (DEVICE_STATUS, 1) => u64::from(s.status() as u8),
            (CONFIG_GENERATION, 1) => u64::from(s.config_generation() as u8),
            (QUEUE_SELECT, 2) => u64::from(s.queue_sel() as u16),
            (QUEUE_SIZE, 2) => queue.map_or(0, |q| u64::from(q.size())),
            (QUEUE_MSIX_VECTOR, 2) => u64::from(s.interrupt().queue_vector(s.queue_sel() as usize)),
            (QUEUE_ENABLE, 2) => queue.map_or(0, |q| u64::from(q.ready())),
            (QUEUE_NOTIFY_OFF, 2) => queue.map_or(0, |_| u64::from(s.queue_sel() as u16)),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => s.queue_address(ring_at(offset)?),
            (0x20..0x38, 4) => {
                let address = s.queue_address(ring_at(offset & !7)?);
                if offset % 8 == 0 {
                    address & 0xffff_ffff
                } else {
                    address >> 32
                }
            }
            _ => return None,
        };
        Some(value)
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let s = &mut self.state;
        let queue = s.queue_sel() as usize;
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => s.set_device_features_sel(value as u32),
            (DRIVER_FEATURE_SELECT, 4) => s.set_driver_features_sel(value as u32),
            (DRIVER_FEATURE, 4) => s.set_driver_features_page(value as u32),
            (CONFIG_MSIX_VECTOR, 2) => s.interrupt().set_config_vector(value as u16),
            (DEVICE_STATUS, 1) => s.set_status(value as u32),
            (QUEUE_SELECT, 2) => s.set_queue_sel(value as u32),
            (QUEUE_SIZE, 2) => s.set_queue_size(value as u32),
            (QUEUE_MSIX_VECTOR, 2) => {
                if s.selected_queue().is_some() {
                    s.interrupt().set_queue_vector(queue, value as u16);
                }
            }
            (QUEUE_ENABLE, 2) => s.set_queue_ready(value as u32),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => {
                if let Some(ring) = ring_at(offset) {
                    s.set_queue_address(ring, false, value as u32);
                    s.set_queue_address(ring, true, (value >> 32) as u32);
                }
            }
            (0x20..0x38, 4) => {
                if let Some(ring) = ring_at(offset & !7) {
                    s.set_queue_address(ring, offset % 8 != 0, value as u32);
                }
            }
            _ => debug!(
                "virtio-pci: {}-byte common config write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The BAR access the VIRTIO_PCI_CAP_PCI_CFG window is set up for: (offset, length), if
    /// the driver chose BAR 0, a length of 1, 2 or 4 and an aligned offset inside the BAR.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let bar = self.config.read(self.pci_cfg_reg + 1) as u8;
        let offset = u64::from(self.config.read(self.pci_cfg_reg + 2));
        let len = self.config.read(self.pci_cfg_reg + 3) as usize;
        let fits = matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 && offset < BAR_SIZE;
        (bar == BAR_INDEX && fits).then_some((offset, len))
    }

    /// The register through which the window reads and writes (pci_cfg_data).
    fn pci_cfg_data_reg(&self) -> usize {
        self.pci_cfg_reg + 4
    }
}

/// The ring whose address field starts at `offset`.
fn ring_at(offset: u64) -> Option<Ring> {
    match offset {
        QUEUE_DESC => Some(Ring::Desc),
        QUEUE_DRIVER => Some(Ring::Driver),
        QUEUE_DEVICE => Some(Ring::Device),
        _ => None,
    }
}

/// The virtio capabilities (struct virtio_pci_cap, 4.1.4): common, notify, ISR, device.
fn add_virtio_capabilities(config: &mut ConfigSpace) -> Result<(), ConfigError> {
    let regions = [
        (CAP_COMMON, COMMON, COMMON_LEN),
        (CAP_NOTIFY, NOTIFY, NOTIFY_LEN),
        (CAP_ISR, ISR, ISR_LEN),
        (CAP_DEVICE, DEVICE_CONFIG, DEVICE_CONFIG_LEN),
    ];
    for (cfg_type, offset, len) in regions {
        let notify = cfg_type == CAP_NOTIFY;
        // cap_len counts the id and next bytes too.
        let cap_len: u8 = if notify { 20 } else { 16 };
        let mut body = vec![cap_len, cfg_type, BAR_INDEX, 0, 0, 0];
        body.extend_from_slice(&(offset as u32).to_le_bytes());
        body.extend_from_slice(&(len as u32).to_le_bytes());
        if notify {
            body.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        }
        config.add_capability(VENDOR_CAPABILITY, &body)?;
    }
    Ok(())
}

/// VIRTIO_PCI_CAP_PCI_CFG (4.1.4.9): a window into the BAR through configuration space, for
/// drivers that cannot map the BAR (firmware below a 64-bit BAR). The driver writes the BAR,
/// offset and length fields; pci_cfg_data then reads and writes the BAR there. Returns the
/// capability's first register.
fn add_pci_cfg_capability(config: &mut ConfigSpace) -> Result<usize, ConfigError> {
    let mut body = vec![20, CAP_PCI_CFG, BAR_INDEX, 0, 0, 0];
    // Offset, length and pci_cfg_data, all zero until the driver writes them.
    body.extend_from_slice(&[0; 12]);
    let reg = config.add_capability(VENDOR_CAPABILITY, &body)? / 4;
    config.set_writable(reg + 1, 0xff);
    config.set_writable(reg + 2, u32::MAX);
    config.set_writable(reg + 3, u32::MAX);
    Ok(reg)
}

impl<D: VirtioDevice> PciFunction for VirtioPci<D> {
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_reg() {
            let mut data = [0u8; 4];
            if let Some((offset, len)) = self.pci_cfg_window() {
                self.read(offset, &mut data[..len]);
            }
            return u32::from_le_bytes(data);
        }
        self.config.read(reg)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        if offset / 4 == self.pci_cfg_data_reg() {
            match self.pci_cfg_window() {
                Some((at, len)) if offset % 4 == 0 && data.len() == len => self.write(at, data),
                _ => debug!("virtio-pci: pci_cfg_data write outside the window ignored"),
            }
            return None;
        }
        let request = self.config.write(offset, data);
        if offset / 4 == self.msix_control_reg {
            let control = (self.config.read(self.msix_control_reg) >> 16) as u16;
            self.msix.set_message_control(control);
        }
        request
    }

    fn settle_bar_move(&mut self, request: &BarMove, accepted: bool) {
        self.config.settle_bar_move(request, accepted);
    }
}

impl<D: VirtioDevice> super::Transport<D> for VirtioPci<D> {
    fn device(&self) -> &D {
        VirtioPci::device(self)
    }

    fn device_mut(&mut self) -> &mut D {
        VirtioPci::device_mut(self)
    }

    fn config_changed(&mut self) {
        VirtioPci::config_changed(self);
    }
}

/// Accesses wider than 8 bytes are not something a vCPU makes; they are ignored.
impl<D: VirtioDevice> BusDevice for VirtioPci<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() > 8 {
            return;
        }
        match offset {
            COMMON..COMMON_LEN => {
                if let Some(value) = self.read_common(offset, data.len()) {
                    let n = data.len();
                    data.copy_from_slice(&value.to_le_bytes()[..n]);
                }
            }
            ISR => {
                if let Some(byte) = data.first_mut() {
                    *byte = self.state.interrupt().take_status() as u8;
                }
            }
            DEVICE_CONFIG..MSIX_TABLE => self
                .state
                .device()
                .read_config(offset - DEVICE_CONFIG, data),
            MSIX_TABLE..MSIX_PBA => self.msix.read_table(offset - MSIX_TABLE, data),
            MSIX_PBA..BAR_SIZE => self.msix.read_pba(offset - MSIX_PBA, data),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() > 8 {
            return;
        }
        match offset {
            COMMON..COMMON_LEN => self.write_common(offset, data),
            NOTIFY..DEVICE_CONFIG => {
                let queue = (offset - NOTIFY) / u64::from(NOTIFY_OFF_MULTIPLIER);
                if offset % u64::from(NOTIFY_OFF_MULTIPLIER) == 0 {
                    self.state.notify(queue as u32);
                }
            }
            DEVICE_CONFIG..MSIX_TABLE => self
                .state
                .device_mut()
                .write_config(offset - DEVICE_CONFIG, data),
            MSIX_TABLE..MSIX_PBA => self.msix.write_table(offset - MSIX_TABLE, data),
            _ => debug!(
                "virtio-pci: {}-byte BAR write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

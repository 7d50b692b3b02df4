//! The virtio-pci transport's wiring (`--enable-pci`; devices/src/pci/mod.rs lists the steps):
//! PCI bus 0 with the host bridge, reached through ports 0xCF8-0xCFF and the ECAM window;
//! each virtio device a function in the PCI slot after its index (slot 0 is the host
//! bridge), its BAR at a fixed place in the 64-bit window above RAM, one ioeventfd per queue
//! at its notification address, one irqfd per MSI-X vector on a GSI of its own above the
//! IOAPIC's pins (routed when the guest programs the vector), and an INTx irqfd on the
//! slot's IOAPIC pin for drivers that do not enable MSI-X.
//!
//! BARs stay where ember puts them: the ACPI tables describe the windows and Linux keeps
//! BARs that firmware assigned inside them, so a guest's request to move one is refused
//! ([`FixedBars`]) and the BAR reads back its address.

use std::io;
use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::pci::BarMove;
use devices::pci::bus::{BarMover, CONFIG_IO_LEN, PciBus, PciBusError, PciConfigIo, PciConfigMmio};
use devices::pci::msix::{MsiMessage, MsiRouting, Msix, MsixError};
use devices::virtio::pci::{self as virtio_pci, BAR_SIZE, PciTransportError, VirtioPci};
use devices::virtio::{Transport, VirtioDevice, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, Slot, Wired, event};
use crate::arch::x86_64::acpi;
use crate::arch::x86_64::layout::{
    MSI_GSI_BASE, PCI_CONFIG_PORT, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO64_SIZE, pci_mmio64_start,
};
use crate::vm::{GsiRouting, Vm};

/// Errors wiring a device on PCI (VMM bugs, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The MSI-X table could not be built.
    #[error("cannot build an MSI-X table")]
    Msix(#[from] MsixError),
    /// The virtio-pci function could not be built.
    #[error("cannot build a virtio-pci function")]
    Transport(#[from] PciTransportError),
    /// The bus has no room.
    #[error(transparent)]
    Bus(#[from] PciBusError),
    /// The bus put a device in another slot than its index says (the ACPI interrupt routes
    /// would be wrong).
    #[error("virtio device {index} landed in PCI slot {got}, not {}", index + 1)]
    SlotOrder {
        /// The device's index.
        index: usize,
        /// The slot the bus gave it.
        got: u8,
    },
}

/// The PCI device number of the virtio device at `slot`: the one after the host bridge's.
pub fn device_number(slot: Slot) -> u8 {
    // Slots are bounded by MAX_DEVICES, below the bus's 32.
    slot.index as u8 + 1
}

/// Where the BAR of the virtio device at `slot` lives in a guest of `mem_bytes`.
pub fn bar_address(mem_bytes: u64, slot: Slot) -> u64 {
    pci_mmio64_start(mem_bytes) + slot.index as u64 * BAR_SIZE
}

/// The host bridge as the ACPI tables describe it, for a guest of `mem_bytes` with virtio
/// devices at `slots`.
pub fn acpi_host(mem_bytes: u64, slots: impl Iterator<Item = Slot>) -> acpi::PciHost {
    acpi::PciHost {
        mmio64: (pci_mmio64_start(mem_bytes), PCI_MMIO64_SIZE),
        intx: slots.map(|slot| (device_number(slot), slot.irq)).collect(),
    }
}

/// Refuses every BAR move: BARs stay where ember placed them, where its ioeventfds are.
struct FixedBars;

impl BarMover for FixedBars {
    fn move_bar(&self, _slot: u8, _request: &BarMove) -> bool {
        false
    }
}

/// Routes one function's MSI-X vectors: vector `n` is GSI `first + n`.
struct Vectors {
    routing: Arc<GsiRouting>,
    first: u32,
}

impl MsiRouting for Vectors {
    fn route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
        let gsi = self.first + u32::from(vector);
        self.routing
            .set_msi(gsi, message.address, message.data)
            .map_err(io::Error::other)
    }
}

/// The PCI bus being built, and what its devices share.
pub(super) struct PciDevices {
    bus: PciBus,
    routing: Arc<GsiRouting>,
    /// The next free GSI for MSI-X vectors.
    next_gsi: u32,
    mem_bytes: u64,
}

impl PciDevices {
    /// An empty bus (the host bridge only) for a guest of `mem_bytes`.
    pub(super) fn new(vm: &Vm, mem_bytes: u64) -> Self {
        Self {
            bus: PciBus::new(Arc::new(FixedBars)),
            routing: Arc::new(vm.gsi_routing()),
            next_gsi: MSI_GSI_BASE,
            mem_bytes,
        }
    }

    /// The interrupt (MSI-X vectors and INTx) and queue notifications of a device with
    /// `queues` queues at `slot`.
    pub(super) fn wire(&mut self, vm: &Vm, slot: Slot, queues: u32) -> Result<Wired, DeviceError> {
        let queues = queues as usize;
        let first = self.next_gsi;
        let irqfds = (0..virtio_pci::vectors_needed(queues))
            .map(|vector| {
                let evt = event()?;
                vm.register_irqfd(&evt, first + vector as u32)?;
                Ok(evt)
            })
            .collect::<Result<Vec<_>, DeviceError>>()?;
        self.next_gsi += irqfds.len() as u32;
        let routing = Arc::new(Vectors {
            routing: self.routing.clone(),
            first,
        });
        let msix = Arc::new(Msix::new(irqfds, routing).map_err(PciError::from)?);
        let intx = event()?;
        vm.register_irqfd(&intx, slot.irq)?;
        let interrupt = Arc::new(VirtioInterrupt::with_msix(intx, msix, queues));
        let bar = bar_address(self.mem_bytes, slot);
        let notify = (0..queues)
            .map(|queue| {
                let evt = event()?;
                vm.register_ioevent_any(&evt, bar + virtio_pci::notify_offset(queue as u16))?;
                Ok(evt)
            })
            .collect::<Result<Vec<_>, DeviceError>>()?;
        Ok(Wired { interrupt, notify })
    }

    /// Makes `device`, wired as `wired`, the function in `slot`'s PCI slot with its BAR on
    /// the MMIO bus.
    pub(super) fn place<D: VirtioDevice + 'static>(
        &mut self,
        mmio: &mut Bus,
        slot: Slot,
        device: D,
        mem: &GuestMemoryMmap,
        wired: Wired,
    ) -> Result<Arc<Mutex<dyn Transport<D>>>, DeviceError> {
        let bar = bar_address(self.mem_bytes, slot);
        let mut function = VirtioPci::new(device, mem.clone(), wired.interrupt, wired.notify, bar)
            .map_err(PciError::from)?;
        // An IOAPIC pin (at most 23).
        function.set_interrupt_line(slot.irq as u8);
        let function = Arc::new(Mutex::new(function));
        let got = self.bus.add(function.clone()).map_err(PciError::from)?;
        if got != device_number(slot) {
            return Err(PciError::SlotOrder {
                index: slot.index,
                got,
            }
            .into());
        }
        mmio.insert(function.clone(), bar, BAR_SIZE)?;
        Ok(function)
    }

    /// Puts the bus's configuration mechanisms on the port and MMIO buses.
    pub(super) fn finish(self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), DeviceError> {
        let bus = Arc::new(self.bus);
        let io = Arc::new(Mutex::new(PciConfigIo::new(bus.clone())));
        pio.insert(io, PCI_CONFIG_PORT.into(), CONFIG_IO_LEN)?;
        let ecam = Arc::new(Mutex::new(PciConfigMmio::new(bus)));
        mmio.insert(ecam, PCI_ECAM_START, PCI_ECAM_SIZE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::MAX_DEVICES;

    #[test]
    fn bars_are_in_the_64_bit_window_apart_and_aligned() {
        let mem = 512 << 20;
        let first = bar_address(mem, Slot::nth(0));
        assert_eq!(first, pci_mmio64_start(mem));
        let last = bar_address(mem, Slot::nth(MAX_DEVICES - 1));
        assert!(last + BAR_SIZE <= pci_mmio64_start(mem) + PCI_MMIO64_SIZE);
        for i in 0..MAX_DEVICES {
            let bar = bar_address(mem, Slot::nth(i));
            assert_eq!(bar % BAR_SIZE, 0);
            assert_eq!(device_number(Slot::nth(i)), i as u8 + 1);
        }
        assert_eq!(bar_address(mem, Slot::nth(1)) - first, BAR_SIZE);
    }
}

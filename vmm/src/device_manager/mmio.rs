//! The virtio-mmio transport's wiring: each device's window on the MMIO bus at its slot, one
//! irqfd on the slot's IOAPIC pin, and one ioeventfd per queue on the window's QueueNotify
//! register (matched on the queue index the driver writes). The devices are announced on the
//! kernel command line and in the DSDT ([`Slot`]).

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, REG_QUEUE_NOTIFY};
use devices::virtio::{Transport, VirtioDevice, VirtioInterrupt};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, Slot, Wired, event};
use crate::vm::Vm;

/// The interrupt and queue notifications of a device with `queues` queues at `slot`.
pub(super) fn wire(vm: &Vm, slot: Slot, queues: u32) -> Result<Wired, DeviceError> {
    let interrupt = Arc::new(VirtioInterrupt::new(event()?));
    vm.register_irqfd(interrupt.irq(), slot.irq)?;
    let notify = (0..queues)
        .map(|queue| {
            let evt = event()?;
            vm.register_ioevent(&evt, slot.base + REG_QUEUE_NOTIFY, queue)?;
            Ok(evt)
        })
        .collect::<Result<Vec<_>, DeviceError>>()?;
    Ok(Wired { interrupt, notify })
}

/// Puts `device`, wired as `wired`, on the MMIO bus at `slot`.
pub(super) fn place<D: VirtioDevice + 'static>(
    bus: &mut Bus,
    slot: Slot,
    device: D,
    mem: &GuestMemoryMmap,
    wired: Wired,
) -> Result<Arc<Mutex<dyn Transport<D>>>, DeviceError> {
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        mem.clone(),
        wired.interrupt,
        wired.notify,
    )));
    bus.insert(transport.clone(), slot.base, MMIO_WINDOW)?;
    Ok(transport)
}

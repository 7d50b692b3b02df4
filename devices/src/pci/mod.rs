//! A PCI root complex for virtio-pci: configuration space, MSI-X, and the bus the guest
//! enumerates (PCI Local Bus 3.0; PCI Express Base 5.0, 7.2.2 for ECAM).
//!
//! What each part owns:
//! - [`config::ConfigSpace`]: one type-0 function's 256-byte configuration space: the header,
//!   the read-only and writable bits, the BARs with their sizing protocol, and the capability
//!   chain. A guest write that would move a BAR is not applied to the machine here: it comes
//!   back as a [`config::BarMove`] request that the VMM accepts or refuses.
//! - [`msix::Msix`]: one function's MSI-X table and pending-bit array, one irqfd per vector.
//!   Device threads trigger vectors lock-free; masked vectors stay pending until unmasked.
//!   Address/data changes reach the VMM through [`msix::MsiRouting`] (it updates KVM GSI
//!   routing); nothing here knows about KVM.
//! - [`bus`]: the bus (32 device slots on bus 0, function 0 only, the host bridge at 00:00.0)
//!   and its two configuration access mechanisms, the legacy 0xCF8/0xCFC ports
//!   ([`bus::PciConfigIo`]) and ECAM ([`bus::PciConfigMmio`]), both [`crate::bus::BusDevice`]s.
//!   A function that does not exist reads all ones.
//!
//! Wiring a virtio device on PCI (the VMM's side, in order):
//! 1. `Msix::new(irqfds, routing)` with `virtio::pci::vectors_needed(queues)` irqfds, each
//!    registered with KVM; `routing` ([`msix::MsiRouting`]) sets the vector's GSI route.
//! 2. `VirtioInterrupt::with_msix(intx_irqfd, msix, queues)`; build the device with it.
//! 3. `VirtioPci::new(device, mem, interrupt, queue_eventfds, bar_address)`, `bar_address`
//!    aligned to `virtio::pci::BAR_SIZE` in the 64-bit window; `set_interrupt_line(gsi)`.
//! 4. One `Arc<Mutex<VirtioPci<_>>>`: on the MMIO bus at `bar_address` for `BAR_SIZE` bytes,
//!    and `PciBus::add` for its slot; queue `n`'s ioeventfd at `bar_address +
//!    virtio::pci::notify_offset(n)`.
//! 5. `Arc<PciBus>` into a [`bus::PciConfigIo`] at port 0xCF8 (8 ports) and a
//!    [`bus::PciConfigMmio`] at the ECAM base ([`bus::ECAM_BUS_SIZE`] bytes for bus 0).
//! 6. [`bus::BarMover::move_bar`] answers BAR moves: refuse (ember keeps BARs where it put
//!    them) or re-place the BAR and its ioeventfds and accept.
//!
//! This module must not touch KVM, spawn threads or map memory: placing BARs in the MMIO
//! windows, registering ioeventfds and irqfds and describing the bus in ACPI belong to the VMM.
//! The virtio transport over PCI is [`crate::virtio::pci`].

pub mod bus;
pub mod config;
pub mod msix;

pub use config::{BarKind, BarMove, ConfigSpace};

/// A PCI function as the configuration access mechanisms see it.
///
/// Registers are 32-bit words of the configuration space; accesses never cross one (the bus
/// splits or refuses them before they get here).
pub trait PciFunction: Send {
    /// Reads register `reg` (byte offset / 4). Registers past the function's configuration
    /// space read as zero.
    fn read_config(&mut self, reg: usize) -> u32;

    /// Writes `data` (1, 2 or 4 bytes, within one register) at byte `offset`. Returns the BAR
    /// move the write asks for, which the bus puts to the VMM and settles with
    /// [`PciFunction::settle_bar_move`] before the next access.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove>;

    /// The VMM `accepted` (it now decodes the BAR at its new address) or refused `request`;
    /// a refused BAR reads back its old address.
    fn settle_bar_move(&mut self, request: &BarMove, accepted: bool);
}

/// Calls `f(register, mask, value)` for each 32-bit register that a write of `data` at byte
/// `offset` touches: `mask` selects the bytes written, `value` holds them in place.
pub(crate) fn for_each_dword(offset: u64, data: &[u8], mut f: impl FnMut(u64, u32, u32)) {
    let mut current: Option<(u64, u32, u32)> = None;
    for (i, byte) in data.iter().enumerate() {
        let Some(at) = offset.checked_add(i as u64) else {
            break;
        };
        let (reg, shift) = (at / 4, (at % 4) * 8);
        match &mut current {
            Some((r, mask, value)) if *r == reg => {
                *mask |= 0xff << shift;
                *value |= u32::from(*byte) << shift;
            }
            _ => {
                if let Some((r, mask, value)) = current.take() {
                    f(r, mask, value);
                }
                current = Some((reg, 0xff << shift, u32::from(*byte) << shift));
            }
        }
    }
    if let Some((r, mask, value)) = current {
        f(r, mask, value);
    }
}

/// Fills `data` from the 32-bit registers `reg` returns, as a read of `data.len()` bytes at
/// byte `offset` would see them (any width, any alignment).
pub(crate) fn read_dwords(offset: u64, data: &mut [u8], mut reg: impl FnMut(u64) -> u32) {
    let mut cached: Option<(u64, u32)> = None;
    for (i, byte) in data.iter_mut().enumerate() {
        let at = offset.saturating_add(i as u64);
        let index = at / 4;
        let value = match cached {
            Some((r, v)) if r == index => v,
            _ => {
                let v = reg(index);
                cached = Some((index, v));
                v
            }
        };
        *byte = (value >> ((at % 4) * 8)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_split_into_the_registers_they_touch() {
        let mut seen = Vec::new();
        for_each_dword(2, &[0x11, 0x22, 0x33, 0x44], |r, m, v| seen.push((r, m, v)));
        assert_eq!(
            seen,
            vec![(0, 0xffff_0000, 0x2211_0000), (1, 0x0000_ffff, 0x0000_4433)]
        );
        let regs = [0x4433_2211u32, 0x8877_6655];
        let mut data = [0u8; 3];
        read_dwords(3, &mut data, |r| regs[r as usize]);
        assert_eq!(data, [0x44, 0x55, 0x66]);
    }
}

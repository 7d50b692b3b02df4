//! The configuration space of one type-0 PCI function (PCI Local Bus 3.0, chapter 6).
//!
//! It owns the 256 bytes the guest sees, which of their bits the guest may change, the BARs
//! and the capability chain. BARs follow the sizing protocol: a write of all ones to a BAR's
//! address bits reads back the size mask, because the address bits below the size are
//! hardwired to zero. A write of a new address does not move anything: it returns a
//! [`BarMove`] that the bus puts to the VMM, and a refused move puts the old address back, so
//! the guest cannot make a BAR claim guest RAM or another device's range. A 64-bit BAR moves
//! when its upper half is written (Linux writes the lower half first), so the VMM is never
//! asked about a half-written address. Memory-space decode (command bit 1) is stored but does
//! not unmap BARs; the VMM keeps every BAR mapped where it last accepted it.

use log::debug;

use super::for_each_dword;

/// Size of a conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
const REGS: usize = CONFIG_SIZE / 4;
/// Number of BAR registers in a type-0 header.
pub const BARS: usize = 6;

const REG_ID: usize = 0;
const REG_COMMAND: usize = 1;
const REG_CLASS: usize = 2;
const REG_HEADER: usize = 3;
const REG_BAR0: usize = 4;
const REG_SUBSYSTEM: usize = 11;
const REG_CAPABILITIES: usize = 13;
const REG_INTERRUPT: usize = 15;
/// Status bit 4: the capability list pointer is valid.
const STATUS_CAPABILITIES: u32 = 1 << 20;
/// Command bits the guest may set: I/O and memory decode, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
const FIRST_CAPABILITY: usize = 0x40;
/// BAR bit 2: a 64-bit memory BAR.
const BAR_64BIT: u32 = 0b100;
const BAR_ADDRESS_BITS: u32 = 0xffff_fff0;

/// What a function says it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision id.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
    /// The INTx pin it uses (1 = INTA), 0 for none.
    pub interrupt_pin: u8,
}

/// The kinds of BAR ember places (no I/O BARs: virtio-pci needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A memory BAR below 4 GiB (one register).
    Memory32,
    /// A memory BAR anywhere (two registers).
    Memory64,
}

/// A guest's request to move BAR `bar` from `old` to `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// The BAR index (its lower register for a 64-bit BAR).
    pub bar: u8,
    /// Its kind.
    pub kind: BarKind,
    /// Where the VMM decodes it now.
    pub old: u64,
    /// Where the guest wants it.
    pub new: u64,
    /// Its size.
    pub len: u64,
}

/// Errors building a configuration space (VMM bugs, never guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is taken, out of range, or has no room for a 64-bit BAR's upper half.
    #[error("BAR {0} is taken or out of range")]
    BarSlot(u8),
    /// The size is not a power of two of at least 16 bytes, or the address is not aligned
    /// to it (or not below 4 GiB for a 32-bit BAR).
    #[error("BAR {bar} at {addr:#x} of size {size:#x} is not a valid BAR placement")]
    BarPlacement {
        /// The BAR index.
        bar: u8,
        /// Its address.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The capability does not fit in the configuration space.
    #[error("no room for a {0}-byte capability in the configuration space")]
    CapabilitySpace(usize),
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// Where the VMM decodes it.
    addr: u64,
    flags: u32,
}

impl Bar {
    /// Writable address bits of the lower register.
    fn low_mask(&self) -> u32 {
        !(self.size - 1) as u32 & BAR_ADDRESS_BITS
    }

    /// Writable bits of a 64-bit BAR's upper register.
    fn high_mask(&self) -> u32 {
        !((self.size - 1) >> 32) as u32
    }
}

/// One function's configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: [u32; REGS],
    writable: [u32; REGS],
    bars: [Option<Bar>; BARS],
    /// Offset of the last capability, whose next pointer the next one is linked from.
    last_capability: Option<usize>,
    next_capability: usize,
}

impl ConfigSpace {
    /// A function with `header`, no BARs and no capabilities.
    pub fn new(header: Header) -> Self {
        let mut regs = [0u32; REGS];
        let mut writable = [0u32; REGS];
        regs[REG_ID] = u32::from(header.vendor) | u32::from(header.device) << 16;
        regs[REG_CLASS] = u32::from(header.revision)
            | u32::from(header.prog_if) << 8
            | u32::from(header.subclass) << 16
            | u32::from(header.class) << 24;
        // Header type 0, single function; no BIST, latency timer or cache line size.
        regs[REG_HEADER] = 0;
        regs[REG_SUBSYSTEM] =
            u32::from(header.subsystem_vendor) | u32::from(header.subsystem) << 16;
        regs[REG_INTERRUPT] = u32::from(header.interrupt_pin) << 8;
        writable[REG_COMMAND] = COMMAND_WRITABLE;
        // The interrupt line is scratch space for the OS.
        writable[REG_INTERRUPT] = 0xff;
        Self {
            regs,
            writable,
            bars: [None; BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        }
    }

    /// Places memory BAR `bar` of `kind` and `size` at `addr`.
    pub fn add_bar(
        &mut self,
        bar: u8,
        kind: BarKind,
        addr: u64,
        size: u64,
    ) -> Result<(), ConfigError> {
        let index = usize::from(bar);
        let regs_needed = if kind == BarKind::Memory64 { 2 } else { 1 };
        let slots_free = index + regs_needed <= BARS
            && self.bars[index..index + regs_needed]
                .iter()
                .all(Option::is_none)
            && !self.is_upper_half(index);
        if !slots_free {
            return Err(ConfigError::BarSlot(bar));
        }
        let placed = size.is_power_of_two()
            && size >= 16
            && addr % size == 0
            && (kind == BarKind::Memory64
                || addr.checked_add(size).is_some_and(|end| end <= 1 << 32));
        if !placed {
            return Err(ConfigError::BarPlacement { bar, addr, size });
        }
        let flags = if kind == BarKind::Memory64 {
            BAR_64BIT
        } else {
            0
        };
        self.bars[index] = Some(Bar {
            kind,
            size,
            addr,
            flags,
        });
        self.write_bar_registers(index);
        Ok(())
    }

    /// Whether register `REG_BAR0 + index` is the upper half of a 64-bit BAR.
    fn is_upper_half(&self, index: usize) -> bool {
        index > 0
            && matches!(
                self.bars[index - 1],
                Some(Bar {
                    kind: BarKind::Memory64,
                    ..
                })
            )
    }

    fn write_bar_registers(&mut self, index: usize) {
        let Some(bar) = self.bars[index] else {
            return;
        };
        self.regs[REG_BAR0 + index] = (bar.addr as u32 & bar.low_mask()) | bar.flags;
        if bar.kind == BarKind::Memory64 {
            self.regs[REG_BAR0 + index + 1] = (bar.addr >> 32) as u32 & bar.high_mask();
        }
    }

    /// Where BAR `bar` is decoded now.
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        self.bars.get(usize::from(bar))?.map(|b| b.addr)
    }

    /// Appends a capability with id `id` and `body` (what follows the id and next-pointer
    /// bytes) to the chain; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigError> {
        let offset = self.next_capability;
        let len = body.len() + 2;
        if offset + len > CONFIG_SIZE {
            return Err(ConfigError::CapabilitySpace(len));
        }
        let link = self
            .last_capability
            .map_or(REG_CAPABILITIES * 4, |last| last + 1);
        self.set_byte(link, offset as u8);
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (i, byte) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *byte);
        }
        self.regs[REG_COMMAND] |= STATUS_CAPABILITIES;
        self.last_capability = Some(offset);
        self.next_capability = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    /// Lets the guest change the `mask` bits of register `reg` (a capability's control bits).
    pub fn set_writable(&mut self, reg: usize, mask: u32) {
        if let Some(w) = self.writable.get_mut(reg) {
            *w |= mask;
        }
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let (reg, shift) = (offset / 4, (offset % 4) * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | u32::from(value) << shift;
    }

    /// Register `reg`; past the configuration space, zero.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// A guest write of `data` at byte `offset` (within one register). Read-only bits stay
    /// as they are; BAR registers take only whole, aligned 32-bit writes (as every OS
    /// writes them), so a BAR is never seen half-written a byte at a time.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        let mut request = None;
        for_each_dword(offset as u64, data, |reg, mask, value| {
            let reg = reg as usize;
            if reg >= REGS {
                return;
            }
            if (REG_BAR0..REG_BAR0 + BARS).contains(&reg) {
                if mask == u32::MAX {
                    request = self.write_bar(reg - REG_BAR0, value);
                } else {
                    debug!("pci: partial write to BAR register {reg} ignored");
                }
                return;
            }
            let mask = mask & self.writable[reg];
            self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        });
        request
    }

    fn write_bar(&mut self, index: usize, value: u32) -> Option<BarMove> {
        if let Some(bar) = self.bars[index] {
            self.regs[REG_BAR0 + index] = (value & bar.low_mask()) | bar.flags;
            // A size probe, or the lower half of a 64-bit address: nothing to move yet.
            if bar.kind == BarKind::Memory64 || value & BAR_ADDRESS_BITS == BAR_ADDRESS_BITS {
                return None;
            }
            let new = u64::from(value & bar.low_mask());
            return self.request(index, bar, new);
        }
        if self.is_upper_half(index) {
            let bar = self.bars[index - 1]?;
            self.regs[REG_BAR0 + index] = value & bar.high_mask();
            if value == u32::MAX {
                return None;
            }
            let low = self.regs[REG_BAR0 + index - 1] & bar.low_mask();
            let new = u64::from(self.regs[REG_BAR0 + index]) << 32 | u64::from(low);
            return self.request(index - 1, bar, new);
        }
        // An unimplemented BAR is hardwired to zero (sizing it reads zero: "no BAR").
        None
    }

    fn request(&self, index: usize, bar: Bar, new: u64) -> Option<BarMove> {
        (new != bar.addr).then_some(BarMove {
            bar: index as u8,
            kind: bar.kind,
            old: bar.addr,
            new,
            len: bar.size,
        })
    }

    /// Applies the VMM's answer to `request`.
    pub fn settle_bar_move(&mut self, request: &BarMove, accepted: bool) {
        let index = usize::from(request.bar);
        let Some(Some(bar)) = self.bars.get_mut(index) else {
            return;
        };
        if accepted {
            bar.addr = request.new;
        }
        self.write_bar_registers(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAR32: u64 = 0xe000_0000;
    const BAR64: u64 = 0x1_0000_0000;

    fn space() -> ConfigSpace {
        ConfigSpace::new(Header {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01,
            subclass: 0x80,
            prog_if: 0x02,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            interrupt_pin: 1,
        })
    }

    fn write32(c: &mut ConfigSpace, offset: usize, value: u32) -> Option<BarMove> {
        c.write(offset, &value.to_le_bytes())
    }

    #[test]
    fn header_fields_read_back_where_the_spec_puts_them() {
        let c = space();
        assert_eq!(c.read(0), 0x1042_1af4);
        assert_eq!(c.read(2), 0x0180_0201, "class, subclass, prog-if, revision");
        assert_eq!(c.read(3) & 0x00ff_0000, 0, "header type 0, single function");
        assert_eq!(c.read(11), 0x1100_1af4);
        assert_eq!(c.read(15), 0x0100, "INTA, line unset");
        assert_eq!(c.read(1) & STATUS_CAPABILITIES, 0, "no capabilities yet");
        assert_eq!(c.read(REGS), 0, "past the space");
    }

    #[test]
    fn read_only_bits_stay_read_only() {
        let mut c = space();
        let before: Vec<u32> = (0..REGS).map(|r| c.read(r)).collect();
        for reg in [0usize, 2, 3, 10, 11, 12, 13, 14] {
            assert_eq!(write32(&mut c, reg * 4, u32::MAX), None);
            assert_eq!(c.read(reg), before[reg], "register {reg}");
        }
        write32(&mut c, 4, u32::MAX);
        assert_eq!(
            c.read(1),
            COMMAND_WRITABLE,
            "only decode, master, INTx-disable stick"
        );
        c.write(0x3c, &[0x0b, 0x04]);
        assert_eq!(c.read(15), 0x010b, "the line is writable, the pin is not");
        c.write(0x05, &[0xff]);
        assert_eq!(
            c.read(1),
            COMMAND_WRITABLE,
            "a byte write keeps the other bytes"
        );
    }

    #[test]
    fn a_32_bit_bar_sizes_and_moves_only_when_the_vmm_accepts() {
        let mut c = space();
        c.add_bar(1, BarKind::Memory32, BAR32, 0x1000).unwrap();
        assert_eq!(c.read(5), BAR32 as u32);
        assert_eq!(
            write32(&mut c, 0x14, u32::MAX),
            None,
            "a size probe moves nothing"
        );
        assert_eq!(c.read(5), 0xffff_f000);
        assert_eq!(
            write32(&mut c, 0x14, BAR32 as u32),
            None,
            "restored: no move"
        );
        assert_eq!(c.read(5), BAR32 as u32);

        let request = write32(&mut c, 0x14, 0xd000_0123).unwrap();
        assert_eq!(
            request,
            BarMove {
                bar: 1,
                kind: BarKind::Memory32,
                old: BAR32,
                new: 0xd000_0000,
                len: 0x1000
            }
        );
        c.settle_bar_move(&request, false);
        assert_eq!(c.read(5), BAR32 as u32, "refused: the old address");
        assert_eq!(c.bar_address(1), Some(BAR32));
        let request = write32(&mut c, 0x14, 0xd000_0000).unwrap();
        c.settle_bar_move(&request, true);
        assert_eq!(c.read(5), 0xd000_0000);
        assert_eq!(c.bar_address(1), Some(0xd000_0000));
        // Byte writes never half-move a BAR.
        assert_eq!(c.write(0x17, &[0x12]), None);
        assert_eq!(c.read(5), 0xd000_0000);
    }

    #[test]
    fn a_64_bit_bar_sizes_both_halves_and_moves_on_the_upper_write() {
        let mut c = space();
        c.add_bar(0, BarKind::Memory64, BAR64, 0x4000).unwrap();
        assert_eq!((c.read(4), c.read(5)), (0x4, 0x1));
        assert_eq!(write32(&mut c, 0x10, u32::MAX), None);
        assert_eq!(c.read(4), 0xffff_c004, "lower size mask, 64-bit type");
        assert_eq!(write32(&mut c, 0x10, 0x4), None);
        assert_eq!(write32(&mut c, 0x14, u32::MAX), None);
        assert_eq!(c.read(5), u32::MAX, "upper size mask");
        assert_eq!(write32(&mut c, 0x14, 0x1), None, "restored: no move");
        assert_eq!((c.read(4), c.read(5)), (0x4, 0x1));

        assert_eq!(write32(&mut c, 0x10, 0x8000), None, "the lower half waits");
        let request = write32(&mut c, 0x14, 0x2).unwrap();
        assert_eq!(
            (request.bar, request.old, request.new),
            (0, BAR64, 0x2_0000_8000)
        );
        assert_eq!(request.kind, BarKind::Memory64);
        c.settle_bar_move(&request, false);
        assert_eq!(
            (c.read(4), c.read(5)),
            (0x4, 0x1),
            "refused: both halves back"
        );
        // An unimplemented BAR is hardwired to zero.
        assert_eq!(write32(&mut c, 0x18, u32::MAX), None);
        assert_eq!(c.read(6), 0);
    }

    #[test]
    fn bars_are_placed_only_where_they_fit() {
        let mut c = space();
        let err = |bar, addr, size| ConfigError::BarPlacement { bar, addr, size };
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, 0x1000, 0x3000),
            Err(err(0, 0x1000, 0x3000))
        );
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, 0x800, 0x1000),
            Err(err(0, 0x800, 0x1000))
        );
        assert_eq!(
            c.add_bar(0, BarKind::Memory32, BAR64, 0x1000),
            Err(err(0, BAR64, 0x1000))
        );
        assert_eq!(
            c.add_bar(5, BarKind::Memory64, BAR64, 0x1000),
            Err(ConfigError::BarSlot(5))
        );
        assert_eq!(
            c.add_bar(6, BarKind::Memory32, BAR32, 0x1000),
            Err(ConfigError::BarSlot(6))
        );
        c.add_bar(2, BarKind::Memory64, BAR64, 0x1000).unwrap();
        assert_eq!(
            c.add_bar(3, BarKind::Memory32, BAR32, 0x1000),
            Err(ConfigError::BarSlot(3))
        );
        assert_eq!(
            c.add_bar(1, BarKind::Memory64, BAR64, 0x1000),
            Err(ConfigError::BarSlot(1))
        );
        c.add_bar(1, BarKind::Memory32, BAR32, 0x1000).unwrap();
    }

    #[test]
    fn capabilities_form_a_chain_from_the_pointer() {
        let mut c = space();
        assert_eq!(c.add_capability(0x09, &[1, 2, 3]).unwrap(), 0x40);
        assert_eq!(c.add_capability(0x11, &[0; 10]).unwrap(), 0x48);
        assert_ne!(
            c.read(1) & STATUS_CAPABILITIES,
            0,
            "status says there is a list"
        );
        let byte = |c: &ConfigSpace, at: usize| (c.read(at / 4) >> ((at % 4) * 8)) as u8;
        let mut walk = Vec::new();
        let mut at = usize::from(byte(&c, 0x34));
        while at != 0 {
            walk.push((at, byte(&c, at)));
            at = usize::from(byte(&c, at + 1));
        }
        assert_eq!(walk, vec![(0x40, 0x09), (0x48, 0x11)]);
        assert_eq!(byte(&c, 0x42), 1, "the body follows id and next");
        let before = c.read(0x40 / 4);
        write32(&mut c, 0x40, 0);
        assert_eq!(
            c.read(0x40 / 4),
            before,
            "capabilities are read-only by default"
        );
        assert_eq!(
            c.add_capability(0x09, &[0; 200]),
            Err(ConfigError::CapabilitySpace(202))
        );
    }
}

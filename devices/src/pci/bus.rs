//! PCI bus 0 and the two ways a guest reaches its configuration spaces.
//!
//! [`PciBus`] holds 32 device slots (function 0 only; ember has no multi-function devices)
//! with the host bridge in slot 0. It is built before the vCPUs start and then only read, so
//! both access mechanisms share it; each function carries its own lock. A guest write that asks
//! to move a BAR is put to the VMM's [`BarMover`] while the function's lock is held, and the
//! function learns the answer before anyone else can access it.
//!
//! [`PciConfigIo`] is configuration mechanism #1 (ports 0xCF8-0xCFF): only a 32-bit write to
//! 0xCF8 latches CONFIG_ADDRESS, as the PCI spec says (narrower accesses there belong to
//! other devices, such as the reset register at 0xCF9), and the data port is used only while
//! its enable bit (31) is set. [`PciConfigMmio`] is ECAM: the offset in the window encodes
//! bus (bits 27:20), device (19:15), function (14:12) and register (11:0). Accesses that cross
//! a 32-bit register read all ones and write nothing; functions that do not exist read all
//! ones.

use std::sync::{Arc, Mutex};

use log::{debug, warn};

use super::config::{ConfigSpace, Header};
use super::{BarMove, PciFunction};
use crate::bus::BusDevice;
use crate::sync::lock;

/// Device slots on a bus.
pub const SLOTS: usize = 32;
/// Bytes of ECAM window per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Length of the legacy configuration ports (0xCF8-0xCFF).
pub const CONFIG_IO_LEN: u64 = 8;
/// CONFIG_ADDRESS bit 31: the data port accesses configuration space.
const CONFIG_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that hold something (enable, bus, device, function, register).
const CONFIG_ADDRESS_BITS: u32 = CONFIG_ENABLE | 0x00ff_fffc;

/// A function as the bus holds it.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// The VMM's say on where BARs go.
pub trait BarMover: Send + Sync {
    /// The guest asks to move a BAR of the function in `slot`. Returns true once the VMM
    /// decodes the BAR at `request.new` (and no longer at `request.old`); false refuses, and
    /// the BAR reads back its old address. Called on a vCPU thread with the function locked.
    fn move_bar(&self, slot: u8, request: &BarMove) -> bool;
}

/// Errors building a bus (VMM bugs, never guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    /// Every slot holds a function.
    #[error("no free PCI slot (a bus has {SLOTS}); attach fewer devices")]
    Full,
}

/// The host bridge at 00:00.0: an identity, nothing to configure.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        // Intel's virtual PCIe host bridge id, as Cloud Hypervisor and Firecracker use;
        // class 06/00: host bridge.
        let config = ConfigSpace::new(Header {
            vendor: 0x8086,
            device: 0x0d57,
            class: 0x06,
            ..Header::default()
        });
        Self { config }
    }
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
        self.config.write(offset, data)
    }

    fn settle_bar_move(&mut self, request: &BarMove, accepted: bool) {
        self.config.settle_bar_move(request, accepted);
    }
}

/// Bus 0.
pub struct PciBus {
    slots: Vec<Option<SharedFunction>>,
    mover: Arc<dyn BarMover>,
}

/// A decoded configuration address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    bus: u8,
    device: u8,
    function: u8,
    /// Byte offset in the function's configuration space.
    offset: usize,
}

impl PciBus {
    /// A bus with only the host bridge; `mover` decides on BAR moves.
    pub fn new(mover: Arc<dyn BarMover>) -> Self {
        let mut slots: Vec<Option<SharedFunction>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        Self { slots, mover }
    }

    /// Puts `function` in the first free slot and returns it (its device number).
    pub fn add(&mut self, function: SharedFunction) -> Result<u8, PciBusError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciBusError::Full)?;
        self.slots[slot] = Some(function);
        // At most SLOTS.
        Ok(slot as u8)
    }

    fn function(&self, target: Target) -> Option<(u8, &SharedFunction)> {
        if target.bus != 0 || target.function != 0 {
            return None;
        }
        let slot = self.slots.get(usize::from(target.device))?.as_ref()?;
        Some((target.device, slot))
    }

    /// Reads `data` (within one register) from `target`; nothing there reads all ones.
    fn read(&self, target: Target, data: &mut [u8]) {
        let Some((_, function)) = self.function(target) else {
            data.fill(0xff);
            return;
        };
        let value = lock(function).read_config(target.offset / 4);
        let shift = (target.offset % 4) * 8;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (value >> (shift + 8 * i)) as u8;
        }
    }

    /// Writes `data` (within one register) to `target` and settles any BAR move it asks for.
    fn write(&self, target: Target, data: &[u8]) {
        let Some((slot, function)) = self.function(target) else {
            return;
        };
        let mut function = lock(function);
        if let Some(request) = function.write_config(target.offset, data) {
            let accepted = self.mover.move_bar(slot, &request);
            if !accepted {
                warn!(
                    "pci: 00:{slot:02x}.0 BAR {} move {:#x} -> {:#x} refused",
                    request.bar, request.old, request.new
                );
            }
            function.settle_bar_move(&request, accepted);
        }
    }
}

/// Whether an access of `len` bytes at byte `offset` stays within one 32-bit register.
fn within_register(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && (offset % 4) as usize + len <= 4
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC.
pub struct PciConfigIo {
    bus: Arc<PciBus>,
    address: u32,
}

impl PciConfigIo {
    /// The ports for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus, address: 0 }
    }

    /// Where a data-port access at `port_offset` (0-3 past 0xCFC) goes, if enabled.
    fn target(&self, port_offset: u64) -> Option<Target> {
        (self.address & CONFIG_ENABLE != 0).then(|| Target {
            bus: (self.address >> 16) as u8,
            device: ((self.address >> 11) & 0x1f) as u8,
            function: ((self.address >> 8) & 0x7) as u8,
            offset: (self.address & 0xfc) as usize + port_offset as usize,
        })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 if within_register(offset, data.len()) => match self.target(offset - 4) {
                Some(target) => self.bus.read(target, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => match <[u8; 4]>::try_from(data) {
                Ok(bytes) => self.address = u32::from_le_bytes(bytes) & CONFIG_ADDRESS_BITS,
                Err(_) => debug!("pci: {}-byte write to 0xcf8 ignored", data.len()),
            },
            4..=7 if within_register(offset, data.len()) => {
                if let Some(target) = self.target(offset - 4) {
                    self.bus.write(target, data);
                }
            }
            _ => debug!("pci: {}-byte write at 0xcf8+{offset} ignored", data.len()),
        }
    }
}

/// ECAM: configuration space through an MMIO window.
pub struct PciConfigMmio {
    bus: Arc<PciBus>,
}

impl PciConfigMmio {
    /// The window for `bus` (the VMM places it; one [`ECAM_BUS_SIZE`] covers bus 0).
    pub fn new(bus: Arc<PciBus>) -> Self {
        Self { bus }
    }

    fn target(offset: u64, len: usize) -> Option<Target> {
        if !within_register(offset, len) || offset >= 256 * ECAM_BUS_SIZE {
            return None;
        }
        Some(Target {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            offset: (offset & 0xfff) as usize,
        })
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some(target) => self.bus.read(target, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match Self::target(offset, data.len()) {
            Some(target) => self.bus.write(target, data),
            None => debug!("pci: {}-byte ECAM write at {offset:#x} ignored", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::BarKind;

    const WINDOW: (u64, u64) = (0xc000_0000, 0xd000_0000);

    /// A function with one 32-bit BAR.
    struct Function(ConfigSpace);

    impl PciFunction for Function {
        fn read_config(&mut self, reg: usize) -> u32 {
            self.0.read(reg)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) -> Option<BarMove> {
            self.0.write(offset, data)
        }
        fn settle_bar_move(&mut self, request: &BarMove, accepted: bool) {
            self.0.settle_bar_move(request, accepted);
        }
    }

    /// Accepts moves that stay inside WINDOW, as a VMM would.
    #[derive(Default)]
    struct Window(Mutex<Vec<(u8, BarMove)>>);

    impl BarMover for Window {
        fn move_bar(&self, slot: u8, request: &BarMove) -> bool {
            lock(&self.0).push((slot, *request));
            request.new >= WINDOW.0 && request.new + request.len <= WINDOW.1
        }
    }

    fn bus() -> (Arc<PciBus>, Arc<Window>) {
        let mover = Arc::new(Window::default());
        let mut bus = PciBus::new(mover.clone());
        let mut config = ConfigSpace::new(Header {
            vendor: 0x1af4,
            device: 0x1041,
            class: 0x02,
            ..Header::default()
        });
        config
            .add_bar(0, BarKind::Memory32, WINDOW.0, 0x1000)
            .unwrap();
        assert_eq!(bus.add(Arc::new(Mutex::new(Function(config)))).unwrap(), 1);
        (Arc::new(bus), mover)
    }

    fn read(dev: &mut dyn BusDevice, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        dev.read(offset, &mut data[..len]);
        u64::from_le_bytes(data)
    }

    fn cf8(dev: &mut dyn BusDevice, device: u32, function: u32, reg: u32) {
        let address = CONFIG_ENABLE | device << 11 | function << 8 | reg << 2;
        dev.write(0, &address.to_le_bytes());
    }

    #[test]
    fn cf8_selects_and_cfc_reads_any_width_within_the_register() {
        let (bus, _) = bus();
        let io = &mut PciConfigIo::new(bus);
        cf8(io, 0, 0, 0);
        assert_eq!(read(io, 4, 4), 0x0d57_8086, "the host bridge at 00:00.0");
        cf8(io, 1, 0, 0);
        assert_eq!(read(io, 4, 4), 0x1041_1af4);
        assert_eq!(read(io, 6, 2), 0x1041, "the device id at 0xcfe");
        assert_eq!(read(io, 7, 1), 0x10);
        assert_eq!(read(io, 7, 2), 0xffff, "crossing the register reads ones");
        cf8(io, 1, 0, 2);
        assert_eq!(read(io, 7, 1), 0x02, "class code through register 2");
        for (device, function) in [(2, 0), (1, 1), (31, 7)] {
            cf8(io, device, function, 0);
            assert_eq!(
                read(io, 4, 4),
                0xffff_ffff,
                "{device}.{function} does not exist"
            );
        }
        io.write(0, &(CONFIG_ENABLE | 1 << 16).to_le_bytes());
        assert_eq!(read(io, 4, 4), 0xffff_ffff, "bus 1 does not exist");
    }

    #[test]
    fn cf8_latches_only_whole_dwords_and_needs_its_enable_bit() {
        let (bus, _) = bus();
        let io = &mut PciConfigIo::new(bus);
        io.write(0, &u32::MAX.to_le_bytes());
        assert_eq!(read(io, 0, 4), 0x80ff_fffc, "reserved bits read zero");
        cf8(io, 1, 0, 0);
        io.write(1, &[0xff]);
        io.write(0, &[0x08]);
        io.write(2, &0xffffu16.to_le_bytes());
        assert_eq!(
            read(io, 0, 4),
            u64::from(CONFIG_ENABLE | 1 << 11),
            "narrow writes pass by"
        );
        assert_eq!(read(io, 1, 1), 0xff, "narrow reads of 0xcf8 are not ours");
        io.write(0, &(1u32 << 11).to_le_bytes());
        assert_eq!(
            read(io, 4, 4),
            0xffff_ffff,
            "disabled: the data port reads ones"
        );
        io.write(4, &0x0002u16.to_le_bytes());
        cf8(io, 1, 0, 1);
        assert_eq!(read(io, 4, 2), 0, "and a disabled write went nowhere");
        io.write(4, &0x0002u16.to_le_bytes());
        assert_eq!(read(io, 4, 2), 2, "enabled, it does (memory decode)");
        assert_eq!(read(io, 8, 4), 0xffff_ffff, "past the ports");
    }

    #[test]
    fn ecam_decodes_bus_device_function_and_register_from_the_offset() {
        let (bus, _) = bus();
        let ecam = &mut PciConfigMmio::new(bus);
        let at = |device: u64, function: u64, offset: u64| device << 15 | function << 12 | offset;
        assert_eq!(read(ecam, at(0, 0, 0), 4), 0x0d57_8086);
        assert_eq!(read(ecam, at(1, 0, 2), 2), 0x1041);
        assert_eq!(read(ecam, at(1, 0, 0xb), 1), 0x02, "class byte");
        assert_eq!(read(ecam, at(1, 0, 3), 2), 0xffff, "crossing the register");
        assert_eq!(
            read(ecam, at(1, 0, 0), 8),
            u64::MAX,
            "8-byte accesses are refused"
        );
        assert_eq!(read(ecam, at(1, 1, 0), 4), 0xffff_ffff, "function 1");
        assert_eq!(read(ecam, at(5, 0, 0), 4), 0xffff_ffff, "empty slot");
        assert_eq!(
            read(ecam, ECAM_BUS_SIZE + at(1, 0, 0), 4),
            0xffff_ffff,
            "bus 1"
        );
        assert_eq!(
            read(ecam, 256 * ECAM_BUS_SIZE, 4),
            0xffff_ffff,
            "past every bus"
        );
        assert_eq!(
            read(ecam, at(1, 0, 0x100), 4),
            0,
            "extended space of a function"
        );
        ecam.write(at(1, 0, 4), &[0x06]);
        assert_eq!(read(ecam, at(1, 0, 4), 2), 0x06, "command through ECAM");
        ecam.write(at(1, 0, 1), &0xffffu16.to_le_bytes());
        assert_eq!(read(ecam, at(1, 0, 0), 4), 0x1041_1af4, "ids are read-only");
    }

    #[test]
    fn bar_moves_go_to_the_vmm_which_can_refuse_them() {
        let (bus, mover) = bus();
        let ecam = &mut PciConfigMmio::new(bus.clone());
        let bar0 = 1 << 15 | 0x10;
        ecam.write(bar0, &u32::MAX.to_le_bytes());
        assert_eq!(read(ecam, bar0, 4), 0xffff_f000, "size probe");
        assert!(lock(&mover.0).is_empty(), "a probe is not a move");
        ecam.write(bar0, &0x0010_0000u32.to_le_bytes());
        assert_eq!(read(ecam, bar0, 4), WINDOW.0, "refused: over RAM");
        ecam.write(bar0, &0xc000_4000u32.to_le_bytes());
        assert_eq!(
            read(ecam, bar0, 4),
            0xc000_4000,
            "accepted: inside the window"
        );
        let requests = lock(&mover.0).clone();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].0, 1, "the VMM learns the slot");
        assert_eq!(
            (requests[1].1.old, requests[1].1.new),
            (WINDOW.0, 0xc000_4000)
        );
        let io = &mut PciConfigIo::new(bus);
        cf8(io, 1, 0, 4);
        assert_eq!(
            read(io, 4, 4),
            0xc000_4000,
            "both mechanisms see one function"
        );
    }

    #[test]
    fn a_full_bus_refuses_another_function() {
        let mut bus = PciBus::new(Arc::new(Window::default()));
        for slot in 1..SLOTS {
            let f = Arc::new(Mutex::new(HostBridge::default()));
            assert_eq!(bus.add(f).unwrap() as usize, slot);
        }
        let f = Arc::new(Mutex::new(HostBridge::default()));
        assert_eq!(bus.add(f).err(), Some(PciBusError::Full));
    }
}

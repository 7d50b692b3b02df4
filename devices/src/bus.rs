//! Address-range routing of vCPU exits (port I/O or MMIO) to devices.
//!
//! A [`Bus`] is built once before the vCPUs start and is then read-only, so vCPU threads share
//! it without a lock; each device carries its own lock. Accesses that hit no device are not
//! errors: real hardware ignores writes to an empty address and reads back an idle bus, and a
//! guest probing for hardware must not be able to stop the VM that way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A device that answers reads and writes in an address range.
///
/// `offset` is relative to the start of the range the device was inserted at. `data` holds the
/// access width (1, 2, 4 or 8 bytes); a read must fill all of it.
pub trait BusDevice: Send {
    /// Handles a guest read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps a device already placed there")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// A shared, individually locked device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    len: u64,
    device: SharedDevice,
}

/// Routes accesses by address to the device whose range contains them.
#[derive(Default)]
pub struct Bus {
    // Keyed by the first address of each range; ranges never overlap.
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if self.find(base).is_some() || self.ranges.range(base..end).next().is_some() {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Range)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        (addr - base < range.len).then_some((addr - base, range))
    }

    /// Reads from the device at `addr`; returns false (and fills `data` with zeroes, an idle
    /// bus) when no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, range)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Writes to the device at `addr`; returns false when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, range)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_passes_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x64, &[0xfe]));
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
        assert_eq!(a.lock().unwrap().writes, vec![(0, b"x".to_vec())]);
    }

    #[test]
    fn unknown_addresses_read_zero_and_ignore_writes() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x3f8, 8)
            .unwrap();
        let mut data = [0xaa_u8; 4];
        assert!(!bus.read(0x400, &mut data));
        assert_eq!(data, [0; 4]);
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.write(0, &[1]));
        assert!(!bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(dev(), 0x100, 0x10).unwrap();
        for (base, len) in [(0x100, 1), (0x10f, 4), (0xf8, 0x10), (0x0, 0x1000)] {
            assert_eq!(
                bus.insert(dev(), base, len),
                Err(BusError::Overlap { base, len })
            );
        }
        bus.insert(dev(), 0x110, 0x10).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x1000, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }
}

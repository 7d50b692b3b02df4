//! The test-exit port: a guest writes a byte to port 0xf4 (where QEMU's isa-debug-exit usually
//! sits) and the VMM exits with exactly that byte as its status, 0 included. Unlike QEMU's
//! device, which exits with `(code << 1) | 1`, the code passes through unchanged.
//!
//! A wider write (`outw`, `outl`) uses its low byte, the byte at the port itself; the other
//! bytes belong to the following ports and are ignored. Only the first write counts. Reads
//! return 0.

use crate::bus::BusDevice;
use crate::{ExitNotifier, GuestExit};

/// The exit port device.
pub struct ExitPort {
    exit: ExitNotifier,
}

impl ExitPort {
    /// A port that reports the guest's code through `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(&code)) = (offset, data.first()) {
            self.exit.notify(GuestExit::Code(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(data: &[u8]) -> Option<GuestExit> {
        let exit = ExitNotifier::new().unwrap();
        ExitPort::new(exit.clone()).write(0, data);
        exit.requested()
    }

    #[test]
    fn the_byte_written_is_the_code() {
        for code in [0u8, 1, 42, 255] {
            assert_eq!(written(&[code]), Some(GuestExit::Code(code)));
        }
    }

    #[test]
    fn wide_writes_use_their_low_byte_and_empty_ones_nothing() {
        assert_eq!(written(&[7, 1, 2, 3]), Some(GuestExit::Code(7)));
        assert_eq!(written(&0x0102u16.to_le_bytes()), Some(GuestExit::Code(2)));
        assert_eq!(written(&[]), None);
    }

    #[test]
    fn reads_are_zero() {
        let mut port = ExitPort::new(ExitNotifier::new().unwrap());
        let mut data = [0xff; 4];
        port.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}

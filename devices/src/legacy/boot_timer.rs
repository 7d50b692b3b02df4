//! Firecracker's boot-timer device: a guest (usually its init) writes the byte 123 at offset 0
//! of this MMIO page when it has booted, and the time since the vCPUs started is logged as
//! `Guest-boot-time = N us M ms`, the line Firecracker's tooling reads. Other writes and all
//! reads are ignored.

use std::time::Instant;

use log::info;

use crate::bus::BusDevice;

/// The value that marks "boot complete".
pub const BOOT_COMPLETE: u8 = 123;

/// The boot timer.
pub struct BootTimer {
    start: Instant,
    reported: bool,
}

impl BootTimer {
    /// A timer counting from `start`, the moment the vCPUs were started.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            reported: false,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_COMPLETE] || self.reported {
            return;
        }
        self.reported = true;
        let us = self.start.elapsed().as_micros();
        info!("Guest-boot-time = {us:>6} us {} ms", us / 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_0_reports_once() {
        let mut t = BootTimer::new(Instant::now());
        t.write(1, &[BOOT_COMPLETE]);
        t.write(0, &[BOOT_COMPLETE, 0]);
        t.write(0, &[122]);
        assert!(!t.reported);
        t.write(0, &[BOOT_COMPLETE]);
        assert!(t.reported);
    }
}

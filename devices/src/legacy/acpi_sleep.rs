//! The hardware-reduced ACPI sleep control and status registers (two byte-wide ports). A guest
//! powers off by writing SLP_EN with the sleep type its `\_S5_` object names; ember ends the VM
//! then. Other sleep states are not supported and are ignored (the guest's attempt fails and it
//! carries on).

use log::debug;

use crate::bus::BusDevice;
use crate::{ExitNotifier, GuestExit};

const CONTROL: u64 = 0;
const SLEEP_ENABLE: u8 = 1 << 5;
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;

/// The sleep control (offset 0) and status (offset 1) registers.
pub struct AcpiSleep {
    soft_off_type: u8,
    exit: ExitNotifier,
}

impl AcpiSleep {
    /// Registers whose sleep type `soft_off_type` (the `\_S5_` value) powers the VM off.
    pub fn new(soft_off_type: u8, exit: ExitNotifier) -> Self {
        Self {
            soft_off_type,
            exit,
        }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: never woken, nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (CONTROL, Some(&value)) = (offset, data.first()) else {
            return;
        };
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if value & SLEEP_ENABLE == 0 {
            return;
        }
        if sleep_type == self.soft_off_type {
            self.exit.notify(GuestExit::PowerOff);
        } else {
            debug!("acpi: sleep type {sleep_type} is not supported; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(writes: &[(u64, u8)]) -> Option<GuestExit> {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = AcpiSleep::new(5, exit.clone());
        for (offset, value) in writes {
            dev.write(*offset, &[*value]);
        }
        exit.requested()
    }

    #[test]
    fn slp_en_with_the_s5_type_powers_off() {
        assert_eq!(after(&[(0, (5 << 2) | 0x20)]), Some(GuestExit::PowerOff));
    }

    #[test]
    fn other_writes_do_nothing() {
        assert_eq!(after(&[(0, 5 << 2)]), None, "type without SLP_EN");
        assert_eq!(after(&[(0, (3 << 2) | 0x20)]), None, "S3 is not supported");
        assert_eq!(after(&[(1, 0xff)]), None, "status register");
    }
}

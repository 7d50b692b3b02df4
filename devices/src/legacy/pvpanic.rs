//! The pvpanic device (QEMU's, at an I/O port): Linux's pvpanic driver writes "panicked" here
//! from its panic notifier, so ember learns of a guest panic at once, whatever the guest's
//! console or `panic=` setting. Reads return the events supported, as the driver expects.

use log::debug;

use crate::bus::BusDevice;
use crate::{ExitNotifier, GuestExit};

const PANICKED: u8 = 1 << 0;
const CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic port.
pub struct PvPanic {
    exit: ExitNotifier,
}

impl PvPanic {
    /// A device that reports panics through `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PANICKED | CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(v) if v & PANICKED != 0 => self.exit.notify(GuestExit::Panic),
            // A crash kernel was loaded and will run: the guest is not done yet.
            Some(v) if v & CRASH_LOADED != 0 => debug!("pvpanic: guest loaded a crash kernel"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_ends_the_vm_and_reads_show_the_events() {
        let exit = ExitNotifier::new().unwrap();
        let mut dev = PvPanic::new(exit.clone());
        let mut events = [0u8];
        dev.read(0, &mut events);
        assert_eq!(events[0], 3);
        dev.write(0, &[CRASH_LOADED]);
        assert_eq!(exit.requested(), None);
        dev.write(0, &[PANICKED]);
        assert_eq!(exit.requested(), Some(GuestExit::Panic));
    }
}

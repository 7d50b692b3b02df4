//! Device models of the ember microVM monitor.
//!
//! This crate owns the guest-visible behaviour of every emulated device and the bus that routes
//! vCPU port and MMIO exits to them. It must not touch KVM file descriptors, spawn threads or know
//! about the API: interrupts leave a device through an injected [`vm_superio::Trigger`] (an
//! `EventFd` that the VMM wires to an irqfd), and host I/O arrives through injected writers. That
//! keeps every device testable with plain memory and event fds.
//!
//! It also owns [`host_file`], the one way ember opens a file a user names (disk images are
//! among them, and the VMM uses it for kernels, config, console, log and metrics files).
//! And [`sync`], the poison-tolerant way every ember thread takes a lock, and [`rate_limiter`],
//! the token buckets any device can hold its guest to.

pub mod bus;
pub mod host_file;
pub mod legacy;
pub mod mmds;
pub mod pci;
pub mod rate_limiter;
pub mod sync;
pub mod virtio;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an `EventFd` that the VMM registers as a KVM irqfd, so writing it injects
/// the device's interrupt without a trip through the VMM.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl vm_superio::Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl IrqTrigger {
    /// Creates a non-blocking interrupt event.
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}

/// Why the guest asks for the VM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The machine was reset (i8042 reset line, keyboard-controller reboot).
    Reset,
    /// The machine was powered off (ACPI sleep state S5).
    PowerOff,
    /// A test wrote its verdict to the exit port.
    Code(u8),
    /// The guest kernel panicked.
    Panic,
}

#[derive(Debug)]
struct ExitState {
    first: Option<GuestExit>,
    panicking: bool,
}

#[derive(Debug)]
struct ExitShared {
    event: EventFd,
    state: Mutex<ExitState>,
    stopping: Arc<AtomicBool>,
}

/// The line from devices to the VMM for ending the VM: records the first exit the guest asked
/// for (later ones are ignored, so a guest cannot change its verdict), raises the VM-wide stop
/// flag so that the vCPU that asked does not run another guest instruction, and wakes the
/// event loop.
#[derive(Debug, Clone)]
pub struct ExitNotifier(Arc<ExitShared>);

impl ExitNotifier {
    /// Creates a notifier with a non-blocking event.
    pub fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(ExitShared {
            event: EventFd::new(libc::EFD_NONBLOCK)?,
            state: Mutex::new(ExitState {
                first: None,
                panicking: false,
            }),
            stopping: Arc::new(AtomicBool::new(false)),
        })))
    }

    /// Asks for the VM to end for `exit`.
    pub fn notify(&self, exit: GuestExit) {
        let mut state = sync::lock(&self.0.state);
        if state.first.is_none() {
            state.first = Some(exit);
            drop(state);
            self.0.stopping.store(true, Ordering::Release);
            if let Err(err) = self.0.event.write(1) {
                log::error!("cannot signal the guest's exit request: {err}");
            }
        }
    }

    /// Notes that the guest kernel has started panicking, so that a reset that follows is
    /// reported as the panic it is.
    pub fn note_panicking(&self) {
        sync::lock(&self.0.state).panicking = true;
    }

    /// The flag raised when an exit is requested, which vCPUs check before entering the guest.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.0.stopping.clone()
    }

    /// The event the VMM polls.
    pub fn event(&self) -> &EventFd {
        &self.0.event
    }

    /// The exit asked for, if any; a reset during a panic counts as the panic.
    pub fn requested(&self) -> Option<GuestExit> {
        let _ = self.0.event.read();
        let state = sync::lock(&self.0.state);
        match state.first {
            Some(GuestExit::Reset) if state.panicking => Some(GuestExit::Panic),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_wins_and_wakes_the_vmm() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.requested(), None);
        assert!(!n.stop_flag().load(Ordering::Acquire));
        n.clone().notify(GuestExit::Code(42));
        assert!(n.stop_flag().load(Ordering::Acquire));
        n.notify(GuestExit::Reset);
        assert_eq!(n.event().read().unwrap(), 1);
        assert_eq!(n.requested(), Some(GuestExit::Code(42)));
    }

    #[test]
    fn a_reset_while_panicking_is_a_panic() {
        let n = ExitNotifier::new().unwrap();
        n.note_panicking();
        n.notify(GuestExit::Reset);
        assert_eq!(n.requested(), Some(GuestExit::Panic));
        let n = ExitNotifier::new().unwrap();
        n.note_panicking();
        n.notify(GuestExit::Code(0));
        assert_eq!(
            n.requested(),
            Some(GuestExit::Code(0)),
            "an explicit verdict stands"
        );
    }
}

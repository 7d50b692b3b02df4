//! Device models of the ember microVM monitor.
//!
//! This crate owns the guest-visible behaviour of every emulated device and the bus that routes
//! vCPU port and MMIO exits to them. It must not touch KVM file descriptors, spawn threads or know
//! about the API: interrupts leave a device through an injected [`vm_superio::Trigger`] (an
//! `EventFd` that the VMM wires to an irqfd), and host I/O arrives through injected writers. That
//! keeps every device testable with plain memory and event fds.

pub mod bus;
pub mod legacy;

use std::io;

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

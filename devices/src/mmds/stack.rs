//! One network interface's MMDS network stack.

use std::net::Ipv4Addr;

use super::SharedMmds;

/// The MMDS as one network interface's guest reaches it.
pub struct MmdsStack {
    ipv4: Ipv4Addr,
    mmds: SharedMmds,
}

impl MmdsStack {
    /// A stack answering at `ipv4` with the contents of `mmds`.
    pub fn new(ipv4: Ipv4Addr, mmds: SharedMmds) -> Self {
        Self { ipv4, mmds }
    }

    /// The address the stack answers at.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The store the stack serves.
    pub fn mmds(&self) -> &SharedMmds {
        &self.mmds
    }
}

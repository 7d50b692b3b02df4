//! Guest memory: anonymous host mappings laid out around the MMIO hole (see
//! [`crate::arch::x86_64::ram_ranges`]). Pages are only committed when the guest touches them,
//! and the mappings ask for transparent huge pages (as Cloud Hypervisor does): loading a kernel
//! then takes a few faults instead of thousands, and KVM can map the guest with large pages.

use log::debug;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::ram_ranges;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Zero MiB was asked for.
    #[error("guest memory must be at least 1 MiB (mem_size_mib / --memory is 0)")]
    Empty,
    /// More memory than the host has.
    #[error(
        "guest memory of {asked_mib} MiB exceeds this host's {host_mib} MiB of RAM; ask for less"
    )]
    ExceedsHost {
        /// What was asked for.
        asked_mib: u64,
        /// What the host has.
        host_mib: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
}

const MIB: u64 = 1 << 20;

/// The host's physical RAM in bytes.
fn host_ram_bytes() -> Option<u64> {
    // SAFETY: sysinfo is plain data; all-zero is valid and the call overwrites it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    info.totalram.checked_mul(u64::from(info.mem_unit))
}

/// Maps `mib` MiB of guest memory. More than the host's RAM is refused: the mapping would
/// succeed (it is not reserved up front) and the guest would be killed later, when it touches
/// pages the host cannot provide.
pub fn create_guest_memory(mib: usize) -> Result<GuestMemoryMmap, MemoryError> {
    let asked_mib = mib as u64;
    if asked_mib == 0 {
        return Err(MemoryError::Empty);
    }
    let host = host_ram_bytes().unwrap_or(u64::MAX);
    let bytes =
        asked_mib
            .checked_mul(MIB)
            .filter(|b| *b <= host)
            .ok_or(MemoryError::ExceedsHost {
                asked_mib,
                host_mib: host / MIB,
            })?;
    let ranges: Vec<_> = ram_ranges(bytes)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    let mem =
        GuestMemoryMmap::from_ranges(&ranges).map_err(|err| MemoryError::Map(asked_mib, err))?;
    for region in mem.iter() {
        let addr = region.as_ptr();
        // SAFETY: the range is exactly one live mapping owned by `mem`; MADV_HUGEPAGE only
        // changes how the kernel backs it and cannot invalidate it.
        let rc = unsafe { libc::madvise(addr.cast(), region.size(), libc::MADV_HUGEPAGE) };
        if rc != 0 {
            // Huge pages are an optimisation; a kernel without THP still runs the guest.
            debug!(
                "no transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    #[test]
    fn maps_the_requested_size_around_the_hole() {
        let mem = create_guest_memory(4 * 1024 + 64).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(0xbfff_ffff)));
        assert!(!mem.address_in_range(GuestAddress(0xc000_0000)));
        assert!(mem.address_in_range(GuestAddress((1 << 32) + (1 << 30) + 64 * MIB - 1)));
        assert!(!mem.address_in_range(GuestAddress((1 << 32) + (1 << 30) + 64 * MIB)));
    }

    #[test]
    fn refuses_zero_and_more_than_the_host() {
        assert!(matches!(create_guest_memory(0), Err(MemoryError::Empty)));
        let err = create_guest_memory(usize::MAX).unwrap_err();
        assert!(matches!(err, MemoryError::ExceedsHost { .. }), "{err}");
        let host_mib = host_ram_bytes().unwrap() / MIB;
        let err = create_guest_memory(host_mib as usize + 1).unwrap_err();
        assert!(err.to_string().contains("exceeds this host"), "{err}");
    }
}

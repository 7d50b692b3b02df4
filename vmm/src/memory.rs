//! Guest memory: anonymous host mappings laid out around the MMIO hole (see
//! [`crate::arch::x86_64::ram_ranges`]). As in Firecracker, small pages back it unless the
//! configuration asks for 2 MiB huge pages (`huge_pages: "2M"`, hugetlbfs pages reserved when
//! the VM is built). Small pages are committed only when the guest touches them, so a guest's
//! resident memory is what it uses, to the page; transparent huge pages (an earlier default)
//! made a fresh guest's RSS grow in 2 MiB steps.
//!
//! When (and only when) a device's queues are served by another process (vhost-user), guest
//! RAM is a shared mapping of one memfd (hugetlb for huge pages), whose descriptor and offsets
//! go to that process in the device's memory table; anonymous private memory could not be
//! mapped by it.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::ram_ranges;

/// The pages that back guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// The host's base pages (4 KiB), committed on first touch.
    Small,
    /// 2 MiB hugetlbfs pages, reserved up front.
    Huge2M,
}

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
    Map(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The host has too few free 2 MiB huge pages.
    #[error(
        "cannot back {0} MiB of guest memory with 2 MiB huge pages: the host has too few free \
         (see HugePages_Free in /proc/meminfo; reserve more with \
         `sysctl vm.nr_hugepages=N`), or use huge_pages \"None\""
    )]
    HugePages(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The memfd behind shared guest memory cannot be made.
    #[error("cannot create the {0} MiB memfd that shares guest memory with vhost-user backends")]
    Memfd(u64, #[source] std::io::Error),
    /// The regions could not be assembled (they overlap or overflow).
    #[error("cannot lay out {0} MiB of guest memory")]
    Layout(u64),
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

/// Whether guest memory is private to ember or shared with other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Anonymous private memory: only ember and KVM see it.
    Private,
    /// A shared memfd mapping that vhost-user backends map too.
    Shared,
}

/// Maps `mib` MiB of guest memory. More than the host's RAM is refused: the mapping would
/// succeed (it is not reserved up front) and the guest would be killed later, when it touches
/// pages the host cannot provide.
pub fn create_guest_memory(
    mib: usize,
    pages: PageSize,
    sharing: Sharing,
) -> Result<GuestMemoryMmap, MemoryError> {
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
    let memfd = match sharing {
        Sharing::Private => None,
        Sharing::Shared => Some(Arc::new(
            memfd(bytes, pages).map_err(|e| MemoryError::Memfd(asked_mib, e))?,
        )),
    };
    let mut offset = 0;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(bytes) {
        let file = memfd
            .as_ref()
            .map(|f| FileOffset::from_arc(f.clone(), offset));
        regions.push(map_region(addr, len as usize, pages, asked_mib, file)?);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::Layout(asked_mib))?;
    Ok(mem)
}

/// An anonymous memory file of `bytes` bytes (of hugetlb pages for [`PageSize::Huge2M`]).
fn memfd(bytes: u64, pages: PageSize) -> std::io::Result<File> {
    let flags = match pages {
        PageSize::Small => libc::MFD_CLOEXEC,
        PageSize::Huge2M => libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
    };
    // SAFETY: the name is a NUL-terminated literal; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(c"ember-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes)?;
    Ok(file)
}

/// Maps one guest RAM range of `len` bytes at `addr`, from `file` when memory is shared.
fn map_region(
    addr: GuestAddress,
    len: usize,
    pages: PageSize,
    asked_mib: u64,
    file: Option<FileOffset>,
) -> Result<GuestRegionMmap, MemoryError> {
    let flags = match (pages, file.is_some()) {
        // Reserved lazily: the guest's untouched memory costs the host nothing.
        (PageSize::Small, false) => libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        (PageSize::Small, true) => libc::MAP_SHARED | libc::MAP_NORESERVE,
        // Reserved now: without enough free huge pages the mapping fails here, with an error
        // that says so, instead of the guest being killed by SIGBUS on a later touch.
        (PageSize::Huge2M, false) => {
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
        }
        // A shared hugetlb mapping reserves its pages at mmap time, too.
        (PageSize::Huge2M, true) => libc::MAP_SHARED,
    };
    let mut builder = MmapRegionBuilder::new(len)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(pages == PageSize::Huge2M);
    if let Some(file) = file {
        builder = builder.with_file_offset(file);
    }
    let region = builder.build().map_err(|err| match pages {
        PageSize::Small => MemoryError::Map(asked_mib, err),
        PageSize::Huge2M => MemoryError::HugePages(asked_mib, err),
    })?;
    GuestRegionMmap::new(region, addr).ok_or(MemoryError::Layout(asked_mib))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    #[test]
    fn maps_the_requested_size_around_the_hole() {
        let mem = create_guest_memory(4 * 1024 + 64, PageSize::Small, Sharing::Private).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(0xbfff_ffff)));
        assert!(!mem.address_in_range(GuestAddress(0xc000_0000)));
        assert!(mem.address_in_range(GuestAddress((1 << 32) + (1 << 30) + 64 * MIB - 1)));
        assert!(!mem.address_in_range(GuestAddress((1 << 32) + (1 << 30) + 64 * MIB)));
    }

    #[test]
    fn huge_pages_back_the_guest_or_the_error_says_the_host_has_too_few() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let free = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .unwrap_or(0);
        match create_guest_memory(4, PageSize::Huge2M, Sharing::Private) {
            Ok(mem) => {
                assert!(free >= 2, "mapped 4 MiB of huge pages with {free} free");
                assert_eq!(mem.num_regions(), 1);
            }
            Err(err) => {
                assert!(free < 2, "{err}");
                assert!(err.to_string().contains("too few free"), "{err}");
            }
        }
    }

    #[test]
    fn shared_memory_is_one_memfd_at_consecutive_offsets_and_private_memory_has_none() {
        use vm_memory::GuestMemoryRegion;
        let mem = create_guest_memory(4 * 1024 + 64, PageSize::Small, Sharing::Shared).unwrap();
        let offsets: Vec<_> = mem
            .iter()
            .map(|r| (r.file_offset().unwrap().start(), r.len()))
            .collect();
        assert_eq!(offsets, [(0, 3 << 30), (3 << 30, (1 << 30) + 64 * MIB)]);
        let private = create_guest_memory(64, PageSize::Small, Sharing::Private).unwrap();
        assert!(private.iter().all(|r| r.file_offset().is_none()));
    }

    #[test]
    fn refuses_zero_and_more_than_the_host() {
        assert!(matches!(
            create_guest_memory(0, PageSize::Small, Sharing::Private),
            Err(MemoryError::Empty)
        ));
        let err = create_guest_memory(usize::MAX, PageSize::Small, Sharing::Private).unwrap_err();
        assert!(matches!(err, MemoryError::ExceedsHost { .. }), "{err}");
        let host_mib = host_ram_bytes().unwrap() / MIB;
        let err = create_guest_memory(host_mib as usize + 1, PageSize::Small, Sharing::Private)
            .unwrap_err();
        assert!(err.to_string().contains("exceeds this host"), "{err}");
    }
}

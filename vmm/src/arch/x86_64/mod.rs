//! The x86_64 PC that ember presents: memory map, boot structures and vCPU state.
//!
//! Everything here is a pure function of the VM's configuration or a write into guest memory,
//! so all of it is unit-tested without KVM; the vCPU ioctls live in [`regs`].

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use layout::*;

/// Errors writing the boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Guest memory does not cover a boot structure's address.
    #[error("cannot write the {what} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The MP table cannot be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The ACPI tables cannot be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

fn write_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> ArchError {
    move |source| ArchError::Write { what, source }
}

const E820_RAM: u32 = 1;
/// Slots in `boot_params.e820_table`.
const E820_MAX_ENTRIES: usize = 128;

/// The guest-physical ranges of RAM for a guest of `mem_bytes`: below the MMIO hole, and the
/// rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if mem_bytes > low {
        ranges.push((GuestAddress(MMIO_GAP_END), mem_bytes - low));
    }
    ranges
}

/// Highest guest-physical address below the MMIO hole that is RAM, plus one.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// The e820 map: base memory below the EBDA, then RAM from 1 MiB, split around the MMIO hole.
/// The EBDA/BIOS area and the hole are left out, which Linux treats as reserved.
pub fn e820_entries(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let ram = |addr: u64, size: u64| boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    };
    let mut entries = vec![ram(0, EBDA_START)];
    let low_end = low_ram_end(mem_bytes);
    if low_end > HIMEM_START {
        entries.push(ram(HIMEM_START, low_end - HIMEM_START));
    }
    if mem_bytes > low_end {
        entries.push(ram(MMIO_GAP_END, mem_bytes - low_end));
    }
    entries
}

/// Writes the GDT, an empty IDT and the identity page tables the vCPUs start with.
pub fn write_boot_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), ArchError> {
    for (i, entry) in gdt::BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(write_err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(write_err("IDT"))?;
    for (addr, entry) in
        gdt::identity_page_table_entries(PML4_START, PDPT_START, PD_START, IDENTITY_MAPPED_GIB)
    {
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(write_err("page tables"))?;
    }
    Ok(())
}

/// Writes the MP table for `cpus` vCPUs.
pub fn write_mptable<M: GuestMemoryBackend>(mem: &M, cpus: u8) -> Result<(), ArchError> {
    let table = mptable::build(MPTABLE_START, cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(write_err("MP table"))
}

/// Writes the ACPI tables for `cpus` vCPUs and the `virtio` devices.
pub fn write_acpi<M: GuestMemoryBackend>(
    mem: &M,
    cpus: u8,
    virtio: acpi::Virtio,
) -> Result<(), ArchError> {
    for (addr, table) in acpi::build(cpus, virtio)? {
        mem.write_slice(&table, GuestAddress(addr))
            .map_err(write_err("ACPI tables"))?;
    }
    Ok(())
}

/// What the loader found and placed, to be described in the zero page.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootInfo {
    /// The bzImage's setup header; `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Length of the command line at [`CMDLINE_START`], without its NUL.
    pub cmdline_len: usize,
    /// Address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// Guest memory size in bytes.
    pub mem_bytes: u64,
}

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Alignment Linux assumes for a kernel that did not state one (an ELF vmlinux).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Builds the zero page: the bzImage's own setup header (or a minimal one for an ELF kernel),
/// the command line, the initrd and the e820 map.
pub fn boot_params(info: &BootInfo) -> boot_params {
    let mut bp = boot_params::default();
    match info.setup_header {
        Some(hdr) => bp.hdr = hdr,
        None => {
            bp.hdr.boot_flag = BOOT_FLAG_MAGIC;
            bp.hdr.header = HDRS_MAGIC;
            bp.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
    }
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.acpi_rsdp_addr = acpi::RSDP_ADDR;
    bp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    bp.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        bp.hdr.ramdisk_image = addr.raw_value() as u32;
        bp.hdr.ramdisk_size = size as u32;
    }
    let entries = e820_entries(info.mem_bytes);
    for (slot, entry) in bp.e820_table.iter_mut().zip(&entries) {
        *slot = *entry;
    }
    bp.e820_entries = entries.len().min(E820_MAX_ENTRIES) as u8;
    bp
}

/// Writes the zero page.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    bp: &boot_params,
) -> Result<(), ArchError> {
    mem.write_obj(*bp, GuestAddress(ZERO_PAGE_START))
        .map_err(write_err("zero page"))
}

/// Largest initrd end address when the kernel does not say (`initrd_addr_max` of old kernels).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Where an initrd of `size` bytes goes: page-aligned as high as possible in low RAM, below the
/// kernel's `initrd_addr_max`, and above the kernel image. `None` if it does not fit.
pub fn initrd_address(
    mem_bytes: u64,
    size: u64,
    kernel_end: u64,
    header: Option<&setup_header>,
) -> Option<GuestAddress> {
    let addr_max = header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|max| *max != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let top = low_ram_end(mem_bytes).min(addr_max.saturating_add(1));
    let start = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end).then_some(GuestAddress(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guests_have_one_ram_range_and_two_e820_entries() {
        assert_eq!(ram_ranges(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
        let e = e820_entries(128 * MIB);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].addr, e[0].size), (0, 0x9fc00));
        assert_eq!((e[1].addr, e[1].size), (MIB, 127 * MIB));
        assert!(e.iter().all(|e| e.r#type == E820_RAM));
    }

    #[test]
    fn large_guests_resume_above_four_gib() {
        let mem = 5 * GIB;
        assert_eq!(
            ram_ranges(mem),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 2 * GIB)]
        );
        let e = e820_entries(mem);
        assert_eq!(e.len(), 3);
        assert_eq!((e[1].addr, e[1].addr + e[1].size), (MIB, 3 * GIB));
        assert_eq!((e[2].addr, e[2].size), (4 * GIB, 2 * GIB));
        let ram: u64 = e.iter().map(|e| e.size).sum();
        assert_eq!(ram, mem - (MIB - 0x9fc00), "all memory but the legacy hole");
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        assert_eq!(ram_ranges(3 * GIB).len(), 1);
        assert_eq!(e820_entries(3 * GIB).len(), 2);
    }

    #[test]
    fn zero_page_for_an_elf_kernel() {
        let bp = boot_params(&BootInfo {
            setup_header: None,
            cmdline_len: 12,
            initrd: Some((GuestAddress(0x700_0000), 0x1234)),
            mem_bytes: 128 * MIB,
        });
        let hdr = bp.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(bp.e820_entries, 2);
        assert_eq!({ bp.acpi_rsdp_addr }, acpi::RSDP_ADDR);
        let second = bp.e820_table[1];
        assert_eq!(({ second.addr }, { second.size }), (MIB, 127 * MIB));
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let hdr = setup_header {
            version: 0x20f,
            setup_sects: 30,
            loadflags: 1,
            ..Default::default()
        };
        let bp = boot_params(&BootInfo {
            setup_header: Some(hdr),
            mem_bytes: 64 * MIB,
            ..Default::default()
        });
        assert_eq!(({ bp.hdr.version }, { bp.hdr.setup_sects }), (0x20f, 30));
        assert_eq!({ bp.hdr.type_of_loader }, 0xff);
        assert_eq!({ bp.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn initrd_goes_high_aligned_and_above_the_kernel() {
        let addr = initrd_address(128 * MIB, 5000, 20 * MIB, None).unwrap();
        assert_eq!(addr.raw_value(), 128 * MIB - 8192);
        // Capped by the kernel's initrd_addr_max.
        let hdr = setup_header {
            initrd_addr_max: (64 * MIB - 1) as u32,
            ..Default::default()
        };
        let addr = initrd_address(GIB, 4096, 20 * MIB, Some(&hdr)).unwrap();
        assert_eq!(addr.raw_value(), 64 * MIB - 4096);
        // Capped by the MMIO hole for a large guest (and the default limit).
        let addr = initrd_address(8 * GIB, 4096, 20 * MIB, None).unwrap();
        assert_eq!(addr.raw_value(), DEFAULT_INITRD_ADDR_MAX + 1 - 4096);
        // Does not fit above the kernel.
        assert_eq!(initrd_address(32 * MIB, 16 * MIB, 20 * MIB, None), None);
        assert_eq!(initrd_address(32 * MIB, 64 * MIB, 0, None), None);
    }

    #[test]
    fn boot_tables_land_in_memory() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 * MIB as usize)]).unwrap();
        write_boot_tables(&mem).unwrap();
        write_mptable(&mem, 2).unwrap();
        write_acpi(&mem, 2, acpi::Virtio::Mmio(&[])).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
            gdt::BOOT_GDT[1]
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            PDPT_START | 3
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_START + 8)).unwrap(),
            0x20_0083
        );
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let mut rsdp = [0u8; 8];
        mem.read_slice(&mut rsdp, GuestAddress(acpi::RSDP_ADDR))
            .unwrap();
        assert_eq!(&rsdp, b"RSD PTR ");
    }
}

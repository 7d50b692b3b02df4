//! The descriptor table and identity page tables that put a vCPU straight into 64-bit mode, as
//! the 64-bit Linux boot protocol requires of the loader.

use kvm_bindings::kvm_segment;

/// Access and flag bits of a descriptor, laid out as in the descriptor itself: bits 0-7 are the
/// access byte, bits 12-15 are AVL, L, D/B and G.
type DescriptorFlags = u16;

const CODE64: DescriptorFlags = 0xa09b; // G, L, present, code, execute/read, accessed
const DATA: DescriptorFlags = 0xc093; // G, D/B, present, data, read/write, accessed
const TSS: DescriptorFlags = 0x808b; // G, present, busy 64-bit TSS

/// The boot GDT: null, code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    0,
    descriptor(CODE64, 0, 0xfffff),
    descriptor(DATA, 0, 0xfffff),
    descriptor(TSS, 0, 0xfffff),
];
/// GDT index of the code segment.
pub const CODE_INDEX: u16 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u16 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u16 = 3;

/// Encodes a segment descriptor.
pub const fn descriptor(flags: DescriptorFlags, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The segment register KVM should load for GDT entry `index`, decoded from the descriptor so
/// the registers and the table in memory cannot disagree.
pub fn segment(index: u16) -> kvm_segment {
    let d = BOOT_GDT[usize::from(index)];
    let granular = (d >> 55) & 1 == 1;
    let raw_limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((d >> 40) & 0xf) as u8,
        s: ((d >> 44) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        present: ((d >> 47) & 1) as u8,
        avl: ((d >> 52) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        db: ((d >> 54) & 1) as u8,
        g: u8::from(granular),
        unusable: 0,
        padding: 0,
    }
}

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;
const HUGE_PAGE_SIZE: u64 = 2 << 20;
const ENTRIES_PER_TABLE: u64 = 512;

/// The identity-mapping page tables as (guest address, entry) pairs: one PML4 entry, one PDPT
/// entry per GiB, and 512 two-MiB entries per page directory.
pub fn identity_page_table_entries(
    pml4: u64,
    pdpt: u64,
    pd: u64,
    gib: u64,
) -> impl Iterator<Item = (u64, u64)> {
    let top = std::iter::once((pml4, pdpt | PAGE_PRESENT_RW));
    let dirs = (0..gib).map(move |g| (pdpt + g * 8, (pd + g * 0x1000) | PAGE_PRESENT_RW));
    let pages = (0..gib * ENTRIES_PER_TABLE).map(move |i| {
        (
            pd + i * 8,
            (i * HUGE_PAGE_SIZE) | PAGE_PRESENT_RW | PAGE_HUGE,
        )
    });
    top.chain(dirs).chain(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_known_encodings() {
        // The flat 64-bit code and data descriptors every x86 boot loader uses.
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(0x808b, 0x1234_5678, 0x67), 0x1280_8b34_5678_0067);
    }

    #[test]
    fn segments_decode_the_table() {
        let cs = segment(CODE_INDEX);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g),
            (0x8, 0xb, 1, 0, 1)
        );
        assert_eq!(
            (cs.present, cs.s, cs.dpl, cs.limit, cs.base),
            (1, 1, 0, 0xffff_ffff, 0)
        );
        let ds = segment(DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.l, ds.db), (0x10, 0x3, 0, 1));
        let tr = segment(TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x18, 0xb, 0));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let entries: Vec<_> = identity_page_table_entries(0x9000, 0xa000, 0xb000, 4).collect();
        assert_eq!(entries.len(), 1 + 4 + 2048);
        assert_eq!(entries[0], (0x9000, 0xa003));
        assert_eq!(entries[4], (0xa018, 0xe003));
        // The 2 MiB page containing the local APIC maps to itself.
        let apic_entry = 0xfee0_0000 / HUGE_PAGE_SIZE;
        assert_eq!(
            entries[5 + apic_entry as usize],
            (0xb000 + apic_entry * 8, 0xfee0_0083)
        );
        assert_eq!(entries.last().unwrap().0, 0xb000 + 4 * 0x1000 - 8);
    }
}

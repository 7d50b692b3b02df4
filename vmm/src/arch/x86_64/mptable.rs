//! The Intel MultiProcessor Specification table (v1.4) that tells a guest without ACPI how many
//! CPUs it has and how legacy interrupts reach the IOAPIC.
//!
//! The table is built as bytes (the structures are packed and tiny) and written by the caller.
//! Interrupt routing is the identity: ISA IRQ n arrives at IOAPIC pin n, which is how KVM's
//! in-kernel irqchip routes GSIs; LINT0 is ExtINT (the PIC) and LINT1 is NMI on every CPU.

use super::layout::{
    APIC_START, BASE_MEMORY_END, EBDA_START, IOAPIC_PINS, IOAPIC_START, MPTABLE_START,
};

/// Most vCPUs the table can describe within the last KiB of base memory.
pub const MAX_CPUS: u8 = 32;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const ENTRY_LEN: usize = 8;
const SPEC_REVISION: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID signature (family 6) and feature flags (FPU, APIC) claimed for every processor.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

/// Errors building the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The vCPU count is outside what the table can describe.
    #[error("the MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs (APIC ids 0..cpus),
/// to be written at guest address `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;

    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, ISA_BUS_ID]);
        entries.extend_from_slice(&[pin, ioapic_id, pin]);
        count += 1;
    }
    for (kind, dest, lint) in [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, ALL_LOCAL_APICS, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, dest, lint]);
        count += 1;
    }

    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let table_len = (HEADER_LEN + entries.len()) as u16;

    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + usize::from(table_len));
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]); // length in 16-byte units
    out[10] = checksum(&out);

    let header_start = out.len();
    out.extend_from_slice(b"PCMP");
    out.extend_from_slice(&table_len.to_le_bytes());
    out.extend_from_slice(&[SPEC_REVISION, 0]);
    out.extend_from_slice(b"EMBER   ");
    out.extend_from_slice(b"MICROVM     ");
    out.extend_from_slice(&[0; 6]); // OEM table pointer and size
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    out.extend_from_slice(&entries);
    out[header_start + 7] = checksum(&out[header_start..]);
    Ok(out)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

// The largest table must fit in the last KiB of base memory, where it is placed and where Linux
// looks for it.
const _: () = assert!(MPTABLE_START + size(MAX_CPUS) as u64 <= BASE_MEMORY_END);
const _: () = assert!(MPTABLE_START >= EBDA_START);

/// Bytes the table takes for `cpus` vCPUs.
pub const fn size(cpus: u8) -> usize {
    FLOATING_POINTER_LEN
        + HEADER_LEN
        + PROCESSOR_LEN * cpus as usize
        + ENTRY_LEN * (2 + IOAPIC_PINS as usize + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MPTABLE_START;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_lengths_are_valid() {
        for cpus in [1, 2, 4, MAX_CPUS] {
            let t = build(MPTABLE_START, cpus).unwrap();
            assert_eq!(t.len(), size(cpus));
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MPTABLE_START + 16);
            assert_eq!(&t[16..20], b"PCMP");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(sum(&t[16..]), 0);
        }
    }

    #[test]
    fn lists_each_cpu_with_its_apic_id_and_one_bootstrap() {
        let t = build(MPTABLE_START, 4).unwrap();
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        for id in 0..4u8 {
            let e = &t[60 + 20 * usize::from(id)..];
            assert_eq!((e[0], e[1]), (ENTRY_PROCESSOR, id));
            assert_eq!(e[3] & CPU_BOOTSTRAP != 0, id == 0);
        }
        let ioapic = &t[60 + 80 + 8..];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 4));
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert_eq!(build(0, 0), Err(MptableError::CpuCount(0)));
        assert_eq!(build(0, 33), Err(MptableError::CpuCount(33)));
    }
}

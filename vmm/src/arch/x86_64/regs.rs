//! A vCPU's architectural state at the first instruction: long mode, flat segments, identity
//! paging, boot MSRs, FPU defaults and LAPIC local interrupts, per the 64-bit Linux boot
//! protocol. The tables these registers point at are written by [`super::write_boot_tables`].

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::VcpuFd;

use super::gdt::{self, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, ZERO_PAGE_START};

/// Errors programming a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A register ioctl failed.
    #[error("cannot set the vCPU's {what}")]
    Ioctl {
        /// Which register set.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused one of the boot MSRs.
    #[error(
        "KVM accepted only {set} of the {wanted} boot MSRs (first refused: {first_refused:#x})"
    )]
    Msrs {
        /// How many KVM took.
        set: usize,
        /// How many were given.
        wanted: usize,
        /// The index of the first MSR KVM refused.
        first_refused: u32,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Ioctl { what, source }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITEBACK: u64 = 6;

/// Boot MSR values: system-call entry points cleared, TSC zeroed so all vCPUs start in step,
/// fast strings on, and all memory write-back cacheable by default.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
        first_refused: entries[0].index,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
            first_refused: entries[set].index,
        });
    }
    Ok(())
}

/// Points the vCPU at the kernel entry with the zero page in RSI.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("general registers"))
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("FPU registers"))
}

/// Long mode with flat segments from the boot GDT and the identity page tables.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(ioctl("special registers"))?;
    let code = gdt::segment(CODE_INDEX);
    let data = gdt::segment(DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(TSS_INDEX);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(ioctl("special registers"))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_EXTINT: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x400;

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as the MP table says and as firmware
/// would have left them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(ioctl("local APIC"))?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = std::array::from_fn(|i| reg[i] as u8);
        let value = (u32::from_le_bytes(bytes) & !APIC_DELIVERY_MODE_MASK) | mode;
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_distinct_and_enable_write_back_mtrrs() {
        let msrs = boot_msrs();
        let mut indices: Vec<_> = msrs.iter().map(|m| m.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), msrs.len());
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}

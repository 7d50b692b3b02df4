//! Adjusts the CPUID that KVM supports into what one vCPU of this VM reports.
//!
//! KVM's supported set describes the host; a guest must instead see its own APIC id and a
//! topology of `count` single-threaded cores in one package, matching the MP table, and the
//! hypervisor bit, so Linux takes its paravirtual paths (kvm-clock). Leaves are edited in
//! place; KVM's own feature filtering is kept, less one paravirtual feature (see
//! `KVM_FEATURE_PV_SEND_IPI`).

use kvm_bindings::kvm_cpuid_entry2;

/// Where a vCPU sits in the VM.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTopology {
    /// The vCPU's index, which is also its APIC id.
    pub index: u8,
    /// vCPUs in the VM.
    pub count: u8,
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const LEAF_KVM_FEATURES: u32 = 0x4000_0001;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM's paravirtual send-IPI hypercall. ember does not offer it: it only saves VM exits for
/// multicast IPIs in large guests, and a KVM that emulates guest kernel code (nested PVM)
/// loses IPIs and NMIs sent through it, so a 4-vCPU Linux guest hangs in `reboot`. Guests
/// then send IPIs through the x2APIC, as on hardware.
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const EDX_HTT: u32 = 1 << 28;
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;
const ECX_THERMAL_EPB: u32 = 1 << 3;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of the APIC id that number the cores of a package.
fn core_id_bits(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` for the vCPU at `topo`.
pub fn configure(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology) {
    let apic_id = u32::from(topo.index);
    let count = u32::from(topo.count);
    let core_bits = core_id_bits(topo.count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package (bits 31:26) and vCPUs sharing the cache (bits 25:14): each
                // vCPU is a core with private L1/L2; the last-level cache is shared by all.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            LEAF_THERMAL => e.ecx &= !ECX_THERMAL_EPB,
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                let (eax, ebx, level) = match e.index {
                    0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                    1 => (core_bits, count, TOPOLOGY_LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            LEAF_AMD_FEATURES => {
                if count > 1 {
                    e.ecx |= ECX_AMD_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_AMD_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZES => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            LEAF_AMD_TOPOLOGY => {
                // Extended APIC id, one thread per core, one node.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx &= !0x7ff;
            }
            LEAF_KVM_FEATURES => e.eax &= !KVM_FEATURE_PV_SEND_IPI,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xdead_beef,
            ebx: 0xdead_beef,
            ecx: 0xdead_beef,
            edx: 0xdead_beef,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn configured(index: u8, count: u8) -> Vec<kvm_cpuid_entry2> {
        let mut entries = vec![
            entry(0x1, 0),
            entry(0x4, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
            entry(0x7, 0),
            entry(0x4000_0001, 0),
        ];
        entries[1].eax = 0x0000_0021; // an L1 data cache descriptor
        configure(&mut entries, VcpuTopology { index, count });
        entries
    }

    #[test]
    fn leaf_1_reports_apic_id_count_and_hypervisor() {
        let e = find(&configured(3, 4), 0x1, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xbeef);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_eq!(find(&configured(0, 1), 0x1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_describes_single_threaded_cores() {
        let e = configured(2, 3);
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx >> 8, end.edx), (0, 0, 0, 2));
    }

    #[test]
    fn cache_and_amd_leaves_count_the_cores() {
        let e = configured(1, 8);
        assert_eq!(find(&e, 0x4, 0).eax >> 26, 7);
        assert_eq!(find(&e, 0x4, 0).eax & 0x3fff, 0x21);
        let sizes = find(&e, 0x8000_0008, 0);
        assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (7, 3));
        assert_eq!(find(&e, 0x8000_001e, 0).eax, 1);
        assert_eq!(
            find(&e, 0x7, 0).ebx,
            0xdead_beef,
            "other leaves are untouched"
        );
    }

    #[test]
    fn core_bits_round_up() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(core_id_bits), [0, 1, 2, 2, 3, 5]);
    }
}

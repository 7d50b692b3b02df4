//! The KVM VM: opening `/dev/kvm`, the in-kernel interrupt controllers and timer, guest memory
//! slots, irqfds and the GSI routing table ([`GsiRouting`]). It owns the VM file descriptor
//! and nothing guest-visible beyond what KVM itself emulates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    CpuId, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
    KvmIrqRouting, kvm_irq_routing_entry, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{IOAPIC_PINS, KVM_TSS_ADDRESS};

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` is missing.
    #[error(
        "/dev/kvm does not exist: this host has no KVM (enable virtualization and load kvm_intel or kvm_amd)"
    )]
    NoKvm,
    /// `/dev/kvm` is not accessible to this user.
    #[error(
        "permission denied opening /dev/kvm: run ember as a user in the device's group (usually 'kvm') or as root"
    )]
    KvmPermission,
    /// `/dev/kvm` could not be opened for another reason.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability ember needs.
    #[error("this host's KVM lacks {0}, which ember needs")]
    MissingCapability(&'static str),
    /// A guest memory region has no host mapping (a vm-memory invariant broke).
    #[error("guest memory at {0:#x} has no host mapping")]
    Unmapped(u64),
    /// More interrupt routes than KVM takes (the device manager bounds the MSI GSIs).
    #[error("{0} interrupt routes are more than KVM takes")]
    TooManyRoutes(usize),
    /// A VM-level ioctl failed.
    #[error("KVM refused to {what}")]
    Ioctl {
        /// What ember asked for.
        what: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A KVM VM with an in-kernel IOAPIC, PIC, local APICs and PIT.
pub struct Vm {
    kvm: Kvm,
    /// Shared with the GSI routing table, which vCPU threads update.
    fd: Arc<VmFd>,
}

impl Vm {
    /// Opens KVM and creates the VM with its in-kernel interrupt controllers and timer.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(|err| match err.errno() {
            libc::ENOENT => VmError::NoKvm,
            libc::EACCES | libc::EPERM => VmError::KvmPermission,
            _ => VmError::OpenKvm(err),
        })?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::UserMemory, "user memory regions"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Ioeventfd, "ioeventfd"),
            (Cap::Pit2, "an in-kernel PIT"),
            (Cap::ImmediateExit, "immediate exit"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(ioctl("create a VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("set the TSS address"))?;
        // The irqchip must exist before any vCPU is created, so their LAPICs are in-kernel too.
        fd.create_irq_chip()
            .map_err(ioctl("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(ioctl("create the in-kernel PIT"))?;
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
        })
    }

    /// Makes every region of `mem` guest-physical memory, one KVM slot each.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::Unmapped(region.start_addr().raw_value()))?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps
            // alive (in the running VMM) for as long as this VM exists; slots do not overlap
            // because `mem`'s regions do not.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(ioctl("register guest memory"))?;
        }
        Ok(())
    }

    /// Routes writes of `evt` to interrupt line `irq` inside KVM.
    pub fn register_irqfd(&self, evt: &EventFd, irq: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, irq)
            .map_err(ioctl("register an irqfd"))
    }

    /// Makes 4-byte guest writes of `datamatch` to MMIO address `addr` signal `evt` inside KVM,
    /// without an exit to the VMM.
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(ioctl("register an ioeventfd"))
    }

    /// Makes guest writes of any width to MMIO address `addr` signal `evt` inside KVM (a
    /// virtio-pci notification address belongs to one queue, and drivers write it 16 bits
    /// wide).
    pub fn register_ioevent_any(&self, evt: &EventFd, addr: u64) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(ioctl("register an ioeventfd"))
    }

    /// The VM's GSI routing table, for MSI routes.
    pub fn gsi_routing(&self) -> GsiRouting {
        GsiRouting {
            fd: self.fd.clone(),
            msi: Mutex::new(BTreeMap::new()),
        }
    }

    /// The CPUID leaves KVM can give a guest on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("report its supported CPUID"))
    }

    /// Creates vCPU `index` (also its APIC id).
    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(ioctl("create a vCPU"))
    }

    /// Most vCPUs this host's KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

/// The VM's GSI routing table as ember keeps it: `KVM_SET_GSI_ROUTING` replaces the whole
/// table, so every call sends KVM's default routes for the PIC and IOAPIC pins (the in-kernel
/// PIT and the legacy devices' irqfds need them) together with every MSI route set so far.
/// There is one per VM: two would overwrite each other's routes.
pub struct GsiRouting {
    fd: Arc<VmFd>,
    /// MSI routes by GSI: (address, data).
    msi: Mutex<BTreeMap<u32, (u64, u32)>>,
}

impl GsiRouting {
    /// Routes `gsi` (above the IOAPIC's pins) to the MSI message `data` at `address`. Called on
    /// vCPU threads when the guest programs an MSI-X vector.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), VmError> {
        let mut msi = devices::sync::lock(&self.msi);
        let old = msi.insert(gsi, (address, data));
        let result = routing_table(&msi).and_then(|table| {
            self.fd
                .set_gsi_routing(&table)
                .map_err(ioctl("set the GSI routing table"))
        });
        if result.is_err() {
            // Keep the table as KVM has it.
            match old {
                Some(old) => msi.insert(gsi, old),
                None => msi.remove(&gsi),
            };
        }
        result
    }
}

/// KVM's default routes (`kvm_setup_default_irq_routing`: GSIs 0-15 to the PIC and the
/// IOAPIC, 16-23 to the IOAPIC) followed by the `msi` routes.
fn routing_table(msi: &BTreeMap<u32, (u64, u32)>) -> Result<KvmIrqRouting, VmError> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        entry.u.irqchip.irqchip = chip;
        entry.u.irqchip.pin = pin;
        entry
    };
    let mut entries = Vec::with_capacity(40 + msi.len());
    for gsi in 0..u32::from(IOAPIC_PINS) {
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip(gsi, pic, gsi % 8));
        }
    }
    for (&gsi, &(address, data)) in msi {
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi.address_lo = address as u32;
        entry.u.msi.address_hi = (address >> 32) as u32;
        entry.u.msi.data = data;
        entries.push(entry);
    }
    KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::TooManyRoutes(entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_table_keeps_the_default_pin_routes_and_adds_each_msi_route() {
        let mut msi = BTreeMap::new();
        msi.insert(24, (0xfee0_0000u64, 0x4041u32));
        msi.insert(30, (0x1_fee0_1000, 0x22));
        let table = routing_table(&msi).unwrap();
        let entries = table.as_slice();
        assert_eq!(entries.len(), 16 * 2 + 8 + 2);
        let pins: Vec<(u32, u32, u32)> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries carry the irqchip member of the union.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(pins.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(pins.contains(&(0, KVM_IRQCHIP_IOAPIC, 0)));
        assert!(pins.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        let routes: Vec<(u32, u32, u32, u32)> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            // SAFETY: MSI entries carry the msi member of the union.
            .map(|e| unsafe { (e.gsi, e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) })
            .collect();
        assert_eq!(
            routes,
            vec![(24, 0xfee0_0000, 0, 0x4041), (30, 0xfee0_1000, 1, 0x22)]
        );
    }
}

//! The KVM VM: opening `/dev/kvm`, the in-kernel interrupt controllers and timer, guest memory
//! slots and irqfds. It owns the VM file descriptor and nothing guest-visible beyond what KVM
//! itself emulates.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

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
    fd: VmFd,
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
        Ok(Self { kvm, fd })
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

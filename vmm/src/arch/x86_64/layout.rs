//! Every fixed guest-physical address and interrupt number of ember's x86_64 machine.
//!
//! Low memory follows the PC conventions Linux expects; structures the VMM writes before boot
//! sit in the first megabyte, below where the kernel loads:
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_9000  PML4 (identity paging, 4 GiB)
//! 0x0000_0520  IDT (empty)              0x0000_a000  PDPT
//! 0x0000_7000  boot_params (zero page)  0x0000_b000  4 page directories (2 MiB pages)
//! 0x0000_8ff0  initial stack (down)     0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, where Linux scans for it)
//! 0x0010_0000  kernel (bzImage payload or the ELF's own addresses, which must lie above)
//! ```
//!
//! Guest RAM is split around a 1 GiB hole below 4 GiB that holds device MMIO, the IOAPIC and
//! the local APICs; RAM beyond 3 GiB continues at 4 GiB:
//!
//! ```text
//! 0xc000_0000  PCI 32-bit memory window (256 MiB; described to the guest, BARs use none of it)
//! 0xd000_0000  boot timer page, then the virtio-mmio windows (one page each)
//! 0xe000_0000  PCI ECAM, bus 0 only (1 MiB)
//! 0xfec0_0000  IOAPIC                   0xfee0_0000  local APICs
//! 0xfffb_d000  KVM's real-mode TSS (three pages)
//! ```
//!
//! With `--enable-pci`, the virtio-pci BARs sit in a 64-bit window above RAM
//! ([`pci_mmio64_start`]), one [`devices::virtio::pci::BAR_SIZE`] each in slot order.

/// Start of the GDT the vCPUs enter long mode with.
pub const GDT_START: u64 = 0x500;
/// Start of the (empty) IDT; the guest installs its own before enabling interrupts.
pub const IDT_START: u64 = 0x520;
/// The zero page handed to Linux in RSI (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer: below the page tables, above the zero page.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of the page directories that identity-map the low 4 GiB with 2 MiB pages. Mapping all
/// of it (not just the first GiB) lets small ring-0 test programs reach MMIO devices and the
/// APICs without building their own tables.
pub const PD_START: u64 = 0xb000;
/// How many GiB the boot page tables identity-map (one page directory each).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line accepted, including the terminating NUL: Linux's x86
/// `COMMAND_LINE_SIZE`, beyond which the kernel would silently truncate it.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = 0x9fc00;
/// Start of the EBDA/video/BIOS area, which is not RAM as far as the guest is concerned.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the 640 KiB of conventional ("base") memory.
pub const BASE_MEMORY_END: u64 = 0xa0000;
/// The ACPI tables, in the BIOS area where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// Room for the ACPI tables, up to the end of the BIOS area.
pub const ACPI_MAX_SIZE: usize = 0x20000;
/// First byte above the legacy area: kernels load here or higher.
pub const HIMEM_START: u64 = 0x10_0000;

/// First address of the 32-bit MMIO hole (3 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// First address above 4 GiB, where RAM resumes after the hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Firecracker's boot-timer page, where a guest's init reports "booted" (`--boot-timer`).
pub const BOOT_TIMER_START: u64 = 0xd000_0000;
/// Length of the boot-timer page.
pub const BOOT_TIMER_LEN: u64 = 0x1000;
/// Where virtio-mmio devices are placed, one page apart, after the boot timer.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_START + BOOT_TIMER_LEN;
/// The PCI 32-bit memory window: the rest of the hole below the boot timer. ember places no
/// BAR here (they are 64-bit), but the host bridge describes it so that a guest has one.
pub const PCI_MMIO32_START: u64 = MMIO_GAP_START;
/// Length of the PCI 32-bit memory window.
pub const PCI_MMIO32_SIZE: u64 = BOOT_TIMER_START - PCI_MMIO32_START;
/// PCI configuration space through ECAM (PCIe 5.0, 7.2.2), bus 0 only: 32 devices x 8
/// functions x 4 KiB. Above every virtio-mmio window (at most [`VIRTIO_IRQ_MAX`] -
/// [`VIRTIO_IRQ_BASE`] + 1 pages after the boot timer).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Length of the ECAM window (one bus).
pub const PCI_ECAM_SIZE: u64 = devices::pci::bus::ECAM_BUS_SIZE;
/// Alignment and length of the PCI 64-bit memory window above RAM.
pub const PCI_MMIO64_SIZE: u64 = 1 << 30;
/// The legacy PCI configuration ports (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// How many ports the configuration mechanism spans.
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// The first GSI for MSI-X vectors: after the IOAPIC's pins, which keep their routes.
pub const MSI_GSI_BASE: u32 = IOAPIC_PINS as u32;
const _: () = assert!(
    MSI_GSI_BASE > VIRTIO_IRQ_MAX,
    "MSI GSIs overlap IOAPIC pins"
);

/// Start of the PCI 64-bit memory window for a guest of `mem_bytes`: the first
/// [`PCI_MMIO64_SIZE`]-aligned address at or above both 4 GiB and the end of RAM.
pub const fn pci_mmio64_start(mem_bytes: u64) -> u64 {
    let ram_end = if mem_bytes > MMIO_GAP_START {
        MMIO_GAP_END + (mem_bytes - MMIO_GAP_START)
    } else {
        MMIO_GAP_END
    };
    ram_end.next_multiple_of(PCI_MMIO64_SIZE)
}

/// The IOAPIC's MMIO base (KVM's in-kernel IOAPIC).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS of its real-mode emulation on Intel; they sit in the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The legacy interrupt of the i8042 keyboard.
pub const I8042_IRQ: u32 = 1;
/// The legacy interrupt of COM1.
pub const COM1_IRQ: u32 = 4;
/// COM1's I/O ports: a 16550's eight registers.
pub const COM1_PORT: u16 = 0x3f8;
/// How many ports COM1 spans.
pub const COM1_LEN: u16 = 8;
/// The i8042's data port; its command port is four above.
pub const I8042_PORT: u16 = 0x60;
/// How many ports the i8042 spans (data at +0, command/status at +4).
pub const I8042_LEN: u16 = 5;
/// The test-exit port (QEMU's isa-debug-exit default), one byte wide.
pub const EXIT_PORT: u16 = 0xf4;
/// The ACPI sleep control register (hardware-reduced ACPI); the status register follows.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// How many ports the ACPI sleep registers span (control, status).
pub const ACPI_SLEEP_LEN: u16 = 2;
/// The pvpanic device's port (QEMU's default), one byte wide.
pub const PVPANIC_PORT: u16 = 0x505;
/// The first interrupt line for virtio devices (one each): after the PIT, keyboard, cascade,
/// COM2/COM1 lines.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The last interrupt line virtio devices may use (the IOAPIC's last pin).
pub const VIRTIO_IRQ_MAX: u32 = 23;
/// Number of interrupt pins on KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Every fixed range in the MMIO hole, as (name, start, length).
    fn hole() -> Vec<(&'static str, u64, u64)> {
        let virtio_len = u64::from(VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) * 0x1000;
        vec![
            ("PCI 32-bit window", PCI_MMIO32_START, PCI_MMIO32_SIZE),
            ("boot timer", BOOT_TIMER_START, BOOT_TIMER_LEN),
            ("virtio-mmio", VIRTIO_MMIO_START, virtio_len),
            ("ECAM", PCI_ECAM_START, PCI_ECAM_SIZE),
            ("IOAPIC", IOAPIC_START, 0x1000),
            ("APIC", APIC_START, 0x10_0000),
            ("KVM TSS", KVM_TSS_ADDRESS, 0x3000),
        ]
    }

    #[test]
    fn nothing_in_the_mmio_hole_overlaps_and_all_of_it_is_in_the_hole() {
        let mut ranges = hole();
        ranges.sort_by_key(|r| r.1);
        for pair in ranges.windows(2) {
            let ((a, start, len), (b, next, _)) = (pair[0], pair[1]);
            assert!(start + len <= next, "{a} overlaps {b}");
        }
        for (name, start, len) in ranges {
            assert!(
                start >= MMIO_GAP_START && start + len <= MMIO_GAP_END,
                "{name}"
            );
        }
        assert_eq!(
            PCI_ECAM_START % PCI_ECAM_SIZE,
            0,
            "ECAM is naturally aligned"
        );
    }

    #[test]
    fn the_64_bit_window_is_above_ram_and_4_gib_and_aligned() {
        for mem in [
            128 << 20,
            3 * GIB,
            3 * GIB + 1,
            5 * GIB,
            7 * GIB + (1 << 20),
        ] {
            let start = pci_mmio64_start(mem);
            let high_ram_end = MMIO_GAP_END + mem.saturating_sub(MMIO_GAP_START);
            assert!(start >= high_ram_end && start >= MMIO_GAP_END, "{mem:#x}");
            assert!(
                start - high_ram_end < PCI_MMIO64_SIZE,
                "{mem:#x}: as low as it can be"
            );
            assert_eq!(start % PCI_MMIO64_SIZE, 0);
        }
        assert_eq!(pci_mmio64_start(128 << 20), 4 * GIB);
        assert_eq!(pci_mmio64_start(5 * GIB), 6 * GIB);
        assert_eq!(pci_mmio64_start(5 * GIB + 1), 7 * GIB);
    }
}

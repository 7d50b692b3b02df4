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
//! the local APICs; RAM beyond 3 GiB continues at 4 GiB.

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

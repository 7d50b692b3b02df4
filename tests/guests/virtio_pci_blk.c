/* A minimal virtio-pci (modern) block driver that takes MSI-X interrupts, for ember's
 * --enable-pci. It scans bus 0 through the legacy ports 0xCF8/0xCFC (checking the host bridge
 * at 00:00.0), finds the virtio-blk function (1af4:1042), enables memory decoding and bus
 * mastering, walks its capability list to the common, notify, ISR and device configuration
 * structures and the MSI-X table and PBA in its BAR (mapping the BAR, above 4 GiB, with a page
 * directory of its own), enables MSI-X with vector 0 for configuration changes and vector 1
 * for the queue, both sent to this CPU's local APIC, and reads sector 0 with an interrupt
 * handler counting the queue's interrupts. The host filled the disk with bytes i*7+3 (i the
 * offset in the sector).
 * Then it masks the queue's vector, reads sector 1 polling the used ring: no interrupt may
 * arrive, and the vector's pending bit must be set; unmasking it must deliver the interrupt
 * and clear the bit.
 * With `intx` as the command line it leaves MSI-X off instead: it routes the function's
 * interrupt line (its IOAPIC pin) to a vector of its own and reads sector 0 with the INTx
 * interrupt, checking the ISR status says "queue".
 * With `resize` as the command line it then prints the capacity and waits for the
 * configuration-change interrupt (the host swapped the drive's file), and prints the new
 * capacity once the configuration generation moved.
 * Every step prints a line on COM1; the verdict is the exit port (0 passed, 1 failed). */
#include "virtio.h"

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define LAPIC ((volatile u32 *)0xfee00000UL)
#define LAPIC_EOI (0xb0 / 4)
#define LAPIC_SVR (0xf0 / 4)
#define LAPIC_TPR (0x80 / 4)
#define VECTOR_QUEUE 0x40
#define VECTOR_CONFIG 0x41
#define VECTOR_INTX 0x42
#define IOAPIC ((volatile u32 *)0xfec00000UL)
#define PML4 ((volatile u64 *)0x9000UL)
#define PDPT ((volatile u64 *)0xa000UL)

static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void puthex(u64 v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}

/* Configuration mechanism #1: CONFIG_ADDRESS selects bus 0, `dev`, function 0, the dword. */
static void select(u32 dev, u32 reg) { outl(PCI_ADDR, 0x80000000u | dev << 11 | (reg & 0xfc)); }
static u32 cfg32(u32 dev, u32 reg) { select(dev, reg); return inl(PCI_DATA); }
static u16 cfg16(u32 dev, u32 reg) { select(dev, reg); return inw(PCI_DATA + (reg & 2)); }
static u8 cfg8(u32 dev, u32 reg) { select(dev, reg); return inb(PCI_DATA + (reg & 3)); }
static void cfg16_write(u32 dev, u32 reg, u16 v) { select(dev, reg); outw(PCI_DATA + (reg & 2), v); }

/* The interrupt handlers: each counts its interrupts and acknowledges the local APIC. */
static volatile u32 queue_irqs, config_irqs, intx_irqs;
extern void isr_queue(void), isr_config(void), isr_intx(void);
#define ISR(name, counter) \
    __asm__(".text\n" #name ":\n" \
            "  push %rax\n" \
            "  lock incl " #counter "(%rip)\n" \
            "  mov $0xfee000b0, %rax\n" \
            "  movl $0, (%rax)\n" \
            "  pop %rax\n" \
            "  iretq\n");
ISR(isr_queue, queue_irqs)
ISR(isr_config, config_irqs)
ISR(isr_intx, intx_irqs)

static u64 idt[256 * 2] __attribute__((aligned(16)));
/* The page directory that maps the GiB holding the BAR. */
static u64 bar_pd[512] __attribute__((aligned(4096)));

/* A present 64-bit interrupt gate for `vector`. */
static void set_gate(u32 vector, void (*isr)(void)) {
    u64 handler = (u64)isr;
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector * 2] = (handler & 0xffff) | (u64)cs << 16 | 0x8e00UL << 32
                      | ((handler >> 16) & 0xffff) << 48;
    idt[vector * 2 + 1] = handler >> 32;
}

static void install_idt(void) {
    set_gate(VECTOR_QUEUE, isr_queue);
    set_gate(VECTOR_CONFIG, isr_config);
    set_gate(VECTOR_INTX, isr_intx);
    /* The 8259s stay masked: interrupts come through the IOAPIC and MSI only. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof idt - 1, (u64)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    LAPIC[LAPIC_TPR] = 0;
    LAPIC[LAPIC_SVR] = 0x1ff; /* software-enabled, spurious vector 0xff */
}

/* Identity-maps the GiB at `addr` (uncached 2 MiB pages) if the boot tables do not. */
static void map_gib(u64 addr) {
    u64 gib = addr >> 30;
    if (gib < 4) return;
    if (gib >= 512 || (PML4[0] & 1) == 0) fail("cannot map the BAR");
    for (u64 i = 0; i < 512; i++) bar_pd[i] = ((gib << 30) + (i << 21)) | 0x93; /* P RW PCD PS */
    PDPT[gib] = (u64)bar_pd | 3;
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0\n mov %0, %%cr3" : "=r"(cr3) : : "memory");
}

/* The virtio-blk function's structures, found through its capabilities. */
static volatile u8 *common, *isr, *notify_base, *device_cfg;
static volatile u32 *msix_table;
static volatile u64 *msix_pba;
static u32 notify_mult;

#define C8(off) (*(volatile u8 *)(common + (off)))
#define C16(off) (*(volatile u16 *)(common + (off)))
#define C32(off) (*(volatile u32 *)(common + (off)))

/* Bus 0, devices 0-31: reports each function and returns the virtio-blk one's number. */
static u32 scan(void) {
    u32 found = 0;
    for (u32 dev = 0; dev < 32; dev++) {
        u32 id = cfg32(dev, 0);
        /* No function reads all ones; no bus at all (ports nobody decodes) reads zero. */
        if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) continue;
        puts("PCI 00:");
        puthex(dev, 2);
        puts(".0 ");
        puthex(id & 0xffff, 4);
        puts(":");
        puthex(id >> 16, 4);
        puts(" class ");
        puthex(cfg32(dev, 8) >> 8, 6);
        puts("\n");
        if (dev == 0 && ((id != 0x0d578086) || (cfg32(dev, 8) >> 24) != 0x06))
            fail("00:00.0 is not a host bridge");
        if (id == 0x10421af4 && !found) found = dev;
    }
    if (!found) fail("no virtio-blk function on bus 0");
    return found;
}

/* Reads BAR `bar` of `dev` (a 64-bit memory BAR, as ember's are). */
static u64 bar_address(u32 dev, u32 bar) {
    u32 lo = cfg32(dev, 0x10 + 4 * bar);
    if ((lo & 7) != 4) fail("BAR is not a 64-bit memory BAR");
    return (u64)cfg32(dev, 0x14 + 4 * bar) << 32 | (lo & ~0xfu);
}

/* Finds the structures; with `msix`, enables MSI-X. */
static void find_structures(u32 dev, int msix) {
    if (!(cfg16(dev, 6) & 0x10)) fail("no capability list");
    /* Memory space and bus master. */
    cfg16_write(dev, 4, cfg16(dev, 4) | 6);
    u32 msix_cap = 0;
    for (u32 cap = cfg8(dev, 0x34) & 0xfc, n = 0; cap && n < 48; cap = cfg8(dev, cap + 1) & 0xfc, n++) {
        u8 id = cfg8(dev, cap);
        if (id == 0x11) { msix_cap = cap; continue; }
        if (id != 0x09) continue;
        u8 type = cfg8(dev, cap + 3);
        u64 base = bar_address(dev, cfg8(dev, cap + 4));
        map_gib(base);
        volatile u8 *at = (volatile u8 *)(base + cfg32(dev, cap + 8));
        if (type == 1) common = at;
        else if (type == 2) { notify_base = at; notify_mult = cfg32(dev, cap + 16); }
        else if (type == 3) isr = at;
        else if (type == 4) device_cfg = at;
    }
    if (!common || !notify_base || !isr || !device_cfg) fail("a virtio capability is missing");
    if (!msix_cap) fail("no MSI-X capability");
    u16 control = cfg16(dev, msix_cap + 2);
    if ((control & 0x7ff) + 1 < 2) fail("fewer than 2 MSI-X vectors");
    u32 table = cfg32(dev, msix_cap + 4), pba = cfg32(dev, msix_cap + 8);
    msix_table = (volatile u32 *)(bar_address(dev, table & 7) + (table & ~7u));
    msix_pba = (volatile u64 *)(bar_address(dev, pba & 7) + (pba & ~7u));
    if (!msix) return;
    /* MSI-X on, function unmasked. */
    cfg16_write(dev, msix_cap + 2, (control | 0x8000) & ~0x4000);
    puts("MSI-X ON\n");
}

/* Vector `v` sends `vector` to APIC 0, fixed delivery, edge. */
static void program_vector(u32 v, u32 vector, int masked) {
    msix_table[v * 4 + 0] = 0xfee00000u;
    msix_table[v * 4 + 1] = 0;
    msix_table[v * 4 + 2] = vector;
    msix_table[v * 4 + 3] = masked;
}

static struct desc descs[QN] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static struct { u32 type; u32 reserved; u64 sector; } hdr;
static volatile u8 status;
static u8 buf[512] __attribute__((aligned(512)));
static u16 last_used;

/* Brings the device up with queue 0; with `msix`, vector 0 for configuration changes and
 * vector 1 for the queue, else no vectors (INTx). */
static void setup_device(int msix) {
    C8(0x14) = 0;
    while (C8(0x14)) {}
    C8(0x14) = 1 | 2;
    C32(0x00) = 1;
    if (!(C32(0x04) & 1)) fail("no VIRTIO_F_VERSION_1");
    C32(0x08) = 0; C32(0x0c) = 0;
    C32(0x08) = 1; C32(0x0c) = 1;
    C8(0x14) = 1 | 2 | 8;
    if (!(C8(0x14) & 8)) fail("FEATURES_OK refused");
    if (msix) {
        program_vector(0, VECTOR_CONFIG, 0);
        program_vector(1, VECTOR_QUEUE, 0);
        C16(0x10) = 0;
        if (C16(0x10) != 0) fail("config vector refused");
    }
    C16(0x16) = 0;
    if (C16(0x18) < QN) fail("queue too small");
    C16(0x18) = QN;
    if (msix) {
        C16(0x1a) = 1;
        if (C16(0x1a) != 1) fail("queue vector refused");
    } else if (C16(0x1a) != 0xffff) {
        fail("a queue vector without MSI-X");
    }
    C32(0x20) = (u32)(u64)descs; C32(0x24) = 0;
    C32(0x28) = (u32)(u64)&avail; C32(0x2c) = 0;
    C32(0x30) = (u32)(u64)&used; C32(0x34) = 0;
    C16(0x1c) = 1;
    C8(0x14) = 1 | 2 | 8 | 4;
    if (!(C8(0x14) & 4)) fail("DRIVER_OK refused");
    puts("QUEUE READY capacity=");
    putdec(*(volatile u32 *)device_cfg);
    puts("\n");
}

/* Submits a read of `sector` into buf and notifies queue 0 (a 16-bit write of its index). */
static void submit_read(u64 sector) {
    hdr.type = 0;
    hdr.sector = sector;
    status = 0xff;
    descs[0] = (struct desc){ (u64)&hdr, sizeof hdr, F_NEXT, 1 };
    descs[1] = (struct desc){ (u64)buf, sizeof buf, F_NEXT | F_WRITE, 2 };
    descs[2] = (struct desc){ (u64)&status, 1, F_WRITE, 0 };
    avail.ring[avail.idx % QN] = 0;
    fence();
    avail.idx++;
    fence();
    *(volatile u16 *)(notify_base + C16(0x1e) * notify_mult) = 0;
}

static void check_sector(void) {
    if (status != 0) fail("read failed");
    for (u32 i = 0; i < sizeof buf; i++)
        if (buf[i] != (u8)(i * 7 + 3)) fail("sector bytes differ");
}

static int wait_irqs(u32 want) {
    for (u64 spins = 0; spins < 100000000UL; spins++) {
        if (queue_irqs >= want) return 1;
        __asm__ volatile("pause");
    }
    return 0;
}

static void print_capacity(void) {
    puts("CAPACITY ");
    putdec(*(volatile u32 *)device_cfg);
    puts("\n");
}

/* Waits (halted) for the configuration-change interrupt and a new configuration generation. */
static void resize(void) {
    u8 generation = C8(0x15);
    print_capacity();
    /* sti takes effect after hlt starts, so an interrupt between the check and hlt wakes it. */
    for (;;) {
        __asm__ volatile("cli");
        if (config_irqs) break;
        __asm__ volatile("sti; hlt");
    }
    __asm__ volatile("sti");
    if (C8(0x15) == generation) fail("a configuration interrupt without a new generation");
    print_capacity();
}

/* Reads sector 0 with the INTx interrupt: the interrupt line register names the IOAPIC pin,
 * routed here edge-triggered to VECTOR_INTX on APIC 0. */
static void intx(u32 dev) {
    u32 pin = cfg8(dev, 0x3c);
    if (cfg8(dev, 0x3d) != 1) fail("interrupt pin is not INTA#");
    if (pin == 0 || pin >= 24) fail("no IOAPIC pin in the interrupt line register");
    IOAPIC[0] = 0x10 + 2 * pin + 1;
    IOAPIC[4] = 0;
    IOAPIC[0] = 0x10 + 2 * pin;
    IOAPIC[4] = VECTOR_INTX;
    submit_read(0);
    for (u64 spins = 0; !intx_irqs; spins++) {
        if (spins > 100000000UL) fail("no INTx interrupt for the request");
        __asm__ volatile("pause");
    }
    if (!(*isr & 1)) fail("ISR status does not say queue");
    if (*isr) fail("reading ISR status did not clear it");
    virtio_wait_used(&used, &last_used);
    check_sector();
    if (queue_irqs) fail("an MSI-X vector fired with MSI-X off");
    puts("SECTOR 0 OK BY INTX on pin ");
    putdec(pin);
    puts("\n");
    exit_with(0);
}

void main(const void *boot_params) {
    const char *mode = cmdline(boot_params);
    int msix = !(mode[0] == 'i' && mode[1] == 'n');
    install_idt();
    u32 dev = scan();
    find_structures(dev, msix);
    setup_device(msix);
    __asm__ volatile("sti");
    if (!msix) intx(dev);

    submit_read(0);
    if (!wait_irqs(1)) fail("no MSI-X interrupt for the request");
    virtio_wait_used(&used, &last_used);
    check_sector();
    puts("SECTOR 0 OK BY MSI-X\n");

    /* Masked: the interrupt is held pending, and delivered on unmask. */
    msix_table[1 * 4 + 3] = 1;
    submit_read(1);
    virtio_wait_used(&used, &last_used);
    check_sector();
    for (u64 spins = 0; spins < 1000000UL; spins++) __asm__ volatile("pause");
    if (queue_irqs != 1) fail("a masked vector interrupted");
    if (!(msix_pba[0] & 2)) fail("a masked vector's pending bit is clear");
    puts("MASKED VECTOR PENDING\n");
    msix_table[1 * 4 + 3] = 0;
    if (!wait_irqs(2)) fail("unmasking did not deliver the pending interrupt");
    if (msix_pba[0] & 2) fail("the pending bit stayed set after delivery");
    puts("PENDING DELIVERED ON UNMASK\n");
    if (mode[0] == 'r' && mode[1] == 'e') resize();
    exit_with(0);
}

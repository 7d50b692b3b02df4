/* A hostile guest: random reads and writes of every I/O port (except the ones whose job is to end
 * the VM: the i8042, the exit port, the ACPI sleep register and pvpanic) and of the first virtio
 * device's MMIO window, with every access width, then it restores COM1 and reports SURVIVED
 * through the exit port. ember must neither crash nor hang. */
#include "guest.h"

static u64 x = 0x9e3779b97f4a7c15UL;
static u64 next(void) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x; }

static int spared(u16 port) {
    return (port >= 0x60 && port <= 0x64) || port == 0xf4 || port == 0x3c0 || port == 0x3c1 ||
           port == 0x505;
}

static void port_access(void) {
    u64 r = next();
    u16 port = (u16)(r >> 16);
    if (r & 0x100) port = (u16)(0x3f8 + (r & 7)); /* COM1 often */
    if (spared(port)) return;
    u32 v = (u32)(r >> 32);
    switch (r & 7) {
    case 0: __asm__ volatile("outb %b0, %w1" : : "a"(v), "Nd"(port)); break;
    case 1: __asm__ volatile("outw %w0, %w1" : : "a"(v), "Nd"(port)); break;
    case 2: __asm__ volatile("outl %0, %w1" : : "a"(v), "Nd"(port)); break;
    case 3: { u8 b; __asm__ volatile("inb %w1, %b0" : "=a"(b) : "Nd"(port)); break; }
    case 4: { u16 w; __asm__ volatile("inw %w1, %w0" : "=a"(w) : "Nd"(port)); break; }
    default: { u32 l; __asm__ volatile("inl %w1, %0" : "=a"(l) : "Nd"(port)); break; }
    }
}

static void mmio_access(void) {
    u64 r = next();
    u64 addr = 0xd0001000UL + ((r >> 8) & 0x1ff);
    u64 v = next();
    /* Point the queue at real guest memory now and then, so activation sometimes succeeds and
     * the device serves garbage descriptors. */
    if ((r & 0xf0) == 0) v = 0x300000 + (v & 0xffff);
    switch (r & 7) {
    case 0: *(volatile u8 *)addr = (u8)v; break;
    case 1: *(volatile u16 *)(addr & ~1UL) = (u16)v; break;
    case 2: *(volatile u32 *)(addr & ~3UL) = (u32)v; break;
    case 3: *(volatile u64 *)(addr & ~7UL) = v; break;
    case 4: (void)*(volatile u8 *)addr; break;
    case 5: (void)*(volatile u16 *)(addr & ~1UL); break;
    default: (void)*(volatile u32 *)(addr & ~3UL); break;
    }
}

#define REG(off) (*(volatile u32 *)(0xd0001000UL + (off)))

/* A reset and a mostly well-formed bring-up whose queue lives in the garbage area, then a few
 * notifications: the device's I/O thread serves whatever it finds there. */
static void bring_up_on_garbage(void) {
    u32 size = 1u << (next() % 9);
    u64 desc = 0x300000 + (next() & 0x7ff0);
    u64 avail = 0x308000 + (next() & 0x3ffe);
    u64 used = 0x30c000 + (next() & 0x3ffc);
    REG(0x70) = 0;
    REG(0x70) = 3;
    REG(0x24) = 1;
    REG(0x20) = 1;
    REG(0x70) = 3 | 8;
    REG(0x30) = 0;
    REG(0x38) = size;
    REG(0x80) = (u32)desc;
    REG(0x90) = (u32)avail;
    REG(0xa0) = (u32)used;
    REG(0x44) = 1;
    REG(0x70) = 3 | 8 | 4;
    u16 idx = 0;
    *(volatile u16 *)(avail + 2) = 0;
    for (int i = 0; i < 4; i++) {
        /* Garbage descriptors, some pointing into guest memory, then a few heads published. */
        for (u32 d = 0; d < size; d++) {
            volatile u64 *e = (volatile u64 *)(desc + 16 * d);
            e[0] = (next() & 1) ? 0x300000 + (next() & 0xffff) : next();
            /* len | flags << 32 | next << 48; half of them short enough to be valid. */
            e[1] = (next() & 1) ? (next() & 0xffff0003000001f0UL) : next();
        }
        u16 n = (u16)(1 + next() % 4);
        for (u16 k = 0; k < n; k++)
            *(volatile u16 *)(avail + 4 + 2 * ((idx + k) % size)) = (u16)(next() % size);
        idx = (u16)(idx + n);
        *(volatile u16 *)(avail + 2) = idx;
        REG(0x50) = 0;
    }
}

void main(const void *boot_params) {
    u32 rounds = atou(cmdline(boot_params));
    /* Garbage for the device to find where the queue may point. */
    for (u64 a = 0x300000; a < 0x310000; a += 8) *(volatile u64 *)a = next();
    for (u32 i = 0; i < rounds; i++) {
        port_access();
        mmio_access();
        if (i % 256 == 0) bring_up_on_garbage();
    }
    /* COM1 back to a sane state: no loopback, DLAB off, 8N1, interrupts off. */
    outb(COM1 + 4, 0);
    outb(COM1 + 3, 3);
    outb(COM1 + 1, 0);
    puts("\nSURVIVED\n");
    exit_with(0);
}

/* Helpers shared by the tiny ring-0 test guests: port I/O, COM1, i8042 reset. */
#ifndef EMBER_GUEST_H
#define EMBER_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void putc(char c) {
    while (!(inb(COM1_LSR) & LSR_THR_EMPTY)) {}
    outb(COM1, (u8)c);
}
static inline void puts(const char *s) { while (*s) putc(*s++); }
static inline void putdec(u32 v) {
    char buf[11]; int i = 0;
    do { buf[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(buf[--i]);
}
static inline char getc(void) {
    while (!(inb(COM1_LSR) & LSR_DATA_READY)) {}
    return (char)inb(COM1);
}

/* The kernel command line ember wrote, from the zero page (boot_params.hdr.cmd_line_ptr). */
static inline const char *cmdline(const void *boot_params) {
    return (const char *)(u64)*(const u32 *)((const u8 *)boot_params + 0x228);
}

/* Parses a decimal number at the start of s. */
static inline u32 atou(const char *s) {
    u32 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u32)(*s++ - '0');
    return v;
}

/* Reports a verdict through ember's exit port: ember exits with exactly this status. */
static inline void exit_with(u8 code) { outb(0xf4, code); }

/* Pulse the CPU reset line through the keyboard controller, as Linux's reboot=k does. */
static inline void i8042_reset(void) { outb(0x64, 0xfe); }

static inline void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
#endif

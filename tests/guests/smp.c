/* Runs on two vCPUs: the bootstrap CPU reports its APIC id, wakes the second CPU with
 * INIT + SIPI through the local APIC, and that CPU, starting in real mode at the trampoline
 * below, reports its own APIC id from CPUID. Then the bootstrap CPU resets the machine. */
#include "guest.h"

#define LAPIC_ICR_LOW ((volatile u32 *)0xfee00300UL)
#define LAPIC_ICR_HIGH ((volatile u32 *)0xfee00310UL)
#define ICR_INIT 0x4500
#define ICR_STARTUP 0x4600
#define TRAMPOLINE 0x10000UL /* real-mode start address: vector 0x10 */
#define AP_DONE ((volatile u8 *)(TRAMPOLINE + 0xf00))

extern const u8 ap_start[], ap_end[];

/* 16-bit code the AP runs from TRAMPOLINE: print "cpu apic=N\n" and flag completion. */
__asm__(
    ".code16\n"
    "ap_start:\n"
    "  cli\n"
    "  mov %cs, %ax\n"
    "  mov %ax, %ds\n"
    "  mov $1, %eax\n"
    "  cpuid\n"
    "  shr $24, %ebx\n"
    "  mov $0x3f8, %dx\n"
    "  mov $'c', %al\n  out %al, %dx\n"
    "  mov $'p', %al\n  out %al, %dx\n"
    "  mov $'u', %al\n  out %al, %dx\n"
    "  mov $' ', %al\n  out %al, %dx\n"
    "  mov $'a', %al\n  out %al, %dx\n"
    "  mov $'p', %al\n  out %al, %dx\n"
    "  mov $'i', %al\n  out %al, %dx\n"
    "  mov $'c', %al\n  out %al, %dx\n"
    "  mov $'=', %al\n  out %al, %dx\n"
    "  mov %bl, %al\n  add $'0', %al\n  out %al, %dx\n"
    "  mov $'\\n', %al\n  out %al, %dx\n"
    "  movb $1, 0xf00\n"
    "1: hlt\n  jmp 1b\n"
    "ap_end:\n"
    ".code64\n");

void main(void) {
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    puts("cpu apic=");
    putdec(b >> 24);
    puts("\n");

    for (const u8 *s = ap_start; s < ap_end; s++)
        ((volatile u8 *)TRAMPOLINE)[s - ap_start] = *s;
    *AP_DONE = 0;
    *LAPIC_ICR_HIGH = 1u << 24;
    *LAPIC_ICR_LOW = ICR_INIT;
    *LAPIC_ICR_HIGH = 1u << 24;
    *LAPIC_ICR_LOW = ICR_STARTUP | (TRAMPOLINE >> 12);
    while (!*AP_DONE) __asm__ volatile("pause");
    puts("all cpus reported\n");
    i8042_reset();
}

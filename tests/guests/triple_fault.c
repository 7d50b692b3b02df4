/* Loads an empty IDT and raises an exception: with no handler and no double-fault handler the
 * CPU shuts down (triple fault), which ember must report as a guest crash. */
#include "guest.h"

void main(void) {
    struct __attribute__((packed)) { u16 limit; u64 base; } idt = { 0, 0 };
    puts("about to triple fault\n");
    __asm__ volatile("lidt %0; ud2" : : "m"(idt));
}

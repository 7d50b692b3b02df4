/* Powers the machine off the way an ACPI kernel does on ember: SLP_EN with the \_S5_ sleep
 * type (5) in the hardware-reduced sleep control register. ember must exit 0. */
#include "guest.h"

void main(void) {
    puts("powering off\n");
    outb(0x3c0, (5 << 2) | (1 << 5));
    for (;;) puts("still running after power-off\n");
}

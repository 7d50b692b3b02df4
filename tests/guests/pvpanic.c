/* Reports a panic as Linux's pvpanic driver does; ember must exit with its panic status. */
#include "guest.h"

void main(void) {
    puts("panicking\n");
    if (inb(0x505) & 1) outb(0x505, 1);
    for (;;) puts("still running after the panic\n");
}

/* Waits for Ctrl-Alt-Del from the keyboard controller (scan code set 2, as ember's i8042
 * sends it: Ctrl 14, Alt 11, Del E0 71) and then resets the machine through the i8042, as a
 * guest's init would reboot. Prints READY first, and each byte it reads. */
#include "guest.h"

void main(void) {
    puts("READY\n");
    u8 seen[4] = {0, 0, 0, 0};
    for (;;) {
        if (!(inb(0x64) & 1)) {
            __asm__ volatile("pause");
            continue;
        }
        u8 code = inb(0x60);
        seen[0] = seen[1]; seen[1] = seen[2]; seen[2] = seen[3]; seen[3] = code;
        putdec(code);
        puts("\n");
        if (seen[0] == 0x14 && seen[1] == 0x11 && seen[2] == 0xe0 && seen[3] == 0x71) {
            puts("CTRL-ALT-DEL\n");
            i8042_reset();
        }
    }
}

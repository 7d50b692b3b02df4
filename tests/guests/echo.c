/* Echoes COM1 input back, upper-cased so an echo cannot be mistaken for the terminal's; 'q'
 * resets. */
#include "guest.h"

void main(void) {
    puts("echo ready\n");
    for (;;) {
        char c = getc();
        if (c == 'q') break;
        if (c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
        putc(c);
    }
    puts("\necho done\n");
    i8042_reset();
}

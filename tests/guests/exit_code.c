/* Writes the number on its kernel command line to the exit port (as a byte, or with `w` after
 * the number as a 32-bit write whose low byte is the code); ember must exit with it. */
#include "guest.h"

void main(const void *boot_params) {
    const char *args = cmdline(boot_params);
    u32 code = atou(args);
    puts("exit code ");
    putdec(code);
    puts("\n");
    while (*args >= '0' && *args <= '9') args++;
    if (*args == 'w')
        __asm__ volatile("outl %0, %1" : : "a"(code | 0xabcdef00u), "Nd"((u16)0xf4));
    else
        exit_with((u8)code);
    /* ember must stop the VM on the write: this is never reached. */
    for (;;) puts("still running after the exit write\n");
}

/* Prints an increasing counter on COM1 for ever, so the host can see whether the vCPU runs
 * (the API pause/resume test). With "fast" as the first command-line word it prints without
 * pausing between lines, as much as it can (the serial rate limiter test). */
#include "guest.h"

void main(const void *boot_params) {
    const char *cmd = cmdline(boot_params);
    u32 pause = cmd[0] == 'f' && cmd[1] == 'a' ? 0 : 20000;
    for (u32 i = 0;; i++) {
        putdec(i);
        puts("\n");
        for (volatile u32 spin = 0; spin < pause; spin++) {
        }
    }
}

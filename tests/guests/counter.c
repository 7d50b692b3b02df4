/* Prints an increasing counter on COM1 for ever, so the host can see whether the vCPU runs
 * (the API pause/resume test). */
#include "guest.h"

void main(void) {
    for (u32 i = 0;; i++) {
        putdec(i);
        puts("\n");
        for (volatile u32 spin = 0; spin < 20000; spin++) {
        }
    }
}

/* Announces itself and then spins forever with interrupts off: only --timeout ends it. */
#include "guest.h"

void main(void) {
    puts("spinning\n");
    for (;;) __asm__ volatile("pause");
}

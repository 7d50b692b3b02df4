/* Prints to COM1 and resets through the i8042: ember must exit 0 with the text on its console. */
#include "guest.h"

void main(void) {
    puts("hello from the tiny guest\n");
    i8042_reset();
}

/* A minimal virtio-mmio (version 2) entropy driver, polling its used ring with interrupts off.
 * Reads 64 random bytes twice and checks that neither read is all zero and that they differ;
 * then offers a device-readable buffer, which the device must return with nothing written,
 * and checks that the device still serves. Every verdict is a line on COM1; the run ends with
 * the exit port (0 when all is well). */
#include "virtio.h"

#define LEN 64

static struct desc descs[QN] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static u8 first[LEN], second[LEN], third[LEN];
static u16 last_used;

static void fail(const char *what) {
    puts("FAIL ");
    puts(what);
    puts("\n");
    exit_with(1);
}

static void setup(void) {
    if (R(0x000) != 0x74726976 || R(0x004) != 2 || R(0x008) != 4) fail("not a virtio-mmio v2 entropy device");
    R(0x070) = 0;
    R(0x070) = 1 | 2; /* ACKNOWLEDGE | DRIVER */
    R(0x014) = 1;
    if (!(R(0x010) & 1)) fail("no VIRTIO_F_VERSION_1");
    R(0x024) = 0;
    R(0x020) = 0;
    R(0x024) = 1;
    R(0x020) = 1;
    R(0x070) = 1 | 2 | 8;
    if (!(R(0x070) & 8)) fail("FEATURES_OK refused");
    R(0x030) = 0;
    if (R(0x034) < QN) fail("queue too small");
    R(0x038) = QN;
    R(0x080) = (u32)(u64)descs; R(0x084) = 0;
    R(0x090) = (u32)(u64)&avail; R(0x094) = 0;
    R(0x0a0) = (u32)(u64)&used; R(0x0a4) = 0;
    R(0x044) = 1;
    R(0x070) = 1 | 2 | 8 | 4;
    if (!(R(0x070) & 4)) fail("DRIVER_OK refused");
}

/* Offers one buffer of LEN bytes (device-writable or not), notifies and waits for it to come
 * back; returns the used length. */
static u32 request(u8 *buf, u16 flags) {
    descs[0].addr = (u64)buf;
    descs[0].len = LEN;
    descs[0].flags = flags;
    descs[0].next = 0;
    avail.ring[avail.idx % QN] = 0;
    fence();
    avail.idx++;
    fence();
    R(0x050) = 0;
    for (u64 spins = 0; spins < 200000000UL; spins++) {
        if (*(volatile u16 *)&used.idx != last_used) {
            u32 len = used.ring[last_used % QN].len;
            last_used++;
            return len;
        }
        __asm__ volatile("pause");
    }
    fail("the device never answered");
    return 0;
}

static int all_zero(const u8 *buf) {
    for (int i = 0; i < LEN; i++) if (buf[i]) return 0;
    return 1;
}

void main(const void *boot_params) {
    (void)boot_params;
    setup();
    if (request(first, F_WRITE) != LEN) fail("first read: wrong length");
    if (request(second, F_WRITE) != LEN) fail("second read: wrong length");
    if (all_zero(first) || all_zero(second)) fail("a read is all zero");
    int same = 1;
    for (int i = 0; i < LEN; i++) if (first[i] != second[i]) same = 0;
    if (same) fail("two reads gave the same bytes");
    puts("RANDOM OK\n");
    if (request(third, 0) != 0 || !all_zero(third)) fail("a device-readable buffer was written");
    if (request(third, F_WRITE) != LEN || all_zero(third)) fail("no entropy after a bad request");
    puts("READABLE REFUSED\n");
    exit_with(0);
}

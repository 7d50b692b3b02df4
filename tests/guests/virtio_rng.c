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

static void setup(void) {
    virtio_begin(4, "not a virtio-mmio v2 entropy device");
    virtio_features(0);
    virtio_queue(0, descs, &avail, &used);
    virtio_driver_ok();
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
    return virtio_wait_used(&used, &last_used);
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

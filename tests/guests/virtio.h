/* The split-virtqueue layout and the virtio-mmio register window shared by the tiny virtio
 * drivers: one device, in ember's first virtio slot, with queues of QN descriptors. Every
 * helper is inline, so a driver that uses only some of them (the PCI driver takes the rings
 * and fail()) still builds with -Werror. */
#ifndef EMBER_VIRTIO_H
#define EMBER_VIRTIO_H
#include "guest.h"

#define MMIO 0xd0001000UL
#define R(off) (*(volatile u32 *)(MMIO + (off)))
#define QN 8
#define F_NEXT 1
#define F_WRITE 2

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QN]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QN]; u16 avail_event; };

/* Orders ring writes against the index and notify writes the device reads. */
static inline void fence(void) { __asm__ volatile("mfence" ::: "memory"); }

/* Says what went wrong on COM1 and ends the run with exit status 1. */
static inline void fail(const char *what) {
    puts("FAIL ");
    puts(what);
    puts("\n");
    exit_with(1);
}

/* Resets the device in ember's first slot after checking that it is a virtio-mmio version 2
 * device of `type` (else fails with `what`), acknowledges it and checks it offers VERSION_1.
 * Returns the low word of the features it offers. */
static inline u32 virtio_begin(u32 type, const char *what) {
    if (R(0x000) != 0x74726976 || R(0x004) != 2 || R(0x008) != type) fail(what);
    R(0x070) = 0;
    R(0x070) = 1 | 2; /* ACKNOWLEDGE | DRIVER */
    R(0x014) = 1;
    if (!(R(0x010) & 1)) fail("no VIRTIO_F_VERSION_1");
    R(0x014) = 0;
    return R(0x010);
}

/* Accepts VERSION_1 and the low-word features `lo`; up to FEATURES_OK. */
static inline void virtio_features(u32 lo) {
    R(0x024) = 0; R(0x020) = lo;
    R(0x024) = 1; R(0x020) = 1;
    R(0x070) = 1 | 2 | 8;
    if (!(R(0x070) & 8)) fail("FEATURES_OK refused");
}

/* Gives queue `index` QN descriptors on the given rings and makes it ready. */
static inline void virtio_queue(u32 index, struct desc *d, struct avail *a, struct used *u) {
    R(0x030) = index;
    if (R(0x034) < QN) fail("queue too small");
    R(0x038) = QN;
    R(0x080) = (u32)(u64)d; R(0x084) = 0;
    R(0x090) = (u32)(u64)a; R(0x094) = 0;
    R(0x0a0) = (u32)(u64)u; R(0x0a4) = 0;
    R(0x044) = 1;
}

/* Waits for the device to return a chain on `u` past `*last`; returns its used length. */
static inline u32 virtio_wait_used(struct used *u, u16 *last) {
    for (u64 spins = 0; spins < 200000000UL; spins++) {
        if (*(volatile u16 *)&u->idx != *last) {
            u32 len = u->ring[*last % QN].len;
            (*last)++;
            return len;
        }
        __asm__ volatile("pause");
    }
    fail("the device never answered");
    return 0;
}

/* Sets DRIVER_OK: the device serves from now on. */
static inline void virtio_driver_ok(void) {
    R(0x070) = 1 | 2 | 8 | 4;
    if (!(R(0x070) & 4)) fail("DRIVER_OK refused");
}
#endif

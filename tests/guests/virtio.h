/* The split-virtqueue layout and the virtio-mmio register window shared by the tiny virtio
 * drivers: one device, in ember's first virtio slot, with queues of QN descriptors. */
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
#endif

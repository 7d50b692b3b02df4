/* A minimal virtio-mmio (version 2) vsock driver, polling its used rings with interrupts off.
 * It accepts the host's connection to its port 52 (CID 3), checks the request's addresses,
 * answers it, receives "ping\n" and sends "pong\n"; then sends a packet for a connection
 * that does not exist and checks that the device answers it with a reset. Every verdict is a
 * line on COM1; the run ends with the exit port (0 when all is well). */
#include "virtio.h"

#define HDR 44
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_RW 5

struct hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct desc rx_descs[QN] __attribute__((aligned(16)));
static struct avail rx_avail __attribute__((aligned(2)));
static struct used rx_used __attribute__((aligned(4)));
static struct desc tx_descs[QN] __attribute__((aligned(16)));
static struct avail tx_avail __attribute__((aligned(2)));
static struct used tx_used __attribute__((aligned(4)));
static struct desc ev_descs[QN] __attribute__((aligned(16)));
static struct avail ev_avail __attribute__((aligned(2)));
static struct used ev_used __attribute__((aligned(4)));
static u8 rx_buf[HDR + 64], tx_buf[HDR + 64];
static u16 rx_last, tx_last;

static void offer(struct desc *d, struct avail *a, u32 queue, u8 *buf, u32 len, u16 flags) {
    d[0].addr = (u64)buf;
    d[0].len = len;
    d[0].flags = flags;
    d[0].next = 0;
    a->ring[a->idx % QN] = 0;
    fence();
    a->idx++;
    fence();
    R(0x050) = queue;
}

/* Waits for the next received packet; returns its header (the payload follows in rx_buf). */
static struct hdr *receive(void) {
    offer(rx_descs, &rx_avail, 0, rx_buf, sizeof rx_buf, F_WRITE);
    u32 len = virtio_wait_used(&rx_used, &rx_last);
    struct hdr *h = (struct hdr *)rx_buf;
    if (len != HDR + h->len) fail("received length does not match the header");
    return h;
}

static void send(u32 src_port, u32 dst_port, u16 op, const char *payload, u32 len, u32 fwd) {
    struct hdr *h = (struct hdr *)tx_buf;
    h->src_cid = 3; h->dst_cid = 2;
    h->src_port = src_port; h->dst_port = dst_port;
    h->len = len; h->type = 1; h->op = op; h->flags = 0;
    h->buf_alloc = 4096; h->fwd_cnt = fwd;
    for (u32 i = 0; i < len; i++) tx_buf[HDR + i] = payload[i];
    offer(tx_descs, &tx_avail, 1, tx_buf, HDR + len, 0);
    virtio_wait_used(&tx_used, &tx_last);
}

void main(const void *boot_params) {
    (void)boot_params;
    virtio_begin(19, "not a virtio-mmio v2 socket device");
    if (R(0x100) != 3 || R(0x104) != 0) fail("guest_cid is not 3");
    virtio_features(0);
    virtio_queue(0, rx_descs, &rx_avail, &rx_used);
    virtio_queue(1, tx_descs, &tx_avail, &tx_used);
    virtio_queue(2, ev_descs, &ev_avail, &ev_used);
    virtio_driver_ok();
    struct hdr *h = receive();
    if (h->op != OP_REQUEST || h->src_cid != 2 || h->dst_cid != 3 || h->dst_port != 52)
        fail("no connection request for port 52");
    u32 host_port = h->src_port;
    send(52, host_port, OP_RESPONSE, 0, 0, 0);
    puts("ACCEPTED\n");
    h = receive();
    if (h->op != OP_RW || h->len != 5 || rx_buf[HDR] != 'p' || rx_buf[HDR + 1] != 'i')
        fail("no ping");
    send(52, host_port, OP_RW, "pong\n", 5, 5);
    puts("PONG SENT\n");
    send(53, 9999, OP_RW, "x", 1, 0);
    h = receive();
    if (h->op != OP_RST || h->src_port != 9999 || h->dst_port != 53) fail("no reset");
    puts("RESET OK\n");
    exit_with(0);
}

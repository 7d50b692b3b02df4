/* A minimal virtio-mmio (version 2) network driver, polling its used rings with interrupts
 * off. It is 10.0.2.2 and talks to the host at 10.0.2.1 (the test's TAP):
 *   1. ARP request for 10.0.2.1; prints "ARP REPLY <mac>" when the host answers;
 *   2. UDP "ember-tiny-net" from port 7778 to 10.0.2.1:7777; prints "UDP <payload>" for the
 *      datagram the host sends back to port 7778.
 * With "hostile" as the first command-line word it then submits malformed transmit chains
 * and lying headers, and finally UDP "still-alive", which the host must still receive.
 * With "idle" it brings the device up (receive buffers posted), prints IDLE and halts for
 * good, so the host can check that an idle NIC costs no CPU.
 * With "flood" it negotiates mergeable receive buffers and, forever, publishes receive chains
 * of a zero-length buffer and of an indirect table (never offered) of 16384 zero-length
 * buffers, kicking after each ring's worth: a device that took such chains would grow the
 * host's memory on every kick. It prints FLOODING once.
 * With "stream" it transmits 64 broadcast frames of 1024 bytes each with the virtio-net header
 * (an experimental EtherType the host ignores), one at a time, prints "STREAMED 65536" and
 * exits: the host times it against the interface's transmit rate limiter.
 * Verdicts are lines on COM1; the run ends with the exit port. */
#include "virtio.h"

#define NRX 4
#define BUF 2048
#define HDR 12

struct vq {
    struct desc d[QN] __attribute__((aligned(16)));
    struct avail a __attribute__((aligned(2)));
    struct used u __attribute__((aligned(4)));
    u16 last_used;
};

static struct vq rxq, txq;
static u8 rxbuf[NRX][BUF];
static u8 frame[BUF];
static u8 mac[6], host_mac[6];
static const u8 guest_ip[4] = {10, 0, 2, 2}, host_ip[4] = {10, 0, 2, 1};



static void push(int index, struct vq *q, u16 head) {
    q->a.ring[q->a.idx % QN] = head;
    fence();
    q->a.idx++;
    fence();
    R(0x050) = (u32)index;
}

/* Returns the next used element of q, or -1 after a long wait. */
static int wait_used(struct vq *q, u32 *len) {
    for (u64 spins = 0; spins < 400000000UL; spins++) {
        if (*(volatile u16 *)&q->u.idx != q->last_used) {
            struct used_elem e = q->u.ring[q->last_used % QN];
            q->last_used++;
            *len = e.len;
            return (int)e.id;
        }
        __asm__ volatile("pause");
    }
    return -1;
}

static void post_rx(u16 i) {
    rxq.d[i].addr = (u64)rxbuf[i];
    rxq.d[i].len = BUF;
    rxq.d[i].flags = F_WRITE;
    push(0, &rxq, i);
}

static void setup(u32 features_lo) {
    u32 lo = virtio_begin(1, "not a virtio-mmio v2 network device");
    if (!(lo & (1u << 5))) fail("no VIRTIO_NET_F_MAC");
    /* MAC (and what the caller adds): no offloads. */
    virtio_features((1u << 5) | features_lo);
    for (int i = 0; i < 6; i++) mac[i] = *(volatile u8 *)(MMIO + 0x100 + i);
    virtio_queue(0, rxq.d, &rxq.a, &rxq.u);
    virtio_queue(1, txq.d, &txq.a, &txq.u);
    virtio_driver_ok();
    for (u16 i = 0; i < NRX; i++) post_rx(i);
}

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void copy(u8 *d, const void *s, u32 n) { const u8 *b = s; while (n--) *d++ = *b++; }
static int same(const u8 *a, const u8 *b, u32 n) { while (n--) if (*a++ != *b++) return 0; return 1; }

static void puthex(u8 v) {
    const char *x = "0123456789abcdef";
    putc(x[v >> 4]);
    putc(x[v & 15]);
}

/* Transmits one chain of up to 4 (address, length, flags) descriptors; waits for it back. */
static void send_chain(const u64 *addr, const u32 *len, const u16 *flags, int n) {
    for (int i = 0; i < n; i++) {
        txq.d[i].addr = addr[i];
        txq.d[i].len = len[i];
        txq.d[i].flags = (u16)(flags[i] | (i + 1 < n ? F_NEXT : 0));
        txq.d[i].next = (u16)(i + 1);
    }
    push(1, &txq, 0);
    u32 used_len = 0;
    if (wait_used(&txq, &used_len) != 0) fail("a transmit chain never came back");
}

static void send_frame(u32 len) {
    u64 a[1] = {(u64)frame};
    u32 l[1] = {HDR + len};
    u16 f[1] = {0};
    send_chain(a, l, f, 1);
}

/* Builds Ethernet + IPv4 + UDP with `payload` after the virtio-net header; returns the frame
 * length after the header. */
static u32 udp(const char *payload) {
    u32 n = 0;
    while (payload[n]) n++;
    for (int i = 0; i < HDR; i++) frame[i] = 0;
    u8 *e = frame + HDR, *ip = e + 14, *u = ip + 20;
    copy(e, host_mac, 6); copy(e + 6, mac, 6); put16(e + 12, 0x0800);
    ip[0] = 0x45; ip[1] = 0; put16(ip + 2, (u16)(20 + 8 + n)); put16(ip + 4, 1); put16(ip + 6, 0x4000);
    ip[8] = 64; ip[9] = 17; put16(ip + 10, 0); copy(ip + 12, guest_ip, 4); copy(ip + 16, host_ip, 4);
    u32 sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (u32)(ip[i] << 8 | ip[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    put16(ip + 10, (u16)~sum);
    put16(u, 7778); put16(u + 2, 7777); put16(u + 4, (u16)(8 + n)); put16(u + 6, 0); /* no checksum */
    copy(u + 8, payload, n);
    return 14 + 20 + 8 + n;
}

/* Waits for a received frame that `want` accepts, re-posting every buffer. */
static void receive(int (*want)(const u8 *eth, u32 len)) {
    for (;;) {
        u32 len = 0;
        int id = wait_used(&rxq, &len);
        if (id < 0 || id >= NRX) fail("nothing received");
        int ok = len > HDR + 14 && want(rxbuf[id] + HDR, len - HDR);
        post_rx((u16)id);
        if (ok) return;
    }
}

static int arp_reply(const u8 *e, u32 len) {
    if (len < 42 || e[12] != 0x08 || e[13] != 0x06 || e[21] != 2 || !same(e + 28, host_ip, 4)) return 0;
    copy(host_mac, e + 22, 6);
    puts("ARP REPLY ");
    for (int i = 0; i < 6; i++) { puthex(host_mac[i]); if (i < 5) putc(':'); }
    puts("\n");
    return 1;
}

static int udp_reply(const u8 *e, u32 len) {
    const u8 *ip = e + 14, *u = ip + 20;
    if (len < 42 || e[12] != 0x08 || e[13] != 0x00 || ip[9] != 17 || u[2] != 7778 >> 8 || u[3] != (7778 & 0xff)) return 0;
    u32 n = (u32)(u[4] << 8 | u[5]) - 8;
    if (n > len - 42) return 0;
    puts("UDP ");
    for (u32 i = 0; i < n; i++) putc((char)u[8 + i]);
    puts("\n");
    return 1;
}

static void hostile(void) {
    u32 n = udp("dropped");
    u64 a[2]; u32 l[2]; u16 f[2];
    /* Device-writable transmit buffer. */
    a[0] = (u64)frame; l[0] = HDR + n; f[0] = F_WRITE; send_chain(a, l, f, 1);
    /* Outside guest memory. */
    a[0] = 0x7fff00000000UL; send_chain(a, l, (f[0] = 0, f), 1);
    /* Shorter than the header, and shorter than an Ethernet header. */
    a[0] = (u64)frame; l[0] = 5; send_chain(a, l, f, 1);
    l[0] = HDR + 6; send_chain(a, l, f, 1);
    /* 70000 bytes, in two descriptors over the same buffer. */
    a[1] = (u64)frame; l[0] = 35000; l[1] = 35000; f[1] = 0; send_chain(a, l, f, 2);
    /* A header asking for a checksum that was not negotiated, then segmentation. */
    frame[0] = 1; frame[6] = 0xff; frame[7] = 0xff; l[0] = HDR + n; send_chain(a, l, f, 1);
    frame[0] = 0; frame[6] = 0; frame[7] = 0; frame[1] = 1; frame[4] = 0xff; send_chain(a, l, f, 1);
    puts("HOSTILE SENT 7\n");
    send_frame(udp("still-alive"));
    puts("STILL SENDING\n");
}

#define F_INDIRECT 4
#define ITAB 16384
static struct desc itab[ITAB] __attribute__((aligned(16)));

static void flood(void) {
    for (u32 i = 0; i < ITAB; i++) {
        itab[i].addr = (u64)rxbuf[0];
        itab[i].len = 0;
        itab[i].flags = (u16)(F_WRITE | (i + 1 < ITAB ? F_NEXT : 0));
        itab[i].next = (u16)(i + 1);
    }
    puts("FLOODING\n");
    for (;;) {
        for (u16 i = 0; i < QN; i++) {
            rxq.d[i].next = 0;
            if (i % 2) {
                rxq.d[i].addr = (u64)itab;
                rxq.d[i].len = sizeof itab;
                rxq.d[i].flags = F_INDIRECT;
            } else {
                rxq.d[i].addr = (u64)rxbuf[0];
                rxq.d[i].len = 0;
                rxq.d[i].flags = F_WRITE;
            }
            rxq.a.ring[rxq.a.idx % QN] = i;
            fence();
            rxq.a.idx++;
        }
        fence();
        R(0x050) = 0;
    }
}

#define STREAM_FRAMES 64
#define STREAM_BYTES 1024 /* charged to the limiter: the header and the frame */

static void stream(void) {
    for (int i = 0; i < HDR; i++) frame[i] = 0;
    u8 *e = frame + HDR;
    for (int i = 0; i < 6; i++) e[i] = 0xff;
    copy(e + 6, mac, 6); put16(e + 12, 0x88b5);
    for (u32 i = 14; i < STREAM_BYTES - HDR; i++) e[i] = (u8)i;
    for (int i = 0; i < STREAM_FRAMES; i++) send_frame(STREAM_BYTES - HDR);
    puts("STREAMED 65536\n");
    exit_with(0);
}

void main(const void *boot_params) {
    const char *cmd = cmdline(boot_params);
    setup(cmd[0] == 'f' ? 1u << 15 : 0);
    if (cmd[0] == 'f') flood();
    if (cmd[0] == 's') stream();
    if (cmd[0] == 'i') {
        puts("IDLE\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    /* ARP who-has 10.0.2.1 tell 10.0.2.2. */
    for (int i = 0; i < HDR; i++) frame[i] = 0;
    u8 *e = frame + HDR, *arp = e + 14;
    for (int i = 0; i < 6; i++) e[i] = 0xff;
    copy(e + 6, mac, 6); put16(e + 12, 0x0806);
    put16(arp, 1); put16(arp + 2, 0x0800); arp[4] = 6; arp[5] = 4; put16(arp + 6, 1);
    copy(arp + 8, mac, 6); copy(arp + 14, guest_ip, 4);
    for (int i = 0; i < 6; i++) arp[18 + i] = 0;
    copy(arp + 24, host_ip, 4);
    send_frame(14 + 28);
    receive(arp_reply);
    send_frame(udp("ember-tiny-net"));
    receive(udp_reply);
    if (cmd[0] == 'h') hostile();
    exit_with(0);
}

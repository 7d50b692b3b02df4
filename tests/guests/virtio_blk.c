/* A minimal virtio-mmio (version 2) block driver, polling its used ring with interrupts off.
 * The first word of the kernel command line picks the test:
 *   rw       write a pattern, read it back, GET_ID, discard, write-zeroes, then FLUSH and
 *            print FLUSHED and wait (the host kills ember and checks the image);
 *   ro       on a read-only disk: reads work, a write gets VIRTIO_BLK_S_IOERR;
 *   hostile  submit malformed chains, then check the console still works;
 *   resize   print the capacity, wait for a configuration change (the host swapped the
 *            backing file), print the new capacity and read its first sector; then wait
 *            for one more change and print the capacity again (the host can inspect the
 *            VM before it ends);
 *   stream   read the first 256 KiB in 4 KiB requests and print READ (the host times it).
 * Every verdict is a line on COM1; the run ends with the exit port. */
#include "virtio.h"

struct req { u32 type; u32 reserved; u64 sector; };

static struct desc descs[QN] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static struct req hdr;
static volatile u8 status;
static u8 buf[4096] __attribute__((aligned(512)));
static u8 back[4096] __attribute__((aligned(512)));
static u16 last_used;

static void setup(void) {
    u32 lo = virtio_begin(2, "not a virtio-mmio v2 block device");
    /* FLUSH, RO, DISCARD, WRITE_ZEROES as offered; no event index. */
    virtio_features(lo & ((1u << 9) | (1u << 5) | (1u << 13) | (1u << 14)));
    virtio_queue(0, descs, &avail, &used);
    virtio_driver_ok();
}

/* Publishes the chain starting at descriptor 0 and notifies. */
static void kick(void) {
    avail.ring[avail.idx % QN] = 0;
    fence();
    avail.idx++;
    fence();
    R(0x050) = 0;
}

/* Waits for the device to return the chain; returns its used length. */
static u32 wait_used(void) {
    return virtio_wait_used(&used, &last_used);
}

static void set(int i, u64 addr, u32 len, u16 flags) {
    descs[i].addr = addr;
    descs[i].len = len;
    descs[i].flags = flags;
    descs[i].next = (u16)(i + 1);
}

/* A well-formed request: header, optional data, status. Returns the status byte. */
static u8 request(u32 type, u64 sector, void *data, u32 len, int device_writes) {
    hdr.type = type;
    hdr.sector = sector;
    status = 0xff;
    int i = 0;
    set(i++, (u64)&hdr, sizeof hdr, F_NEXT);
    if (len) set(i++, (u64)data, len, F_NEXT | (device_writes ? F_WRITE : 0));
    set(i, (u64)&status, 1, F_WRITE);
    kick();
    wait_used();
    return status;
}

static void expect(u8 got, u8 want, const char *what) {
    if (got != want) fail(what);
}

static void rw(void) {
    for (u32 i = 0; i < sizeof buf; i++) buf[i] = (u8)(i * 7 + 3);
    expect(request(1, 10, buf, sizeof buf, 0), 0, "write");
    expect(request(0, 10, back, sizeof back, 1), 0, "read");
    for (u32 i = 0; i < sizeof buf; i++) if (back[i] != buf[i]) fail("read back differs");
    puts("RW OK\n");

    char id[21] = {0};
    expect(request(8, 0, id, 20, 1), 0, "get id");
    puts("ID ");
    puts(id);
    puts("\n");

    /* Discard 512 KiB at 1 MiB into the disk, and zero 8 sectors after it. */
    struct { u64 sector; u32 count; u32 flags; } range = { 2048, 1024, 0 };
    expect(request(11, 0, &range, sizeof range, 0), 0, "discard");
    expect(request(0, 2048, back, 512, 1), 0, "read discarded");
    for (u32 i = 0; i < 512; i++) if (back[i]) fail("discarded sector not zero");
    range.sector = 3072; range.count = 8;
    expect(request(13, 0, &range, sizeof range, 0), 0, "write zeroes");
    puts("DISCARD OK\n");

    expect(request(4, 0, 0, 0, 0), 0, "flush");
    puts("FLUSHED\n");
    for (;;) __asm__ volatile("pause");
}

static void ro(void) {
    expect(request(0, 0, back, 512, 1), 0, "read");
    for (u32 i = 0; i < 512; i++) buf[i] = 0xee;
    expect(request(1, 0, buf, 512, 0), 1, "write to a read-only disk was not refused");
    puts("RO WRITE REFUSED\n");
    exit_with(0);
}

/* Submits a raw chain of n descriptors and reports status and used length. */
static void hostile_case(const char *name, int n) {
    status = 0xff;
    kick();
    u32 len = wait_used();
    puts(name);
    puts(" status=");
    putdec(status);
    puts(" len=");
    putdec(len);
    puts("\n");
    (void)n;
}

static void hostile(void) {
    hdr.type = 0; hdr.sector = 0;
    /* Data outside guest memory. */
    set(0, (u64)&hdr, 16, F_NEXT); set(1, 0x7fff00000000UL, 512, F_NEXT | F_WRITE);
    set(2, (u64)&status, 1, F_WRITE);
    hostile_case("outside-memory", 3);
    /* A descriptor that chains to itself. */
    set(0, (u64)&hdr, 16, F_NEXT); descs[0].next = 0;
    hostile_case("loop", 1);
    /* The header in a device-writable descriptor. */
    set(0, (u64)&hdr, 16, F_NEXT | F_WRITE); set(1, (u64)&status, 1, F_WRITE);
    hostile_case("writable-header", 2);
    /* A read of 100 bytes. */
    set(0, (u64)&hdr, 16, F_NEXT); set(1, (u64)back, 100, F_NEXT | F_WRITE);
    set(2, (u64)&status, 1, F_WRITE);
    hostile_case("unaligned-length", 3);
    /* A write past the end of the disk. */
    hdr.type = 1; hdr.sector = 1UL << 40;
    set(0, (u64)&hdr, 16, F_NEXT); set(1, (u64)buf, 512, F_NEXT);
    set(2, (u64)&status, 1, F_WRITE);
    hostile_case("past-the-end", 3);
    /* A 4 GiB data length. */
    hdr.type = 0; hdr.sector = 0;
    set(0, (u64)&hdr, 16, F_NEXT); set(1, (u64)buf, 0xffffffffu, F_NEXT | F_WRITE);
    set(2, (u64)&status, 1, F_WRITE);
    hostile_case("huge-length", 3);
    /* No status byte at all. */
    set(0, (u64)&hdr, 16, F_NEXT); set(1, (u64)buf, 512, 0);
    hostile_case("no-status", 2);
    /* A good request still works. */
    expect(request(0, 0, back, 512, 1), 0, "read after malformed chains");
    puts("STILL SERVING\n");
    /* Finally, an available index far ahead of the device: the queue cannot be trusted, and
     * the device says so with DEVICE_NEEDS_RESET. */
    avail.idx += 1000;
    R(0x050) = 0;
    u64 spins = 0;
    while (!(R(0x070) & 64) && spins < 200000000UL) spins++;
    if (!(R(0x070) & 64)) fail("no DEVICE_NEEDS_RESET after a corrupt ring");
    puts("NEEDS RESET\n");
    puts("HOSTILE DONE\n");
    exit_with(0);
}

/* Prints the capacity; returns the configuration generation it belongs to. */
static u32 print_capacity(void) {
    u32 generation = R(0x0fc);
    puts("CAPACITY ");
    putdec(R(0x100));
    puts("\n");
    return generation;
}

static void wait_for_change(u32 generation) {
    while (R(0x0fc) == generation) __asm__ volatile("pause");
}

static void resize(void) {
    wait_for_change(print_capacity());
    u32 generation = print_capacity();
    expect(request(0, 0, back, 512, 1), 0, "read after the swap");
    puts("FIRST BYTE ");
    putdec(back[0]);
    puts("\n");
    wait_for_change(generation);
    print_capacity();
    exit_with(0);
}

static void stream(void) {
    for (u64 sector = 0; sector < 512; sector += 8)
        expect(request(0, sector, back, sizeof back, 1), 0, "read");
    puts("READ 262144\n");
    exit_with(0);
}

void main(const void *boot_params) {
    const char *mode = cmdline(boot_params);
    setup();
    if (mode[0] == 'r' && mode[1] == 'w') rw();
    else if (mode[0] == 'r' && mode[1] == 'o') ro();
    else if (mode[0] == 'h') hostile();
    else if (mode[0] == 'r' && mode[1] == 'e') resize();
    else if (mode[0] == 's') stream();
    fail("unknown mode");
}

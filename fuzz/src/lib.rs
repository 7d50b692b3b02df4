//! What ember's fuzz targets share: a reader that turns the fuzzer's bytes into choices, and a
//! guest (mock memory plus driver-side virtqueues from `devices::virtio::testing`) that checks
//! what a device did to it: no byte changed outside the device-writable buffers it was given
//! and the used rings, and no used length larger than the writable room of its chain.
//!
//! Input formats are plain byte layouts rather than `arbitrary` derives so that the committed
//! seeds can be written by hand (fuzz/seeds/README.md describes each).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use devices::virtio::VirtioInterrupt;
use devices::virtio::testing::Driver;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory size: small, so that comparing it before and after costs little.
pub const MEM_SIZE: usize = 0x2_0000;
/// Where the queues' rings start, one 4 KiB page per queue.
const RINGS: u64 = 0;
/// Where buffers and their contents live: descriptor offsets count from here.
pub const DATA: u64 = 0x4000;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 16;
/// Most descriptors a chain takes from the input.
const MAX_CHAIN: usize = 8;

/// Takes values from the front of the fuzzer's input; past its end everything reads as zero.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was taken.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes, or as many as are left.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A length-prefixed (u16) byte string.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }
}

/// A fresh eventfd (non-blocking, as the VMM makes them).
pub fn event() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// An interrupt that nobody waits on.
pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(event()))
}

/// A per-process scratch directory for files the targets hand to ember by path, under
/// `$EMBER_FUZZ_SCRATCH` (resources/fuzz.sh makes one in /dev/shm and removes it), else the
/// temporary directory. In memory, since disk syncs would slow fuzzing a hundredfold.
pub fn scratch(name: &str) -> PathBuf {
    let base =
        std::env::var_os("EMBER_FUZZ_SCRATCH").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("ember-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir.join(name)
}

/// Mock guest memory with driver-side queues, watching what the device writes.
pub struct Guest {
    /// The memory the device is given.
    pub mem: GuestMemoryMmap,
    drivers: Vec<Driver>,
    /// Per queue and head: the writable room and length of each chain published with that
    /// head and not yet returned.
    room: Vec<Vec<Vec<(u64, u16)>>>,
    /// Per queue: descriptors published and not yet returned, and whether a chain overwrote
    /// descriptors still in flight (as a hostile driver may): from then on a used element may
    /// describe a chain that was never published whole, and only the writes are checked.
    in_flight: Vec<u16>,
    reused: Vec<bool>,
    /// Where the device may write: device-writable buffers and the used rings.
    writable: Vec<Range<u64>>,
    /// Guest memory as of the last look, and a buffer for the next (kept, not reallocated).
    before: Vec<u8>,
    now: Vec<u8>,
}

impl Guest {
    /// Memory with `queues` queues, whose data area holds `fill` (repeated to fill it).
    pub fn new(queues: usize, fill: &[u8]) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        if !fill.is_empty() {
            let area = (MEM_SIZE as u64 - DATA) as usize;
            let bytes: Vec<u8> = fill.iter().copied().cycle().take(area).collect();
            mem.write_slice(&bytes, GuestAddress(DATA)).expect("fill");
        }
        let drivers: Vec<Driver> = (0..queues)
            .map(|q| Driver::new(RINGS + 0x1000 * q as u64, QUEUE_SIZE))
            .collect();
        let writable = drivers
            .iter()
            .map(|d| {
                let (_, _, used) = d.rings();
                // Flags, index, the ring, and avail_event after it.
                used..used + 4 + 8 * u64::from(QUEUE_SIZE) + 2
            })
            .collect();
        let mut guest = Self {
            mem,
            room: vec![vec![Vec::new(); usize::from(QUEUE_SIZE)]; queues],
            in_flight: vec![0; queues],
            reused: vec![false; queues],
            drivers,
            writable,
            before: vec![0; MEM_SIZE],
            now: vec![0; MEM_SIZE],
        };
        guest.snapshot();
        guest
    }

    /// The device-side queues, ready, for `activate`.
    pub fn queues(&self) -> Vec<Queue> {
        self.drivers
            .iter()
            .map(|d| d.queue().expect("queue"))
            .collect()
    }

    /// Publishes on `queue` a chain read from `r`: a count (1..=8) and per descriptor an
    /// offset into the data area (u16), a length (u16) and a flags byte (bit 0: device-
    /// writable). Buffers may run past the end of memory, as a hostile driver's may.
    pub fn push_chain(&mut self, queue: usize, r: &mut Reader) {
        let count = usize::from(r.u8()) % MAX_CHAIN + 1;
        let bufs: Vec<(u64, u32, bool)> = (0..count)
            .map(|_| {
                let at = DATA + u64::from(r.u16());
                (at, u32::from(r.u16()), r.u8() & 1 == 1)
            })
            .collect();
        self.push(queue, &bufs);
    }

    /// Publishes a chain of (address, length, device-writable) buffers on `queue`, after
    /// checking what the device did since the last look.
    pub fn push(&mut self, queue: usize, bufs: &[(u64, u32, bool)]) {
        if queue >= self.drivers.len() {
            return;
        }
        // Before this chain's room replaces that of an earlier chain with the same head.
        self.check();
        let driver = &mut self.drivers[queue];
        let head = usize::from(driver.next_head());
        let mut room = 0;
        for &(at, len, write) in bufs {
            if write {
                room += u64::from(len);
                self.writable.push(at..at + u64::from(len));
            }
        }
        let len = bufs.len() as u16;
        self.room[queue][head].push((room, len));
        self.in_flight[queue] += len;
        self.reused[queue] |= self.in_flight[queue] > QUEUE_SIZE;
        driver.add(&self.mem, bufs).expect("publish a chain");
        self.snapshot();
    }

    fn snapshot(&mut self) {
        self.mem
            .read_slice(&mut self.before, GuestAddress(0))
            .expect("snapshot");
    }

    /// Panics if a byte changed outside what the device may write.
    fn check_writes(&mut self) {
        self.mem
            .read_slice(&mut self.now, GuestAddress(0))
            .expect("read memory");
        // Compare in blocks (memcmp) and look at bytes only where a block differs.
        const BLOCK: usize = 256;
        for (i, (a, b)) in self
            .before
            .chunks(BLOCK)
            .zip(self.now.chunks(BLOCK))
            .enumerate()
        {
            if a == b {
                continue;
            }
            for (j, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
                let at = (i * BLOCK + j) as u64;
                assert!(
                    self.writable.iter().any(|w| w.contains(&at)),
                    "the device wrote guest memory at {at:#x}, outside every device-writable buffer"
                );
            }
        }
        std::mem::swap(&mut self.before, &mut self.now);
    }

    /// Checks the device's writes and the used elements returned since the last call: every
    /// head is one the driver published, with a length no larger than its writable room.
    pub fn check(&mut self) {
        self.check_writes();
        for (q, driver) in self.drivers.iter_mut().enumerate() {
            for (head, len) in driver.take_used(&self.mem).expect("used ring") {
                let rooms = self.room[q]
                    .get_mut(usize::from(head))
                    .unwrap_or_else(|| panic!("queue {q}: used head {head} was never published"));
                // The smallest outstanding chain with that head that holds `len` bytes.
                let fits = rooms
                    .iter()
                    .enumerate()
                    .filter(|(_, (room, _))| u64::from(len) <= *room)
                    .min_by_key(|(_, (room, _))| *room)
                    .map(|(i, _)| i);
                match fits {
                    Some(i) => {
                        let (_, descs) = rooms.swap_remove(i);
                        self.in_flight[q] = self.in_flight[q].saturating_sub(descs);
                    }
                    None if self.reused[q] => rooms.clear(),
                    None => panic!(
                        "queue {q}: used length {len} for head {head} exceeds the writable room \
                         of every chain published with that head ({rooms:?})"
                    ),
                }
            }
        }
    }
}

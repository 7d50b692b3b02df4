//! The virtio-blk device: one request queue, served by whichever thread holds its
//! [`QueueServer`] (the VMM gives each disk an I/O worker thread, which waits on the queue's
//! notification as the server, an [`IoHandler`], asks).
//!
//! Each call serves at most a budget of requests and [`MAX_BYTES_PER_CALL`] bytes of disk work
//! (data moved, ranges zeroed or discarded, a flush counting as a whole batch); if more are
//! waiting the caller is told, so it can yield to other events and come back, and nothing that
//! waits for the serving lock (activation, reset) waits for more than one bounded batch. A
//! malformed chain is answered with VIRTIO_BLK_S_IOERR when it has a status byte, and returned
//! with nothing written when it has none; either way it is logged and counted, and the device
//! keeps serving. If the guest corrupts the rings themselves the queue cannot be trusted any
//! more: the device stops and waits for a reset. A well-formed request the host fails (EIO,
//! ENOSPC from the image) is answered with VIRTIO_BLK_S_IOERR too, and logged naming the
//! drive, the operation and the host's error; one the device refuses (a write to a read-only
//! disk, a range out of bounds) is answered and counted, not logged.
//!
//! With a rate limiter ([`Block::with_rate_limiter`]), each request costs one op and, if it
//! reads or writes, its data bytes (Firecracker's charge); a request the limiter refuses stays
//! in the ring and the worker waits for the limiter's timer, then serves it.
//!
//! The VMM's main thread never takes the serving lock: counters are published to their own
//! slot after each batch, and a new backing file is handed over through a slot the serving
//! thread takes it from.
//!
//! Engines: with the Sync engine each request is executed before the next is taken. With the
//! Async engine ([`Uring`]) reads, writes and flushes are submitted and returned to the driver
//! as the host completes them, up to the queue's size in flight; the budget then bounds what
//! one call submits. A new backing file is installed only once nothing is in flight on the old
//! one (no new request is taken meanwhile), and a reset or the device's end waits until the
//! kernel is done with every buffer in flight, answering none of them.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::request::{self, S_OK};
use super::uring::{Started, Uring};
use super::{DEVICE_TYPE_BLOCK, ID_LEN, QUEUE_SIZE, SECTOR_SIZE, features};
use crate::rate_limiter::RateLimiter;
use crate::sync::{Published, lock};
use crate::virtio::worker::{IoHandler, Ready, Watch};
use crate::virtio::{
    ActivateError, QueueError, Step, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioInterrupt, serve_chains, signal_used,
};

/// The one request queue's index.
const REQUEST_QUEUE: u16 = 0;
/// Size of `struct virtio_blk_config` as far as ember fills it.
const CONFIG_LEN: usize = 60;
/// Discard granularity offered: 4 KiB.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

/// Requests a block device serves per round of its I/O worker. The budget bounds how long
/// the serving lock is held (activation and reset wait for it), not how long the worker
/// works: it comes back at once, unless the VM was paused meanwhile.
pub const BLOCK_BUDGET: usize = 256;

/// Disk work one `process_queue` call does at most before yielding (a few ms on a slow disk).
pub const MAX_BYTES_PER_CALL: u64 = 8 << 20;

/// Counters a block device keeps, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed with VIRTIO_BLK_S_OK.
    pub ok: u64,
    /// Requests refused or failed.
    pub errors: u64,
    /// Reads completed.
    pub read_count: u64,
    /// Writes completed.
    pub write_count: u64,
    /// Flushes completed.
    pub flush_count: u64,
    /// Flushes that reached the host's disk (`fdatasync`; none with cache type "Unsafe").
    pub sync_count: u64,
    /// Bytes read from the disk.
    pub read_bytes: u64,
    /// Bytes written to the disk.
    pub write_bytes: u64,
}

impl BlockStats {
    /// The counters by their metric names (Firecracker's, and ember's `sync_count`), in the
    /// order metrics report them.
    pub fn counters(&self) -> [(&'static str, u64); 8] {
        [
            ("read_count", self.read_count),
            ("write_count", self.write_count),
            ("flush_count", self.flush_count),
            ("sync_count", self.sync_count),
            ("read_bytes", self.read_bytes),
            ("write_bytes", self.write_bytes),
            ("ok_count", self.ok),
            ("error_count", self.errors),
        ]
    }
}

/// A virtio-blk device, as the transport sees it: identity, features and configuration. The
/// serving side (backend, queue, counters) has its own lock, so that register accesses from
/// vCPUs never wait for disk I/O; only activation and reset take it.
pub struct Block {
    features: u64,
    config: [u8; CONFIG_LEN],
    serving: Arc<Mutex<Serving>>,
    shared: Arc<Shared>,
}

/// What the serving side and the rest of the VMM exchange without the serving lock; each
/// lock here is held only to copy a value in or out.
struct Shared {
    /// The counters as of the end of the last batch.
    stats: Published<BlockStats>,
    /// A backing file waiting to replace the current one.
    swap: Mutex<Option<Disk>>,
    /// Wakes the serving thread (it then calls `process_queue`).
    wake: EventFd,
    /// Written when the Async engine's requests complete (then too).
    completions: Option<Arc<EventFd>>,
}

/// What serving the queue needs.
struct Serving {
    /// The Async engine; None for Sync. Dropped before `disk`: it waits for what is in
    /// flight, and the disk is synced as it closes.
    ring: Option<Uring>,
    disk: Disk,
    /// The drive's id, for logs.
    name: String,
    id: [u8; ID_LEN],
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue: Option<Queue>,
    stats: BlockStats,
    shared: Arc<Shared>,
    limiter: Option<Arc<RateLimiter>>,
}

/// A handle for the thread that serves a block device's queue.
#[derive(Clone)]
pub struct QueueServer {
    serving: Arc<Mutex<Serving>>,
    shared: Arc<Shared>,
    limiter: Option<Arc<RateLimiter>>,
}

impl QueueServer {
    /// Serves up to `budget` requests (and [`MAX_BYTES_PER_CALL`] bytes of disk work); returns
    /// true if more are waiting. Installs a backing file handed over by
    /// [`Block::swap_disk`] first. Does nothing else before the driver activates the device.
    pub fn process_queue(&self, budget: usize) -> bool {
        lock(&self.serving).process_queue(budget)
    }

    /// The counters, as of the end of the last batch; never waits for disk I/O.
    pub fn stats(&self) -> BlockStats {
        self.shared.stats.get()
    }
}

/// The worker waits for the guest's notifications, which reach the device as writes to its
/// `wake` event (the queue's ioeventfd), and for the rate limiter's timer, and serves the
/// queue in batches.
impl IoHandler for QueueServer {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        watches.clear();
        watches.push(Watch::readable(self.shared.wake.as_raw_fd()));
        if let Some(completions) = &self.shared.completions {
            watches.push(Watch::readable(completions.as_raw_fd()));
        }
        if let Some(limiter) = &self.limiter {
            watches.push(Watch::readable(limiter.timer_fd()));
        }
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        if ready.first().is_some_and(Ready::any) {
            let _ = self.shared.wake.read();
        }
        // The watches after the wake event, in `interest`'s order.
        let mut rest = ready.iter().skip(1);
        if let Some(completions) = &self.shared.completions {
            if rest.next().is_some_and(Ready::any) {
                let _ = completions.read();
            }
        }
        if let Some(limiter) = &self.limiter {
            if rest.next().is_some_and(Ready::any) {
                limiter.timer_fired();
            }
        }
        self.process_queue(BLOCK_BUDGET)
    }

    fn resumed(&mut self) -> bool {
        // A pause stops the worker between batches, with the rest still in the ring.
        true
    }
}

impl Block {
    /// A device serving `disk` with the Sync engine, or the Async one if given a `ring`,
    /// with `id` (truncated to 20 bytes) as its serial number. Writing `wake` must make the
    /// serving thread call [`QueueServer::process_queue`] (the VMM passes the queue's
    /// notification eventfd), and so must the ring's completions.
    pub fn new(
        disk: Disk,
        ring: Option<Uring>,
        id: &str,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        wake: EventFd,
    ) -> Self {
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << features::SEG_MAX)
            | (1 << features::BLK_SIZE);
        if disk.read_only() {
            features |= 1 << features::RO;
        } else {
            features |= 1 << features::WRITE_ZEROES;
            if disk.can_punch_holes() {
                features |= 1 << features::DISCARD;
            }
        }
        if disk.writeback() {
            features |= 1 << features::FLUSH;
        }
        let config = Self::config_space(&disk);
        let shared = Arc::new(Shared {
            stats: Published::default(),
            swap: Mutex::new(None),
            wake,
            completions: ring.as_ref().map(Uring::completions),
        });
        let serving = Serving {
            ring,
            disk,
            name: id.to_owned(),
            id: serial,
            mem,
            interrupt,
            queue: None,
            stats: BlockStats::default(),
            shared: shared.clone(),
            limiter: None,
        };
        Self {
            features,
            config,
            serving: Arc::new(Mutex::new(serving)),
            shared,
        }
    }

    fn config_space(disk: &Disk) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(disk.size() / SECTOR_SIZE).to_le_bytes()); // capacity, in sectors
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max: header and status aside
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(36, &request::MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &request::MAX_DISCARD_RANGES.to_le_bytes());
        put(44, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
        put(48, &request::MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &request::MAX_WRITE_ZEROES_RANGES.to_le_bytes());
        put(56, &[u8::from(disk.can_punch_holes())]); // write_zeroes_may_unmap
        c
    }

    /// Serves `disk` from now on: a new backing file for a running VM, with its capacity in
    /// the configuration space. The serving thread installs it before its next request and
    /// syncs and closes the old file (requests in progress finish on it); this call never
    /// waits for disk I/O. The caller tells the driver (a configuration-change interrupt).
    /// Features are fixed once negotiated, so the new disk must be opened the same way
    /// (read-only, writeback) as the old one.
    pub fn swap_disk(&mut self, disk: Disk) {
        self.config = Self::config_space(&disk);
        *lock(&self.shared.swap) = Some(disk);
        if let Err(err) = self.shared.wake.write(1) {
            warn!("virtio-blk: cannot wake the I/O thread for the new disk: {err}");
        }
    }

    /// Holds the guest's requests to `limiter` (one op per request, and its data bytes if it
    /// reads or writes). Set before [`Block::queue_server`] is called.
    pub fn with_rate_limiter(self, limiter: Arc<RateLimiter>) -> Self {
        lock(&self.serving).limiter = Some(limiter);
        self
    }

    /// The counters (see [`QueueServer::stats`]).
    pub fn stats(&self) -> BlockStats {
        self.shared.stats.get()
    }

    /// The handle the serving thread uses.
    pub fn queue_server(&self) -> QueueServer {
        QueueServer {
            serving: self.serving.clone(),
            shared: self.shared.clone(),
            limiter: lock(&self.serving).limiter.clone(),
        }
    }

    /// Serves the queue on the calling thread (see [`QueueServer::process_queue`]).
    pub fn process_queue(&self, budget: usize) -> bool {
        lock(&self.serving).process_queue(budget)
    }

    /// Waits until the Async engine has nothing in flight and returns what it finished to the
    /// driver, taking no new request; with the Sync engine nothing is ever in flight. Tests and
    /// benchmarks drive a device without an I/O worker this way.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn settle(&self) -> std::io::Result<()> {
        let mut serving = lock(&self.serving);
        let mut reaped = 0;
        while serving.ring.as_ref().is_some_and(|r| r.in_flight() > 0) {
            if let Some(ring) = serving.ring.as_mut() {
                ring.wait()?;
            }
            reaped += serving.reap();
        }
        let serving = &mut *serving;
        if let Some(queue) = serving.queue.as_mut() {
            signal_used(
                queue,
                REQUEST_QUEUE,
                &serving.mem,
                &serving.interrupt,
                reaped,
            );
        }
        serving.shared.stats.publish(serving.stats);
        Ok(())
    }

    /// Requests the Async engine has in flight.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn in_flight(&self) -> usize {
        lock(&self.serving)
            .ring
            .as_ref()
            .map_or(0, Uring::in_flight)
    }
}

impl Serving {
    /// Installs a backing file handed over by [`Block::swap_disk`], once no request is in
    /// flight on the old one; returns false while one is (then no new request is taken, and
    /// the completions wake the thread again). The old file is closed here, on the serving
    /// thread, which syncs it when flushes reach the disk (see `Disk`'s `Drop`), so no other
    /// thread waits for that.
    fn take_swap(&mut self) -> bool {
        let mut swap = lock(&self.shared.swap);
        if swap.is_none() {
            return true;
        }
        if self.ring.as_ref().is_some_and(|r| r.in_flight() > 0) {
            return false;
        }
        let Some(disk) = swap.take() else {
            return true;
        };
        drop(swap);
        drop(std::mem::replace(&mut self.disk, disk));
        true
    }

    fn process_queue(&mut self, budget: usize) -> bool {
        let reaped = self.reap();
        let swapped = self.take_swap();
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        if !swapped {
            signal_used(queue, REQUEST_QUEUE, &self.mem, &self.interrupt, reaped);
            self.shared.stats.publish(self.stats);
            return false;
        }
        let (mem, disk, id, stats) = (&self.mem, &self.disk, &self.id, &mut self.stats);
        let (name, ring, limiter) = (&self.name, &mut self.ring, &self.limiter);
        let (mut work, mut throttled) = (0, false);
        let served = serve_chains(queue, mem, budget, |chain| {
            if ring.as_ref().is_some_and(Uring::busy) {
                return Step::Retry;
            }
            let head = chain.head();
            let (req, done) = match request::parse(mem, chain, disk.size()) {
                Ok(req)
                    if limiter
                        .as_ref()
                        .is_some_and(|l| !l.consume_op(charge(&req))) =>
                {
                    // Left in the ring; the limiter's timer resumes the queue.
                    throttled = true;
                    return Step::Retry;
                }
                Ok(req) => match ring.as_mut().filter(|_| req.is_disk_io()) {
                    Some(ring) => {
                        work += req.disk_work();
                        match ring.start(head, req, mem, disk) {
                            Started::InFlight if work >= MAX_BYTES_PER_CALL => {
                                return Step::KeptLast;
                            }
                            Started::InFlight => return Step::Kept,
                            Started::Done(req, done) => (req, done),
                        }
                    }
                    None => {
                        let done = req.execute(mem, disk, id);
                        work += done.work;
                        (req, done)
                    }
                },
                Err((status, err)) => {
                    warn!("virtio-blk: bad request: {err}");
                    stats.errors += 1;
                    return Step::Used(status.map_or(0, |addr| request::fail(mem, addr)));
                }
            };
            record(name, stats, &req, &done);
            if work >= MAX_BYTES_PER_CALL {
                Step::UsedLast(done.used)
            } else {
                Step::Used(done.used)
            }
        });
        if let Some(ring) = self.ring.as_mut() {
            if let Err(err) = ring.submit() {
                warn!(
                    "virtio-blk '{}': cannot submit to the io_uring: {err}",
                    self.name
                );
            }
        }
        // What the kernel finished while submitting (reads from the page cache, mostly) is
        // answered now rather than after another round through poll.
        let reaped = reaped + self.reap();
        let busy = self.ring.as_ref().is_some_and(Uring::busy);
        self.shared.stats.publish(self.stats);
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        match served {
            Ok(served) => {
                signal_used(
                    queue,
                    REQUEST_QUEUE,
                    &self.mem,
                    &self.interrupt,
                    reaped + served.count,
                );
                // A busy ring wakes the thread when requests complete, a throttled queue when
                // its limiter's timer fires.
                served.more && !busy && !throttled
            }
            Err(err) => {
                warn!("virtio-blk: {err}");
                self.queue = None;
                self.interrupt.needs_reset();
                false
            }
        }
    }

    /// Returns the requests the Async engine finished to the driver; returns how many.
    fn reap(&mut self) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let (mem, name, stats, queue) = (&self.mem, &self.name, &mut self.stats, &mut self.queue);
        let (mut count, mut broken) = (0, None);
        ring.reap(mem, &self.disk, |head, req, done| {
            record(name, stats, &req, &done);
            if let Some(queue) = queue.as_mut() {
                match queue.add_used(mem, head, done.used) {
                    Ok(()) => count += 1,
                    Err(err) => broken = Some(err),
                }
            }
        });
        if let Some(err) = broken {
            warn!("virtio-blk: {}", QueueError::Unusable(err));
            self.queue = None;
            self.interrupt.needs_reset();
        }
        count
    }
}

/// Logs a request the host failed and counts it.
fn record(name: &str, stats: &mut BlockStats, req: &request::Request, done: &request::Executed) {
    if let Some(err) = &done.host_error {
        // One call site: ember's logger bounds each call site's lines per second
        // (vmm/src/logger.rs), so a disk that fails every request cannot flood the log; the
        // error counter still counts them all.
        warn!("virtio-blk '{name}': {err}: {}", err.source);
    }
    count(stats, req, done);
}

/// The bytes a request costs a rate limiter: its data if it reads or writes (Firecracker's
/// charge; other requests cost only their op).
fn charge(req: &request::Request) -> u64 {
    match req.kind {
        request::Kind::In | request::Kind::Out => req.data_len(),
        _ => 0,
    }
}

/// Adds an executed request to the counters.
fn count(stats: &mut BlockStats, req: &request::Request, done: &request::Executed) {
    if done.status != S_OK {
        stats.errors += 1;
        return;
    }
    stats.ok += 1;
    match req.kind {
        request::Kind::In => {
            stats.read_count += 1;
            stats.read_bytes += u64::from(done.used.saturating_sub(1));
        }
        request::Kind::Out => {
            stats.write_count += 1;
            stats.write_bytes += req.data_len();
        }
        request::Kind::Flush => {
            stats.flush_count += 1;
            stats.sync_count += u64::from(done.synced);
        }
        _ => {}
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The writeback toggle (VIRTIO_BLK_F_CONFIG_WCE) is not offered; nothing is writable.
    }

    fn activate(&mut self, mut queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        let mut queue = queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        queue.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        lock(&self.serving).queue = Some(queue);
        Ok(())
    }

    fn reset(&mut self) {
        // Waits for a batch in progress, and for the kernel to be done with the buffers of
        // requests in flight; afterwards nothing touches the guest's rings or buffers.
        let mut serving = lock(&self.serving);
        if let Some(ring) = serving.ring.as_mut() {
            ring.abandon();
        }
        serving.queue = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::block::request::{MAX_WRITE_ZEROES_SECTORS, S_IOERR, S_UNSUPP};
    use std::io::{self, Write};
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const QSIZE: u16 = 64;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;
    const MIB: usize = 1 << 20;
    const USED: u64 = 0x8000;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x8_0000;

    pub(crate) fn image(name: &str, len: usize) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ember-blk-{}-{name}", std::process::id()));
        let pattern: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&pattern)
            .unwrap();
        path
    }

    struct Rig<'a> {
        mem: &'a GuestMemoryMmap,
        vq: MockSplitQueue<'a, GuestMemoryMmap>,
        block: Block,
        next_desc: u16,
    }

    impl<'a> Rig<'a> {
        fn new(
            mem: &'a GuestMemoryMmap,
            path: &std::path::Path,
            read_only: bool,
            engine: Engine,
        ) -> Self {
            let disk = Disk::open(path, read_only, true).unwrap();
            Self::with_disk(mem, disk, "ember-disk-0", engine)
        }

        fn with_disk(mem: &'a GuestMemoryMmap, disk: Disk, id: &str, engine: Engine) -> Self {
            let vq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
            let irq = Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ));
            let wake = EventFd::new(0).unwrap();
            let mut block = Block::new(disk, engine.ring(), id, mem.clone(), irq, wake);
            let mut queue: Queue = vq.create_queue().unwrap();
            // The mock lays its used ring over the upper half of its avail ring (virtio-queue
            // 0.18); use a separate one.
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            block.activate(vec![queue], block.features()).unwrap();
            Self {
                mem,
                vq,
                block,
                next_desc: 0,
            }
        }

        /// Queues a chain of (address, length, device-writable) descriptors.
        fn chain(&mut self, descs: &[(u64, u32, bool)]) {
            if self.next_desc as usize + descs.len() > usize::from(QSIZE) {
                self.next_desc = 0;
            }
            let start = self.next_desc;
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, write))| {
                    let last = i == descs.len() - 1;
                    let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                    let next = start + i as u16 + 1;
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
                })
                .collect();
            self.vq.add_desc_chains(&raw, start).unwrap();
            self.next_desc += descs.len() as u16;
        }

        fn header(&self, kind: u32, sector: u64) {
            self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
            self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        }

        /// Serves the queue as the I/O worker would, then waits for whatever the Async engine
        /// still has in flight; returns whether more requests are waiting.
        fn serve(&self, budget: usize) -> bool {
            let more = self.block.process_queue(budget);
            self.block.settle().unwrap();
            more
        }

        /// Runs one request; returns (status byte, used length).
        fn request(&mut self, descs: &[(u64, u32, bool)]) -> (u8, u32) {
            self.chain(descs);
            self.serve(usize::MAX);
            let used = self.used_idx();
            let slot = u64::from(used.wrapping_sub(1) % QSIZE);
            let len = self
                .mem
                .read_obj::<u32>(GuestAddress(USED + 4 + slot * 8 + 4))
                .unwrap();
            let status = self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
            (status, len)
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }
    }

    /// The engine a test runs with: every device test runs with both (`for_both_engines!`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Engine {
        Sync,
        Async,
    }

    impl Engine {
        fn ring(self) -> Option<Uring> {
            (self == Self::Async)
                .then(|| Uring::new().expect("the Async engine's tests need io_uring on the host"))
        }

        /// An image of its own for each engine, as both engines' tests run at once.
        fn image(self, name: &str, len: usize) -> PathBuf {
            image(&format!("{name}-{self:?}"), len)
        }
    }

    /// Runs each named test function once per engine, as `sync_engine::NAME` and
    /// `async_engine::NAME`.
    macro_rules! for_both_engines {
        ($($test:ident),* $(,)?) => {
            mod sync_engine {
                $(#[test] fn $test() { super::$test(super::Engine::Sync) })*
            }
            mod async_engine {
                $(#[test] fn $test() { super::$test(super::Engine::Async) })*
            }
        };
    }

    for_both_engines!(
        writes_and_reads_sectors,
        header_data_and_status_may_share_descriptors,
        flush_and_get_id,
        read_only_disks_refuse_writes_and_stay_unchanged,
        host_io_errors_answer_ioerr_and_are_logged_naming_the_drive,
        malformed_chains_get_ioerr_or_nothing_and_never_touch_the_file,
        a_descriptor_loop_ends,
        an_indirect_request_is_refused_not_followed,
        flushes_and_zeroed_ranges_count_toward_the_yield,
        write_zeroes_is_held_to_the_advertised_limits,
        a_swapped_disk_is_installed_by_the_serving_side_and_the_old_one_flushed,
        work_per_notification_is_bounded,
        large_requests_yield_after_the_byte_budget,
        a_corrupt_avail_ring_stops_the_device_without_panicking,
        discard_deallocates_and_write_zeroes_zeroes,
        config_space_reports_capacity_and_is_bounds_checked,
    );

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap()
    }

    const HDR_D: (u64, u32, bool) = (HDR, 16, false);
    const STATUS_D: (u64, u32, bool) = (STATUS, 1, true);

    fn writes_and_reads_sectors(engine: Engine) {
        let mem = mem();
        let path = engine.image("rw", 64 * 1024);
        let mut rig = Rig::new(&mem, &path, false, engine);
        mem.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
        rig.header(1, 4);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 1024, false), STATUS_D]),
            (S_OK, 1)
        );
        let file = std::fs::read(&path).unwrap();
        assert!(file[2048..3072].iter().all(|b| *b == 0xab));
        assert_eq!(file[3072], 6, "the neighbouring sector is untouched");

        mem.write_slice(&[0; 2048], GuestAddress(DATA)).unwrap();
        rig.header(0, 3);
        // The data split over two descriptors, one of them not sector-sized on its own.
        let descs = [HDR_D, (DATA, 700, true), (DATA + 700, 1348, true), STATUS_D];
        assert_eq!(rig.request(&descs), (S_OK, 2049));
        let mut back = [0u8; 2048];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert!(back[..512].iter().all(|b| *b == 3));
        assert!(back[512..1536].iter().all(|b| *b == 0xab));
        assert!(back[1536..].iter().all(|b| *b == 6));
        let stats = rig.block.stats();
        assert_eq!((stats.ok, stats.read_count, stats.write_count), (2, 1, 1));
        assert_eq!((stats.read_bytes, stats.write_bytes), (2048, 1024));
    }

    fn header_data_and_status_may_share_descriptors(engine: Engine) {
        let mem = mem();
        let path = engine.image("framing", 8192);
        let mut rig = Rig::new(&mem, &path, false, engine);
        // Header and data in one readable descriptor, status in the writable one.
        mem.write_obj(1u32, GuestAddress(DATA)).unwrap();
        mem.write_obj(2u64, GuestAddress(DATA + 8)).unwrap();
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA + 16))
            .unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(rig.request(&[(DATA, 528, false), STATUS_D]), (S_OK, 1));
        assert!(
            std::fs::read(&path).unwrap()[1024..1536]
                .iter()
                .all(|b| *b == 0x5a)
        );
    }

    fn flush_and_get_id(engine: Engine) {
        let mem = mem();
        let path = engine.image("id", 4096);
        let mut rig = Rig::new(&mem, &path, false, engine);
        rig.header(4, 0);
        assert_eq!(rig.request(&[HDR_D, STATUS_D]), (S_OK, 1));
        rig.header(8, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 20, true), STATUS_D]),
            (S_OK, 21)
        );
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"ember-disk-0\0\0\0\0\0\0\0\0");
    }

    fn read_only_disks_refuse_writes_and_stay_unchanged(engine: Engine) {
        let mem = mem();
        let path = engine.image("ro", 4096);
        let before = std::fs::read(&path).unwrap();
        let mut rig = Rig::new(&mem, &path, true, engine);
        assert_ne!(rig.block.features() & (1 << features::RO), 0);
        rig.header(1, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, false), STATUS_D]).0,
            S_IOERR
        );
        rig.header(11, 0);
        mem.write_obj([0u64, 1], GuestAddress(DATA)).unwrap();
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_IOERR
        );
        assert!(std::fs::read(&path).unwrap() == before, "the image changed");
    }

    /// The `log` backend of this test binary: keeps every line at Warn and above.
    struct Captured(Mutex<Vec<String>>);

    impl log::Log for Captured {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }

        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                lock(&self.0).push(record.args().to_string());
            }
        }

        fn flush(&self) {}
    }

    /// Installs the capturing logger (once for the binary); returns the lines logged so far
    /// that contain `needle`.
    fn logged(needle: &str) -> Vec<String> {
        static CAPTURED: Captured = Captured(Mutex::new(Vec::new()));
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURED).expect("no other logger in the devices tests");
            log::set_max_level(log::LevelFilter::Warn);
        });
        let lines = lock(&CAPTURED.0);
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    fn host_io_errors_answer_ioerr_and_are_logged_naming_the_drive(engine: Engine) {
        let mem = mem();
        logged("");
        let full = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let disk = Disk::over_any_file(full, 2 * MIB as u64);
        // Each engine's test logs under a drive name of its own, as they run at once.
        let drive = format!("full-disk-{engine:?}");
        let mut rig = Rig::with_disk(&mem, disk, &drive, engine);
        // Guest-caused refusals are answered and not logged: a write-zeroes range over the
        // advertised limit, then one past the end of the disk.
        rig.header(13, 0);
        mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(MAX_WRITE_ZEROES_SECTORS + 1, GuestAddress(DATA + 8))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_IOERR
        );
        mem.write_obj(4096u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_IOERR
        );
        assert_eq!(logged(&format!("'{drive}'")), Vec::<String>::new());

        // The host's errors: ENOSPC on the write, EINVAL on the flush.
        rig.header(1, 2048);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 4096, false), STATUS_D]),
            (S_IOERR, 1)
        );
        rig.header(4, 0);
        assert_eq!(rig.request(&[HDR_D, STATUS_D]), (S_IOERR, 1));
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(
            logged(&format!("'{drive}'")),
            [
                format!(
                    "virtio-blk '{drive}': write of 4096 bytes at offset 1048576 failed: {enospc}"
                ),
                format!("virtio-blk '{drive}': flush failed: {einval}"),
            ]
        );
        assert_eq!(rig.block.stats().errors, 4);
    }

    fn malformed_chains_get_ioerr_or_nothing_and_never_touch_the_file(engine: Engine) {
        let mem = mem();
        let path = engine.image("hostile", 8192);
        let before = std::fs::read(&path).unwrap();
        let mut rig = Rig::new(&mem, &path, false, engine);
        let outside = 2 * MIB as u64;

        rig.header(0, 0);
        // Data outside guest memory: no trustworthy layout, nothing written.
        assert_eq!(rig.request(&[HDR_D, (outside, 512, true), STATUS_D]).1, 0);
        // Status outside guest memory.
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), (outside, 1, true)])
                .1,
            0
        );
        // No writable status byte at all.
        assert_eq!(rig.request(&[HDR_D, (DATA, 512, false)]).1, 0);
        // A readable descriptor after a writable one.
        assert_eq!(rig.request(&[HDR_D, STATUS_D, (DATA, 512, false)]).1, 0);
        // A header too short.
        rig.header(0, 0);
        assert_eq!(rig.request(&[(HDR, 8, false), STATUS_D]), (S_IOERR, 1));
        // A read into device-readable buffers (wrong direction).
        rig.header(0, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, false), STATUS_D]).0,
            S_IOERR
        );
        // A write from device-writable buffers (wrong direction).
        rig.header(1, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), STATUS_D]).0,
            S_IOERR
        );
        // Not a whole number of sectors.
        rig.header(1, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 100, false), STATUS_D]).0,
            S_IOERR
        );
        // Past the end of the disk, and a sector number that overflows.
        rig.header(1, 16);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, false), STATUS_D]).0,
            S_IOERR
        );
        rig.header(0, u64::MAX / 256);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), STATUS_D]).0,
            S_IOERR
        );
        // Too long (but inside guest memory thanks to overlapping descriptors).
        rig.header(0, 0);
        let mut huge = vec![HDR_D];
        huge.extend(std::iter::repeat_n((DATA, 16 << 20, true), 5));
        huge.push(STATUS_D);
        let big_mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 * MIB)]).unwrap();
        let mut big = Rig::new(&big_mem, &path, false, engine);
        big.header(0, 0);
        assert_eq!(big.request(&huge).0, S_IOERR);
        // Requests that ignore the sector may carry any value there.
        rig.header(4, u64::MAX);
        assert_eq!(rig.request(&[HDR_D, STATUS_D]), (S_OK, 1));
        rig.header(8, u64::MAX);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 20, true), STATUS_D]),
            (S_OK, 21)
        );
        // An unknown request type.
        rig.header(99, 0);
        assert_eq!(rig.request(&[HDR_D, STATUS_D]), (S_UNSUPP, 1));
        // Discard with a malformed payload (not whole ranges, or flags set).
        rig.header(11, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 10, false), STATUS_D]).0,
            S_IOERR
        );

        assert!(std::fs::read(&path).unwrap() == before, "the image changed");
        assert!(rig.block.stats().errors >= 12);
        // The device still works.
        rig.header(0, 1);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), STATUS_D]),
            (S_OK, 513)
        );
    }

    fn a_descriptor_loop_ends(engine: Engine) {
        let mem = mem();
        let path = engine.image("loop", 4096);
        let mut rig = Rig::new(&mem, &path, false, engine);
        rig.header(0, 0);
        // Descriptor 0 chains to itself.
        let looped = RawDescriptor::from(SplitDescriptor::new(HDR, 16, F_NEXT, 0));
        rig.vq.add_desc_chains(&[looped], 0).unwrap();
        rig.next_desc = 1;
        rig.serve(usize::MAX);
        assert_eq!(rig.used_idx(), 1, "the looping chain was returned");
        rig.header(0, 0);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), STATUS_D]),
            (S_OK, 513)
        );
    }

    fn an_indirect_request_is_refused_not_followed(engine: Engine) {
        let mem = mem();
        let path = engine.image("indirect", 4096);
        let mut rig = Rig::new(&mem, &path, false, engine);
        // A well-formed read behind an indirect table, which the device never offered.
        let table = 0x9_0000;
        let inner = [
            SplitDescriptor::new(HDR, 16, F_NEXT, 1),
            SplitDescriptor::new(DATA, 512, F_NEXT | F_WRITE, 2),
            SplitDescriptor::new(STATUS, 1, F_WRITE, 0),
        ];
        for (i, d) in inner.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        rig.header(0, 0);
        mem.write_obj(0x5au8, GuestAddress(DATA)).unwrap();
        let ind = RawDescriptor::from(SplitDescriptor::new(table, 48, F_INDIRECT, 0));
        rig.vq.add_desc_chains(&[ind], 0).unwrap();
        rig.next_desc = 1;
        rig.serve(usize::MAX);
        assert_eq!(rig.used_idx(), 1, "the chain was returned");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x5a);
        assert_eq!(rig.block.stats().errors, 1);
    }

    fn flushes_and_zeroed_ranges_count_toward_the_yield(engine: Engine) {
        let mem = mem();
        let path = engine.image("work", 64 * MIB);
        let mut rig = Rig::new(&mem, &path, false, engine);
        // Flushes move no data but may wait for the whole host cache: one per batch.
        rig.header(4, 0);
        for _ in 0..3 {
            rig.chain(&[HDR_D, STATUS_D]);
        }
        assert!(rig.serve(usize::MAX), "yields after a flush");
        assert_eq!(rig.used_idx(), 1);
        while rig.serve(usize::MAX) {}
        // Two write-zeroes requests of 32 MiB each (payload-only, no data): each one is a
        // batch's worth of work.
        rig.header(13, 0);
        mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(1u32 << 16, GuestAddress(DATA + 8)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        rig.chain(&[HDR_D, (DATA, 16, false), STATUS_D]);
        rig.chain(&[HDR_D, (DATA, 16, false), STATUS_D]);
        let before = rig.used_idx();
        assert!(rig.serve(usize::MAX));
        assert_eq!(rig.used_idx(), before.wrapping_add(1));
    }

    fn write_zeroes_is_held_to_the_advertised_limits(engine: Engine) {
        let mem = mem();
        let path = engine.image("wzlimit", 128 * MIB);
        let mut rig = Rig::new(&mem, &path, false, engine);
        let mut cfg = [0u8; 8];
        rig.block.read_config(48, &mut cfg);
        let max_sectors = u32::from_le_bytes([cfg[0], cfg[1], cfg[2], cfg[3]]);
        let max_seg = u32::from_le_bytes([cfg[4], cfg[5], cfg[6], cfg[7]]);
        assert_eq!(
            (max_sectors, max_seg),
            (request::MAX_WRITE_ZEROES_SECTORS, 1)
        );
        let range = |at: u64, sectors: u32| {
            mem.write_obj(0u64, GuestAddress(at)).unwrap();
            mem.write_obj(sectors, GuestAddress(at + 8)).unwrap();
            mem.write_obj(0u32, GuestAddress(at + 12)).unwrap();
        };
        rig.header(13, 0);
        range(DATA, max_sectors + 1);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_IOERR
        );
        range(DATA, max_sectors);
        range(DATA + 16, 8);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 32, false), STATUS_D]).0,
            S_IOERR,
            "two ranges where one is offered"
        );
        assert_eq!(rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0, S_OK);
    }

    fn a_swapped_disk_is_installed_by_the_serving_side_and_the_old_one_flushed(engine: Engine) {
        let mem = mem();
        let (first, second) = (engine.image("swap-a", 4096), engine.image("swap-b", 8192));
        let mut rig = Rig::new(&mem, &first, false, engine);
        let wake = rig.block.shared.wake.try_clone().unwrap();
        rig.block
            .swap_disk(Disk::open(&second, false, true).unwrap());
        assert_eq!(wake.read().unwrap(), 1, "the serving thread is woken");
        let mut cap = [0u8; 8];
        rig.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        // Until the serving side runs, nothing waits on its lock; then the new disk serves.
        rig.header(0, 15);
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 512, true), STATUS_D]),
            (S_OK, 513)
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 15);
    }

    fn work_per_notification_is_bounded(engine: Engine) {
        let mem = mem();
        let path = engine.image("budget", 4096);
        let mut rig = Rig::new(&mem, &path, false, engine);
        // GET_ID requests: no disk work, so only the request budget stops a batch.
        rig.header(8, 0);
        for _ in 0..5 {
            rig.chain(&[HDR_D, (DATA, 20, true), STATUS_D]);
        }
        assert!(rig.serve(2), "more requests are waiting");
        assert_eq!(rig.used_idx(), 2);
        assert!(rig.serve(2));
        assert!(!rig.serve(2));
        assert_eq!(rig.used_idx(), 5);
    }

    fn large_requests_yield_after_the_byte_budget(engine: Engine) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 * MIB)]).unwrap();
        let path = engine.image("bytes", 16 * MIB);
        let mut rig = Rig::new(&mem, &path, false, engine);
        rig.header(0, 0);
        let four_mib = (MAX_BYTES_PER_CALL / 2) as u32;
        for _ in 0..3 {
            rig.chain(&[HDR_D, (DATA, four_mib, true), STATUS_D]);
        }
        assert!(rig.serve(usize::MAX), "yields after 8 MiB");
        assert_eq!(rig.used_idx(), 2);
        assert!(!rig.serve(usize::MAX));
        assert_eq!(rig.used_idx(), 3);
    }

    fn a_corrupt_avail_ring_stops_the_device_without_panicking(engine: Engine) {
        let mem = mem();
        let path = engine.image("corrupt", 4096);
        let rig = Rig::new(&mem, &path, false, engine);
        // An available index 1000 entries ahead of the device on a 16-entry queue.
        rig.vq.avail().idx().store(1000);
        assert!(!rig.serve(usize::MAX));
        let serving = rig.block.serving.lock().unwrap();
        assert!(serving.queue.is_none(), "the device stopped");
        assert!(serving.interrupt.reset_needed(), "and asked for a reset");
        drop(serving);
        rig.serve(usize::MAX);
    }

    fn discard_deallocates_and_write_zeroes_zeroes(engine: Engine) {
        let mem = mem();
        let path = engine.image("discard", 1 << 20);
        let mut rig = Rig::new(&mem, &path, false, engine);
        if !rig.block.serving.lock().unwrap().disk.can_punch_holes() {
            // This filesystem cannot deallocate: the feature must not be offered.
            assert_eq!(rig.block.features() & (1 << features::DISCARD), 0);
            return;
        }
        let blocks = |p: &PathBuf| std::fs::metadata(p).unwrap().blocks();
        let before = blocks(&path);
        rig.header(11, 0);
        mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(1024u32, GuestAddress(DATA + 8)).unwrap(); // 512 KiB
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0, S_OK);
        assert!(blocks(&path) < before, "{} -> {}", before, blocks(&path));
        let file = std::fs::read(&path).unwrap();
        assert!(file[..512 * 1024].iter().all(|b| *b == 0));
        assert_eq!(file[512 * 1024], 0, "sector 1024 held 1024/256's low byte");
        assert_eq!(file[513 * 1024], 2);

        rig.header(13, 0);
        mem.write_obj(1500u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(2u32, GuestAddress(DATA + 8)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0, S_OK);
        let file = std::fs::read(&path).unwrap();
        assert!(file[1500 * 512..1502 * 512].iter().all(|b| *b == 0));
        assert_eq!(file[1502 * 512], (1502 % 256) as u8);
        // The last two sectors of the disk are in range, one more is not.
        mem.write_obj(2046u64, GuestAddress(DATA)).unwrap();
        assert_eq!(rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0, S_OK);
        mem.write_obj(2047u64, GuestAddress(DATA)).unwrap();
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_IOERR
        );
        // Unknown flags are refused.
        mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
        mem.write_obj(4u32, GuestAddress(DATA + 12)).unwrap();
        assert_eq!(
            rig.request(&[HDR_D, (DATA, 16, false), STATUS_D]).0,
            S_UNSUPP
        );
    }

    #[test]
    fn a_throttled_request_stays_in_the_ring_until_the_limiters_timer_fires() {
        use crate::rate_limiter::{BucketConfig, LimiterConfig, tests::readable};
        let mem = mem();
        let path = Engine::Sync.image("limited", 4096);
        let ops = BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 20,
        };
        let limiter = Arc::new(
            RateLimiter::new(LimiterConfig {
                bandwidth: None,
                ops: Some(ops),
            })
            .unwrap(),
        );
        let Rig {
            mem: _,
            vq,
            block,
            next_desc,
        } = Rig::new(&mem, &path, false, Engine::Sync);
        let block = block.with_rate_limiter(limiter.clone());
        let mut rig = Rig {
            mem: &mem,
            vq,
            block,
            next_desc,
        };
        let mut server = rig.block.queue_server();
        rig.header(8, 0);
        rig.chain(&[HDR_D, (DATA, 20, true), STATUS_D]);
        rig.chain(&[HDR_D, (DATA, 20, true), STATUS_D]);
        assert!(
            !rig.block.process_queue(usize::MAX),
            "throttled is not more"
        );
        assert_eq!(rig.used_idx(), 1, "one op, one request");
        // Serving again meanwhile (a notification) serves nothing, and does not ask for more.
        assert!(!server.ready(&[]));
        assert_eq!(rig.used_idx(), 1);
        let mut watches = Vec::new();
        server.interest(&mut watches);
        assert_eq!(watches[1], Watch::readable(limiter.timer_fd()));
        assert!(readable(limiter.timer_fd(), 1000), "the timer fires");
        let timer = Ready {
            readable: true,
            ..Default::default()
        };
        server.ready(&[Ready::default(), timer]);
        assert_eq!(rig.used_idx(), 2, "the waiting request is served");
        assert_eq!(rig.block.stats().ok, 2);
    }

    fn config_space_reports_capacity_and_is_bounds_checked(engine: Engine) {
        let mem = mem();
        let path = engine.image("config", 1 << 20);
        let rig = Rig::new(&mem, &path, false, engine);
        let mut cap = [0u8; 8];
        rig.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
        let mut tail = [0xffu8; 8];
        rig.block.read_config(56, &mut tail);
        assert_eq!(&tail[4..], &[0; 4]);
        rig.block.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);
    }

    /// A pipe: reads of its read end wait until the test writes, which no image file can
    /// make happen on demand.
    fn pipe() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// An Async device over the read end of a pipe, with eight reads waiting for its data,
    /// each with its own buffer and status byte.
    fn eight_waiting_reads(mem: &GuestMemoryMmap) -> (Rig<'_>, std::fs::File) {
        let (reader, writer) = pipe();
        let disk = Disk::over_any_file(reader, MIB as u64);
        let mut rig = Rig::with_disk(mem, disk, "pipe", Engine::Async);
        rig.header(0, 0);
        for i in 0..8 {
            rig.chain(&[HDR_D, (DATA + i * 512, 512, true), (STATUS + i, 1, true)]);
        }
        assert!(!rig.block.process_queue(usize::MAX));
        assert_eq!((rig.block.in_flight(), rig.used_idx()), (8, 0));
        (rig, writer)
    }

    #[test]
    fn async_requests_overlap_and_one_waiting_for_the_host_holds_up_no_other() {
        let mem = mem();
        let (mut rig, mut writer) = eight_waiting_reads(&mem);
        // Eight reads are in the kernel at once, and the serving thread is free: a request
        // that needs no disk is answered meanwhile.
        rig.header(8, 0);
        rig.chain(&[HDR_D, (DATA + 0x8000, 20, true), STATUS_D]);
        assert!(!rig.block.process_queue(usize::MAX));
        assert_eq!(rig.used_idx(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        assert_eq!(rig.block.in_flight(), 8);
        // The host's data arrives: all eight complete, each with its 512 bytes.
        writer.write_all(&[0x77; 4096]).unwrap();
        rig.serve(usize::MAX);
        assert_eq!((rig.block.in_flight(), rig.used_idx()), (0, 9));
        let mut data = [0u8; 4096];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data.iter().all(|b| *b == 0x77));
        for i in 0..8 {
            assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(), S_OK);
        }
        assert_eq!(rig.block.stats().read_count, 8);
    }

    #[test]
    fn an_async_flush_completes_only_after_the_requests_before_it() {
        let mem = mem();
        let (mut rig, mut writer) = eight_waiting_reads(&mem);
        // A flush, then a GET_ID: the flush waits for the eight, and nothing after it is
        // taken meanwhile.
        rig.header(4, 0);
        rig.chain(&[HDR_D, (STATUS + 8, 1, true)]);
        let get_id = 0x1_1000;
        mem.write_obj(8u32, GuestAddress(get_id)).unwrap();
        rig.chain(&[(get_id, 16, false), (DATA + 0x8000, 20, true), STATUS_D]);
        assert!(!rig.block.process_queue(usize::MAX));
        assert_eq!((rig.block.in_flight(), rig.used_idx()), (9, 0));
        writer.write_all(&[0x77; 4096]).unwrap();
        rig.block.settle().unwrap();
        // The eight, then the flush (a pipe cannot be synced: the host's EINVAL answers it,
        // after the reads all the same); the GET_ID is still waiting.
        assert_eq!(rig.used_idx(), 9);
        // The ninth used entry names the flush's chain, at descriptor 24 after 8 chains of 3.
        let ninth = mem.read_obj::<u32>(GuestAddress(USED + 4 + 8 * 8)).unwrap();
        assert_eq!(ninth, 24, "the flush's chain comes back last");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS + 8)).unwrap(),
            S_IOERR
        );
        rig.serve(usize::MAX);
        assert_eq!(rig.used_idx(), 10);
    }

    #[test]
    fn a_reset_waits_for_async_requests_in_flight_and_answers_none() {
        let mem = mem();
        let (mut rig, mut writer) = eight_waiting_reads(&mem);
        rig.block.reset();
        assert_eq!((rig.block.in_flight(), rig.used_idx()), (0, 0));
        // Data the host sends afterwards never reaches the guest's buffers.
        writer.write_all(&[0x77; 4096]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut data = [0u8; 4096];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data.iter().all(|b| *b != 0x77));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    }

    #[test]
    fn a_disk_swapped_with_async_requests_in_flight_loses_and_misdirects_none() {
        let mem = mem();
        let (mut rig, mut writer) = eight_waiting_reads(&mem);
        let new = Engine::Async.image("swap-in-flight", 8192);
        rig.block.swap_disk(Disk::open(&new, false, true).unwrap());
        // A read of sector 15 made available after the swap: not taken while the old disk
        // has requests in flight.
        rig.header(0, 15);
        rig.chain(&[HDR_D, (DATA + 0x8000, 512, true), STATUS_D]);
        assert!(!rig.block.process_queue(usize::MAX));
        assert_eq!((rig.block.in_flight(), rig.used_idx()), (8, 0));
        // The eight finish on the old disk (the pipe), then the new one serves the ninth.
        writer.write_all(&[0x77; 4096]).unwrap();
        rig.block.settle().unwrap();
        assert_eq!(rig.used_idx(), 8);
        rig.serve(usize::MAX);
        assert_eq!(rig.used_idx(), 9);
        let mut data = [0u8; 4096];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data.iter().all(|b| *b == 0x77));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 0x8000)).unwrap(), 15);
    }
}

//! The virtio-rng device: one request queue whose device-writable buffers are filled from the
//! host's `getrandom(2)`, served by whichever thread holds its [`RngServer`] (the VMM gives
//! the device an I/O worker thread, which waits on the queue's notification as the server, an
//! [`IoHandler`], asks).
//!
//! Bounds: a request gets at most [`MAX_BYTES_PER_CHAIN`] bytes however much room its buffers
//! have (a driver asks again for more), and a round serves at most [`RNG_BUDGET`] requests and
//! [`MAX_BYTES_PER_CALL`] bytes, so a guest that keeps the ring full cannot make the worker
//! run without the stop and pause checks between rounds. A malformed chain (a device-readable
//! buffer, one outside guest memory, an indirect table, a loop) is returned with nothing
//! written, logged and counted, and the device keeps serving; a corrupt ring stops it until
//! the driver resets it. The host's pool is read without blocking: were it not ready (only
//! early in the host's boot), the request is answered empty and counted.
//!
//! Every request passes one point in [`Serving::process_queue`], knowing its size before any
//! entropy is drawn: where a rate limiter's check belongs.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{DEVICE_TYPE_RNG, QUEUE_SIZE};
use crate::rate_limiter::RateLimiter;
use crate::sync::{Published, lock};
use crate::virtio::chain::{self, Chain, ChainError, Segment};
use crate::virtio::worker::{IoHandler, Ready, Watch};
use crate::virtio::{
    ActivateError, Step, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioInterrupt, serve_chains, signal_used,
};

/// Requests served per round of the I/O worker.
pub const RNG_BUDGET: usize = 64;
/// Most bytes one request gets (Linux asks for at most a few hundred at a time).
pub const MAX_BYTES_PER_CHAIN: usize = 64 << 10;
/// Most bytes a round hands out before yielding to the worker's stop and pause checks.
pub const MAX_BYTES_PER_CALL: u64 = 256 << 10;

/// Counters an entropy device keeps, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngStats {
    /// Requests answered with random bytes.
    pub requests: u64,
    /// Random bytes handed to the guest.
    pub bytes: u64,
    /// Malformed requests, returned with nothing written.
    pub errors: u64,
    /// Requests the host's `getrandom` failed, returned with nothing written.
    pub host_errors: u64,
}

impl RngStats {
    /// The counters by their metric names (Firecracker's), in the order metrics report them.
    pub fn counters(&self) -> [(&'static str, u64); 4] {
        [
            ("entropy_event_count", self.requests),
            ("entropy_bytes", self.bytes),
            ("entropy_event_fails", self.errors),
            ("host_rng_fails", self.host_errors),
        ]
    }
}

/// A virtio-rng device, as the transport sees it. The serving side has its own lock, taken by
/// activation and reset, never by register accesses; counters are published after each round.
pub struct Rng {
    serving: Arc<Mutex<Serving>>,
    stats: Arc<Published<RngStats>>,
    wake: Arc<EventFd>,
}

/// What serving the queue needs.
struct Serving {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue: Option<Queue>,
    stats: RngStats,
    /// A request's buffers and the bytes drawn for it, reused from request to request.
    segments: Vec<Segment>,
    buf: Box<[u8]>,
    limiter: Option<Arc<RateLimiter>>,
}

/// A handle for the thread that serves an entropy device's queue, and for its counters.
#[derive(Clone)]
pub struct RngServer {
    serving: Arc<Mutex<Serving>>,
    stats: Arc<Published<RngStats>>,
    wake: Arc<EventFd>,
    limiter: Option<Arc<RateLimiter>>,
}

impl RngServer {
    /// Serves up to `budget` requests (and [`MAX_BYTES_PER_CALL`] bytes); returns true if more
    /// are waiting. Does nothing before the driver activates the device.
    pub fn process_queue(&self, budget: usize) -> bool {
        let s = &mut *lock(&self.serving);
        let more = s.process_queue(budget);
        self.stats.publish(s.stats);
        more
    }

    /// The counters, as of the end of the last round.
    pub fn stats(&self) -> RngStats {
        self.stats.get()
    }
}

/// The worker waits for the guest's notifications (the queue's ioeventfd, which activation
/// also writes) and for the rate limiter's timer, and serves the queue in bounded rounds.
impl IoHandler for RngServer {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        watches.clear();
        watches.push(Watch::readable(self.wake.as_raw_fd()));
        if let Some(limiter) = &self.limiter {
            watches.push(Watch::readable(limiter.timer_fd()));
        }
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        if ready.first().is_some_and(Ready::any) {
            let _ = self.wake.read();
        }
        if let (Some(limiter), Some(timer)) = (&self.limiter, ready.get(1)) {
            if timer.any() {
                limiter.timer_fired();
            }
        }
        self.process_queue(RNG_BUDGET)
    }

    fn resumed(&mut self) -> bool {
        // A pause stops the worker between rounds, with the rest still in the ring.
        true
    }
}

impl Rng {
    /// A device drawing from the host's entropy pool into `mem`. Writing `wake` must make the
    /// serving thread call [`RngServer::process_queue`] (the VMM passes the queue's
    /// notification eventfd).
    pub fn new(mem: GuestMemoryMmap, interrupt: Arc<VirtioInterrupt>, wake: EventFd) -> Self {
        let serving = Serving {
            mem,
            interrupt,
            queue: None,
            stats: RngStats::default(),
            segments: Vec::new(),
            buf: vec![0; MAX_BYTES_PER_CHAIN].into_boxed_slice(),
            limiter: None,
        };
        Self {
            serving: Arc::new(Mutex::new(serving)),
            stats: Arc::default(),
            wake: Arc::new(wake),
        }
    }

    /// Holds the guest's requests to `limiter` (one op and the bytes asked for per request,
    /// Firecracker's charge). Set before [`Rng::server`] is called.
    pub fn with_rate_limiter(self, limiter: Arc<RateLimiter>) -> Self {
        lock(&self.serving).limiter = Some(limiter);
        self
    }

    /// The handle the serving thread uses (also the I/O worker's handler).
    pub fn server(&self) -> RngServer {
        RngServer {
            serving: self.serving.clone(),
            stats: self.stats.clone(),
            wake: self.wake.clone(),
            limiter: lock(&self.serving).limiter.clone(),
        }
    }
}

/// Why a request gets nothing.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The chain cannot be walked.
    #[error("malformed chain: {0}")]
    Chain(#[from] ChainError),
    /// A buffer the device would have to read.
    #[error("buffer {addr:#x}+{len} is device-readable; an entropy request has only writable ones")]
    Readable {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A buffer outside guest memory.
    #[error("buffer {addr:#x}+{len} lies outside guest memory")]
    Outside {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

impl Serving {
    fn process_queue(&mut self, budget: usize) -> bool {
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        let (mem, stats, segments, buf, limiter) = (
            &self.mem,
            &mut self.stats,
            &mut self.segments,
            &mut self.buf,
            &self.limiter,
        );
        let (mut handed_out, mut throttled) = (0u64, false);
        let served = serve_chains(queue, mem, budget, |chain| {
            let used = match writable(mem, chain, segments) {
                Ok(room) => {
                    let len = room.min(buf.len() as u64) as usize;
                    // The one point every request passes, knowing its size before any
                    // entropy is drawn.
                    if limiter.as_ref().is_some_and(|l| !l.consume_op(len as u64)) {
                        // Left in the ring; the limiter's timer resumes the queue.
                        throttled = true;
                        return Step::Retry;
                    }
                    match fill(mem, segments, &mut buf[..len]) {
                        Ok(n) => {
                            stats.requests += 1;
                            stats.bytes += n as u64;
                            n
                        }
                        Err(err) => {
                            warn!("virtio-rng: the host's entropy source failed: {err}");
                            stats.host_errors += 1;
                            0
                        }
                    }
                }
                Err(err) => {
                    warn!("virtio-rng: bad request: {err}");
                    stats.errors += 1;
                    0
                }
            };
            handed_out += used as u64;
            // At most MAX_BYTES_PER_CHAIN, which fits a u32.
            let used = used as u32;
            if handed_out >= MAX_BYTES_PER_CALL {
                Step::UsedLast(used)
            } else {
                Step::Used(used)
            }
        });
        match served {
            Ok(served) => {
                signal_used(queue, 0, mem, &self.interrupt, served.count);
                served.more && !throttled
            }
            Err(err) => {
                warn!("virtio-rng: {err}");
                self.queue = None;
                self.interrupt.needs_reset();
                false
            }
        }
    }
}

/// Collects a request's buffers into `segments`; returns how many bytes they hold.
fn writable(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    segments: &mut Vec<Segment>,
) -> Result<u64, RequestError> {
    segments.clear();
    let mut room = 0u64;
    for desc in chain {
        let desc = desc?;
        let (addr, len) = (desc.addr().0, desc.len());
        if !desc.is_write_only() {
            return Err(RequestError::Readable { addr, len });
        }
        let seg =
            Segment::checked(mem, desc.addr(), len).ok_or(RequestError::Outside { addr, len })?;
        // At most a queue's worth of 4 GiB buffers: no overflow.
        room += seg.len;
        segments.push(seg);
    }
    Ok(room)
}

/// Fills `buf` from the host's pool and copies it into `segments`; returns the bytes written.
fn fill(mem: &GuestMemoryMmap, segments: &[Segment], buf: &mut [u8]) -> io::Result<usize> {
    getrandom(buf)?;
    chain::write_bytes(mem, segments, 0, buf)
}

/// Fills `buf` from the host's entropy pool, without blocking.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes, and the kernel writes at
        // most that many.
        let n =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_RNG
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        // virtio-rng has no configuration space.
        &[]
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        let mut queue = queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        queue.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        lock(&self.serving).queue = Some(queue);
        // Buffers the driver made available before DRIVER_OK are served now.
        if let Err(err) = self.wake.write(1) {
            warn!("virtio-rng: cannot wake the I/O thread: {err}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        // Waits for a round in progress; afterwards the serving thread no longer touches the
        // guest's rings.
        lock(&self.serving).queue = None;
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::testing::Driver;

    const MIB: usize = 1 << 20;
    const RING: u64 = 0;
    const DATA: u64 = 0x1_0000;

    struct Rig {
        mem: GuestMemoryMmap,
        driver: Driver,
        rng: Rng,
        server: RngServer,
        irq: Arc<VirtioInterrupt>,
    }

    impl Rig {
        fn new(mem_len: usize) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_len)]).unwrap();
            let irq = Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ));
            let mut rng = Rng::new(
                mem.clone(),
                irq.clone(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            );
            let driver = Driver::new(RING, 16);
            rng.activate(vec![driver.queue().unwrap()], rng.features())
                .unwrap();
            let server = rng.server();
            Self {
                mem,
                driver,
                rng,
                server,
                irq,
            }
        }

        /// Makes a chain of (address, length, device-writable) buffers available, serves the
        /// queue and returns the used lengths returned since the last call.
        fn request(&mut self, bufs: &[(u64, u32, bool)]) -> Vec<u32> {
            self.driver.add(&self.mem, bufs).unwrap();
            while self.server.process_queue(RNG_BUDGET) {}
            self.used()
        }

        fn used(&mut self) -> Vec<u32> {
            let used = self.driver.take_used(&self.mem).unwrap();
            used.into_iter().map(|(_, len)| len).collect()
        }

        fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut out = vec![0; len];
            self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
            out
        }
    }

    #[test]
    fn offers_one_queue_and_no_configuration_space() {
        let rig = Rig::new(MIB);
        assert_eq!(rig.rng.device_type(), 4);
        assert_eq!(rig.rng.queue_max_sizes().len(), 1);
        assert!(rig.rng.config().is_empty());
        let mut data = [0xffu8; 4];
        rig.rng.read_config(0, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes_that_differ_between_requests() {
        let mut rig = Rig::new(MIB);
        // Split over two buffers, the second not adjacent to the first.
        assert_eq!(
            rig.request(&[(DATA, 100, true), (DATA + 0x1000, 28, true)]),
            [128]
        );
        let first = [rig.bytes(DATA, 100), rig.bytes(DATA + 0x1000, 28)].concat();
        assert!(first.iter().any(|b| *b != 0), "all zero: {first:?}");
        assert_eq!(rig.bytes(DATA + 100, 4), [0; 4], "past the buffer");
        assert_eq!(rig.request(&[(DATA, 128, true)]), [128]);
        let second = rig.bytes(DATA, 128);
        assert_ne!(first, second, "two requests got the same bytes");
        let stats = rig.server.stats();
        assert_eq!((stats.requests, stats.bytes, stats.errors), (2, 256, 0));
        assert_eq!(rig.irq.status(), crate::virtio::INTERRUPT_USED_RING);
    }

    #[test]
    fn readable_and_malformed_chains_are_returned_empty_and_the_device_keeps_serving() {
        let mut rig = Rig::new(MIB);
        let outside = 2 * MIB as u64;
        for hostile in [
            vec![(DATA, 64, false)],
            vec![(DATA, 64, true), (DATA + 0x1000, 64, false)],
            vec![(outside, 64, true)],
        ] {
            assert_eq!(rig.request(&hostile), [0], "{hostile:?}");
        }
        assert_eq!(rig.bytes(DATA, 64), [0; 64], "nothing written");
        rig.driver.add_indirect(&rig.mem, 0x8000, 4).unwrap();
        while rig.server.process_queue(RNG_BUDGET) {}
        assert_eq!(rig.used(), [0]);
        assert_eq!(rig.server.stats().errors, 4);
        assert_eq!(rig.request(&[(DATA, 64, true)]), [64]);
        assert_eq!(rig.server.stats().requests, 1);
    }

    #[test]
    fn a_request_gets_at_most_64_kib_and_a_round_at_most_its_budget() {
        let mut rig = Rig::new(4 * MIB);
        // A 1 MiB buffer is filled up to the per-request bound only.
        assert_eq!(
            rig.request(&[(DATA, MIB as u32, true)]),
            [MAX_BYTES_PER_CHAIN as u32]
        );
        let beyond = rig.bytes(DATA + MAX_BYTES_PER_CHAIN as u64, 4096);
        assert!(beyond.iter().all(|b| *b == 0), "written past the bound");
        // Eight such requests: one round hands out MAX_BYTES_PER_CALL, then yields.
        for _ in 0..8 {
            rig.driver
                .add(&rig.mem, &[(DATA, MIB as u32, true)])
                .unwrap();
        }
        assert!(rig.server.process_queue(RNG_BUDGET), "more is waiting");
        let per_round = (MAX_BYTES_PER_CALL / MAX_BYTES_PER_CHAIN as u64) as usize;
        assert_eq!(rig.used().len(), per_round);
        // Many small requests: the round stops at the request budget.
        while rig.server.process_queue(RNG_BUDGET) {}
        rig.used();
        let mut driver = Driver::new(RING + 0x4000, 256);
        let mut rng = Rng::new(
            rig.mem.clone(),
            rig.irq.clone(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        );
        rng.activate(vec![driver.queue().unwrap()], 0).unwrap();
        for _ in 0..RNG_BUDGET + 1 {
            driver.add(&rig.mem, &[(DATA, 1, true)]).unwrap();
        }
        assert!(rng.server().process_queue(RNG_BUDGET));
        assert_eq!(driver.take_used(&rig.mem).unwrap().len(), RNG_BUDGET);
        assert!(!rng.server().process_queue(RNG_BUDGET));
        assert_eq!(driver.take_used(&rig.mem).unwrap().len(), 1);
    }

    #[test]
    fn activation_wakes_the_worker_and_a_corrupt_ring_stops_the_device() {
        let mut rig = Rig::new(MIB);
        let mut ready = [Ready::default()];
        let mut watches = Vec::new();
        rig.server.interest(&mut watches);
        assert_eq!(watches, [Watch::readable(rig.rng.wake.as_raw_fd())]);
        assert_eq!(
            rig.rng.wake.read().unwrap(),
            1,
            "activation woke the worker"
        );
        rig.driver.add(&rig.mem, &[(DATA, 8, true)]).unwrap();
        ready[0].readable = true;
        assert!(!rig.server.ready(&ready));
        assert_eq!(rig.used(), [8]);
        // An available index 1000 entries ahead on a 16-entry queue.
        rig.driver.set_avail_idx(&rig.mem, 1001).unwrap();
        assert!(!rig.server.process_queue(RNG_BUDGET));
        assert!(lock(&rig.rng.serving).queue.is_none(), "the device stopped");
        rig.rng.reset();
        assert!(!rig.server.process_queue(RNG_BUDGET));
    }
}

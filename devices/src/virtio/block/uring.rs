//! The Async I/O engine (Firecracker's `io_engine: "Async"`): reads, writes and flushes go
//! through an io_uring, many in flight at once, and are answered in whatever order the host
//! finishes them. Its completions are announced on an eventfd registered with the ring, which
//! the drive's I/O worker waits on next to the queue's notification.
//!
//! What it keeps is bounded by the queue's size: a request in flight holds one of
//! [`SLOTS`] slots (its parsed request and the iovecs the kernel reads), so a hostile driver
//! that makes chains available faster than the host completes them waits for a slot.
//!
//! Ordering: a flush completes only after every request taken before it has completed (the
//! guest relies on it for the writes it wants durable). A flush that arrives while others are
//! in flight waits in its slot until they are done, and nothing new is taken meanwhile; then
//! it is submitted alone (`fdatasync`, or a no-op for a disk whose cache type is "Unsafe").
//! This is `IOSQE_IO_DRAIN`'s rule, kept here rather than by the kernel so that it also covers
//! the rest of a short transfer, which is resubmitted after the flush was taken.
//!
//! Discard and write-zeroes are not submitted: they are `fallocate` calls (with a fallback that
//! writes zeroes), which io_uring would run on one of its worker threads anyway, since
//! fallocate has no asynchronous path in the kernel; doing them on the I/O thread keeps the one
//! implementation with its fallback and bounds their work the same way (see
//! `request::MAX_WRITE_ZEROES_SECTORS`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use io_uring::{IoUring, opcode, types};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::QUEUE_SIZE;
use super::disk::{Disk, advance};
use super::request::{DiskOp, Executed, Kind, Request};

/// Requests in flight at most: the queue's size, so a driver that keeps its own count within
/// the queue never waits for a slot.
pub const SLOTS: usize = QUEUE_SIZE as usize;

/// User data of a cancellation's own completion, which answers nothing.
const CANCEL: u64 = u64::MAX;

/// Whether this host can run the Async engine: a small ring can be created (the kernel has
/// io_uring, and neither `kernel.io_uring_disabled` nor a seccomp filter forbids it). Asked
/// of the kernel once per process; later calls repeat the answer.
pub fn probe() -> io::Result<()> {
    static ANSWER: OnceLock<Option<i32>> = OnceLock::new();
    let errno = ANSWER.get_or_init(|| {
        IoUring::new(2)
            .err()
            .map(|err| err.raw_os_error().unwrap_or(libc::ENOSYS))
    });
    errno.map_or(Ok(()), |errno| Err(io::Error::from_raw_os_error(errno)))
}

/// What [`Uring::start`] did with a request.
#[derive(Debug)]
pub enum Started {
    /// Submitted (or waiting in its slot for the requests before it): it comes back from
    /// [`Uring::reap`].
    InFlight,
    /// Answered at once (refused, or the engine could not take it).
    Done(Request, Executed),
}

/// An io_uring with its completion event and the requests in flight.
pub struct Uring {
    ring: IoUring,
    completions: Arc<EventFd>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// A flush waiting in its slot for the requests before it to complete.
    barrier: Option<usize>,
}

/// A request the host is working on.
struct InFlight {
    /// Its chain's head, to return it to the driver.
    head: u16,
    req: Request,
    op: DiskOp,
    /// The first iovec not moved completely yet: a short transfer goes on from there.
    first: usize,
    /// Bytes moved so far.
    moved: u64,
}

// SAFETY: the only thing tying an `InFlight` to a thread would be the raw iovec pointers,
// which point into guest memory: memory every vCPU thread shares anyway, mapped for as long
// as the device's `GuestMemoryMmap` lives, whichever thread holds the request.
unsafe impl Send for InFlight {}

impl Uring {
    /// A ring with room for [`SLOTS`] requests, announcing completions on an eventfd.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(SLOTS as u32)?;
        let completions = EventFd::new(libc::EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(completions.as_raw_fd())?;
        Ok(Self {
            ring,
            completions: Arc::new(completions),
            slots: (0..SLOTS).map(|_| None).collect(),
            free: (0..SLOTS).rev().collect(),
            barrier: None,
        })
    }

    /// The event written whenever requests complete.
    pub fn completions(&self) -> Arc<EventFd> {
        self.completions.clone()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        SLOTS - self.free.len()
    }

    /// Whether no request can be taken now: every slot is in use, or a flush waits for the
    /// requests before it.
    pub fn busy(&self) -> bool {
        self.free.is_empty() || self.barrier.is_some()
    }

    /// Starts `req`, a read, write or flush from the chain at `head`, on `disk` (submitted by
    /// the next [`Uring::submit`]).
    pub fn start(
        &mut self,
        head: u16,
        req: Request,
        mem: &GuestMemoryMmap,
        disk: &Disk,
    ) -> Started {
        let op = match req.prepare(mem, disk) {
            Ok(op) => op,
            Err(done) => return Started::Done(req, done),
        };
        let waits = matches!(op, DiskOp::Flush) && self.in_flight() > 0;
        let Some(slot) = self.free.pop() else {
            // The caller checks `busy` first; answered rather than trusted.
            let full = io::Error::from_raw_os_error(libc::EBUSY);
            let done = req.complete(mem, Err(full), false);
            return Started::Done(req, done);
        };
        self.slots[slot] = Some(InFlight {
            head,
            req,
            op,
            first: 0,
            moved: 0,
        });
        if waits {
            self.barrier = Some(slot);
        } else if let Err(err) = self.push(slot, disk) {
            let Some(f) = self.release(slot) else {
                return Started::InFlight;
            };
            let done = f.req.complete(mem, Err(err), false);
            return Started::Done(f.req, done);
        }
        Started::InFlight
    }

    /// Hands what was started since the last call to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        while !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Collects what the host finished: continues short transfers, starts a waiting flush
    /// once it is alone, and hands each answered request to `done` with its chain's head.
    pub fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        mut done: impl FnMut(u16, Request, Executed),
    ) {
        let mut batch = [(0u64, 0i32); 32];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion().take(batch.len()) {
                batch[n] = (cqe.user_data(), cqe.result());
                n += 1;
            }
            if n == 0 {
                break;
            }
            for &(data, res) in &batch[..n] {
                let Ok(slot) = usize::try_from(data) else {
                    continue;
                };
                if let Some((head, req, result)) = self.completed(slot, res, disk) {
                    let synced = req.kind == Kind::Flush && disk.writeback();
                    let executed = req.complete(mem, result, synced);
                    done(head, req, executed);
                }
            }
        }
        if let Some(slot) = self.barrier.filter(|_| self.in_flight() == 1) {
            self.barrier = None;
            if let Err(err) = self.push(slot, disk) {
                if let Some(f) = self.release(slot) {
                    let executed = f.req.complete(mem, Err(err), false);
                    done(f.head, f.req, executed);
                }
            }
        }
    }

    /// Waits until the host has finished at least one request (tests and benchmarks drive a
    /// device without an I/O worker this way).
    pub fn wait(&mut self) -> io::Result<()> {
        self.submit()?;
        loop {
            match self.ring.submit_and_wait(1) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(drop),
            }
        }
    }

    /// Gives up every request in flight and waits until the kernel no longer touches their
    /// buffers; none is answered. For a device reset and for the device's end: afterwards the
    /// guest may reuse its memory, so nothing may still be written into it.
    pub fn abandon(&mut self) {
        if let Some(slot) = self.barrier.take() {
            self.release(slot);
        }
        for slot in 0..SLOTS {
            if self.slots[slot].is_some() {
                let cancel = opcode::AsyncCancel::new(slot as u64)
                    .build()
                    .user_data(CANCEL);
                // SAFETY: a cancellation refers to no memory; its user data matches no slot.
                // With one entry per slot in flight, the submission queue has room for it.
                let _ = unsafe { self.ring.submission().push(&cancel) };
            }
        }
        while self.in_flight() > 0 {
            if let Err(err) = self.wait() {
                log::warn!("virtio-blk: cannot wait for requests in flight: {err}");
                return;
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for data in done {
                if let Ok(slot) = usize::try_from(data) {
                    self.release(slot);
                }
            }
        }
    }

    /// Handles one completion of `slot`: the request's result, or None if it goes on (a short
    /// transfer or an interrupted one resubmitted) or is not one of ours.
    fn completed(
        &mut self,
        slot: usize,
        res: i32,
        disk: &Disk,
    ) -> Option<(u16, Request, io::Result<()>)> {
        let f = self.slots.get_mut(slot)?.as_mut()?;
        // None: the operation goes on (resubmitted).
        let outcome = if res == -libc::EINTR || res == -libc::EAGAIN {
            None
        } else if res < 0 {
            Some(Err(io::Error::from_raw_os_error(-res)))
        } else {
            // Non-negative, so the casts keep the value.
            f.moved += res as u64;
            match &mut f.op {
                DiskOp::Read { iovecs, .. } | DiskOp::Write { iovecs, .. }
                    if f.moved < f.req.data_len() =>
                {
                    if res == 0 {
                        Some(Err(io::Error::from(io::ErrorKind::UnexpectedEof)))
                    } else {
                        f.first += advance(&mut iovecs[f.first..], res as usize);
                        None
                    }
                }
                _ => Some(Ok(())),
            }
        };
        let result = match outcome {
            Some(result) => result,
            None => match self.push(slot, disk) {
                Ok(()) => return None,
                Err(err) => Err(err),
            },
        };
        let f = self.release(slot)?;
        Some((f.head, f.req, result))
    }

    /// Frees `slot`, returning what it held.
    fn release(&mut self, slot: usize) -> Option<InFlight> {
        let f = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(f)
    }

    /// Queues the submission of `slot`'s operation (the rest of it after a short transfer).
    fn push(&mut self, slot: usize, disk: &Disk) -> io::Result<()> {
        let Some(f) = self.slots.get(slot).and_then(Option::as_ref) else {
            return Ok(());
        };
        let fd = types::Fd(disk.as_raw_fd());
        let entry = match &f.op {
            DiskOp::Read { offset, iovecs } | DiskOp::Write { offset, iovecs } => {
                let rest = &iovecs[f.first..];
                let count = rest.len().min(libc::UIO_MAXIOV as usize) as u32;
                let at = offset + f.moved;
                if matches!(f.op, DiskOp::Read { .. }) {
                    opcode::Readv::new(fd, rest.as_ptr(), count)
                        .offset(at)
                        .build()
                } else {
                    opcode::Writev::new(fd, rest.as_ptr(), count)
                        .offset(at)
                        .build()
                }
            }
            DiskOp::Flush if disk.writeback() => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            // "Unsafe": acknowledged without syncing, still after the requests before it.
            DiskOp::Flush => opcode::Nop::new().build(),
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: the iovec array lives in the slot and the buffers it describes in guest
        // memory (checked by `parse`), both until this operation's completion is reaped or
        // `abandon` has waited for it; the fd is the disk's, which is replaced only when
        // nothing is in flight.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // A full submission queue: hand it what waits, and try once more.
            self.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        Ok(())
    }
}

/// The kernel must not write into guest memory after the device is gone.
impl Drop for Uring {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

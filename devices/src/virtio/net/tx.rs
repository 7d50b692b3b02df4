//! The transmitting half of a virtio-net device: frames from the guest's transmit queue to the
//! backend, straight from guest memory (writev). The frames waiting in the ring go in runs of
//! up to [`uring::RUN`] with one [`Backend::send_run`] (for a TAP, one syscall; see
//! `uring.rs`), and only once the run is written are its chains returned to the guest. A
//! transmit the backend refuses (EAGAIN) stays in the ring, with the frames after it, until
//! the backend is writable; so does one the transmit rate limiter refuses, until the limiter's
//! timer fires. With MMDS, a frame for the MMDS address goes to the interface's MMDS stack
//! instead of the backend (uncharged, as Firecracker does), and the stack is polled once the
//! pass is over. A run holds only frames for the backend: a frame for the MMDS, or one that is
//! dropped or throttled, ends it and is served on its own.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use log::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::device::{Io, IoVecs, TX};
use super::frame::{self, VnetHeader};
use super::mmds::{MmdsLink, PEEK_LEN};
use super::tap::Backend;
use super::uring::{self, Outcome};
use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::rate_limiter::RateLimiter;
use crate::virtio::chain::{self, Chain, Segment};
use crate::virtio::{Step, serve_chain_runs, signal_used};

/// Everything transmitting needs besides what both directions share ([`Io`]).
#[derive(Default)]
pub(super) struct Tx {
    pub(super) queue: Option<Queue>,
    /// The backend refused a frame; wait until it is writable.
    pub(super) blocked: bool,
    /// A transmit chain's buffers, and the iovecs and frames of a run, reused from run to
    /// run.
    segments: Vec<Segment>,
    iovecs: IoVecs,
    run: Vec<RunFrame>,
    /// Charges each frame one op and its bytes (header included, as Firecracker counts).
    pub(super) limiter: Option<Arc<RateLimiter>>,
}

impl Tx {
    /// Starts serving `queue` (the driver activated the device).
    pub(super) fn activate(&mut self, queue: Queue) {
        self.queue = Some(queue);
        self.blocked = false;
    }

    /// Moves frames from the guest to the backend (at most `budget`); true if more may be
    /// waiting.
    pub(super) fn process<B: Backend>(&mut self, io: &mut Io<B>, budget: usize) -> bool {
        if io.backend_failed {
            return false;
        }
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        let (mem, backend, stats, name, acked) =
            (&io.mem, &mut io.backend, &mut io.stats, &io.name, io.acked);
        let mut mmds = io.mmds.as_mut();
        let (segments, iovecs, run) = (&mut self.segments, &mut self.iovecs, &mut self.run);
        let limiter = self.limiter.as_deref();
        let (mut blocked, mut throttled) = (false, false);
        let served = serve_chain_runs(queue, mem, budget, |chain, following| {
            let mut check = Check {
                mem,
                acked,
                limiter,
                segments: &mut *segments,
                iovecs: &mut *iovecs,
                run: &mut *run,
            };
            check.start();
            match check.frame(chain, mmds.as_deref_mut(), true) {
                Ok(()) => {}
                Err(TxError::Throttled) => {
                    throttled = true;
                    return Step::Retry;
                }
                Err(TxError::Drop(why)) => {
                    warn!("virtio-net {name}: transmitted frame dropped: {why}");
                    stats.tx_dropped += 1;
                    return Step::Used(0);
                }
                Err(TxError::Mmds) => return Step::Used(0),
            }
            // The frames after it join the run while they are for the backend; the first
            // that is not goes back to the ring, to be served on its own.
            while check.run.len() < uring::RUN {
                let Some(next) = following.take() else { break };
                if check.frame(next, mmds.as_deref_mut(), false).is_err() {
                    following.keep(check.run.len() - 1);
                    break;
                }
            }
            let sent = check.send(backend);
            stats.tx_frames += sent.count as u64;
            stats.tx_bytes += sent.bytes;
            if let Some(why) = sent.dropped_why {
                warn!(
                    "virtio-net {name}: {} transmitted frame(s) dropped: {why}",
                    sent.dropped
                );
                stats.tx_dropped += sent.dropped as u64;
            }
            blocked |= sent.full;
            // The chains of the frames done with go back to the guest; the rest stay in the
            // ring.
            match sent.done {
                0 => Step::Retry,
                done => {
                    following.keep(done - 1);
                    if sent.full {
                        Step::UsedLast(0)
                    } else {
                        Step::Used(0)
                    }
                }
            }
        });
        self.blocked = blocked;
        if let Some(mmds) = io.mmds.as_mut() {
            mmds.poll_if_needed();
        }
        match served {
            Ok(served) => {
                signal_used(queue, TX as u16, mem, &io.interrupt, served.count);
                served.more && !blocked && !throttled
            }
            Err(err) => {
                warn!("virtio-net {name}: transmit queue: {err}");
                self.queue = None;
                io.interrupt.needs_reset();
                false
            }
        }
    }
}

/// Why a frame does not join the run.
enum TxError {
    /// The rate limiter refused it; try again when its timer fires.
    Throttled,
    /// It went to the MMDS.
    Mmds,
    /// The frame is dropped.
    Drop(String),
}

/// A frame of the run: its iovecs in [`Tx::iovecs`], its bytes with and without the
/// virtio-net header.
struct RunFrame {
    iovecs: Range<usize>,
    total: u64,
    len: usize,
}

/// Checks transmit chains and gathers the frames for the backend into a run.
struct Check<'a> {
    mem: &'a GuestMemoryMmap,
    acked: u64,
    limiter: Option<&'a RateLimiter>,
    segments: &'a mut Vec<Segment>,
    iovecs: &'a mut IoVecs,
    run: &'a mut Vec<RunFrame>,
}

/// What became of a run.
struct Sent {
    /// The frames it is done with, from the first: sent, or dropped.
    done: usize,
    /// Of those, the frames sent and their bytes (headers not counted), and the frames
    /// dropped, with why the first was.
    count: usize,
    bytes: u64,
    dropped: usize,
    dropped_why: Option<String>,
    /// The backend was full at the first frame not done with.
    full: bool,
}

impl Check<'_> {
    /// Starts a new run.
    fn start(&mut self) {
        self.run.clear();
        self.iovecs.0.clear();
    }

    /// Checks one transmit chain: a frame for the backend joins the run (charged to the rate
    /// limiter); one for `mmds` is handed to it if `take_mmds`. Nothing is charged or changed
    /// for a chain that does not join the run but that handing over.
    fn frame(
        &mut self,
        chain: Chain<'_>,
        mmds: Option<&mut MmdsLink>,
        take_mmds: bool,
    ) -> Result<(), TxError> {
        let mem = self.mem;
        readable_segments(mem, chain, self.segments).map_err(TxError::Drop)?;
        let segments = &*self.segments;
        let total = chain::total(segments);
        let len = total.saturating_sub(VNET_HDR_LEN as u64);
        if len > MAX_FRAME_LEN as u64 {
            return Err(TxError::Drop(frame::FrameError::TooLong(len).to_string()));
        }
        let len = len as usize;
        // With MMDS, as much of the frame as the detour rule reads; else just the header.
        let mut peek = [0u8; PEEK_LEN];
        let peeked = if mmds.is_some() {
            PEEK_LEN.min(total as usize)
        } else {
            VNET_HDR_LEN
        };
        chain::read_into(mem, segments, &mut peek[..peeked])
            .map_err(|_| TxError::Drop(frame::FrameError::TooShort(0).to_string()))?;
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr.copy_from_slice(&peek[..VNET_HDR_LEN]);
        frame::check_tx(&VnetHeader::parse(&hdr), len, self.acked)
            .map_err(|e| TxError::Drop(e.to_string()))?;
        if let Some(mmds) = mmds.filter(|m| m.wants(&peek[VNET_HDR_LEN..peeked])) {
            if take_mmds {
                mmds.take(mem, segments, len);
            }
            return Err(TxError::Mmds);
        }
        let iovecs = &mut self.iovecs.0;
        let start = iovecs.len();
        let undo = |iovecs: &mut VecDeque<libc::iovec>, why: String| {
            iovecs.truncate(start);
            TxError::Drop(why)
        };
        for seg in segments {
            if let Err(e) = chain::push_iovecs(mem, *seg, iovecs) {
                return Err(undo(iovecs, e.to_string()));
            }
        }
        let pieces = iovecs.len() - start;
        if pieces > libc::UIO_MAXIOV as usize {
            return Err(undo(
                iovecs,
                format!("the frame is split into {pieces} pieces"),
            ));
        }
        if self.limiter.is_some_and(|l| !l.consume_op(total)) {
            iovecs.truncate(start);
            return Err(TxError::Throttled);
        }
        self.run.push(RunFrame {
            iovecs: start..iovecs.len(),
            total,
            len,
        });
        Ok(())
    }

    /// Writes the run to the backend. Each frame has its own outcome: the run is done with
    /// every frame up to the last one sent (a failed one before it is dropped: sending it
    /// later would reorder the frames) and with the refused or cut frames right after it; from
    /// a frame the full backend did not take (or that was not tried), the frames wait in the
    /// ring, refunded to the rate limiter (charged again when retried; a dropped frame stays
    /// charged).
    fn send<B: Backend>(self, backend: &mut B) -> Sent {
        let iovecs = self.iovecs.0.make_contiguous();
        // On the stack: the transmit path allocates nothing.
        let mut frames: [&[libc::iovec]; uring::RUN] = [&[]; uring::RUN];
        for (slot, frame) in frames.iter_mut().zip(self.run.iter()) {
            *slot = &iovecs[frame.iovecs.clone()];
        }
        let run = &self.run[..];
        let frames = &frames[..run.len()];
        let mut outcomes = [Outcome::NotTried; uring::RUN];
        // SAFETY: the iovecs cover guest memory checked against the memory map, which stays
        // mapped for as long as `mem` lives, longer than this call; the kernel only reads it.
        unsafe { backend.send_run(frames, &mut outcomes) };
        let outcomes = &outcomes[..run.len()];
        let mut done = outcomes
            .iter()
            .rposition(|o| *o == Outcome::Sent)
            .map_or(0, |last| last + 1);
        // Frames refused after it are dropped too: they never went out, and trying them again
        // would only have the host refuse them again (a guest could make every run that).
        while let Some(Outcome::Refused(_) | Outcome::Short(_)) = outcomes.get(done) {
            done += 1;
        }
        let full = outcomes.get(done) == Some(&Outcome::Full);
        let mut sent = Sent {
            done,
            count: 0,
            bytes: 0,
            dropped: 0,
            dropped_why: None,
            full,
        };
        for (frame, outcome) in run.iter().zip(outcomes).take(done) {
            let why = match *outcome {
                Outcome::Sent => {
                    sent.count += 1;
                    sent.bytes += frame.len as u64;
                    continue;
                }
                Outcome::Full | Outcome::NotTried => {
                    "the host was full and a frame after it went out".to_string()
                }
                Outcome::Refused(errno) => {
                    let err = io::Error::from_raw_os_error(errno);
                    format!("the host refused it: {err}")
                }
                Outcome::Short(n) => format!("the host took {n} of {} bytes", frame.total),
            };
            sent.dropped += 1;
            sent.dropped_why.get_or_insert(why);
        }
        if let Some(limiter) = self.limiter {
            for frame in &run[done..] {
                limiter.refund_op(frame.total);
            }
        }
        sent
    }
}

/// Collects a transmit chain's buffers into `segments`, or says why the frame is dropped.
fn readable_segments(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    segments: &mut Vec<Segment>,
) -> Result<(), String> {
    segments.clear();
    for desc in chain {
        let desc = desc.map_err(|e| e.to_string())?;
        if desc.is_write_only() {
            return Err("a transmit buffer is device-writable".into());
        }
        let seg = Segment::checked(mem, desc.addr(), desc.len()).ok_or_else(|| {
            format!(
                "transmit buffer {:#x}+{} lies outside guest memory",
                desc.addr().0,
                desc.len()
            )
        })?;
        segments.push(seg);
    }
    Ok(())
}

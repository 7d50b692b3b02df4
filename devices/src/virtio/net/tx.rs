//! The transmitting half of a virtio-net device: frames from the guest's transmit queue to the
//! backend, straight from guest memory (writev). A transmit the backend refuses (EAGAIN) stays
//! in the ring until the backend is writable; so does one the transmit rate limiter refuses,
//! until the limiter's timer fires. With MMDS, a frame for the MMDS address goes to the
//! interface's MMDS stack instead of the backend (uncharged, as Firecracker does), and the
//! stack is polled once the pass is over.

use std::io;
use std::sync::Arc;

use log::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::device::{Io, IoVecs, TX};
use super::frame::{self, VnetHeader};
use super::mmds::{MmdsLink, PEEK_LEN};
use super::tap::Backend;
use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::rate_limiter::RateLimiter;
use crate::virtio::chain::{self, Chain, Segment};
use crate::virtio::{Step, serve_chains, signal_used};

/// Everything transmitting needs besides what both directions share ([`Io`]).
#[derive(Default)]
pub(super) struct Tx {
    pub(super) queue: Option<Queue>,
    /// The backend refused a frame; wait until it is writable.
    pub(super) blocked: bool,
    /// A transmit chain's buffers, and their iovecs, reused from frame to frame.
    segments: Vec<Segment>,
    iovecs: IoVecs,
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
        let (segments, iovecs) = (&mut self.segments, &mut self.iovecs);
        let limiter = self.limiter.as_deref();
        let (mut blocked, mut throttled) = (false, false);
        let served = serve_chains(queue, mem, budget, |chain| {
            let out = Out {
                backend: &mut *backend,
                mmds: mmds.as_deref_mut(),
                limiter,
            };
            match transmit(mem, out, chain, acked, segments, iovecs) {
                Ok(Sent::Backend(len)) => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += len as u64;
                }
                Ok(Sent::Mmds) => {}
                Err(TxError::Full) => {
                    blocked = true;
                    return Step::Retry;
                }
                Err(TxError::Throttled) => {
                    throttled = true;
                    return Step::Retry;
                }
                Err(TxError::Drop(why)) => {
                    warn!("virtio-net {name}: transmitted frame dropped: {why}");
                    stats.tx_dropped += 1;
                }
            }
            Step::Used(0)
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

/// Why a transmit did not happen.
enum TxError {
    /// The backend is full; try again when it is writable.
    Full,
    /// The rate limiter refused it; try again when its timer fires.
    Throttled,
    /// The frame is dropped.
    Drop(String),
}

/// Where a transmitted frame may go.
struct Out<'a, B> {
    backend: &'a mut B,
    mmds: Option<&'a mut MmdsLink>,
    limiter: Option<&'a RateLimiter>,
}

/// Where a transmitted frame went.
enum Sent {
    /// To the backend; its length.
    Backend(usize),
    /// To the MMDS.
    Mmds,
}

/// Checks one transmit chain and writes its frame to the backend, or hands it to the MMDS.
fn transmit<B: Backend>(
    mem: &GuestMemoryMmap,
    out: Out<'_, B>,
    chain: Chain<'_>,
    acked: u64,
    segments: &mut Vec<Segment>,
    iovecs: &mut IoVecs,
) -> Result<Sent, TxError> {
    let Out {
        backend,
        mmds,
        limiter,
    } = out;
    readable_segments(mem, chain, segments).map_err(TxError::Drop)?;
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
    frame::check_tx(&VnetHeader::parse(&hdr), len, acked)
        .map_err(|e| TxError::Drop(e.to_string()))?;
    if let Some(mmds) = mmds.filter(|m| m.wants(&peek[VNET_HDR_LEN..peeked])) {
        mmds.take(mem, segments, len);
        return Ok(Sent::Mmds);
    }
    let iovecs = &mut iovecs.0;
    iovecs.clear();
    for seg in segments.iter() {
        chain::push_iovecs(mem, *seg, iovecs).map_err(|e| TxError::Drop(e.to_string()))?;
    }
    let iovecs = iovecs.make_contiguous();
    if iovecs.len() > libc::UIO_MAXIOV as usize {
        return Err(TxError::Drop(format!(
            "the frame is split into {} pieces",
            iovecs.len()
        )));
    }
    if limiter.is_some_and(|l| !l.consume_op(total)) {
        return Err(TxError::Throttled);
    }
    loop {
        // SAFETY: the iovecs cover guest memory checked against the memory map, which stays
        // mapped for as long as `mem` lives, longer than this call; the kernel only reads it.
        match unsafe { backend.send(iovecs) } {
            Ok(n) if n as u64 == total => return Ok(Sent::Backend(len)),
            Ok(n) => return Err(TxError::Drop(format!("the host took {n} of {total} bytes"))),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                // Charged again when it is retried.
                if let Some(limiter) = limiter {
                    limiter.refund_op(total);
                }
                return Err(TxError::Full);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(TxError::Drop(format!("the host refused it: {err}"))),
        }
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

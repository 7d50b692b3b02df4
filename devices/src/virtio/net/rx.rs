//! The receiving half of a virtio-net device: frames from the backend into the guest's receive
//! queue, straight into guest buffers when they have room for any frame, else through the
//! device's one-frame buffer (with mergeable buffers a frame's size decides how many chains it
//! takes, and it is known only after the read). A frame that finds too little room waits, and
//! the backend is not read again until the driver adds buffers. With a rate limiter, a frame
//! is charged (one op, its bytes with the header) once read and before the guest sees it; a
//! frame the limiter refuses waits, unseen, for the limiter's timer, and the backend is not
//! read meanwhile.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::device::{Io, IoVecs, RX};
use super::frame;
use super::tap::Backend;
use super::{MAX_FRAME_LEN, VNET_HDR_LEN, features};
use crate::rate_limiter::RateLimiter;
use crate::virtio::chain::{self, Chain, Segment};
use crate::virtio::{QueueError, signal_used};

/// A frame with its header, as read from the backend.
const BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Most receive buffers the device holds between frames: ample for a largest frame in
/// buffers of any sensible size (Linux uses one page or more each), small enough that what
/// a guest can make the device keep stays a few tens of KiB.
pub(super) const MAX_HELD_SEGMENTS: usize = 1024;

/// Everything receiving needs besides what both directions share ([`Io`]).
pub(super) struct Rx {
    pub(super) queue: Option<Queue>,
    /// The frame being delivered: `frame_len` bytes with its header, of which the chains in
    /// `partial` hold the start (`partial_first` being the first one's buffers) and `pending`
    /// bytes of `buf` from `pending_at` are still to go.
    buf: Box<[u8]>,
    pending: usize,
    pending_at: usize,
    frame_len: usize,
    partial: Vec<(u16, u32)>,
    partial_first: Vec<Segment>,
    /// The guest's available index when a frame last found too little room; reading resumes
    /// when it moves.
    starved_at: Option<Wrapping<u16>>,
    pub(super) scratch: Scratch,
    pub(super) limiter: Option<Arc<RateLimiter>>,
    /// The frame being delivered was charged to the limiter (or there is none).
    admitted: bool,
    /// The MMDS stack's frames go next (they take turns with the backend's).
    mmds_turn: bool,
}

/// How reading a frame straight into guest buffers went.
enum Direct {
    /// A frame was read; how delivering it went.
    Done(Delivery),
    /// The backend has no frame, or failed.
    Empty,
    /// The guest's buffers cannot be used directly: use the buffered path.
    NoRoom,
}

/// A receive chain the device has popped and not yet filled.
pub(super) struct Held {
    head: u16,
    room: u64,
    segments: usize,
    iovecs: usize,
}

/// The receive chains the device holds between frames, reused from frame to frame.
#[derive(Default)]
pub(super) struct Scratch {
    /// Receive chains taken from the ring, oldest first: always the last ones popped, so
    /// they can be handed back by stepping the ring's index back.
    pub(super) held: VecDeque<Held>,
    pub(super) held_segments: VecDeque<Segment>,
    pub(super) held_iovecs: IoVecs,
    held_room: u64,
}

impl Scratch {
    fn forget_held(&mut self) {
        self.held.clear();
        self.held_segments.clear();
        self.held_iovecs.0.clear();
        self.held_room = 0;
    }
}

/// How delivering the pending frame went.
enum Delivery {
    Done,
    /// The rate limiter refused it for now; wait for its timer.
    Throttled,
    /// Too little room now; wait for the driver to add buffers.
    Starved,
    /// The frame cannot be delivered; it is dropped.
    Dropped(&'static str),
}

impl Rx {
    pub(super) fn new() -> Self {
        Self {
            queue: None,
            buf: vec![0; BUF_LEN].into_boxed_slice(),
            pending: 0,
            pending_at: 0,
            frame_len: 0,
            partial: Vec::new(),
            partial_first: Vec::new(),
            starved_at: None,
            scratch: Scratch::default(),
            limiter: None,
            admitted: true,
            mmds_turn: false,
        }
    }

    /// Whether a frame could be taken now: the queue works and has not run out of room.
    pub(super) fn wants_frames(&self) -> bool {
        self.queue.is_some()
            && self.starved_at.is_none()
            && !self.limiter.as_ref().is_some_and(|l| l.is_blocked())
    }

    /// Starts serving `queue` (the driver activated the device).
    pub(super) fn activate(&mut self, queue: Queue) {
        self.scratch.forget_held();
        self.queue = Some(queue);
        self.starved_at = None;
    }

    /// Stops serving, dropping the frame being delivered (the driver reset the device).
    pub(super) fn reset(&mut self) {
        self.queue = None;
        self.scratch.forget_held();
        self.pending = 0;
        self.partial.clear();
        self.admitted = true;
    }

    /// Moves frames from the backend into the guest (at most `budget`); true if more may be
    /// waiting.
    pub(super) fn process<B: Backend>(&mut self, io: &mut Io<B>, budget: usize) -> bool {
        if self.queue.is_none() || io.backend_failed {
            return false;
        }
        if let Some(seen) = self.starved_at {
            // Woken by a notification: go on only if the driver really added buffers.
            match self.avail_idx(io) {
                Some(now) if now != seen => self.starved_at = None,
                Some(_) => return false,
                None => return false,
            }
        }
        let mut delivered = 0;
        let mut more = false;
        while let Some(result) = self.next(io) {
            match result {
                Delivery::Done => delivered += 1,
                Delivery::Throttled => break,
                Delivery::Starved => {
                    let Some(seen) = self.avail_idx(io) else {
                        break;
                    };
                    self.starved_at = Some(seen);
                    // Ask for a notification, then look once more: buffers the driver added
                    // in between would not notify.
                    let Some(queue) = self.queue.as_mut() else {
                        break;
                    };
                    if let Err(err) = queue.enable_notification(&io.mem) {
                        self.fail(io, err.into());
                        break;
                    }
                    match self.avail_idx(io) {
                        Some(now) if now != seen => self.starved_at = None,
                        _ => break,
                    }
                }
                Delivery::Dropped(why) => {
                    warn!("virtio-net {}: received frame dropped: {why}", io.name);
                    io.stats.rx_dropped += 1;
                }
            }
            if delivered >= budget {
                more = true;
                break;
            }
        }
        if let Some(queue) = self.queue.as_mut() {
            signal_used(queue, RX as u16, &io.mem, &io.interrupt, delivered);
        }
        if let Some(mmds) = io.mmds.as_mut() {
            mmds.end_pass();
        }
        more
    }

    /// Delivers the next frame: the one being delivered, else the MMDS's and the backend's
    /// in turn (either one when the other has none). `None` when there is none.
    fn next<B: Backend>(&mut self, io: &mut Io<B>) -> Option<Delivery> {
        if self.pending > 0 || !self.admitted {
            return Some(self.deliver(io));
        }
        if self.mmds_turn {
            if let Some(delivery) = self.receive_mmds(io) {
                return Some(delivery);
            }
        }
        match self.receive_direct(io) {
            Direct::Done(delivery) => {
                self.mmds_turn = true;
                return Some(delivery);
            }
            Direct::NoRoom if self.read_frame(io) => {
                self.mmds_turn = true;
                return Some(self.deliver(io));
            }
            Direct::Empty | Direct::NoRoom => {}
        }
        self.receive_mmds(io)
    }

    /// Delivers the MMDS stack's next frame, if it has one. It goes through the device's
    /// buffer (frames are small), and is not charged to the rate limiter, as transmitted
    /// MMDS frames are not.
    fn receive_mmds<B>(&mut self, io: &mut Io<B>) -> Option<Delivery> {
        let n = io.mmds.as_mut()?.pop(&mut self.buf[VNET_HDR_LEN..])?;
        // Chains held for a direct read go back first: delivering takes them in ring order.
        self.release_held();
        self.buf[..VNET_HDR_LEN].fill(0);
        self.frame_len = VNET_HDR_LEN + n;
        self.pending = self.frame_len;
        self.pending_at = 0;
        self.admitted = true;
        self.mmds_turn = false;
        Some(self.deliver(io))
    }

    fn avail_idx<B>(&mut self, io: &Io<B>) -> Option<Wrapping<u16>> {
        let queue = self.queue.as_ref()?;
        match queue.avail_idx(&io.mem, Ordering::Acquire) {
            Ok(idx) => Some(idx),
            Err(err) => {
                self.fail(io, err.into());
                None
            }
        }
    }

    /// Gives the receive chains the device holds back to the ring, unfilled.
    fn release_held(&mut self) {
        if let Some(queue) = self.queue.as_mut() {
            let held = self.scratch.held.len() as u16;
            queue.set_next_avail(queue.next_avail().wrapping_sub(held));
        }
        self.scratch.forget_held();
    }

    /// Tops the held receive chains up to room for the largest frame. False if they cannot
    /// take a frame directly: a malformed chain (left for the buffered path, which returns it
    /// and counts the drop), or too little room without mergeable buffers. With mergeable
    /// buffers less room is fine: what does not fit spills into the device's buffer, which is
    /// also what happens once the device holds [`MAX_HELD_SEGMENTS`] buffers or a whole ring's
    /// worth of chains, so a guest publishing empty buffers cannot make it hold more.
    fn hold_room<B>(&mut self, io: &Io<B>) -> bool {
        let mergeable = io.has(features::MRG_RXBUF);
        let Some(queue) = self.queue.as_mut() else {
            return false;
        };
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mem = &io.mem;
        let sc = &mut self.scratch;
        // One read of the available index for the whole top-up.
        let Ok(mut avail) = queue.iter(mem) else {
            self.release_held();
            return false;
        };
        let mut bad = false;
        while sc.held_room < BUF_LEN as u64
            && (mergeable || sc.held.is_empty())
            && sc.held.len() < usize::from(size)
            && sc.held_segments.len() < MAX_HELD_SEGMENTS
            && !bad
        {
            let Some(chain) = avail.next() else {
                break;
            };
            let head = chain.head_index();
            let (mut room, mut segments, mut iovecs) = (0, 0, 0);
            for desc in Chain::in_table(mem, table, size, head) {
                let Some(seg) = desc.ok().and_then(|desc| {
                    Segment::checked(mem, desc.addr(), desc.len()).filter(|_| desc.is_write_only())
                }) else {
                    bad = true;
                    break;
                };
                let Ok(count) = chain::push_iovecs(mem, seg, &mut sc.held_iovecs.0) else {
                    bad = true;
                    break;
                };
                room += seg.len;
                segments += 1;
                iovecs += count;
                sc.held_segments.push_back(seg);
            }
            sc.held.push_back(Held {
                head,
                room,
                segments,
                iovecs,
            });
            sc.held_room += room;
        }
        if bad || (!mergeable && self.scratch.held_room < BUF_LEN as u64) {
            self.release_held();
            return false;
        }
        true
    }

    /// Reads the next frame straight into the guest's receive buffers. When they might be too
    /// small for it (mergeable buffers running low), the device's buffer catches the rest,
    /// which [`Rx::deliver`] copies into further buffers as the driver adds them.
    fn receive_direct<B: Backend>(&mut self, io: &mut Io<B>) -> Direct {
        if !self.hold_room(io) {
            return Direct::NoRoom;
        }
        let room = self.scratch.held_room;
        let spill = (BUF_LEN as u64).saturating_sub(room) as usize;
        if spill > 0 {
            self.scratch.held_iovecs.0.push_back(libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: spill,
            });
        }
        let read = loop {
            let iovecs = self.scratch.held_iovecs.0.make_contiguous();
            // SAFETY: the iovecs cover guest memory checked against the memory map, mapped
            // for as long as `mem` lives (receive buffers the driver gave the device to
            // write), and the start of `buf`, which this call borrows exclusively.
            match unsafe { io.backend.recv_vectored(iovecs) } {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        if spill > 0 {
            self.scratch.held_iovecs.0.pop_back();
        }
        let n = match read {
            Ok(n) if n >= VNET_HDR_LEN => n,
            // Nothing usable arrived; the chains stay held.
            Ok(_) => return Direct::Done(Delivery::Dropped("the host sent a runt frame")),
            Err(err) => {
                if err.kind() != io::ErrorKind::WouldBlock {
                    warn!(
                        "virtio-net {}: cannot read from the host ({err}); receiving stops",
                        io.name
                    );
                    io.backend_failed = true;
                    self.release_held();
                }
                // The chains stay held for the next frame.
                return Direct::Empty;
            }
        };
        // Move the chains the frame filled from held to the frame being delivered.
        let sc = &mut self.scratch;
        let mut left = n as u64;
        while left > 0 {
            let Some(h) = sc.held.pop_front() else { break };
            let take = h.room.min(left);
            left -= take;
            if self.partial.is_empty() {
                self.partial_first.clear();
                self.partial_first
                    .extend(sc.held_segments.range(..h.segments).copied());
            }
            sc.held_segments.drain(..h.segments);
            sc.held_iovecs.0.drain(..h.iovecs);
            sc.held_room -= h.room;
            self.partial.push((h.head, take as u32));
        }
        self.frame_len = n;
        self.admitted = false;
        // Whatever spilled is still to be delivered, from the start of `buf`.
        self.pending = left as usize;
        self.pending_at = 0;
        Direct::Done(self.deliver(io))
    }

    /// Reads the next frame from the backend; false if there is none.
    fn read_frame<B: Backend>(&mut self, io: &mut Io<B>) -> bool {
        loop {
            match io.backend.recv(&mut self.buf) {
                Ok(n) if n >= VNET_HDR_LEN => {
                    self.pending = n;
                    self.pending_at = 0;
                    self.frame_len = n;
                    self.admitted = false;
                    return true;
                }
                Ok(n) => {
                    warn!("virtio-net {}: the host sent a {n}-byte frame", io.name);
                    io.stats.rx_dropped += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    warn!(
                        "virtio-net {}: cannot read from the host ({err}); receiving stops",
                        io.name
                    );
                    io.backend_failed = true;
                    return false;
                }
            }
        }
    }

    /// Writes the rest of the frame being delivered (`pending` bytes of `buf` from
    /// `pending_at`, after the chains in `partial`) into as many further receive chains as it
    /// needs (one without mergeable buffers), then returns them all to the driver.
    fn deliver<B>(&mut self, io: &mut Io<B>) -> Delivery {
        if !self.admitted {
            if let Some(limiter) = &self.limiter {
                if !limiter.consume_op(self.frame_len as u64) {
                    return Delivery::Throttled;
                }
            }
            self.admitted = true;
        }
        let mergeable = io.has(features::MRG_RXBUF);
        let Some(queue) = self.queue.as_mut() else {
            return Delivery::Starved;
        };
        let mem = &io.mem;
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let start = queue.next_avail();
        let before = self.partial.len();
        let end = self.pending_at + self.pending;
        let mut at = self.pending_at;
        while at < end {
            if self.partial.len() >= usize::from(size) {
                // No frame needs more chains than the ring holds; a driver that keeps
                // publishing empty ones cannot keep this loop going.
                return self.abandon(io, "larger than all the receive buffers together");
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Nothing more is returned now: the chains taken in this attempt stay
                // available.
                let taken = self.partial.len();
                queue.set_next_avail(start);
                self.partial.truncate(before);
                if taken >= usize::from(queue.size()) {
                    return self.abandon(io, "larger than all the receive buffers together");
                }
                self.pending_at = at;
                self.pending = end - at;
                return Delivery::Starved;
            };
            let head = chain.head_index();
            let segments = match writable_segments(mem, Chain::in_table(mem, table, size, head)) {
                Ok(segments) => segments,
                Err(why) => {
                    // Returned empty with the frame's other chains, so the ring moves on.
                    self.partial.push((head, 0));
                    return self.abandon(io, why);
                }
            };
            let room = chain::total(&segments);
            if !mergeable && room < self.frame_len as u64 {
                queue.set_next_avail(start);
                self.partial.truncate(before);
                return self.abandon(io, "larger than the receive buffer");
            }
            let n = chain::write_bytes(mem, &segments, 0, &self.buf[at..end]).unwrap_or(0);
            if self.partial.is_empty() {
                self.partial_first = segments;
            }
            self.partial.push((head, n as u32));
            at += n;
            if n == 0 && room > 0 {
                return self.abandon(io, "a receive buffer cannot be written");
            }
        }
        // The header is the first bytes of the first chain, which holds at least them (frames
        // are longer than the header and each chain took as much as it could).
        let mut hdr = [0u8; VNET_HDR_LEN];
        let header = chain::read_into(mem, &self.partial_first, &mut hdr).and_then(|()| {
            frame::prepare_rx(&mut hdr, self.partial.len() as u16, io.acked);
            chain::write_bytes(mem, &self.partial_first, 0, &hdr).map(|_| ())
        });
        if header.is_err() {
            return self.abandon(io, "a receive buffer cannot be written");
        }
        for &(head, len) in &self.partial {
            if let Err(err) = queue.add_used(mem, head, len) {
                self.fail(io, err.into());
                return Delivery::Starved;
            }
        }
        io.stats.rx_frames += 1;
        io.stats.rx_bytes += (self.frame_len - VNET_HDR_LEN) as u64;
        self.partial.clear();
        self.pending = 0;
        Delivery::Done
    }

    /// Drops the frame being delivered: the chains it took go back to the driver empty.
    fn abandon<B>(&mut self, io: &Io<B>, why: &'static str) -> Delivery {
        self.pending = 0;
        let chains = std::mem::take(&mut self.partial);
        if let Some(queue) = self.queue.as_mut() {
            for (head, _) in chains {
                if let Err(err) = queue.add_used(&io.mem, head, 0) {
                    self.fail(io, err.into());
                    break;
                }
            }
        }
        Delivery::Dropped(why)
    }

    /// The queue cannot be trusted any more: stop using it until the driver resets it.
    fn fail<B>(&mut self, io: &Io<B>, err: QueueError) {
        warn!("virtio-net {}: receive queue: {err}", io.name);
        self.scratch.forget_held();
        self.queue = None;
        io.interrupt.needs_reset();
    }
}

/// A receive chain's buffers, or why it cannot take data.
fn writable_segments(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Result<Vec<Segment>, &'static str> {
    let mut segments = Vec::new();
    for desc in chain {
        let desc = desc.map_err(|_| "a receive chain is malformed")?;
        if !desc.is_write_only() {
            return Err("a receive buffer is device-readable");
        }
        let seg = Segment::checked(mem, desc.addr(), desc.len())
            .ok_or("a receive buffer lies outside guest memory")?;
        segments.push(seg);
    }
    Ok(segments)
}

//! A network device's link to its interface's MMDS stack ([`MmdsStack`]): frames the guest
//! transmits to the MMDS address are copied out of guest memory and handed to the stack
//! instead of the backend; the stack's frames join the receive path, taking turns with the
//! backend's; and a timer wakes the device when the stack must be polled (TCP retransmission
//! and delayed ACKs), so nothing waits for the guest or the TAP to move.
//!
//! Only a frame the detour rule picks is copied; every other frame costs a peek at its first
//! [`PEEK_LEN`] bytes, and nothing at all on a device without MMDS.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use log::warn;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use super::VNET_HDR_LEN;
use crate::mmds::{MAX_INPUT_FRAME_LEN, MmdsStack};
use crate::virtio::chain::{self, Segment};
use crate::virtio::worker::nonblocking_timer;

/// Bytes of a transmitted frame, virtio-net header included, that the detour rule reads:
/// through an ARP packet's target address.
pub(super) const PEEK_LEN: usize = VNET_HDR_LEN + 42;

/// The stack and the timer that says when to poll it.
pub(super) struct MmdsLink {
    stack: MmdsStack,
    timer: TimerFd,
    /// Frames moved to the guest since the counters were last handed over.
    popped: bool,
}

impl MmdsLink {
    pub(super) fn new(stack: MmdsStack) -> io::Result<Self> {
        Ok(Self {
            stack,
            timer: nonblocking_timer()?,
            popped: false,
        })
    }

    /// The timer to watch (readable when the stack is due for a poll).
    pub(super) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Whether the frame whose first bytes (after the virtio-net header) are `peek` goes to
    /// the MMDS.
    pub(super) fn wants(&self, peek: &[u8]) -> bool {
        self.stack.is_mmds_frame(peek)
    }

    /// Hands the stack the frame in `segments` (with its virtio-net header); one too long
    /// for it is dropped uncopied.
    pub(super) fn take(&mut self, mem: &GuestMemoryMmap, segments: &[Segment], len: usize) {
        if len > MAX_INPUT_FRAME_LEN {
            self.stack.refuse();
            return;
        }
        let (_, body) = chain::split(segments, VNET_HDR_LEN as u64);
        let mut frame = vec![0u8; len];
        match chain::read_into(mem, &body, &mut frame) {
            Ok(()) => self.stack.receive(frame),
            // The segments were checked against guest memory; a failed read drops the frame.
            Err(err) => warn!("virtio-net: frame for the MMDS unreadable: {err}"),
        }
    }

    /// Polls the stack if it has work, and sets the timer for its next deadline.
    pub(super) fn poll_if_needed(&mut self) {
        if self.stack.needs_poll() {
            self.poll();
        }
    }

    /// The timer expired: polls the stack.
    pub(super) fn timer_fired(&mut self) {
        // EAGAIN: re-armed since it fired.
        let _ = self.timer.wait();
        self.poll();
    }

    fn poll(&mut self) {
        let armed = match self.stack.poll(Instant::now()) {
            Some(delay) => self.timer.reset(delay, None),
            None => self.timer.clear(),
        };
        if let Err(err) = armed {
            warn!("virtio-net: cannot set the MMDS timer: {err}");
        }
    }

    /// Whether frames wait for the guest.
    pub(super) fn has_frames(&self) -> bool {
        self.stack.has_frames()
    }

    /// Moves the next frame for the guest into `buf` (after room for a header is left by the
    /// caller); its length.
    pub(super) fn pop(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.poll_if_needed();
        let n = self.stack.pop_frame(buf)?;
        self.popped = true;
        Some(n)
    }

    /// A receive pass is over: the counters of the frames it moved go to the store.
    pub(super) fn end_pass(&mut self) {
        if std::mem::take(&mut self.popped) {
            self.stack.flush_metrics();
        }
    }
}

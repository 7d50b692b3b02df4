//! The virtio-net device: a receive queue fed from the backend and a transmit queue drained
//! into it, served by whichever thread holds the [`NetServer`] (the VMM gives each NIC an I/O
//! worker thread, run by the device's [`NetHandler`], which waits on the TAP and the queues'
//! notifications).
//!
//! Back-pressure: a frame read from the TAP that finds no room in the guest's receive buffers
//! stays in the device's one-frame buffer and the TAP is not read again until the driver adds
//! buffers; a transmit the TAP refuses (EAGAIN) stays in the ring until the TAP is writable.
//! [`NetServer::interest`] tells the I/O worker which of those it waits for, so nothing spins.
//!
//! Rate limiters ([`Net::with_rate_limiters`]), one per direction, charge each frame one op
//! and its bytes; a frame one refuses waits (a transmit in the ring, a received frame in the
//! device) and the I/O worker waits for the limiter's timer to resume that direction, while
//! the other direction goes on.
//!
//! Frames are transmitted straight from guest memory (writev); received frames pass through
//! the buffer once, because with mergeable buffers (VIRTIO_NET_F_MRG_RXBUF) a frame's size
//! decides how many chains it takes, and it is known only after the read.
//!
//! Hostile input: a malformed chain, a frame too short or too long, or a header that lies is
//! dropped, logged and counted; a corrupt ring stops that queue until the driver resets the
//! device. Nothing the guest writes can panic the thread or make it spin.
//!
//! MMDS ([`Net::with_mmds`]): frames the guest sends to the MMDS address go to the
//! interface's MMDS stack instead of the backend, and the stack's answers reach the receive
//! queue in turn with the backend's frames; the I/O worker also waits on the stack's timer.
//!
//! This file holds the device, its serving handle and its I/O handler; receiving lives in
//! `rx.rs`, transmitting in `tx.rs`, and what both share in `Io`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use log::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::mmds::MmdsLink;
use super::rx::Rx;
use super::tap::Backend;
use super::tx::Tx;
use super::{DEVICE_TYPE_NET, MacAddr, QUEUE_SIZE, features};
use crate::mmds::MmdsStack;
use crate::rate_limiter::RateLimiter;
use crate::sync::{Published, lock};
use crate::virtio::worker::{IoHandler, Ready, Watch};
use crate::virtio::{ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt};

/// Size of `struct virtio_net_config` up to `mtu`.
const CONFIG_LEN: usize = 12;
/// The receive queue's index.
pub(super) const RX: usize = 0;
/// The transmit queue's index.
pub(super) const TX: usize = 1;

/// Counters a network device keeps, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames from the host dropped: they did not fit the guest's buffers, or a receive chain
    /// was malformed.
    pub rx_dropped: u64,
    /// Frames the guest sent to the backend.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// Frames from the guest dropped: malformed chains or headers, or refused by the host.
    pub tx_dropped: u64,
}

impl NetStats {
    /// The counters by their metric names (Firecracker's), in the order metrics report them.
    pub fn counters(&self) -> [(&'static str, u64); 6] {
        [
            ("rx_packets_count", self.rx_frames),
            ("rx_bytes_count", self.rx_bytes),
            ("rx_dropped_count", self.rx_dropped),
            ("tx_packets_count", self.tx_frames),
            ("tx_bytes_count", self.tx_bytes),
            ("tx_dropped_count", self.tx_dropped),
        ]
    }
}

/// What the serving thread should wait for on the backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// A frame to read (the guest has room for it).
    pub readable: bool,
    /// Room to write (a transmit was refused).
    pub writable: bool,
}

/// A virtio-net device as the transport sees it. The serving side has its own lock, so
/// register accesses from vCPUs never wait for frame I/O, and publishes its counters after
/// each batch, so reading them never waits either.
pub struct Net<B: Backend> {
    features: u64,
    config: [u8; CONFIG_LEN],
    serving: Arc<Mutex<Serving<B>>>,
    stats: Arc<Published<NetStats>>,
    wake: Arc<EventFd>,
}

/// What serving the queues needs: each direction's state, and what both share.
struct Serving<B> {
    io: Io<B>,
    rx: Rx,
    tx: Tx,
}

/// What receiving and transmitting share.
pub(super) struct Io<B> {
    pub(super) backend: B,
    /// The device's name, for logs.
    pub(super) name: String,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<VirtioInterrupt>,
    /// The features the driver acknowledged.
    pub(super) acked: u64,
    /// The backend failed; neither direction uses it until the driver resets the device.
    pub(super) backend_failed: bool,
    pub(super) stats: NetStats,
    /// The interface's MMDS stack, if the guest reaches MMDS through it.
    pub(super) mmds: Option<MmdsLink>,
}

/// A handle for the thread that serves a network device, and for reading its counters.
pub struct NetServer<B> {
    serving: Arc<Mutex<Serving<B>>>,
    /// `Serving`'s counters as of the end of its last batch.
    stats: Arc<Published<NetStats>>,
}

impl<B> Clone for NetServer<B> {
    fn clone(&self) -> Self {
        Self {
            serving: self.serving.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<B: Backend> NetServer<B> {
    /// What to wait for on the backend before calling [`NetServer::process_rx`] or
    /// [`NetServer::process_tx`] again.
    pub fn interest(&self) -> Interest {
        let s = lock(&self.serving);
        Interest {
            readable: s.rx.wants_frames() && !s.io.backend_failed,
            writable: s.tx.queue.is_some() && s.tx.blocked && !s.io.backend_failed,
        }
    }

    /// Moves frames from the backend into the guest (at most `budget`); true if more may be
    /// waiting. Also the answer to the driver adding receive buffers.
    pub fn process_rx(&self, budget: usize) -> bool {
        let s = &mut *lock(&self.serving);
        let more = s.rx.process(&mut s.io, budget);
        self.stats.publish(s.io.stats);
        more
    }

    /// Moves frames from the guest to the backend (at most `budget`); true if more may be
    /// waiting.
    pub fn process_tx(&self, budget: usize) -> bool {
        let s = &mut *lock(&self.serving);
        s.tx.blocked = false;
        let more = s.tx.process(&mut s.io, budget);
        self.stats.publish(s.io.stats);
        more
    }

    /// The counters, as of the end of the last batch; never waits for frame I/O.
    pub fn stats(&self) -> NetStats {
        self.stats.get()
    }

    /// Whether the MMDS stack has frames for the guest.
    fn mmds_has_frames(&self) -> bool {
        lock(&self.serving)
            .io
            .mmds
            .as_ref()
            .is_some_and(MmdsLink::has_frames)
    }

    /// The MMDS stack's timer expired: polls it.
    fn mmds_timer_fired(&self) {
        if let Some(mmds) = lock(&self.serving).io.mmds.as_mut() {
            mmds.timer_fired();
        }
    }
}

/// A network device's readiness rules, for the VMM's I/O worker: it waits on the queues'
/// notifications, the device's wake event and the backend for exactly the readiness the
/// device can use (see [`NetServer::interest`]), and moves at most [`NET_BUDGET`] frames per
/// direction per round, so receive and transmit alternate.
pub struct NetHandler<B> {
    server: NetServer<B>,
    wake: Arc<EventFd>,
    rx: EventFd,
    tx: EventFd,
    /// Each direction may have more to move without a new event.
    rx_more: bool,
    tx_more: bool,
    /// The receive and transmit rate limiters, whose timers resume a throttled direction.
    limiters: [Option<Arc<RateLimiter>>; 2],
    /// The MMDS stack's timer, if the device has one.
    mmds_timer: Option<RawFd>,
}

/// Frames a network device moves per direction per round of its I/O worker.
pub const NET_BUDGET: usize = 64;

/// The order of [`NetHandler`]'s watches.
const WATCH_WAKE: usize = 0;
const WATCH_RX: usize = 1;
const WATCH_TX: usize = 2;
const WATCH_BACKEND: usize = 3;
const WATCH_RX_LIMITER: usize = 4;
const WATCH_TX_LIMITER: usize = 5;
const WATCH_MMDS_TIMER: usize = 6;

impl<B: Backend + AsRawFd> IoHandler for NetHandler<B> {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        let want = self.server.interest();
        let backend = lock(&self.server.serving).io.backend.as_raw_fd();
        watches.clear();
        watches.extend([
            Watch::readable(self.wake.as_raw_fd()),
            Watch::readable(self.rx.as_raw_fd()),
            Watch::readable(self.tx.as_raw_fd()),
            Watch {
                fd: backend,
                readable: want.readable,
                writable: want.writable,
                hangup: false,
            },
        ]);
        // A direction without a limiter has a watch that waits for nothing.
        watches.extend(self.limiters.iter().map(|l| Watch {
            fd: l.as_ref().map_or(-1, |l| l.timer_fd()),
            readable: l.is_some(),
            writable: false,
            hangup: false,
        }));
        watches.push(Watch {
            fd: self.mmds_timer.unwrap_or(-1),
            readable: self.mmds_timer.is_some(),
            writable: false,
            hangup: false,
        });
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        let is = |i: usize| ready.get(i).copied().unwrap_or_default();
        for (i, evt) in [
            (WATCH_WAKE, &*self.wake),
            (WATCH_RX, &self.rx),
            (WATCH_TX, &self.tx),
        ] {
            if is(i).any() {
                let _ = evt.read();
            }
        }
        let mut timers = [false; 2];
        for ((fired, i), limiter) in timers
            .iter_mut()
            .zip([WATCH_RX_LIMITER, WATCH_TX_LIMITER])
            .zip(&self.limiters)
        {
            if let Some(limiter) = limiter.as_ref().filter(|_| is(i).any()) {
                limiter.timer_fired();
                *fired = true;
            }
        }
        let mmds_due = self.mmds_timer.is_some() && is(WATCH_MMDS_TIMER).any();
        if mmds_due {
            self.server.mmds_timer_fired();
        }
        let (wake, backend) = (is(WATCH_WAKE).any(), is(WATCH_BACKEND));
        // An error or hang-up on the backend reaches the device through its next read or
        // write, which reports it and stops using the backend.
        self.rx_more |= wake
            || is(WATCH_RX).any()
            || backend.readable
            || backend.failed
            || timers[0]
            || mmds_due;
        self.tx_more |=
            wake || is(WATCH_TX).any() || backend.writable || backend.failed || timers[1];
        if self.tx_more {
            self.tx_more = self.server.process_tx(NET_BUDGET);
            // Frames to the MMDS get their answers now, even with the backend idle.
            if self.mmds_timer.is_some() && self.server.mmds_has_frames() {
                self.rx_more = true;
            }
        }
        if self.rx_more {
            self.rx_more = self.server.process_rx(NET_BUDGET);
        }
        self.rx_more || self.tx_more
    }

    fn resumed(&mut self) -> bool {
        // Frames waited in the backend and the rings while paused.
        (self.rx_more, self.tx_more) = (true, true);
        true
    }
}

impl<B: Backend> Net<B> {
    /// A device named `name` (for logs) moving frames between the guest and `backend`, with
    /// MAC address `mac` and, if given, an MTU to announce. `wake` is written whenever the
    /// driver activates or resets the device, as that changes what the serving thread waits
    /// for.
    pub fn new(
        name: &str,
        backend: B,
        mac: MacAddr,
        mtu: Option<u16>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        wake: EventFd,
    ) -> Self {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << features::MAC)
            | (1 << features::CSUM)
            | (1 << features::GUEST_CSUM)
            | (1 << features::GUEST_TSO4)
            | (1 << features::GUEST_TSO6)
            | (1 << features::HOST_TSO4)
            | (1 << features::HOST_TSO6)
            | (1 << features::MRG_RXBUF);
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac.0);
        if let Some(mtu) = mtu {
            features |= 1 << features::MTU;
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
        }
        let serving = Serving {
            io: Io {
                backend,
                name: name.into(),
                mem,
                interrupt,
                acked: 0,
                backend_failed: false,
                stats: NetStats::default(),
                mmds: None,
            },
            rx: Rx::new(),
            tx: Tx::default(),
        };
        Self {
            features,
            config,
            serving: Arc::new(Mutex::new(serving)),
            stats: Arc::default(),
            wake: Arc::new(wake),
        }
    }

    /// A handle on the serving side (for counters, or to serve on the calling thread).
    pub fn server(&self) -> NetServer<B> {
        NetServer {
            serving: self.serving.clone(),
            stats: self.stats.clone(),
        }
    }

    /// The I/O handler for the device's worker thread; `queues` are the receive and transmit
    /// queues' notification events, in that order.
    pub fn handler(&self, [rx, tx]: [EventFd; 2]) -> NetHandler<B> {
        let s = lock(&self.serving);
        let limiters = [s.rx.limiter.clone(), s.tx.limiter.clone()];
        let mmds_timer = s.io.mmds.as_ref().map(MmdsLink::timer_fd);
        drop(s);
        NetHandler {
            server: self.server(),
            wake: self.wake.clone(),
            rx,
            tx,
            rx_more: false,
            tx_more: false,
            limiters,
            mmds_timer,
        }
    }

    /// Holds received frames to `rx` and transmitted ones to `tx` (one op and the frame's
    /// bytes each). Set before [`Net::handler`] is called.
    pub fn with_rate_limiters(self, rx: Arc<RateLimiter>, tx: Arc<RateLimiter>) -> Self {
        let mut s = lock(&self.serving);
        s.rx.limiter = Some(rx);
        s.tx.limiter = Some(tx);
        drop(s);
        self
    }

    /// Serves MMDS to the guest through `stack`: frames for its address go to the stack, not
    /// the backend. Set before [`Net::handler`] is called. Fails only if the stack's timer
    /// cannot be created.
    pub fn with_mmds(self, stack: MmdsStack) -> std::io::Result<Self> {
        lock(&self.serving).io.mmds = Some(MmdsLink::new(stack)?);
        Ok(self)
    }

    fn wake(&self) {
        if let Err(err) = self.wake.write(1) {
            warn!("virtio-net: cannot wake the I/O thread: {err}");
        }
    }
}

/// The TAP offloads (`TUN_F_*`) matching what the driver can receive.
fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(features::GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(features::GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(features::GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

/// iovecs into guest memory, kept between frames so the hot paths allocate nothing.
#[derive(Default)]
pub(super) struct IoVecs(pub(super) VecDeque<libc::iovec>);

// SAFETY: the iovecs point into the guest memory mapping that the same `Serving` keeps alive
// (through `mem`); they are only dereferenced by the kernel in calls made while the serving
// lock is held, on whichever thread holds it.
unsafe impl Send for IoVecs {}

impl<B> Io<B> {
    /// Whether the driver acknowledged feature `bit`.
    pub(super) fn has(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is set by the host; VIRTIO_NET_F_CTRL_MAC_ADDR is not offered.
    }

    fn activate(&mut self, mut queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        let tx = queues.pop().ok_or(ActivateError::QueueNotReady(TX))?;
        let rx = queues.pop().ok_or(ActivateError::QueueNotReady(RX))?;
        let mut s = lock(&self.serving);
        if let Err(err) = s.io.backend.set_offload(tap_offloads(features)) {
            warn!(
                "virtio-net {}: cannot set the TAP's offloads: {err}",
                s.io.name
            );
        }
        s.io.acked = features;
        s.rx.activate(rx);
        s.tx.activate(tx);
        // A backend that failed is tried again: a reset is how a driver recovers a device,
        // and a TAP error may have been passing.
        s.io.backend_failed = false;
        drop(s);
        self.wake();
        Ok(())
    }

    fn reset(&mut self) {
        let mut s = lock(&self.serving);
        s.rx.reset();
        s.tx.queue = None;
        s.io.acked = 0;
        if let Err(err) = s.io.backend.set_offload(0) {
            warn!(
                "virtio-net {}: cannot clear the TAP's offloads: {err}",
                s.io.name
            );
        }
        drop(s);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::super::rx::MAX_HELD_SEGMENTS;
    use super::super::uring::Outcome;
    use super::super::{VNET_HDR_LEN, frame};
    use super::*;
    use crate::virtio::testing::Driver;

    const RXQ: u64 = 0x1_0000;
    const TXQ: u64 = 0x2_0000;
    const BUFS: u64 = 0x10_0000;

    /// A backend that records what was sent and hands out queued frames.
    #[derive(Default)]
    struct Mock {
        inbound: VecDeque<Vec<u8>>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        full: Arc<Mutex<bool>>,
        offload: Arc<Mutex<u32>>,
        direct_reads: usize,
        /// Reads that fail with EIO before frames are handed out again.
        failing_reads: usize,
        /// Frames the backend takes before it is full (none: no limit).
        room: Option<usize>,
        /// The send (counted from 0) that fails with EIO, and the sends so far.
        eio_on_send: Option<usize>,
        sends: usize,
        /// The outcomes the next run of frames gets, as a ring writing each frame on its
        /// own would give them (frames with `Sent` are sent).
        run_outcomes: Option<Vec<Outcome>>,
        /// Runs handed to `send_run`.
        runs: usize,
    }

    impl Mock {
        fn failure(&mut self) -> io::Result<()> {
            if self.failing_reads > 0 {
                self.failing_reads -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
    }

    /// No descriptor: the tests hand the handler its readiness themselves.
    impl AsRawFd for Mock {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    impl Backend for Mock {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.failure()?;
            let frame = self.inbound.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            buf[..frame.len()].copy_from_slice(&frame);
            Ok(frame.len())
        }

        unsafe fn recv_vectored(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
            self.direct_reads += 1;
            self.failure()?;
            let frame = self.inbound.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
            let mut done = 0;
            for iov in iovecs {
                let n = iov.iov_len.min(frame.len() - done);
                // SAFETY: the device built these iovecs over live guest memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(frame[done..].as_ptr(), iov.iov_base.cast(), n)
                };
                done += n;
            }
            Ok(done)
        }

        unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
            if *self.full.lock().unwrap() || self.room == Some(0) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.sends += 1;
            if self.eio_on_send == Some(self.sends - 1) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.room = self.room.map(|r| r - 1);
            let mut frame = Vec::new();
            for iov in iovecs {
                // SAFETY: the device built these iovecs over live guest memory.
                let part =
                    unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) };
                frame.extend_from_slice(part);
            }
            self.sent.lock().unwrap().push(frame);
            Ok(iovecs.iter().map(|i| i.iov_len).sum())
        }

        unsafe fn send_run(&mut self, frames: &[&[libc::iovec]], outcomes: &mut [Outcome]) {
            self.runs += 1;
            let Some(script) = self.run_outcomes.take() else {
                // SAFETY: the device built these iovecs over live guest memory.
                return super::super::uring::send_each(frames, outcomes, |f| unsafe {
                    self.send(f)
                });
            };
            for ((frame, outcome), scripted) in frames.iter().zip(outcomes).zip(script) {
                *outcome = scripted;
                if scripted == Outcome::Sent {
                    // SAFETY: as above.
                    let _ = unsafe { self.send(frame) };
                }
            }
        }

        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            *self.offload.lock().unwrap() = flags;
            Ok(())
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        rx: Driver,
        tx: Driver,
        net: Net<Mock>,
        server: NetServer<Mock>,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        full: Arc<Mutex<bool>>,
        offload: Arc<Mutex<u32>>,
        irq: Arc<VirtioInterrupt>,
    }

    impl Rig {
        fn new(features: u64) -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let mock = Mock::default();
            let (sent, full, offload) =
                (mock.sent.clone(), mock.full.clone(), mock.offload.clone());
            let irq = Arc::new(VirtioInterrupt::new(
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ));
            let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mac = MacAddr([6, 1, 2, 3, 4, 5]);
            let mut net = Net::new(
                "eth0",
                mock,
                mac,
                Some(1400),
                mem.clone(),
                irq.clone(),
                wake,
            );
            let (rx, tx) = (Driver::new(RXQ, 16), Driver::new(TXQ, 16));
            net.activate(
                vec![rx.queue().unwrap(), tx.queue().unwrap()],
                features & net.features(),
            )
            .unwrap();
            let server = net.server();
            Self {
                mem,
                rx,
                tx,
                net,
                server,
                sent,
                full,
                offload,
                irq,
            }
        }

        fn inbound(&self, frame: Vec<u8>) {
            lock(&self.net.serving).io.backend.inbound.push_back(frame);
        }

        fn stats(&self) -> NetStats {
            self.server.stats()
        }
    }

    fn all() -> u64 {
        u64::MAX
    }

    /// A header followed by `len` bytes of frame whose byte i is i % 251.
    fn frame(hdr: [u8; VNET_HDR_LEN], len: usize) -> Vec<u8> {
        let mut f = hdr.to_vec();
        f.extend((0..len).map(|i| (i % 251) as u8));
        f
    }

    /// `frame(hdr, len)` as the guest must find it: with `num_buffers` filled in.
    fn delivered(hdr: [u8; VNET_HDR_LEN], len: usize, num_buffers: u8) -> Vec<u8> {
        let mut f = frame(hdr, len);
        f[frame::NUM_BUFFERS_OFFSET] = num_buffers;
        f
    }

    /// The guest memory at each (address, length), concatenated.
    fn guest_bytes(mem: &GuestMemoryMmap, parts: &[(u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len) in parts {
            let mut part = vec![0u8; len];
            mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            out.extend(part);
        }
        out
    }

    #[test]
    fn offers_mac_mtu_and_offloads_and_applies_what_was_negotiated() {
        let rig = Rig::new(all());
        let mut cfg = [0u8; 12];
        rig.net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[6, 1, 2, 3, 4, 5]);
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
        let mut past = [0xffu8; 4];
        rig.net.read_config(100, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(
            *rig.offload.lock().unwrap(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        let rig = Rig::new(1 << VIRTIO_F_VERSION_1 | 1 << features::GUEST_TSO4);
        assert_eq!(
            *rig.offload.lock().unwrap(),
            0,
            "TSO without checksum offload is meaningless"
        );
        assert_eq!(tap_offloads(1 << features::GUEST_CSUM), libc::TUN_F_CSUM);
    }

    #[test]
    fn transmits_frames_split_across_descriptors() {
        let mut rig = Rig::new(all());
        let f = frame([0; VNET_HDR_LEN], 1500);
        rig.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        // Header split in the middle, then the rest.
        rig.tx
            .add(
                &rig.mem,
                &[
                    (BUFS, 5, false),
                    (BUFS + 5, 700, false),
                    (BUFS + 705, (f.len() - 705) as u32, false),
                ],
            )
            .unwrap();
        assert!(!rig.server.process_tx(64));
        assert_eq!(rig.sent.lock().unwrap().as_slice(), &[f]);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap(), [(0, 0)]);
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 1500, 0));
        assert_eq!(rig.irq.status() & 1, 1);
    }

    #[test]
    fn counters_are_read_while_another_thread_holds_the_serving_lock() {
        let mut rig = Rig::new(all());
        let f = frame([0; VNET_HDR_LEN], 60);
        rig.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        rig.tx
            .add(&rig.mem, &[(BUFS, f.len() as u32, false)])
            .unwrap();
        rig.server.process_tx(64);
        // The I/O worker in the middle of a batch: it holds the serving lock until the reader
        // is done, or gives up after a while so that a reader that waits for it is not stuck
        // for ever (and the test fails).
        let serving = rig.net.serving.clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let _batch = lock(&serving);
            held_tx.send(()).unwrap();
            release_rx.recv_timeout(Duration::from_secs(10)).is_ok()
        });
        held_rx.recv().unwrap();
        let s = rig.stats();
        let _ = release_tx.send(());
        assert!(
            worker.join().unwrap(),
            "reading the counters waited for the serving lock"
        );
        assert_eq!((s.tx_frames, s.tx_bytes), (1, 60));
    }

    #[test]
    fn hostile_transmits_are_dropped_counted_and_the_queue_keeps_working() {
        let mut rig = Rig::new(1 << VIRTIO_F_VERSION_1);
        let good = frame([0; VNET_HDR_LEN], 60);
        rig.mem.write_slice(&good, GuestAddress(BUFS)).unwrap();
        let mut lying = [0u8; VNET_HDR_LEN];
        lying[0] = frame::F_NEEDS_CSUM; // not negotiated
        rig.mem
            .write_slice(&lying, GuestAddress(BUFS + 0x1000))
            .unwrap();
        let mut tso = [0u8; VNET_HDR_LEN];
        tso[0] = frame::F_NEEDS_CSUM;
        tso[1] = frame::GSO_TCPV4;
        rig.mem
            .write_slice(&tso, GuestAddress(BUFS + 0x2000))
            .unwrap();
        let len = good.len() as u32;
        let cases: [&[(u64, u32, bool)]; 8] = [
            &[(BUFS, len, true)],                          // device-writable
            &[(0x7fff_0000_0000, len, false)],             // outside memory
            &[(BUFS, 11, false)],                          // shorter than the header
            &[(BUFS, 20, false)],                          // shorter than an Ethernet header
            &[(BUFS, 0xffff_fff0, false)],                 // 4 GiB
            &[(BUFS, 65000, false), (BUFS, 65000, false)], // longer than any frame
            &[(BUFS + 0x1000, 100, false)],                // checksum not negotiated
            &[(BUFS + 0x2000, 9000, false)],               // TSO not negotiated
        ];
        for case in cases {
            rig.tx.add(&rig.mem, case).unwrap();
        }
        rig.tx.add(&rig.mem, &[(BUFS, len, false)]).unwrap();
        rig.server.process_tx(64);
        assert_eq!(
            rig.sent.lock().unwrap().as_slice(),
            &[good],
            "only the good frame left"
        );
        assert_eq!(
            rig.tx.take_used(&rig.mem).unwrap().len(),
            9,
            "every chain is returned"
        );
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_dropped), (1, 8));
    }

    /// Frames of 60, 61, ... bytes, each in a buffer of its own, made available.
    fn queue_frames(rig: &mut Rig, count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let f = frame([0; VNET_HDR_LEN], 60 + i);
                let addr = BUFS + i as u64 * 2048;
                rig.mem.write_slice(&f, GuestAddress(addr)).unwrap();
                rig.tx
                    .add(&rig.mem, &[(addr, f.len() as u32, false)])
                    .unwrap();
                f
            })
            .collect()
    }

    #[test]
    fn a_run_stops_where_the_tap_fills_and_the_rest_follow_in_order_once_it_drains() {
        let mut rig = Rig::new(all());
        let frames = queue_frames(&mut rig, 5);
        lock(&rig.net.serving).io.backend.room = Some(2);
        assert!(!rig.server.process_tx(64));
        assert_eq!(
            rig.tx.take_used(&rig.mem).unwrap().len(),
            2,
            "only what was sent"
        );
        assert_eq!(rig.sent.lock().unwrap().as_slice(), &frames[..2]);
        assert!(rig.server.interest().writable);
        lock(&rig.net.serving).io.backend.room = None;
        rig.server.process_tx(64);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 3);
        assert_eq!(rig.sent.lock().unwrap().as_slice(), &frames[..]);
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_dropped), (5, 0));
        let bytes: usize = frames.iter().map(|f| f.len() - VNET_HDR_LEN).sum();
        assert_eq!(s.tx_bytes, bytes as u64);
    }

    #[test]
    fn a_frame_the_host_refuses_in_a_run_is_dropped_and_the_frames_after_it_go_out() {
        let mut rig = Rig::new(all());
        let frames = queue_frames(&mut rig, 4);
        lock(&rig.net.serving).io.backend.eio_on_send = Some(1);
        rig.server.process_tx(64);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 4);
        let sent = rig.sent.lock().unwrap().clone();
        assert_eq!(
            sent,
            [frames[0].clone(), frames[2].clone(), frames[3].clone()]
        );
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_dropped), (3, 1));
    }

    #[test]
    fn a_frame_that_failed_before_one_that_went_out_is_dropped_not_sent_out_of_order() {
        use Outcome::*;
        let mut rig = Rig::new(all());
        let frames = queue_frames(&mut rig, 6);
        // The ring found the TAP full at frame 1 and not at frame 2, refused frame 4 and
        // found the TAP full at frame 5: 0, 2 and 3 go out; 1 is dropped (sending it later
        // would reorder it), so is 4; 5 waits until the TAP is writable.
        let script = vec![Sent, Full, Sent, Sent, Refused(libc::EIO), Full];
        lock(&rig.net.serving).io.backend.run_outcomes = Some(script);
        assert!(!rig.server.process_tx(64));
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 5);
        let sent = rig.sent.lock().unwrap().clone();
        assert_eq!(sent, [0, 2, 3].map(|i| frames[i].clone()));
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_dropped), (3, 2));
        assert!(
            rig.server.interest().writable,
            "the last frame waits for room"
        );
        rig.server.process_tx(64);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 1);
        assert_eq!(rig.sent.lock().unwrap().last(), Some(&frames[5]));
        assert!(!rig.server.interest().writable);
    }

    #[test]
    fn frames_the_host_refuses_are_dropped_in_one_pass_not_tried_again() {
        use Outcome::*;
        let mut rig = Rig::new(all());
        queue_frames(&mut rig, 6);
        let script = vec![Refused(libc::EINVAL); 6];
        lock(&rig.net.serving).io.backend.run_outcomes = Some(script);
        rig.server.process_tx(64);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 6);
        let runs = lock(&rig.net.serving).io.backend.runs;
        assert_eq!(runs, 1, "each refused frame was submitted once");
        let s = rig.stats();
        assert_eq!((s.tx_frames, s.tx_dropped), (0, 6));
    }

    #[test]
    fn a_full_tap_holds_transmits_until_it_is_writable() {
        let mut rig = Rig::new(all());
        let f = frame([0; VNET_HDR_LEN], 100);
        rig.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        rig.tx
            .add(&rig.mem, &[(BUFS, f.len() as u32, false)])
            .unwrap();
        rig.tx
            .add(&rig.mem, &[(BUFS, f.len() as u32, false)])
            .unwrap();
        *rig.full.lock().unwrap() = true;
        assert!(!rig.server.process_tx(64));
        assert!(
            rig.tx.take_used(&rig.mem).unwrap().is_empty(),
            "nothing is returned unsent"
        );
        assert!(rig.server.interest().writable);
        *rig.full.lock().unwrap() = false;
        rig.server.process_tx(64);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 2);
        assert_eq!(rig.sent.lock().unwrap().len(), 2);
        assert!(!rig.server.interest().writable);
    }

    #[test]
    fn throttled_frames_wait_for_their_directions_limiter_timer() {
        use crate::rate_limiter::{BucketConfig, LimiterConfig, tests::readable};
        let mut rig = Rig::new(all());
        let one_op_per_20_ms = || {
            let ops = BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 20,
            };
            Arc::new(
                RateLimiter::new(LimiterConfig {
                    bandwidth: None,
                    ops: Some(ops),
                })
                .unwrap(),
            )
        };
        let (rx_limiter, tx_limiter) = (one_op_per_20_ms(), one_op_per_20_ms());
        let net = std::mem::replace(
            &mut rig.net,
            Net::new(
                "unused",
                Mock::default(),
                MacAddr([6, 0, 0, 0, 0, 1]),
                None,
                rig.mem.clone(),
                rig.irq.clone(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ),
        );
        rig.net = net.with_rate_limiters(rx_limiter.clone(), tx_limiter.clone());
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut handler = rig.net.handler([evt(), evt()]);

        // Two frames each way: one goes, the other waits.
        let f = frame([0; VNET_HDR_LEN], 100);
        rig.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        for _ in 0..2 {
            rig.tx
                .add(&rig.mem, &[(BUFS, f.len() as u32, false)])
                .unwrap();
            rig.inbound(f.clone());
        }
        for i in 1..3 {
            rig.rx
                .add(&rig.mem, &[(BUFS + i * 0x1000, 1536, true)])
                .unwrap();
        }
        assert!(!rig.server.process_tx(64), "throttled is not more");
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 1);
        assert!(!rig.server.process_rx(64), "throttled is not more");
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap().len(), 1);
        assert_eq!(rig.sent.lock().unwrap().len(), 1);
        assert!(
            !rig.server.interest().readable,
            "the TAP is not read meanwhile"
        );
        let mut watches = Vec::new();
        handler.interest(&mut watches);
        assert_eq!(
            watches[WATCH_RX_LIMITER],
            Watch::readable(rx_limiter.timer_fd())
        );
        assert_eq!(
            watches[WATCH_TX_LIMITER],
            Watch::readable(tx_limiter.timer_fd())
        );

        assert!(readable(rx_limiter.timer_fd(), 1000));
        assert!(readable(tx_limiter.timer_fd(), 1000));
        let mut ready = vec![Ready::default(); watches.len()];
        for i in [WATCH_RX_LIMITER, WATCH_TX_LIMITER] {
            ready[i].readable = true;
        }
        handler.ready(&ready);
        assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 1);
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap().len(), 1);
        assert_eq!(rig.sent.lock().unwrap().len(), 2);
        let s = rig.stats();
        assert_eq!((s.rx_frames, s.tx_frames), (2, 2));
    }

    #[test]
    fn receives_into_one_buffer_without_mergeable_buffers() {
        let mut rig = Rig::new(1 << VIRTIO_F_VERSION_1);
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = frame::F_DATA_VALID; // not negotiated: cleared
        rig.inbound(frame(hdr, 1000));
        rig.rx
            .add(&rig.mem, &[(BUFS, 8, true), (BUFS + 8, 2000, true)])
            .unwrap();
        assert!(!rig.server.process_rx(64));
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap(), [(0, 1012)]);
        assert_eq!(
            guest_bytes(&rig.mem, &[(BUFS, 1012)]),
            delivered([0; VNET_HDR_LEN], 1000, 1)
        );
        assert_eq!(rig.stats().rx_bytes, 1000);
    }

    #[test]
    fn mergeable_buffers_take_a_large_frame_across_chains() {
        let mut rig = Rig::new(all());
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = frame::F_DATA_VALID;
        rig.inbound(frame(hdr, 4000));
        for i in 0..4 {
            rig.rx
                .add(&rig.mem, &[(BUFS + i * 0x1000, 1536, true)])
                .unwrap();
        }
        rig.server.process_rx(64);
        let used = rig.rx.take_used(&rig.mem).unwrap();
        assert_eq!(used, [(0, 1536), (1, 1536), (2, 4012 - 3072)]);
        let parts: Vec<(u64, usize)> = (0..3u64)
            .zip(&used)
            .map(|(i, &(_, len))| (BUFS + i * 0x1000, len as usize))
            .collect();
        assert_eq!(guest_bytes(&rig.mem, &parts), delivered(hdr, 4000, 3));
    }

    #[test]
    fn with_no_receive_buffers_the_frame_waits_and_the_tap_is_not_read() {
        let mut rig = Rig::new(all());
        rig.inbound(frame([0; VNET_HDR_LEN], 3000));
        rig.inbound(frame([0; VNET_HDR_LEN], 60));
        assert!(rig.server.interest().readable);
        rig.rx.add(&rig.mem, &[(BUFS, 1536, true)]).unwrap();
        rig.server.process_rx(64);
        // Half the room the first frame needs: nothing is returned, reading stops.
        assert!(rig.rx.take_used(&rig.mem).unwrap().is_empty());
        assert!(!rig.server.interest().readable);
        assert_eq!(lock(&rig.net.serving).io.backend.inbound.len(), 1);
        // A notification without new buffers changes nothing.
        rig.server.process_rx(64);
        assert!(!rig.server.interest().readable);
        rig.rx
            .add(&rig.mem, &[(BUFS + 0x1000, 1536, true)])
            .unwrap();
        rig.rx
            .add(&rig.mem, &[(BUFS + 0x2000, 1536, true)])
            .unwrap();
        rig.server.process_rx(64);
        assert_eq!(
            rig.rx.take_used(&rig.mem).unwrap().len(),
            3,
            "two chains for the first frame, one for the second"
        );
        assert_eq!(rig.stats().rx_frames, 2);
        assert!(rig.server.interest().readable);
    }

    #[test]
    fn empty_and_indirect_receive_chains_on_every_kick_do_not_grow_what_the_device_holds() {
        let mut rig = Rig::new(all());
        let indirect = 0x20_0000;
        for kick in 0..40u64 {
            // With the TAP idle, a driver that republishes a ring of empty buffers, and one of
            // indirect tables (never offered), on every kick.
            for i in 0..16 {
                if kick % 2 == 0 {
                    rig.rx
                        .add(&rig.mem, &[(BUFS + i * 0x1000, 0, true)])
                        .unwrap();
                } else {
                    rig.rx.add_indirect(&rig.mem, indirect, 1024).unwrap();
                }
            }
            rig.server.process_rx(64);
            let s = lock(&rig.net.serving);
            assert!(
                s.rx.scratch.held.len() <= 16,
                "kick {kick}: {}",
                s.rx.scratch.held.len()
            );
            assert!(s.rx.scratch.held_segments.len() <= MAX_HELD_SEGMENTS);
            assert!(s.rx.scratch.held_iovecs.0.capacity() <= 2 * MAX_HELD_SEGMENTS);
        }
    }

    #[test]
    fn a_failed_tap_read_stops_receiving_until_the_driver_resets_the_device() {
        let mut rig = Rig::new(all());
        lock(&rig.net.serving).io.backend.failing_reads = 1;
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.rx.add(&rig.mem, &[(BUFS, 2000, true)]).unwrap();
        rig.server.process_rx(64);
        assert_eq!(rig.stats().rx_frames, 0);
        assert!(!rig.server.interest().readable, "the TAP is no longer read");
        // The driver resets and re-activates the device: the TAP is used again.
        rig.net.reset();
        let (rx, tx) = (Driver::new(RXQ, 16), Driver::new(TXQ, 16));
        rig.net
            .activate(
                vec![rx.queue().unwrap(), tx.queue().unwrap()],
                all() & rig.net.features(),
            )
            .unwrap();
        rig.rx = rx;
        rig.rx.add(&rig.mem, &[(BUFS, 2000, true)]).unwrap();
        rig.server.process_rx(64);
        assert_eq!(rig.stats().rx_frames, 1);
    }

    #[test]
    fn an_indirect_receive_chain_is_returned_empty_and_the_next_buffer_is_used() {
        let mut rig = Rig::new(all());
        rig.rx.add_indirect(&rig.mem, 0x20_0000, 64).unwrap();
        rig.rx.add(&rig.mem, &[(BUFS, 2000, true)]).unwrap();
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.server.process_rx(64);
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap(), [(0, 0), (1, 112)]);
        let s = rig.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (1, 1));
    }

    #[test]
    fn hostile_receive_chains_drop_the_frame_not_the_device() {
        let mut rig = Rig::new(1 << VIRTIO_F_VERSION_1);
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.inbound(frame([0; VNET_HDR_LEN], 3000));
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.rx.add(&rig.mem, &[(BUFS, 2000, false)]).unwrap(); // device-readable
        rig.rx.add(&rig.mem, &[(BUFS, 2000, true)]).unwrap(); // too small for 3000 bytes, kept
        rig.server.process_rx(64);
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap(), [(0, 0), (1, 112)]);
        let s = rig.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (1, 2));
        // Outside guest memory.
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.rx
            .add(&rig.mem, &[(0x7fff_0000_0000, 2000, true)])
            .unwrap();
        rig.server.process_rx(64);
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap(), [(2, 0)]);
        assert_eq!(rig.stats().rx_dropped, 3);
    }

    #[test]
    fn a_stream_of_large_frames_cycles_through_the_ring() {
        let mut rig = Rig::new(all());
        for _ in 0..40 {
            rig.inbound(frame([0; VNET_HDR_LEN], 10_000));
        }
        let mut outstanding = 0;
        let mut next = 0u64;
        for _ in 0..100 {
            while outstanding < 16 {
                rig.rx
                    .add(&rig.mem, &[(BUFS + (next % 16) * 0x1000, 4096, true)])
                    .unwrap();
                next += 1;
                outstanding += 1;
            }
            rig.server.process_rx(64);
            outstanding -= rig.rx.take_used(&rig.mem).unwrap().len();
        }
        assert_eq!(rig.stats().rx_frames, 40);
    }

    #[test]
    fn with_room_for_any_frame_frames_land_straight_in_guest_buffers() {
        let mut rig = Rig::new(all());
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = frame::F_DATA_VALID;
        for len in [10_000, 60, 3000] {
            rig.inbound(frame(hdr, len));
        }
        // 15 chains of 8 KiB can hold any frame; the first has its header split over two
        // descriptors.
        rig.rx
            .add(&rig.mem, &[(BUFS, 5, true), (BUFS + 5, 8187, true)])
            .unwrap();
        for i in 1..15 {
            rig.rx
                .add(&rig.mem, &[(BUFS + i * 0x2000, 8192, true)])
                .unwrap();
        }
        rig.server.process_rx(64);
        // Three frames, then the read that found the TAP empty.
        assert_eq!(lock(&rig.net.serving).io.backend.direct_reads, 4);
        let used = rig.rx.take_used(&rig.mem).unwrap();
        // Chains beyond what a frame fills stay available for the next one.
        assert_eq!(used, [(0, 8192), (2, 1820), (3, 72), (4, 3012)]);
        let first = guest_bytes(&rig.mem, &[(BUFS, 8192), (BUFS + 0x2000, 1820)]);
        assert_eq!(first, delivered(hdr, 10_000, 2));
        let second = guest_bytes(&rig.mem, &[(BUFS + 0x4000, 72)]);
        assert_eq!(second, delivered(hdr, 60, 1));
        assert_eq!(rig.stats().rx_frames, 3);
    }

    #[test]
    fn a_frame_split_across_a_hostile_chain_is_dropped_and_its_chains_returned() {
        let mut rig = Rig::new(all());
        rig.inbound(frame([0; VNET_HDR_LEN], 3000));
        rig.inbound(frame([0; VNET_HDR_LEN], 60));
        rig.rx.add(&rig.mem, &[(BUFS, 1536, true)]).unwrap();
        rig.server.process_rx(64);
        assert!(
            rig.rx.take_used(&rig.mem).unwrap().is_empty(),
            "half a frame is not returned"
        );
        // The rest of the frame would go into a device-readable buffer.
        rig.rx
            .add(&rig.mem, &[(BUFS + 0x1000, 1536, false)])
            .unwrap();
        rig.rx
            .add(&rig.mem, &[(BUFS + 0x2000, 1536, true)])
            .unwrap();
        rig.server.process_rx(64);
        assert_eq!(
            rig.rx.take_used(&rig.mem).unwrap(),
            [(0, 0), (1, 0), (2, 72)]
        );
        let s = rig.stats();
        assert_eq!((s.rx_frames, s.rx_dropped), (1, 1));
    }

    #[test]
    fn a_frame_larger_than_the_whole_ring_is_dropped() {
        let mut rig = Rig::new(all());
        rig.inbound(frame([0; VNET_HDR_LEN], 20_000));
        rig.inbound(frame([0; VNET_HDR_LEN], 60));
        // 16 chains of 1 KiB: the ring is full and still too small.
        for i in 0..16 {
            rig.rx
                .add(&rig.mem, &[(BUFS + i * 0x1000, 1024, true)])
                .unwrap();
        }
        rig.server.process_rx(64);
        let used = rig.rx.take_used(&rig.mem).unwrap();
        assert_eq!(used.len(), 16);
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert_eq!(rig.stats().rx_dropped, 1);
        for i in 0..2 {
            rig.rx
                .add(&rig.mem, &[(BUFS + i * 0x1000, 1024, true)])
                .unwrap();
        }
        rig.server.process_rx(64);
        assert_eq!(rig.rx.take_used(&rig.mem).unwrap(), [(0, 72)]);
    }

    #[test]
    fn a_corrupt_available_index_stops_the_queue_without_spinning() {
        let mut rig = Rig::new(all());
        rig.tx.set_avail_idx(&rig.mem, 1000).unwrap();
        assert!(!rig.server.process_tx(64));
        assert!(!rig.server.interest().writable);
        assert!(lock(&rig.net.serving).tx.queue.is_none());
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
        rig.rx.set_avail_idx(&rig.mem, 1000).unwrap();
        rig.server.process_rx(64);
        rig.server.process_rx(64);
        assert_eq!(rig.stats().rx_frames, 0);
        // A reset and a fresh activation bring it back.
        rig.net.reset();
        assert_eq!(*rig.offload.lock().unwrap(), 0);
        let (rx, tx) = (Driver::new(RXQ + 0x8000, 16), Driver::new(TXQ + 0x8000, 16));
        rig.net
            .activate(
                vec![rx.queue().unwrap(), tx.queue().unwrap()],
                all() & rig.net.features(),
            )
            .unwrap();
        assert!(rig.server.interest().readable);
    }

    /// The device with MMDS: detours, answers with the TAP idle, turn-taking. (Included
    /// rather than a file module: it needs this module's test rig.)
    mod mmds {
        use super::*;
        include!("mmds_tests.rs");
    }
}

//! The virtio-vsock device: a receive, a transmit and an event queue, and the guest's context
//! id in its configuration space. Whichever thread holds its [`VsockServer`] (the VMM's I/O
//! worker) serves the queues and the host sockets the [`Muxer`] names, a bounded batch per
//! round.
//!
//! Payloads never pass through a device buffer: a transmitted packet's payload is written to
//! the host socket from the guest's buffers (`writev`), and host data is read into the payload
//! areas of the available receive buffers (`readv`): one read fills as many as the guest's
//! credit and `READ_MAX` (64 KiB) allow (Linux gives 4 KiB buffers), and each buffer it
//! reached is then completed as its own data packet, with its header, in order.
//!
//! The guest is not trusted: a transmitted packet whose header does not fit its buffers, whose
//! length exceeds its buffers or [`MAX_PAYLOAD`], or whose addresses are not the guest's and
//! the host's is dropped and counted; an unknown operation or type, or a packet for a
//! connection that does not exist, is answered with a reset; a corrupt ring stops the device
//! until the driver resets it. The event queue is never written: ember has no snapshots, after
//! which a TRANSPORT_RESET event would be due.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::{HOST_CID, Key, Muxer, Rx, Target};
use super::packet::{HDR_LEN, Header, MAX_PAYLOAD};
use super::{DEVICE_TYPE_VSOCK, QUEUE_SIZE};
use crate::sync::{Published, lock};
use crate::virtio::chain::{self, Chain, ChainError, GuestBufs, Segment};
use crate::virtio::worker::{IoHandler, Ready, Watch, nonblocking_timer};
use crate::virtio::{
    ActivateError, Following, Step, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
    VirtioInterrupt, serve_chain_runs, serve_chains, signal_used,
};

/// Packets taken from each queue per round.
pub const VSOCK_BUDGET: usize = 64;
/// Most host bytes one socket read takes, across the receive buffers it fills (sixteen of
/// Linux's 4 KiB buffers).
const READ_MAX: u64 = 64 << 10;
const RX: usize = 0;
const TX: usize = 1;

/// Counters a vsock device keeps, by Firecracker's names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockStats {
    /// Rounds started by the guest's receive-queue notification.
    pub rx_queue_event_count: u64,
    /// Rounds started by the guest's transmit-queue notification.
    pub tx_queue_event_count: u64,
    /// Host bytes handed to the guest.
    pub rx_bytes_count: u64,
    /// Guest bytes written to host sockets.
    pub tx_bytes_count: u64,
    /// Packets put into the receive queue.
    pub rx_packets_count: u64,
    /// Packets taken from the transmit queue.
    pub tx_packets_count: u64,
    /// Connections opened.
    pub conns_added: u64,
    /// Connections ember ended with a reset (host socket failure, a guest breaking the rules).
    pub conns_killed: u64,
    /// Connections ended in order (a reset from the guest, a completed shutdown).
    pub conns_removed: u64,
    /// Receive buffers unusable or too small for what was to be sent (a header; data needs
    /// more), and resets dropped for lack of room.
    pub rx_queue_event_fails: u64,
    /// Malformed transmitted packets, unknown operations and types, sends beyond credit.
    pub tx_queue_event_fails: u64,
    /// Host sockets that failed a read.
    pub rx_read_fails: u64,
    /// Host sockets that failed a write.
    pub tx_write_fails: u64,
}

impl VsockStats {
    /// The counters by their metric names, in the order metrics report them.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("rx_queue_event_count", self.rx_queue_event_count),
            ("tx_queue_event_count", self.tx_queue_event_count),
            ("rx_bytes_count", self.rx_bytes_count),
            ("tx_bytes_count", self.tx_bytes_count),
            ("rx_packets_count", self.rx_packets_count),
            ("tx_packets_count", self.tx_packets_count),
            ("conns_added", self.conns_added),
            ("conns_killed", self.conns_killed),
            ("conns_removed", self.conns_removed),
            ("rx_queue_event_fails", self.rx_queue_event_fails),
            ("tx_queue_event_fails", self.tx_queue_event_fails),
            ("rx_read_fails", self.rx_read_fails),
            ("tx_write_fails", self.tx_write_fails),
        ]
    }
}

/// A virtio-vsock device, as the transport sees it.
pub struct Vsock {
    config: [u8; 8],
    serving: Arc<Mutex<Serving>>,
    stats: Arc<Published<VsockStats>>,
    wake: Arc<[EventFd; 2]>,
}

struct Serving {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    guest_cid: u64,
    /// Receive, transmit and event queue, once activated.
    queues: Option<Vec<Queue>>,
    muxer: Muxer,
    stats: VsockStats,
    /// The buffers of the chains being served, reused from packet to packet: a transmitted
    /// packet's, or the receive chains one host read fills (where each ends in `segments`,
    /// and the payload bytes it offers).
    segments: Vec<Segment>,
    rx_chains: Vec<(usize, u64)>,
    /// The guest memory a packet's payload moves through, for vectored socket I/O.
    bufs: GuestBufs,
    /// Fires when a host-initiated connection the guest has not accepted runs out of time,
    /// armed for that instant.
    timer: TimerFd,
    armed: Option<Instant>,
    /// The timer fired: late connections are ended once the transmit queue was served (a
    /// guest's answer already there is in time).
    timer_fired: bool,
}

/// The handle of the thread serving a vsock device, and of its counters.
#[derive(Clone)]
pub struct VsockServer {
    serving: Arc<Mutex<Serving>>,
    stats: Arc<Published<VsockStats>>,
    wake: Arc<[EventFd; 2]>,
    /// What each watch after the [`FIXED_WATCHES`] is, as of the last `interest`.
    targets: Vec<Target>,
}

impl Vsock {
    /// A device for guest `guest_cid` whose host side listens on `listener` (bound at
    /// `uds_path`). `wake` are the receive and transmit queues' notification events; writing
    /// either must make the serving thread run a round. An error if its timer cannot be made.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        wake: [EventFd; 2],
        guest_cid: u64,
        listener: UnixListener,
        uds_path: PathBuf,
    ) -> io::Result<Self> {
        let serving = Serving {
            interrupt,
            guest_cid,
            queues: None,
            muxer: Muxer::new(guest_cid, listener, uds_path),
            stats: VsockStats::default(),
            segments: Vec::new(),
            rx_chains: Vec::new(),
            bufs: GuestBufs::new(mem.clone()),
            mem,
            timer: nonblocking_timer()?,
            armed: None,
            timer_fired: false,
        };
        Ok(Self {
            config: guest_cid.to_le_bytes(),
            serving: Arc::new(Mutex::new(serving)),
            stats: Arc::default(),
            wake: Arc::new(wake),
        })
    }

    /// The handle the serving thread uses (also the I/O worker's handler).
    pub fn server(&self) -> VsockServer {
        VsockServer {
            serving: self.serving.clone(),
            stats: self.stats.clone(),
            wake: self.wake.clone(),
            targets: Vec::new(),
        }
    }
}

impl VsockServer {
    /// Serves a round of both queues; returns true if more is waiting.
    pub fn process(&self, budget: usize) -> bool {
        let s = &mut *lock(&self.serving);
        let more = s.process(budget);
        self.stats.publish(s.stats);
        more
    }

    /// The counters, as of the end of the last round.
    pub fn stats(&self) -> VsockStats {
        self.stats.get()
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        lock(&self.serving).muxer.connections()
    }
}

/// The watches before the connections': the two queues' notifications and the timer.
const FIXED_WATCHES: usize = 3;

/// The worker waits on both queues' notifications, the connection timer and, once the driver
/// activated the device, on the host sockets for exactly the readiness the connections can use.
impl IoHandler for VsockServer {
    fn interest(&mut self, watches: &mut Vec<Watch>) {
        watches.clear();
        self.targets.clear();
        watches.extend(self.wake.iter().map(|e| Watch::readable(e.as_raw_fd())));
        let s = &mut *lock(&self.serving);
        watches.push(Watch::readable(s.timer.as_raw_fd()));
        s.arm_timer();
        if s.queues.is_none() {
            return;
        }
        let mut wanted = Vec::new();
        s.muxer.interest(&mut wanted);
        for (target, fd, readable, writable) in wanted {
            self.targets.push(target);
            watches.push(Watch {
                fd,
                readable,
                writable,
                hangup: false,
            });
        }
    }

    fn ready(&mut self, ready: &[Ready]) -> bool {
        {
            let s = &mut *lock(&self.serving);
            for (i, wake) in self.wake.iter().enumerate() {
                if ready.get(i).is_some_and(Ready::any) {
                    let _ = wake.read();
                    match i {
                        RX => s.stats.rx_queue_event_count += 1,
                        _ => s.stats.tx_queue_event_count += 1,
                    }
                }
            }
            if ready.get(2).is_some_and(Ready::any) {
                // The timer is one-shot: it is disarmed now, whatever the read says.
                let _ = s.timer.wait();
                s.armed = None;
                s.timer_fired = true;
            }
            let conns = ready.iter().skip(FIXED_WATCHES);
            for (target, r) in self.targets.iter().zip(conns) {
                if r.any() {
                    let readable = r.readable || r.failed;
                    s.muxer
                        .ready(*target, readable, r.writable || r.failed, &mut s.stats);
                }
            }
        }
        self.process(VSOCK_BUDGET)
    }

    fn resumed(&mut self) -> bool {
        // The guest could not answer while paused: its time to accept starts again.
        lock(&self.serving).muxer.restart_deadlines(Instant::now());
        true
    }
}

/// Why a transmitted packet is dropped.
#[derive(Debug, thiserror::Error)]
enum PacketError {
    #[error("malformed chain: {0}")]
    Chain(#[from] ChainError),
    #[error("a buffer is device-writable or outside guest memory")]
    Buffer,
    #[error("{0} bytes cannot hold a packet header")]
    Short(u64),
    #[error(
        "the header claims {len} payload bytes; the buffers hold {room} (at most {MAX_PAYLOAD})"
    )]
    Length { len: u32, room: u64 },
    #[error(
        "packet from CID {src} to CID {dst}; only the guest's CID {guest} to the host's is allowed"
    )]
    Address { src: u64, dst: u64, guest: u64 },
}

impl Serving {
    /// Arms the timer for the muxer's next expiry, if that changed.
    fn arm_timer(&mut self) {
        let next = self.muxer.next_expiry();
        if next == self.armed {
            return;
        }
        // A zero time would disarm it: a deadline passed already fires at once.
        let armed = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                self.timer.reset(wait.max(Duration::from_nanos(1)), None)
            }
            None => self.timer.clear(),
        };
        match armed {
            Ok(()) => self.armed = next,
            Err(err) => warn!("virtio-vsock: cannot arm the connection timer: {err}"),
        }
    }

    fn process(&mut self, budget: usize) -> bool {
        let Some(queues) = self.queues.as_mut() else {
            return false;
        };
        let (mem, muxer, stats, segments, bufs) = (
            &self.mem,
            &mut self.muxer,
            &mut self.stats,
            &mut self.segments,
            &mut self.bufs,
        );
        let guest_cid = self.guest_cid;
        let tx = serve_chains(&mut queues[TX], mem, budget, |chain| {
            stats.tx_packets_count += 1;
            match transmitted(mem, chain, segments, bufs, guest_cid) {
                Ok(hdr) => muxer.from_guest(&hdr, bufs, stats),
                Err(err) => {
                    warn!("virtio-vsock: dropped a packet: {err}");
                    stats.tx_queue_event_fails += 1;
                }
            }
            Step::Used(0)
        });
        let tx_more = match tx {
            Ok(served) => {
                signal_used(
                    &mut queues[TX],
                    TX as u16,
                    mem,
                    &self.interrupt,
                    served.count,
                );
                served.more
            }
            Err(err) => return self.broken(err),
        };
        if std::mem::take(&mut self.timer_fired) {
            muxer.expire(Instant::now(), stats);
        }
        muxer.request_credit();
        if !muxer.has_rx() {
            return tx_more;
        }
        let mut idle = false;
        let mut receiving = Receiving {
            mem,
            segments,
            chains: &mut self.rx_chains,
            bufs,
            muxer,
            stats,
        };
        let rx = serve_chain_runs(&mut queues[RX], mem, budget, |chain, following| {
            match receiving.receive(chain, following) {
                Some(used) => Step::Used(used),
                None => {
                    // Nothing to send after all: the buffer stays in the ring.
                    idle = true;
                    Step::Retry
                }
            }
        });
        match rx {
            Ok(served) => {
                signal_used(
                    &mut queues[RX],
                    RX as u16,
                    mem,
                    &self.interrupt,
                    served.count,
                );
                tx_more || (served.more && !idle)
            }
            Err(err) => self.broken(err),
        }
    }

    fn broken(&mut self, err: crate::virtio::QueueError) -> bool {
        warn!("virtio-vsock: {err}");
        self.queues = None;
        self.muxer.reset();
        self.interrupt.needs_reset();
        false
    }
}

/// Reads a transmitted packet's header and gathers its payload, where it lies in guest
/// memory, into `payload`; returns the header.
fn transmitted(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    segments: &mut Vec<Segment>,
    payload: &mut GuestBufs,
    guest_cid: u64,
) -> Result<Header, PacketError> {
    segments.clear();
    collect(mem, chain, segments, false)?;
    let room = chain::total(segments);
    let mut raw = [0u8; HDR_LEN];
    chain::read_into(mem, segments, &mut raw).map_err(|_| PacketError::Short(room))?;
    let hdr = Header::parse(&raw);
    let room = room - HDR_LEN as u64;
    if hdr.len > MAX_PAYLOAD || u64::from(hdr.len) > room {
        return Err(PacketError::Length { len: hdr.len, room });
    }
    if hdr.src_cid != guest_cid || hdr.dst_cid != HOST_CID {
        let (src, dst, guest) = (hdr.src_cid, hdr.dst_cid, guest_cid);
        return Err(PacketError::Address { src, dst, guest });
    }
    payload.clear();
    payload
        .push(segments, HDR_LEN as u64, u64::from(hdr.len))
        .map_err(|_| PacketError::Buffer)?;
    Ok(hdr)
}

/// What filling receive chains needs, borrowed from [`Serving`] for a round.
struct Receiving<'a> {
    mem: &'a GuestMemoryMmap,
    segments: &'a mut Vec<Segment>,
    chains: &'a mut Vec<(usize, u64)>,
    bufs: &'a mut GuestBufs,
    muxer: &'a mut Muxer,
    stats: &'a mut VsockStats,
}

impl Receiving<'_> {
    /// Fills a receive chain with the muxer's next packet; for data, one host read may fill
    /// the chains after it too, each its own packet. Returns the bytes written to `chain`,
    /// or `None` if nothing is to be sent.
    fn receive(&mut self, chain: Chain<'_>, following: &mut Following<'_, '_>) -> Option<u32> {
        self.segments.clear();
        if let Err(err) = collect(self.mem, chain, self.segments, true) {
            warn!("virtio-vsock: unusable receive buffer: {err}");
            self.stats.rx_queue_event_fails += 1;
            return Some(0);
        }
        let room = chain::total(self.segments);
        if room < HDR_LEN as u64 {
            self.stats.rx_queue_event_fails += 1;
            return Some(0);
        }
        // Each try that yields nothing takes a connection out of the running (its socket had
        // no data, ended or failed), so this ends.
        loop {
            match self.muxer.next_rx()? {
                Rx::Control(hdr) => {
                    self.write_header(0..self.segments.len(), &hdr);
                    self.stats.rx_packets_count += 1;
                    return Some(HDR_LEN as u32);
                }
                Rx::Data(..) if room == HDR_LEN as u64 => {
                    // No room for data: a read into nothing would look like the host's end.
                    self.stats.rx_queue_event_fails += 1;
                    return Some(0);
                }
                Rx::Data(key, hdr, credit) => {
                    if let Some(used) = self.receive_data(following, key, hdr, credit) {
                        return Some(used);
                    }
                }
            }
        }
    }

    /// Reads host data of `key` (at most `credit` bytes, and [`READ_MAX`]) straight into the
    /// payload areas of the chain in `segments` and of as many following chains as it takes,
    /// then gives each chain the data went into its header; returns the bytes written to the
    /// first, or `None` if the socket had nothing (the following chains stay available).
    fn receive_data(
        &mut self,
        following: &mut Following<'_, '_>,
        key: Key,
        mut hdr: Header,
        credit: u32,
    ) -> Option<u32> {
        let want = u64::from(credit).min(READ_MAX);
        self.bufs.clear();
        self.chains.clear();
        let mut start = 0;
        loop {
            let end = self.segments.len();
            let max = (want - self.bufs.len()).min(u64::from(MAX_PAYLOAD));
            let Ok(room) = self
                .bufs
                .push(&self.segments[start..end], HDR_LEN as u64, max)
            else {
                // Checked guest memory that cannot be mapped: leave this chain out.
                if self.chains.is_empty() {
                    self.stats.rx_queue_event_fails += 1;
                    return Some(0);
                }
                self.segments.truncate(start);
                following.keep(self.chains.len() - 1);
                break;
            };
            self.chains.push((end, room));
            if self.bufs.len() >= want {
                break;
            }
            let Some(chain) = following.take() else { break };
            start = end;
            let usable = collect(self.mem, chain, self.segments, true).is_ok()
                && chain::total(&self.segments[start..]) > HDR_LEN as u64;
            if !usable {
                // Left for the next round, which returns it as unusable or sends control
                // packets in it.
                self.segments.truncate(start);
                following.keep(self.chains.len() - 1);
                break;
            }
        }
        let Some(n) = self.muxer.read(key, self.bufs, self.stats) else {
            following.keep(0);
            return None;
        };
        // Each chain, in order, holds as much of what was read as it offered.
        let (mut left, mut start, mut first) = (n as u64, 0, 0);
        let mut filled = 0;
        while left > 0 && filled < self.chains.len() {
            let (end, room) = self.chains[filled];
            let len = room.min(left);
            left -= len;
            hdr.len = len as u32;
            self.write_header(start..end, &hdr);
            // At most MAX_PAYLOAD plus a header.
            let used = (HDR_LEN as u64 + len) as u32;
            match filled {
                0 => first = used,
                i => following.set_used(i - 1, used),
            }
            start = end;
            filled += 1;
        }
        following.keep(filled.saturating_sub(1));
        self.stats.rx_packets_count += filled as u64;
        Some(first)
    }

    /// Writes `hdr` at the start of the chain whose buffers are `segments[chain]`.
    fn write_header(&self, chain: std::ops::Range<usize>, hdr: &Header) {
        if let Err(err) = chain::write_bytes(self.mem, &self.segments[chain], 0, &hdr.bytes()) {
            warn!("virtio-vsock: cannot write a receive buffer: {err}");
        }
    }
}

/// Appends a chain's buffers to `segments`; all must be device-writable (receive) or
/// device-readable (transmit) and inside guest memory.
fn collect(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    segments: &mut Vec<Segment>,
    writable: bool,
) -> Result<(), PacketError> {
    for desc in chain {
        let desc = desc?;
        if desc.is_write_only() != writable {
            return Err(PacketError::Buffer);
        }
        let seg = Segment::checked(mem, desc.addr(), desc.len()).ok_or(PacketError::Buffer)?;
        segments.push(seg);
    }
    Ok(())
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut queues: Vec<Queue>, features: u64) -> Result<(), ActivateError> {
        if queues.len() != 3 {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        for q in &mut queues {
            q.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        }
        lock(&self.serving).queues = Some(queues);
        if let Err(err) = self.wake[TX].write(1) {
            warn!("virtio-vsock: cannot wake the I/O thread: {err}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        let mut s = lock(&self.serving);
        s.queues = None;
        // The guest's sockets are gone: so are their host ends.
        s.muxer.reset();
    }
}

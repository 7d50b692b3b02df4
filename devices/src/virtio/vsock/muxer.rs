//! The host side of virtio-vsock, Firecracker's hybrid Unix-socket backend: the connections
//! between guest ports and host Unix sockets, their state machine and credit accounting.
//!
//! A host process reaches the guest by connecting to the device's listening socket and
//! writing `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n` and has a
//! byte stream. A guest reaches the host by connecting to CID 2, port P, which ember forwards
//! to a Unix socket listening at `<uds_path>_P`.
//!
//! Data moves between guest memory and the host sockets with no copy in between: guest data
//! is written to the host socket straight from the guest's buffers, and host data is read
//! straight into the guest's receive buffers (one read may fill several, each then its own
//! packet).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections and host clients still writing their
//! `CONNECT` line together (the listening socket is not accepted from meanwhile); each
//! connection buffers at most [`BUF_ALLOC`] bytes the guest sent and the host socket has not
//! taken yet, which is the credit ember advertises, so a guest that sends beyond its credit is
//! reset. That buffer exists only while the host socket is full and is freed once it drains:
//! at worst 256 connections x 256 KiB = 64 MiB, when every host peer stops reading while its
//! guest sends. Ember's end of each host socket asks for a kernel send buffer of the same
//! size (which the kernel doubles and caps at `net.core.wmem_max`), so a host reader that
//! keeps up never makes ember copy. Host data is read only into the guest's receive buffers and only as far as
//! the guest's credit allows, so a slow guest makes ember read nothing rather than buffer; at
//! most [`MAX_RESETS`] resets wait for receive buffers (more are dropped: the guest gets a
//! reset when it next uses the connection). A host-initiated connection the guest has not
//! accepted [`REQUEST_TIMEOUT`] after its request was delivered (or after the VM resumed from
//! a pause) is reset and its host socket closed, as Firecracker does, so a guest that never
//! answers leaves no host client waiting.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::warn;

use super::VsockStats;
use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use crate::virtio::chain::GuestBufs;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Connections, and host clients still writing `CONNECT`, a device keeps at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The receive buffer ember advertises per connection: the most guest data it holds for a
/// host socket that is not reading (Firecracker's size; enough that a guest's 64 KiB writes go
/// out as whole packets while earlier ones are still on their way).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Forwarded bytes after which the guest is told of its new credit unasked.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Resets waiting for a receive buffer.
pub const MAX_RESETS: usize = 256;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// How long the guest has to accept a host-initiated connection once its request was
/// delivered (Firecracker's `CONN_REQUEST_TIMEOUT_MS`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The first host-side port of a host-initiated connection (Firecracker's choice).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection, by (host-side port, guest-side port).
pub type Key = (u32, u32);

/// Control packets a connection owes the guest, sent before its data.
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
    pub const SHUTDOWN: u8 = 16;
}

/// One connection between a guest port and a host Unix socket.
struct Conn {
    stream: UnixStream,
    /// Waiting for the guest to accept a host-initiated connection.
    connecting: bool,
    /// While connecting: when the guest's time to accept runs out, once the request was
    /// delivered.
    expires: Option<Instant>,
    /// Control packets owed to the guest (`pending::*`).
    pending: u8,
    /// The host socket said it has data (cleared when a read would block).
    readable: bool,
    /// The host socket reached its end (the guest has been told).
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    /// Guest data the host socket has not taken yet; at most [`BUF_ALLOC`] bytes, and no memory
    /// while empty.
    tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host socket, ever (wrapping), and as last told the guest.
    fwd_cnt: u32,
    told_fwd_cnt: u32,
    /// Bytes sent to the guest, ever (wrapping), and the guest's buffer and consumption.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Conn {
    fn new(stream: UnixStream, connecting: bool, pending: u8) -> Self {
        size_send_buffer(&stream);
        Self {
            stream,
            connecting,
            expires: None,
            pending,
            readable: false,
            host_eof: false,
            guest_shut: 0,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            told_fwd_cnt: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data should be read for the guest.
    fn wants_read(&self) -> bool {
        !self.connecting && !self.host_eof && self.guest_shut & SHUTDOWN_RCV == 0
    }

    /// Forwards guest data: once nothing waits before it, straight from guest memory to the
    /// host socket; what the socket does not take is copied into `tx_buf`. An error if the
    /// socket failed.
    fn send(&mut self, payload: &GuestBufs, stats: &mut VsockStats) -> io::Result<()> {
        self.write_buffered(stats)?;
        let mut sent = 0;
        if self.tx_buf.is_empty() && !payload.is_empty() {
            let fd = self.stream.as_raw_fd();
            sent = write_some(|| payload.writev(fd))?;
            self.forwarded(sent, stats);
        }
        let rest = payload.len() as usize - sent;
        if rest > 0 {
            self.buffer(payload, sent, rest)?;
        }
        self.settle();
        Ok(())
    }

    /// Copies the last `len` bytes of `payload`, from byte `from`, to the end of `tx_buf`.
    fn buffer(&mut self, payload: &GuestBufs, from: usize, len: usize) -> io::Result<()> {
        let start = self.tx_buf.len();
        if self.tx_buf.capacity() < start + len {
            // Straight to the full size: growing by doubling could overshoot the bound.
            let room = (BUF_ALLOC as usize).saturating_sub(start).max(len);
            self.tx_buf.reserve_exact(room);
        }
        self.tx_buf.resize(start + len, 0);
        let (front, back) = self.tx_buf.as_mut_slices();
        let (front, back) = match front.get_mut(start..) {
            Some(tail) => (tail, back),
            None => (&mut [][..], &mut back[start - front.len()..]),
        };
        let copied = payload
            .read_at(from as u64, front)
            .and_then(|()| payload.read_at((from + front.len()) as u64, back));
        if copied.is_err() {
            self.tx_buf.truncate(start);
        }
        copied
    }

    /// Writes what the guest sent and the host socket takes; an error if the socket failed.
    fn flush(&mut self, stats: &mut VsockStats) -> io::Result<()> {
        self.write_buffered(stats)?;
        self.settle();
        Ok(())
    }

    /// Writes what waits in `tx_buf` as far as the host socket takes it, then lets the buffer's
    /// memory go: it is needed only while the host socket is full.
    fn write_buffered(&mut self, stats: &mut VsockStats) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(|| self.stream.write(front))?;
            if n == 0 {
                return Ok(());
            }
            self.tx_buf.drain(..n);
            self.forwarded(n, stats);
        }
        self.tx_buf = VecDeque::new();
        Ok(())
    }

    /// After writing: owes the guest a credit update once enough was forwarded, and ends the
    /// host reader's stream once the guest sends no more and everything went out.
    fn settle(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.told_fwd_cnt) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
        if self.tx_buf.is_empty() && self.guest_shut & SHUTDOWN_SEND != 0 {
            // The guest sends no more: the host reader sees the end of the stream.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// Counts `n` guest bytes the host socket took.
    fn forwarded(&mut self, n: usize, stats: &mut VsockStats) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        stats.tx_bytes_count += n as u64;
    }
}

/// Asks for a send buffer on ember's end of a connection that holds the credit ember gives
/// the guest, so guest data waits in the connection's own buffer (a copy) only when the host
/// reader falls behind, not while it keeps up. The kernel caps it (`net.core.wmem_max`) and
/// doubles it for its own overhead; failing that, the default stays, which is only slower.
fn size_send_buffer(stream: &UnixStream) {
    let size = BUF_ALLOC as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `size` is a c_int of `len` bytes that outlives the call; the descriptor is open.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast(),
            len,
        )
    };
    if rc < 0 {
        warn!(
            "virtio-vsock: cannot size a host socket's send buffer: {}",
            io::Error::last_os_error()
        );
    }
}

/// Writes (with `write`, of something not empty) what the socket takes now: 0 when it is
/// full, an error if it failed.
fn write_some(mut write: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match write() {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A host client that has not finished its `CONNECT <port>\n` line.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What the device should put into the guest's next receive buffer.
pub enum Rx {
    /// A packet with no payload.
    Control(Header),
    /// Data from the host socket of this connection, at most this many bytes (the guest's
    /// credit).
    Data(Key, Header, u32),
}

/// Where readiness was reported: a descriptor the muxer asked to watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The listening socket.
    Listener,
    /// A host client writing its `CONNECT` line.
    Client(RawFd),
    /// A connection's host socket.
    Conn(Key),
}

/// The connections of one device and its host sockets.
pub struct Muxer {
    guest_cid: u64,
    listener: UnixListener,
    uds_path: PathBuf,
    conns: BTreeMap<Key, Conn>,
    clients: Vec<Client>,
    resets: VecDeque<Header>,
    next_port: u32,
    /// The connection that last sent data, so the next data comes from the one after it.
    last_rx: Option<Key>,
}

impl Muxer {
    /// Serves guest `guest_cid` with `listener` (bound at `uds_path`, non-blocking).
    pub fn new(guest_cid: u64, listener: UnixListener, uds_path: PathBuf) -> Self {
        Self {
            guest_cid,
            listener,
            uds_path,
            conns: BTreeMap::new(),
            clients: Vec::new(),
            resets: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            last_rx: None,
        }
    }

    /// Drops every connection and host client (a device reset).
    pub fn reset(&mut self) {
        self.conns.clear();
        self.clients.clear();
        self.resets.clear();
        self.last_rx = None;
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The descriptors to wait on and for what: the listener while there is room, clients for
    /// their line, connections for host data the guest has credit for (and has not been
    /// seen yet) and for room to write what the guest sent.
    pub fn interest(&self, out: &mut Vec<(Target, RawFd, bool, bool)>) {
        if self.conns.len() + self.clients.len() < MAX_CONNECTIONS {
            out.push((Target::Listener, self.listener.as_raw_fd(), true, false));
        }
        for c in &self.clients {
            let fd = c.stream.as_raw_fd();
            out.push((Target::Client(fd), fd, true, false));
        }
        for (key, c) in &self.conns {
            let read = c.wants_read() && !c.readable && c.peer_credit() > 0;
            let write = !c.tx_buf.is_empty();
            if read || write {
                out.push((Target::Conn(*key), c.stream.as_raw_fd(), read, write));
            }
        }
    }

    /// Handles readiness on `target`.
    pub fn ready(
        &mut self,
        target: Target,
        readable: bool,
        writable: bool,
        stats: &mut VsockStats,
    ) {
        match target {
            Target::Listener => self.accept(),
            Target::Client(fd) => self.read_client(fd, stats),
            Target::Conn(key) => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                c.readable |= readable;
                if writable && c.flush(stats).is_err() {
                    stats.tx_write_fails += 1;
                    self.kill(key, stats);
                    return;
                }
                self.close_if_done(key, stats);
            }
        }
    }

    fn accept(&mut self) {
        while self.conns.len() + self.clients.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(err) = stream.set_nonblocking(true) {
                        warn!("virtio-vsock: cannot make a host connection non-blocking: {err}");
                        continue;
                    }
                    self.clients.push(Client {
                        stream,
                        line: Vec::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!(
                            "virtio-vsock: cannot accept on {}: {e}",
                            self.uds_path.display()
                        );
                    }
                    return;
                }
            }
        }
    }

    /// Reads a client's `CONNECT` line a byte at a time, so nothing after it is consumed.
    fn read_client(&mut self, fd: RawFd, stats: &mut VsockStats) {
        let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            return;
        };
        let client = &mut self.clients[i];
        let mut byte = [0u8];
        let port = loop {
            match client.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&client.line),
                Ok(1) if client.line.len() < MAX_CONNECT_LINE => client.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The end, an error or an overlong line.
                _ => break None,
            }
        };
        let client = self.clients.swap_remove(i);
        let Some(port) = port else {
            warn!("virtio-vsock: a host connection did not start with CONNECT <port>");
            return;
        };
        let local = self.free_port(port);
        self.conns.insert(
            (local, port),
            Conn::new(client.stream, true, pending::REQUEST),
        );
        stats.conns_added += 1;
    }

    /// A host-side port no connection to guest `port` uses.
    fn free_port(&mut self, port: u32) -> u32 {
        loop {
            let local = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(local, port)) {
                return local;
            }
        }
    }

    /// Handles one packet the guest sent (its header already checked) with its payload, which
    /// is still in guest memory.
    pub fn from_guest(&mut self, hdr: &Header, payload: &GuestBufs, stats: &mut VsockStats) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            stats.tx_queue_event_fails += 1;
            self.kill(key, stats);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(key, hdr, stats),
                op::RST => {}
                _ => self.reset_peer(key, stats),
            }
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        let outcome = match hdr.op {
            op::RESPONSE if c.connecting => {
                c.connecting = false;
                let line = format!("OK {}\n", key.0);
                c.stream
                    .write_all(line.as_bytes())
                    .map_err(|_| stats.tx_write_fails += 1)
            }
            op::RW if !c.connecting && c.guest_shut & SHUTDOWN_SEND == 0 => {
                if c.tx_buf.len() as u64 + payload.len() > u64::from(BUF_ALLOC) {
                    // Beyond the credit ember gave: the guest ignores flow control.
                    stats.tx_queue_event_fails += 1;
                    Err(())
                } else {
                    c.send(payload, stats)
                        .map_err(|_| stats.tx_write_fails += 1)
                }
            }
            op::CREDIT_UPDATE => Ok(()),
            op::CREDIT_REQUEST => {
                c.pending |= pending::CREDIT_UPDATE;
                Ok(())
            }
            op::SHUTDOWN => {
                c.guest_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                c.flush(stats).map_err(|_| stats.tx_write_fails += 1)
            }
            op::RST => {
                self.conns.remove(&key);
                stats.conns_removed += 1;
                return;
            }
            // An unknown operation, or one the connection's state does not allow.
            _ => {
                stats.tx_queue_event_fails += 1;
                Err(())
            }
        };
        if outcome.is_err() {
            self.kill(key, stats);
        } else {
            self.close_if_done(key, stats);
        }
    }

    /// A guest's connection request: forwarded to the host listener at `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: Key, hdr: &Header, stats: &mut VsockStats) {
        if self.conns.len() + self.clients.len() >= MAX_CONNECTIONS {
            self.reset_peer(key, stats);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        match connect(Path::new(&path)) {
            Ok(stream) => {
                let mut c = Conn::new(stream, false, pending::RESPONSE);
                c.peer_buf_alloc = hdr.buf_alloc;
                c.peer_fwd_cnt = hdr.fwd_cnt;
                self.conns.insert(key, c);
                stats.conns_added += 1;
            }
            Err(_) => self.reset_peer(key, stats),
        }
    }

    /// Ends a fully shut down connection once the host socket took everything.
    fn close_if_done(&mut self, key: Key, stats: &mut VsockStats) {
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if self
            .conns
            .get(&key)
            .is_some_and(|c| c.guest_shut & both == both && c.tx_buf.is_empty())
        {
            self.conns.remove(&key);
            stats.conns_removed += 1;
            self.reset_peer(key, stats);
        }
    }

    /// Ends a connection on ember's side and tells the guest.
    fn kill(&mut self, key: Key, stats: &mut VsockStats) {
        if self.conns.remove(&key).is_some() {
            stats.conns_killed += 1;
        }
        self.reset_peer(key, stats);
    }

    /// Queues a reset for the guest's side of `key`, if there is room.
    fn reset_peer(&mut self, key: Key, stats: &mut VsockStats) {
        if self.resets.len() < MAX_RESETS {
            let hdr = self.header(key, op::RST, 0);
            self.resets.push_back(hdr);
        } else {
            stats.rx_queue_event_fails += 1;
        }
    }

    fn header(&self, key: Key, op: u16, fwd_cnt: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
            ..Header::default()
        }
    }

    /// Whether anything waits for a receive buffer.
    pub fn has_rx(&self) -> bool {
        !self.resets.is_empty() || self.conns.values().any(|c| c.pending != 0 || can_send(c))
    }

    /// The next packet for the guest: resets, then control packets, then data from the
    /// connection after the one that last sent.
    pub fn next_rx(&mut self) -> Option<Rx> {
        if let Some(hdr) = self.resets.pop_front() {
            return Some(Rx::Control(hdr));
        }
        if let Some((&key, c)) = self.conns.iter_mut().find(|(_, c)| c.pending != 0) {
            let bit = 1 << c.pending.trailing_zeros();
            c.pending &= !bit;
            let (fwd_cnt, mut flags) = (c.fwd_cnt, 0);
            c.told_fwd_cnt = fwd_cnt;
            let op = match bit {
                pending::REQUEST => {
                    c.expires = Some(Instant::now() + REQUEST_TIMEOUT);
                    op::REQUEST
                }
                pending::RESPONSE => op::RESPONSE,
                pending::CREDIT_UPDATE => op::CREDIT_UPDATE,
                pending::CREDIT_REQUEST => op::CREDIT_REQUEST,
                _ => {
                    // The host socket ended: a Unix socket's reader cannot tell a shutdown of
                    // writing from a close, so the guest hears that the host sends no more and
                    // may still send; if the host closed, that write fails and resets.
                    flags = SHUTDOWN_SEND;
                    op::SHUTDOWN
                }
            };
            let mut hdr = self.header(key, op, fwd_cnt);
            hdr.flags = flags;
            return Some(Rx::Control(hdr));
        }
        let after = self.last_rx.map_or(Bound::Unbounded, Bound::Excluded);
        let next = self
            .conns
            .range((after, Bound::Unbounded))
            .chain(self.conns.range(..))
            .find(|(_, c)| can_send(c))
            .map(|(k, c)| (*k, c.fwd_cnt, c.peer_credit()));
        let (key, fwd_cnt, credit) = next?;
        self.last_rx = Some(key);
        if let Some(c) = self.conns.get_mut(&key) {
            c.told_fwd_cnt = fwd_cnt;
        }
        Some(Rx::Data(key, self.header(key, op::RW, fwd_cnt), credit))
    }

    /// Reads host data of `key` for the guest straight into `bufs` (guest receive buffers,
    /// as many bytes as the guest has credit for); `None` when the socket has none now. The
    /// end of the stream becomes a SHUTDOWN, an error a reset.
    pub fn read(&mut self, key: Key, bufs: &GuestBufs, stats: &mut VsockStats) -> Option<usize> {
        let c = self.conns.get_mut(&key)?;
        if bufs.is_empty() {
            // A read into nothing would look like the end of the stream; wait for readiness
            // instead, so the caller moves on to another connection.
            c.readable = false;
            return None;
        }
        loop {
            match bufs.readv(c.stream.as_raw_fd()) {
                Ok(0) => {
                    c.host_eof = true;
                    c.pending |= pending::SHUTDOWN;
                    return None;
                }
                Ok(n) => {
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                    stats.rx_bytes_count += n as u64;
                    // The socket is drained: wait for it to say it has more rather than try a
                    // read that would block.
                    c.readable = n as u64 == bufs.len();
                    return Some(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return None;
                }
                Err(_) => {
                    stats.rx_read_fails += 1;
                    self.kill(key, stats);
                    return None;
                }
            }
        }
    }
}

/// Whether `c` has host data the guest has room for.
fn can_send(c: &Conn) -> bool {
    c.readable && c.wants_read() && c.peer_credit() > 0
}

impl Muxer {
    /// When the first host-initiated connection the guest has not accepted runs out of time.
    pub fn next_expiry(&self) -> Option<Instant> {
        let connecting = self.conns.values().filter(|c| c.connecting);
        connecting.filter_map(|c| c.expires).min()
    }

    /// Gives every host-initiated connection the guest was asked about its whole time again
    /// from `now` (after a pause, when the guest could not answer).
    pub fn restart_deadlines(&mut self, now: Instant) {
        for c in self.conns.values_mut().filter(|c| c.connecting) {
            if c.expires.is_some() {
                c.expires = Some(now + REQUEST_TIMEOUT);
            }
        }
    }

    /// Resets the host-initiated connections the guest did not accept by `now`; their host
    /// clients see their sockets close.
    pub fn expire(&mut self, now: Instant, stats: &mut VsockStats) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connecting && c.expires.is_some_and(|t| t <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in late {
            self.kill(key, stats);
        }
    }

    /// Asks the guest for credit on connections whose host data waits for it, once: the
    /// socket is not read (nor watched) again until the guest's credit grows.
    pub fn request_credit(&mut self) {
        for c in self.conns.values_mut() {
            if c.readable && c.wants_read() && c.peer_credit() == 0 {
                c.pending |= pending::CREDIT_REQUEST;
                c.readable = false;
            }
        }
    }
}

/// The port of a `CONNECT <port>` line.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is full
/// refuses rather than stalling the device.
fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the duration of the call.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        for bad in [
            &b"CONNECT"[..],
            b"connect 5",
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}

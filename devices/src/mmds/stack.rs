//! One network interface's MMDS network stack: the frames the guest sends to the MMDS address
//! come in ([`MmdsStack::receive`]), frames for the guest go out ([`MmdsStack::pop_frame`]),
//! and [`MmdsStack::poll`] does the work in between, bounded per call.
//!
//! ARP is answered here (requests for the MMDS address get the MMDS MAC); IPv4 to the MMDS
//! address is TCP for `smoltcp` (an IP-medium interface: this stack, not `smoltcp`, owns the
//! Ethernet layer, and sends every frame to the MAC the guest last sent from, as Firecracker
//! does, so the guest's own address and routes never matter). Other IPv4 (ICMP, UDP) is
//! counted and dropped, as Firecracker does. The HTTP layer reads whole request heads into a
//! per-connection buffer of at most [`MAX_REQUEST_LEN`] bytes and answers one request per
//! connection per poll.
//!
//! Checksums of frames from the guest are not verified: with checksum offload the guest
//! leaves them partial, and a wrong one can only hurt the guest that sent it (Firecracker
//! skips them too). Frames to the guest carry full checksums.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, TcpPacket,
};

use super::http::{self, Parsed};
use super::{
    MAX_CONNECTIONS, MAX_PENDING_FRAMES, MAX_REQUEST_LEN, MMDS_MAC, MMDS_PORT, MmdsMetrics,
    SharedMmds,
};
use crate::sync::lock;

/// Ethernet header length.
const ETH_HEADER: usize = 14;
/// The IP MTU the stack uses; its frames are at most this plus the Ethernet header.
const IP_MTU: usize = 1500;
/// Detoured frames waiting for a poll; a transmit pass moves at most this many anyway.
const MAX_INPUT_FRAMES: usize = 64;
/// Longest frame from the guest the stack takes: more than any segment its TCP window lets
/// a guest send, far less than the 64 KiB a segmentation-offload frame may have.
pub const MAX_INPUT_FRAME_LEN: usize = 16 * 1024;
/// Bytes of unread request a connection's TCP buffer holds (its receive window).
const TCP_RX_BUFFER: usize = 4096;
/// Bytes of unsent answer a connection's TCP buffer holds; longer answers are fed in as it
/// drains.
const TCP_TX_BUFFER: usize = 8192;
/// A connection whose sent data goes unacknowledged this long is dropped.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest wait [`MmdsStack::poll`] asks for, so a stack with work pending is polled
/// again soon without making its caller spin.
const MIN_POLL_DELAY: Duration = Duration::from_millis(1);

/// The MMDS as one network interface's guest reaches it.
pub struct MmdsStack {
    ipv4: Ipv4Addr,
    mmds: SharedMmds,
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
    link: Link,
    /// When the stack was made: `smoltcp` counts time from here.
    epoch: Instant,
}

/// One of the [`MAX_CONNECTIONS`] connections (a listening socket when idle).
struct Slot {
    handle: SocketHandle,
    /// A connection is open (counted as created, not yet as destroyed).
    open: bool,
    /// When it was opened or last received a request: the one idle longest is replaced when
    /// a new connection finds every slot taken.
    active: Instant,
    /// Request bytes received and not yet answered.
    request: Vec<u8>,
    /// The answer being sent, and how much of it `smoltcp` has taken.
    response: Vec<u8>,
    sent: usize,
    /// Close once the answer is sent (the request was malformed or too large).
    close_after: bool,
}

/// The frames between the guest and `smoltcp`, and the counts.
struct Link {
    /// Detoured frames not yet processed.
    input: VecDeque<Vec<u8>>,
    /// The IPv4 frame being handed to `smoltcp`.
    current: Option<Vec<u8>>,
    /// Frames for the guest.
    output: VecDeque<Vec<u8>>,
    /// The MAC the guest last sent from.
    guest_mac: EthernetAddress,
    /// Counts since they were last added to the store's.
    metrics: MmdsMetrics,
    /// Something changed that a poll must look at.
    dirty: bool,
}

/// What a detoured frame is.
enum Kind {
    /// An ARP request for the MMDS address, and the reply it gets.
    ArpRequest(ArpRepr),
    /// An IPv4 TCP segment; whether it opens a connection to the MMDS port.
    Tcp { opens: bool },
    /// Valid, but nothing the MMDS serves (other ARP, other IPv4 protocols).
    Unusual,
    /// Malformed at the IPv4 or ARP layer.
    Bad,
    /// Not even an Ethernet frame.
    BadEthernet,
}

impl MmdsStack {
    /// A stack answering at `ipv4` with the contents of `mmds`.
    pub fn new(ipv4: Ipv4Addr, mmds: SharedMmds) -> Self {
        let mut link = Link {
            input: VecDeque::new(),
            current: None,
            output: VecDeque::new(),
            guest_mac: EthernetAddress::BROADCAST,
            metrics: MmdsMetrics::default(),
            dirty: false,
        };
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        // Initial sequence numbers come from this seed; a guest need not guess them.
        let mut seed = [0u8; 8];
        let _ = super::token::fill_random(&mut seed);
        config.random_seed = u64::from_ne_bytes(seed);
        let mut iface = Interface::new(config, &mut link, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // Only fails when the list is full, and it starts empty.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ipv4), 32));
        });
        // Everything is reached over this link: answers go to whatever address asked.
        let _ = iface.routes_mut().add_default_ipv4_route(ipv4);
        let mut sockets = SocketSet::new(Vec::with_capacity(MAX_CONNECTIONS));
        let now = Instant::now();
        let slots = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TCP_TX_BUFFER]),
                );
                socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
                    TCP_TIMEOUT.as_micros() as u64,
                )));
                // Answers go out whole, without waiting for the guest's delayed ACKs.
                socket.set_nagle_enabled(false);
                // Only fails for port 0.
                let _ = socket.listen(MMDS_PORT);
                Slot {
                    handle: sockets.add(socket),
                    open: false,
                    active: now,
                    request: Vec::new(),
                    response: Vec::new(),
                    sent: 0,
                    close_after: false,
                }
            })
            .collect();
        Self {
            ipv4,
            mmds,
            iface,
            sockets,
            slots,
            link,
            epoch,
        }
    }

    /// The address the stack answers at.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The store the stack serves.
    pub fn mmds(&self) -> &SharedMmds {
        &self.mmds
    }

    /// Whether an Ethernet frame from the guest (or enough of its start: 42 bytes) is for the
    /// MMDS: an ARP packet asking for the MMDS address, or IPv4 to it (Firecracker's rule).
    /// Anything shorter or else goes to the TAP.
    pub fn is_mmds_frame(&self, frame: &[u8]) -> bool {
        let ip = self.ipv4.octets();
        match frame.get(12..14) {
            Some([0x08, 0x06]) => frame.get(38..42) == Some(&ip[..]),
            Some([0x08, 0x00]) => frame.get(30..34) == Some(&ip[..]),
            _ => false,
        }
    }

    /// Takes a frame the guest sent to the MMDS (one [`MmdsStack::is_mmds_frame`] accepted),
    /// to be processed by the next [`MmdsStack::poll`]. Beyond [`MAX_INPUT_FRAMES`] unpolled
    /// frames, or longer than [`MAX_INPUT_FRAME_LEN`], it is dropped and counted.
    pub fn receive(&mut self, frame: Vec<u8>) {
        let link = &mut self.link;
        link.metrics.rx_accepted += 1;
        if link.input.len() >= MAX_INPUT_FRAMES || frame.len() > MAX_INPUT_FRAME_LEN {
            link.metrics.rx_accepted_err += 1;
            return;
        }
        link.input.push_back(frame);
        link.dirty = true;
    }

    /// Counts a frame for the MMDS that was dropped unread (longer than
    /// [`MAX_INPUT_FRAME_LEN`]), so that its caller need not copy it.
    pub fn refuse(&mut self) {
        self.link.metrics.rx_accepted += 1;
        self.link.metrics.rx_accepted_err += 1;
        // The next poll reports it.
        self.link.dirty = true;
    }

    /// Whether a poll has work: frames came in, or room for output opened up.
    pub fn needs_poll(&self) -> bool {
        self.link.dirty
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.link.output.is_empty()
    }

    /// Moves the next frame for the guest into `buf`; its length, or `None` if there is none
    /// (or it does not fit, in which case it is dropped and counted).
    pub fn pop_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        let link = &mut self.link;
        if link.output.len() == MAX_PENDING_FRAMES {
            // Output was full, so `smoltcp` may have held back: it can go on now.
            link.dirty = true;
        }
        let frame = link.output.pop_front()?;
        let Some(dst) = buf.get_mut(..frame.len()) else {
            link.metrics.tx_errors += 1;
            return None;
        };
        dst.copy_from_slice(&frame);
        link.metrics.tx_frames += 1;
        link.metrics.tx_bytes += frame.len() as u64;
        Some(frame.len())
    }

    /// Processes the frames received, serves the requests they complete (one per connection)
    /// and queues what goes back. Returns how soon it must be called again (retransmission,
    /// delayed ACKs, requests still waiting), or `None` if only new frames, or the guest
    /// taking frames ([`MmdsStack::needs_poll`]), need it.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        self.link.dirty = false;
        let stamp = self.stamp(now);
        while let Some(frame) = self.link.input.pop_front() {
            self.ingress(frame, now, stamp);
        }
        self.iface.poll(stamp, &mut self.link, &mut self.sockets);
        let waiting = self.serve(now);
        self.iface
            .poll_egress(stamp, &mut self.link, &mut self.sockets);
        self.track_connections(now);
        self.flush_metrics();
        let delay = self
            .iface
            .poll_delay(stamp, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        if self.link.output.len() >= MAX_PENDING_FRAMES {
            // Nothing can go out until the guest takes frames, and taking one asks for a
            // poll: a timer now would only wake the worker for nothing, again and again.
            return None;
        }
        let delay = if waiting { Some(Duration::ZERO) } else { delay };
        delay.map(|d| d.max(MIN_POLL_DELAY))
    }

    fn stamp(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Handles one detoured frame.
    fn ingress(&mut self, frame: Vec<u8>, now: Instant, stamp: smoltcp::time::Instant) {
        let metrics = &mut self.link.metrics;
        match classify(&frame, self.ipv4) {
            Kind::BadEthernet => metrics.rx_bad_eth += 1,
            Kind::Bad => metrics.rx_accepted_err += 1,
            Kind::Unusual => metrics.rx_accepted_unusual += 1,
            Kind::ArpRequest(reply) => {
                metrics.rx_count += 1;
                if let ArpRepr::EthernetIpv4 {
                    target_hardware_addr,
                    ..
                } = reply
                {
                    self.link.guest_mac = target_hardware_addr;
                }
                self.link.send_arp(&reply);
            }
            Kind::Tcp { opens } => {
                metrics.rx_count += 1;
                if let Some(src) = EthernetFrame::new_checked(&frame[..])
                    .ok()
                    .map(|eth| eth.src_addr())
                {
                    self.link.guest_mac = src;
                }
                if opens {
                    self.make_room(now, stamp);
                }
                self.link.current = Some(frame);
                self.iface
                    .poll_ingress_single(stamp, &mut self.link, &mut self.sockets);
                self.link.current = None;
                self.track_connections(now);
            }
        }
    }

    /// Before a new connection: if no socket listens, the connection idle longest is reset
    /// and its socket listens again (Firecracker replaces one the same way).
    fn make_room(&mut self, now: Instant, stamp: smoltcp::time::Instant) {
        let sockets = &self.sockets;
        if self
            .slots
            .iter()
            .any(|s| sockets.get::<tcp::Socket>(s.handle).is_listening())
        {
            return;
        }
        let Some(victim) = self.slots.iter_mut().min_by_key(|s| s.active) else {
            return;
        };
        self.sockets.get_mut::<tcp::Socket>(victim.handle).abort();
        // The reset goes out before the socket is reused.
        self.iface
            .poll_egress(stamp, &mut self.link, &mut self.sockets);
        self.track_connections(now);
    }

    /// Counts connections opened and closed, and makes closed sockets listen again.
    fn track_connections(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                // A half-open connection that was reset goes back to listening by itself.
                tcp::State::Listen | tcp::State::Closed => {
                    if slot.open {
                        slot.open = false;
                        self.link.metrics.connections_destroyed += 1;
                        slot.reset();
                    }
                    if socket.state() == tcp::State::Closed {
                        slot.reset();
                        let _ = socket.listen(MMDS_PORT);
                    }
                }
                _ if !slot.open => {
                    slot.open = true;
                    slot.active = now;
                    self.link.metrics.connections_created += 1;
                }
                _ => {}
            }
        }
    }

    /// Runs the HTTP layer over every connection; true if a request still waits for its turn.
    fn serve(&mut self, now: Instant) -> bool {
        let mut waiting = false;
        for slot in &mut self.slots {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            waiting |= slot.serve(socket, &self.mmds, now);
        }
        waiting
    }

    /// Adds the counts since the last call to the store's. [`MmdsStack::poll`] does this;
    /// a caller that popped frames since its last poll does it once it is done.
    pub fn flush_metrics(&mut self) {
        let delta = std::mem::take(&mut self.link.metrics);
        if delta != MmdsMetrics::default() {
            lock(&self.mmds).add_metrics(&delta);
        }
    }
}

impl Slot {
    fn reset(&mut self) {
        self.request = Vec::new();
        self.response = Vec::new();
        self.sent = 0;
        self.close_after = false;
    }

    /// Reads request bytes, answers at most one request, and feeds the answer to `socket`.
    /// True if a whole request is left for the next poll.
    fn serve(&mut self, socket: &mut tcp::Socket, mmds: &SharedMmds, now: Instant) -> bool {
        if self.response.is_empty() && !self.close_after {
            self.read_request(socket, mmds, now);
        }
        if self.sent < self.response.len() {
            // Fails only in states where nothing can be sent; the answer is then dropped
            // with the connection.
            self.sent += socket.send_slice(&self.response[self.sent..]).unwrap_or(0);
        }
        if !self.response.is_empty() && self.sent == self.response.len() {
            self.response = Vec::new();
            self.sent = 0;
            if self.close_after {
                socket.close();
            }
        }
        let idle = self.response.is_empty();
        if idle && !socket.may_recv() && socket.state() == tcp::State::CloseWait {
            // The guest closed its side and everything it asked is answered.
            socket.close();
        }
        idle && !self.close_after && http::head_complete(&self.request)
    }

    fn read_request(&mut self, socket: &mut tcp::Socket, mmds: &SharedMmds, now: Instant) {
        while socket.can_recv() && self.request.len() < MAX_REQUEST_LEN {
            let room = MAX_REQUEST_LEN - self.request.len();
            let request = &mut self.request;
            let got = socket.recv(|data| {
                let n = data.len().min(room);
                request.extend_from_slice(&data[..n]);
                (n, n)
            });
            if !matches!(got, Ok(n) if n > 0) {
                break;
            }
        }
        if self.request.is_empty() {
            return;
        }
        if let Parsed::Answer {
            consumed,
            response,
            close,
        } = http::handle(&self.request, &mut lock(mmds), now)
        {
            self.request.drain(..consumed.min(self.request.len()));
            self.response = response.to_bytes();
            self.sent = 0;
            self.close_after = close;
            self.active = now;
        }
    }
}

/// What a detoured frame is, by its headers.
fn classify(frame: &[u8], mmds_ip: Ipv4Addr) -> Kind {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Kind::BadEthernet;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let Ok(repr) = ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p))
            else {
                return Kind::Bad;
            };
            match repr {
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                } if target_protocol_addr == mmds_ip => Kind::ArpRequest(ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: EthernetAddress(MMDS_MAC),
                    source_protocol_addr: mmds_ip,
                    target_hardware_addr: source_hardware_addr,
                    target_protocol_addr: source_protocol_addr,
                }),
                _ => Kind::Unusual,
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Kind::Bad;
            };
            // Only a unicast source can be answered: smoltcp panics replying to 0.0.0.0
            // (a guest's SYN from it killed ember), and no host may send from a broadcast or
            // multicast address (RFC 1122, 3.2.1.3).
            let src = ip.src_addr();
            if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
                return Kind::Bad;
            }
            if ip.next_header() != IpProtocol::Tcp {
                return Kind::Unusual;
            }
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Kind::Bad;
            };
            Kind::Tcp {
                opens: tcp.syn() && !tcp.ack() && tcp.dst_port() == MMDS_PORT,
            }
        }
        _ => Kind::Unusual,
    }
}

impl Link {
    /// Whether the guest has as many frames waiting as it may; a frame beyond is dropped
    /// and counted.
    fn full(&mut self) -> bool {
        let full = self.output.len() >= MAX_PENDING_FRAMES;
        if full {
            self.metrics.tx_errors += 1;
        }
        full
    }

    /// A frame to the guest of `len` bytes after its Ethernet header.
    fn frame(&self, ethertype: EthernetProtocol, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; ETH_HEADER + len];
        EthernetRepr {
            src_addr: EthernetAddress(MMDS_MAC),
            dst_addr: self.guest_mac,
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        frame
    }

    fn queue(&mut self, frame: Vec<u8>) {
        self.output.push_back(frame);
        self.metrics.tx_count += 1;
    }

    fn send_arp(&mut self, reply: &ArpRepr) {
        if self.full() {
            return;
        }
        let mut frame = self.frame(EthernetProtocol::Arp, reply.buffer_len());
        reply.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_HEADER..]));
        self.queue(frame);
    }
}

/// `smoltcp`'s view of the link: IP packets in (the one being handed over) and out.
impl phy::Device for Link {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.current.take()?;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.output.len() >= MAX_PENDING_FRAMES {
            // `smoltcp` keeps the data and tries again at a later poll.
            return None;
        }
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = IP_MTU;
        caps.max_burst_size = None;
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // `classify` checked the frame is longer than an Ethernet header.
        f(self.0.get(ETH_HEADER..).unwrap_or_default())
    }
}

struct TxToken<'a>(&'a mut Link);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.0.full() {
            // A reply made while receiving (an ACK, a reset) has nowhere to go: it is
            // built into scratch space and dropped; TCP recovers.
            return f(&mut vec![0u8; len]);
        }
        let mut frame = self.0.frame(EthernetProtocol::Ipv4, len);
        let result = f(&mut frame[ETH_HEADER..]);
        self.0.queue(frame);
        result
    }
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;

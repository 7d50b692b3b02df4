//! The vsock device on mock queues with real Unix sockets on the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Vsock, VsockServer};
use super::muxer::{BUF_ALLOC, MAX_CONNECTIONS, MAX_RESETS, REQUEST_TIMEOUT};
use super::packet::{HDR_LEN, Header, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use crate::virtio::testing::Driver;
use crate::virtio::worker::{IoHandler, Ready, Watch};
use crate::virtio::{VirtioDevice, VirtioInterrupt};

const GUEST_CID: u64 = 3;
const RING: u16 = 16;
const RX_DATA: u64 = 0x10_0000;
const RX_LEN: u32 = HDR_LEN as u32 + 4096;
const TX_DATA: u64 = 0x20_0000;
const TX_STRIDE: u64 = 0x1_1000;

struct Rig {
    mem: GuestMemoryMmap,
    rx: Driver,
    tx: Driver,
    rx_added: u64,
    tx_added: u64,
    server: VsockServer,
    _vsock: Vsock,
    path: PathBuf,
    /// The queues' notifications (receive, transmit), as the driver's kicks write them.
    kicks: [EventFd; 2],
    /// The device's interrupt: its count is the number of interrupts raised since last read.
    irq: EventFd,
    /// The guest's receive buffer, as it advertises it.
    buf_alloc: u32,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn event() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::with_rx_buffers(name, RING)
    }

    /// A rig whose receive ring starts with `count` of the usual buffers.
    fn with_rx_buffers(name: &str, count: u16) -> Self {
        Self::negotiated(name, count, None)
    }

    /// [`Rig::with_rx_buffers`] with the driver accepting only `features` of what the device
    /// offers (all of it with `None`).
    fn negotiated(name: &str, count: u16, features: Option<u64>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("ember-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let irq = event();
        let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
        let kicks = [event(), event()];
        let wake = [kicks[0].try_clone().unwrap(), kicks[1].try_clone().unwrap()];
        let mut vsock = Vsock::new(
            mem.clone(),
            interrupt,
            wake,
            GUEST_CID,
            listener,
            path.clone(),
        )
        .unwrap();
        let (rx, tx, ev) = (
            Driver::new(0, RING),
            Driver::new(0x4000, RING),
            Driver::new(0x8000, RING),
        );
        let queues = vec![
            rx.queue().unwrap(),
            tx.queue().unwrap(),
            ev.queue().unwrap(),
        ];
        let features = vsock.features() & features.unwrap_or(u64::MAX);
        vsock.activate(queues, features).unwrap();
        let server = vsock.server();
        let mut rig = Self {
            mem,
            rx,
            tx,
            rx_added: 0,
            tx_added: 0,
            server,
            _vsock: vsock,
            path,
            kicks,
            irq,
            buf_alloc: 64 << 10,
        };
        for _ in 0..count {
            rig.add_rx();
        }
        rig
    }

    fn add_rx(&mut self) {
        let addr = RX_DATA + (self.rx_added % u64::from(RING)) * 0x2000;
        self.rx.add(&self.mem, &[(addr, RX_LEN, true)]).unwrap();
        self.rx_added += 1;
        self.kicks[0].write(1).unwrap();
    }

    /// Runs the I/O worker's loop until nothing is ready or pending.
    fn pump(&mut self) {
        let mut watches = Vec::new();
        for _ in 0..50 {
            self.server.interest(&mut watches);
            let mut fds: Vec<libc::pollfd> = watches.iter().map(Watch::pollfd).collect();
            // SAFETY: `fds` is a valid array of pollfds of that length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
            let ready: Vec<Ready> = fds.iter().map(|p| Ready::from_revents(p.revents)).collect();
            let more = self.server.ready(&ready);
            if n == 0 && !more {
                return;
            }
        }
    }

    /// Sends a raw chain of (bytes) as one device-readable buffer.
    fn send_raw(&mut self, bytes: &[u8], len: u32) {
        let addr = TX_DATA + (self.tx_added % u64::from(RING)) * TX_STRIDE;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.tx.add(&self.mem, &[(addr, len, false)]).unwrap();
        self.tx_added += 1;
        self.kicks[1].write(1).unwrap();
        self.pump();
        assert_eq!(self.tx.take_used(&self.mem).unwrap().len(), 1);
    }

    fn send(&mut self, op: u16, guest_port: u32, host_port: u32, payload: &[u8]) {
        self.send_hdr(
            Header {
                op,
                src_port: guest_port,
                dst_port: host_port,
                len: payload.len() as u32,
                ..self.hdr()
            },
            payload,
        );
    }

    fn send_hdr(&mut self, hdr: Header, payload: &[u8]) {
        let bytes = [&hdr.bytes()[..], payload].concat();
        self.send_raw(&bytes, bytes.len() as u32);
    }

    /// A guest header with the guest's credit.
    fn hdr(&self) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: 2,
            type_: TYPE_STREAM,
            buf_alloc: self.buf_alloc,
            ..Header::default()
        }
    }

    /// The packets the device put into the receive queue since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.take_used(&self.mem).unwrap();
        let mut out = Vec::new();
        for (head, len) in used {
            let addr = RX_DATA + u64::from(head) * 0x2000;
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let hdr = Header::parse(&raw);
            assert_eq!(len, HDR_LEN as u32 + hdr.len, "{hdr:?}");
            let mut payload = vec![0; hdr.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, payload));
            self.add_rx();
        }
        out
    }

    fn ops(&mut self) -> Vec<u16> {
        self.received().iter().map(|(h, _)| h.op).collect()
    }

    /// A host client connected through CONNECT and accepted by the guest on `port`; returns
    /// it and the host-side port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(host, "CONNECT {port}").unwrap();
        self.pump();
        let got = self.received();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].0;
        assert_eq!(
            (req.op, req.src_cid, req.dst_cid, req.dst_port),
            (op::REQUEST, 2, GUEST_CID, port)
        );
        assert!(req.src_port >= 1 << 30);
        self.send(op::RESPONSE, port, req.src_port, &[]);
        let line = read_line(&mut host);
        assert_eq!(line, format!("OK {}\n", req.src_port));
        (host, req.src_port)
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn a_host_connect_is_accepted_by_the_guest_and_carries_data_both_ways_until_shutdown() {
    let mut rig = Rig::new("host");
    let (mut host, local) = rig.host_connect(52);
    host.write_all(b"hello").unwrap();
    rig.pump();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RW, local, 52)
    );
    assert_eq!(got[0].1, b"hello");
    rig.send(op::RW, 52, local, b"world");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    // The guest closes both ways: the host reads the end, the guest gets its reset.
    rig.send(op::SHUTDOWN, 52, local, &[]);
    let mut hdr = rig.hdr();
    (hdr.op, hdr.src_port, hdr.dst_port, hdr.flags) =
        (op::SHUTDOWN, 52, local, SHUTDOWN_RCV | SHUTDOWN_SEND);
    rig.send_hdr(hdr, &[]);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(rig.ops(), [op::RST]);
    assert_eq!(rig.server.connections(), 0);
    let stats = rig.server.stats();
    assert_eq!((stats.rx_bytes_count, stats.tx_bytes_count), (5, 5));
    assert_eq!(
        (stats.conns_added, stats.conns_removed, stats.conns_killed),
        (1, 1, 0)
    );
}

#[test]
fn a_host_connect_the_guest_never_answers_is_reset_and_closed_after_the_request_timeout() {
    let mut rig = Rig::new("unanswered");
    // A connection the guest accepted earlier (its own deadline long past) is not touched.
    let (mut kept, local) = rig.host_connect(10);
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let asked = Instant::now();
    rig.pump();
    let req = rig.received()[0].0;
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 9));
    // A pause in between: the guest's time starts again when the VM resumes.
    std::thread::sleep(REQUEST_TIMEOUT / 2);
    let resumed = Instant::now();
    assert!(rig.server.resumed());
    while rig.server.connections() > 1 {
        assert!(asked.elapsed() < Duration::from_secs(10), "never reset");
        rig.pump();
    }
    let waited = resumed.elapsed();
    assert!(
        waited >= REQUEST_TIMEOUT,
        "reset {waited:?} after the resume"
    );
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0, "closed");
    let got = rig.received();
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RST, req.src_port, 9)
    );
    assert_eq!(rig.server.stats().conns_killed, 1);
    assert_eq!(rig.server.connections(), 1);
    rig.send(op::RW, 10, local, b"still");
    let mut buf = [0u8; 5];
    kept.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
    kept.write_all(b"there").unwrap();
    rig.pump();
    assert_eq!(rig.received()[0].1, b"there");
}

/// The guest's answer, in the transmit queue when the timer fires, is in time.
#[test]
fn an_answer_waiting_in_the_transmit_queue_when_the_timer_fires_is_in_time() {
    let mut rig = Rig::new("late-answer");
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.write_all(b"CONNECT 11\n").unwrap();
    rig.pump();
    let req = rig.received()[0].0;
    std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(100));
    // The answer and the timer's expiry reach the device in the same round.
    let mut hdr = rig.hdr();
    (hdr.op, hdr.src_port, hdr.dst_port) = (op::RESPONSE, 11, req.src_port);
    rig.send_hdr(hdr, &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    assert_eq!(rig.server.stats().conns_killed, 0);
    assert!(rig.received().is_empty());
}

#[test]
fn a_host_connect_to_a_port_nobody_listens_on_closes_the_host_connection() {
    let mut rig = Rig::new("refused");
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    rig.pump();
    let req = rig.received()[0].0;
    rig.send(op::RST, 7, req.src_port, &[]);
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0, "closed");
    assert_eq!(rig.server.connections(), 0);
    // A line that is not CONNECT closes the client without troubling the guest.
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    rig.pump();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(rig.received().is_empty());
}

#[test]
fn a_guest_connect_reaches_the_listener_at_uds_path_port_and_a_missing_one_resets() {
    let mut rig = Rig::new("guest");
    let mut port_path = rig.path.clone().into_os_string();
    port_path.push("_1234");
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    rig.send(op::REQUEST, 5000, 1234, &[]);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RESPONSE, 1234, 5000)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rig.send(op::RW, 5000, 1234, b"ping");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    rig.pump();
    let got = rig.received();
    assert_eq!(got[0].1, b"pong");
    // The host's end of stream becomes a SHUTDOWN of sending: the guest may still answer.
    assert_eq!(got[1].0.op, op::SHUTDOWN);
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    rig.send(op::RW, 5000, 1234, b"bye");
    let mut buf = [0u8; 3];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"bye");
    // A host that closed altogether: the guest's next data resets the connection.
    drop(host);
    rig.send(op::RW, 5000, 1234, b"gone");
    assert_eq!(rig.ops(), [op::RST]);
    assert_eq!(rig.server.stats().tx_write_fails, 1);
    assert_eq!(rig.server.connections(), 0);
    assert_eq!(rig.server.connections(), 0);
    std::fs::remove_file(&port_path).unwrap();
    // Nothing listens on 4321.
    rig.send(op::REQUEST, 5001, 4321, &[]);
    assert_eq!(rig.ops(), [op::RST]);
    assert_eq!(rig.server.connections(), 0);
}

#[test]
fn host_data_stops_at_the_guests_credit_and_resumes_on_its_update() {
    let mut rig = Rig::new("credit");
    rig.buf_alloc = 4096 + 100;
    let (mut host, local) = rig.host_connect(9);
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    host.write_all(&data).unwrap();
    rig.pump();
    let got = rig.received();
    let bytes: Vec<u8> = got
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(bytes.len(), 4196, "exactly the guest's credit");
    assert_eq!(got.last().unwrap().0.op, op::CREDIT_REQUEST);
    // The guest consumed it all: the rest flows, in order, nothing lost.
    let mut received = bytes;
    while received.len() < data.len() {
        let fwd = received.len() as u32;
        let mut hdr = rig.hdr();
        (hdr.op, hdr.src_port, hdr.dst_port, hdr.fwd_cnt) = (op::CREDIT_UPDATE, 9, local, fwd);
        rig.send_hdr(hdr, &[]);
        let got = rig.received();
        assert!(!got.is_empty(), "stalled at {}", received.len());
        received.extend(
            got.iter()
                .filter(|(h, _)| h.op == op::RW)
                .flat_map(|(_, p)| p.clone()),
        );
        assert!(
            received.len() as u32 - fwd <= rig.buf_alloc,
            "beyond credit"
        );
    }
    assert_eq!(received, data);
}

#[test]
fn guest_data_beyond_embers_credit_resets_the_connection_and_forwarding_returns_credit() {
    let mut rig = Rig::new("flood");
    let (mut host, local) = rig.host_connect(11);
    // The host reads: ember forwards and, after a quarter of its buffer, tells the guest its
    // credit back.
    let chunk = vec![7u8; BUF_ALLOC as usize / 4];
    rig.send(op::RW, 11, local, &chunk);
    let mut buf = vec![0u8; chunk.len()];
    host.read_exact(&mut buf).unwrap();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.fwd_cnt, got[0].0.buf_alloc),
        (op::CREDIT_UPDATE, BUF_ALLOC / 4, BUF_ALLOC)
    );
    // The host stops reading; the guest keeps sending past its credit.
    let mut sent = 0;
    while rig.server.connections() == 1 {
        rig.send(op::RW, 11, local, &chunk);
        sent += chunk.len();
        assert!(sent <= 4 * BUF_ALLOC as usize + (4 << 20), "never reset");
    }
    assert_eq!(rig.ops().last(), Some(&op::RST));
    let stats = rig.server.stats();
    assert_eq!((stats.conns_killed, stats.tx_queue_event_fails), (1, 1));
}

#[test]
fn hostile_packets_are_dropped_or_reset_and_counted_and_the_device_keeps_serving() {
    let mut rig = Rig::new("hostile");
    let good = rig.hdr();
    // Shorter than a header; a length beyond the buffer; beyond the maximum; wrong CIDs.
    rig.send_raw(&good.bytes()[..20], 20);
    rig.send_raw(
        &Header {
            len: 100,
            op: op::RW,
            ..good
        }
        .bytes(),
        HDR_LEN as u32 + 10,
    );
    let huge = Header {
        len: MAX_PAYLOAD + 1,
        op: op::RW,
        ..good
    };
    rig.send_raw(&huge.bytes(), HDR_LEN as u32 + MAX_PAYLOAD + 1);
    rig.send_hdr(
        Header {
            src_cid: 9,
            op: op::REQUEST,
            ..good
        },
        &[],
    );
    rig.send_hdr(
        Header {
            dst_cid: 1,
            op: op::REQUEST,
            ..good
        },
        &[],
    );
    assert!(rig.received().is_empty());
    assert_eq!(rig.server.stats().tx_queue_event_fails, 5);
    // A device-writable transmit buffer.
    let addr = TX_DATA;
    rig.tx.add(&rig.mem, &[(addr, 64, true)]).unwrap();
    rig.tx_added += 1;
    rig.pump();
    assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 1);
    assert_eq!(rig.server.stats().tx_queue_event_fails, 6);
    // Data, a shutdown and an unknown op for connections that do not exist: resets.
    rig.send(op::RW, 1, 2, b"x");
    rig.send(op::SHUTDOWN, 1, 2, &[]);
    rig.send(99, 1, 2, &[]);
    // A reset for nothing is ignored.
    rig.send(op::RST, 1, 2, &[]);
    assert_eq!(rig.ops(), [op::RST; 3]);
    // An unknown op or type on a live connection kills it.
    let (_host, local) = rig.host_connect(3);
    rig.send(42, 3, local, &[]);
    assert_eq!(rig.ops(), [op::RST]);
    let (_host, local) = rig.host_connect(4);
    rig.send_hdr(
        Header {
            type_: 2,
            op: op::RW,
            src_port: 4,
            dst_port: local,
            ..good
        },
        &[],
    );
    assert_eq!(rig.ops(), [op::RST]);
    assert_eq!(rig.server.connections(), 0);
    // Still serving.
    let (mut host, local) = rig.host_connect(5);
    rig.send(op::RW, 5, local, b"ok");
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn resets_waiting_for_receive_buffers_are_bounded_and_the_excess_is_counted() {
    let mut rig = Rig::new("resets");
    let extra = 24;
    // Data for connections that do not exist, while the guest adds no receive buffers: the
    // ring's buffers fill, then the bounded queue, then resets are dropped.
    for port in 0..(u32::from(RING) + MAX_RESETS as u32 + extra) {
        let hdr = Header {
            op: op::RW,
            src_port: port,
            dst_port: 1,
            ..rig.hdr()
        };
        rig.send_hdr(hdr, &[]);
    }
    assert_eq!(rig.server.stats().rx_queue_event_fails, u64::from(extra));
    let mut resets = 0;
    loop {
        rig.pump();
        let got = rig.ops();
        if got.is_empty() {
            break;
        }
        assert!(got.iter().all(|op| *op == op::RST));
        resets += got.len();
    }
    assert_eq!(resets, usize::from(RING) + MAX_RESETS);
}

#[test]
fn many_host_connections_are_kept_apart() {
    let mut rig = Rig::new("many");
    let mut conns: Vec<(UnixStream, u32, u32)> = (0..20u32)
        .map(|port| {
            let (host, local) = rig.host_connect(100 + port);
            (host, local, 100 + port)
        })
        .collect();
    for (host, local, port) in &mut conns {
        rig.send(op::RW, *port, *local, format!("to {port}").as_bytes());
        let want = format!("to {port}");
        let mut buf = vec![0u8; want.len()];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
        host.write_all(format!("from {port}").as_bytes()).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        rig.pump();
        let more = rig.received();
        assert!(!more.is_empty(), "stalled after {}", got.len());
        got.extend(more);
    }
    for (hdr, payload) in got {
        assert_eq!(payload, format!("from {}", hdr.dst_port).as_bytes());
    }
}

#[test]
fn the_configuration_space_holds_the_guest_cid_and_reset_drops_every_connection() {
    let mut rig = Rig::new("reset");
    let mut cid = [0u8; 8];
    rig._vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    assert_eq!(rig._vsock.device_type(), 19);
    assert_eq!(rig._vsock.queue_max_sizes().len(), 3);
    let (mut host, _) = rig.host_connect(8);
    rig._vsock.reset();
    assert_eq!(rig.server.connections(), 0);
    assert_eq!(host.read(&mut [0u8; 4]).unwrap(), 0);
}

#[test]
fn guest_connections_beyond_the_limit_are_refused_and_host_clients_wait() {
    let mut rig = Rig::new("limit");
    let mut port_path = rig.path.clone().into_os_string();
    port_path.push("_77");
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    for port in 0..MAX_CONNECTIONS as u32 {
        rig.send(op::REQUEST, 10_000 + port, 77, &[]);
        assert_eq!(rig.ops(), [op::RESPONSE], "connection {port}");
        // Keep the listener's backlog short.
        accepted.push(listener.accept().unwrap().0);
    }
    assert_eq!(rig.server.connections(), MAX_CONNECTIONS);
    rig.send(op::REQUEST, 9, 77, &[]);
    assert_eq!(rig.ops(), [op::RST], "one too many");
    // A host client is not taken from the backlog while the device is full.
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    rig.pump();
    assert!(rig.received().is_empty());
    // One connection ends: the waiting client gets its turn.
    rig.send(op::RST, 10_000, 77, &[]);
    rig.pump();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::REQUEST, 5));
    std::fs::remove_file(&port_path).unwrap();
}

#[test]
fn a_guest_shutdown_delivers_what_the_slow_host_has_not_read_before_closing() {
    let mut rig = Rig::new("drain");
    let (mut host, local) = rig.host_connect(21);
    // The guest sends as far as its credit goes while the host reads nothing: the host
    // socket's buffer fills, then ember's.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut fwd) = (0usize, 0u32);
    let chunk = 16 << 10;
    loop {
        if sent - fwd as usize + chunk <= BUF_ALLOC as usize {
            rig.send(op::RW, 21, local, &data[sent..sent + chunk]);
            sent += chunk;
            continue;
        }
        let told = rig.received().iter().map(|(h, _)| h.fwd_cnt).max();
        match told {
            Some(f) if f > fwd => fwd = f,
            _ => break,
        }
    }
    assert!(sent > BUF_ALLOC as usize, "the host socket took nothing");
    let data = &data[..sent];
    let mut hdr = rig.hdr();
    (hdr.op, hdr.src_port, hdr.dst_port, hdr.flags) =
        (op::SHUTDOWN, 21, local, SHUTDOWN_RCV | SHUTDOWN_SEND);
    rig.send_hdr(hdr, &[]);
    assert_eq!(
        rig.server.connections(),
        1,
        "closed before the host read everything"
    );
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        got
    });
    let mut ops = Vec::new();
    for _ in 0..100 {
        rig.pump();
        ops.extend(rig.ops());
        if rig.server.connections() == 0 {
            break;
        }
    }
    assert_eq!(
        reader.join().unwrap(),
        data,
        "every byte, in order, then the end"
    );
    assert_eq!(ops.last(), Some(&op::RST));
    assert_eq!(rig.server.stats().conns_killed, 0);
}

/// The data path without copies: host reads spread over several chains, partial host writes.
mod data_path;

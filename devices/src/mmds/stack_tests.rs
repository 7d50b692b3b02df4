//! The stack on crafted frames: ARP, a whole HTTP exchange over TCP, V2 tokens, and frames
//! and floods a hostile guest may send.

use std::sync::{Arc, Mutex};

use serde_json::json;
use smoltcp::wire::TcpControl;

use super::*;
use crate::mmds::testing::{
    GUEST_IP, GUEST_MAC, Segment, arp_request, segment, tcp_frame, tcp_frame_from,
};
use crate::mmds::{DEFAULT_IPV4, Mmds, MmdsVersion};

fn stack(version: MmdsVersion) -> MmdsStack {
    let mut mmds = Mmds::default();
    mmds.put(
        json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "big": "x".repeat(20_000)}}}),
    )
    .unwrap();
    mmds.configure(version, false);
    MmdsStack::new(DEFAULT_IPV4, Arc::new(Mutex::new(mmds)))
}

/// The frames the stack has for the guest.
fn take(stack: &mut MmdsStack) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(n) = stack.pop_frame(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// A guest-side TCP client on one port.
struct Client {
    port: u16,
    /// The next sequence number to send, and the next expected from the MMDS.
    seq: i32,
    ack: i32,
    now: Instant,
    /// The MMDS closed its side.
    fin_seen: bool,
}

impl Client {
    fn exchange(&mut self, stack: &mut MmdsStack, frame: Vec<u8>) -> Vec<Segment> {
        stack.receive(frame);
        stack.poll(self.now);
        // Other connections' segments (retransmissions) are not this client's business.
        take(stack)
            .iter()
            .map(|f| segment(f))
            .filter(|s| s.port == self.port)
            .collect()
    }

    fn connect(stack: &mut MmdsStack, port: u16, now: Instant) -> Self {
        let mut c = Client {
            port,
            seq: 1000,
            ack: 0,
            now,
            fin_seen: false,
        };
        let reply = c.exchange(stack, tcp_frame(port, c.seq, None, TcpControl::Syn, b""));
        assert_eq!(reply.len(), 1, "{reply:?}");
        assert_eq!(reply[0].control, TcpControl::Syn);
        assert_eq!(reply[0].ack, Some(1001));
        c.seq += 1;
        c.ack = reply[0].seq.wrapping_add(1);
        c
    }

    /// Sends `request` and collects the answer (acknowledging it as it comes).
    fn request(&mut self, stack: &mut MmdsStack, request: &str) -> String {
        let frame = tcp_frame(
            self.port,
            self.seq,
            Some(self.ack),
            TcpControl::Psh,
            request.as_bytes(),
        );
        self.seq += request.len() as i32;
        let mut answer = Vec::new();
        let mut segments = self.exchange(stack, frame);
        for _ in 0..100 {
            if segments.is_empty() {
                break;
            }
            for s in &segments {
                if !s.payload.is_empty() {
                    assert_eq!(s.seq, self.ack, "in order");
                    self.ack = self.ack.wrapping_add(s.payload.len() as i32);
                    answer.extend_from_slice(&s.payload);
                }
                // A FIN comes after the segment's data.
                if s.control == TcpControl::Fin {
                    self.fin_seen = true;
                    self.ack = self.ack.wrapping_add(1);
                }
            }
            let ack = tcp_frame(self.port, self.seq, Some(self.ack), TcpControl::None, b"");
            segments = self.exchange(stack, ack);
        }
        String::from_utf8(answer).unwrap()
    }

    /// Closes the connection from the guest's side and completes the handshake.
    fn close(&mut self, stack: &mut MmdsStack) {
        let fin = tcp_frame(self.port, self.seq, Some(self.ack), TcpControl::Fin, b"");
        self.seq += 1;
        let reply = self.exchange(stack, fin);
        let their_fin = reply
            .iter()
            .find(|s| s.control == TcpControl::Fin)
            .expect("the MMDS closes its side too");
        assert_eq!(their_fin.ack, Some(self.seq));
        self.ack = their_fin.seq.wrapping_add(1);
        let last = tcp_frame(self.port, self.seq, Some(self.ack), TcpControl::None, b"");
        assert!(self.exchange(stack, last).is_empty());
    }
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn metrics(stack: &mut MmdsStack) -> MmdsMetrics {
    stack.flush_metrics();
    lock(stack.mmds()).metrics()
}

#[test]
fn the_detour_rule_takes_arp_for_the_mmds_address_and_ipv4_to_it() {
    let s = stack(MmdsVersion::V1);
    assert!(s.is_mmds_frame(&arp_request(DEFAULT_IPV4)));
    assert!(!s.is_mmds_frame(&arp_request(Ipv4Addr::new(172, 16, 0, 1))));
    let tcp = tcp_frame(40000, 1, None, TcpControl::Syn, b"");
    assert!(s.is_mmds_frame(&tcp));
    assert!(s.is_mmds_frame(&tcp[..34]), "a header peek is enough");
    let mut elsewhere = tcp.clone();
    elsewhere[33] = 1;
    assert!(!s.is_mmds_frame(&elsewhere));
    for short in [0, 13, 14, 33] {
        assert!(!s.is_mmds_frame(&tcp[..short]), "{short}");
    }
    let mut vlan = tcp;
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    assert!(!s.is_mmds_frame(&vlan));
}

#[test]
fn an_arp_request_for_the_mmds_address_is_answered_with_the_mmds_mac() {
    let mut s = stack(MmdsVersion::V1);
    s.receive(arp_request(DEFAULT_IPV4));
    assert!(s.needs_poll());
    assert_eq!(s.poll(Instant::now()), None, "nothing to time");
    let out = take(&mut s);
    assert_eq!(out.len(), 1);
    let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
    assert_eq!(
        (eth.dst_addr(), eth.src_addr(), eth.ethertype()),
        (
            EthernetAddress(GUEST_MAC),
            EthernetAddress(MMDS_MAC),
            EthernetProtocol::Arp
        )
    );
    let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(
        reply,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(MMDS_MAC),
            source_protocol_addr: DEFAULT_IPV4,
            target_hardware_addr: EthernetAddress(GUEST_MAC),
            target_protocol_addr: GUEST_IP,
        }
    );
    let m = metrics(&mut s);
    assert_eq!((m.rx_accepted, m.rx_count, m.tx_frames), (1, 1, 1));
    assert_eq!(m.tx_bytes, out[0].len() as u64);
}

#[test]
fn a_get_over_tcp_is_answered_and_the_connection_closes_cleanly() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40000, now);
    let answer = c.request(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(body(&answer), "ami-12345678");
    // A 20 KB answer spans many segments and more than the TCP send buffer.
    let answer = c.request(
        &mut s,
        "GET /latest/meta-data/big HTTP/1.1\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(body(&answer).len(), 20_002, "{:.200}", answer);
    c.close(&mut s);
    let m = metrics(&mut s);
    assert_eq!((m.connections_created, m.connections_destroyed), (1, 1));
    assert_eq!(m.rx_no_token, 2);
    // The slot listens again.
    Client::connect(&mut s, 40001, now);
}

#[test]
fn connections_reset_by_the_guest_are_counted_and_their_slots_listen_again() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    // Reset while half open (SYN-RECEIVED), and once established.
    s.receive(tcp_frame(40000, 10, None, TcpControl::Syn, b""));
    s.poll(now);
    s.receive(tcp_frame(40000, 11, None, TcpControl::Rst, b""));
    s.poll(now);
    let c = Client::connect(&mut s, 40001, now);
    s.receive(tcp_frame(40001, c.seq, Some(c.ack), TcpControl::Rst, b""));
    s.poll(now);
    let m = metrics(&mut s);
    assert_eq!((m.connections_created, m.connections_destroyed), (2, 2));
    let sockets = &s.sockets;
    assert!(
        s.slots
            .iter()
            .all(|slot| !slot.open && sockets.get::<tcp::Socket>(slot.handle).is_listening())
    );
}

#[test]
fn v2_tokens_work_end_to_end_over_frames() {
    let mut s = stack(MmdsVersion::V2);
    let now = Instant::now();
    let mut c = Client::connect(&mut s, 40000, now);
    let denied = c.request(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let put = c.request(
        &mut s,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 10\r\n\r\n",
    );
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let token = body(&put).to_string();
    let get = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    assert_eq!(body(&c.request(&mut s, &get)), "ami-12345678");
    // Past its TTL the token no longer opens the store.
    c.now = now + Duration::from_secs(11);
    let late = c.request(&mut s, &get);
    assert!(late.starts_with("HTTP/1.1 401"), "{late}");
    assert_eq!(body(&late), "MMDS token not valid.");
}

#[test]
fn a_request_too_large_is_answered_413_and_closed() {
    let mut s = stack(MmdsVersion::V1);
    let mut c = Client::connect(&mut s, 40000, Instant::now());
    // No blank line within the limit: sent in window-sized pieces.
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_LEN));
    let mut answer = String::new();
    for chunk in huge.as_bytes().chunks(1000) {
        answer += &c.request(&mut s, std::str::from_utf8(chunk).unwrap());
    }
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(c.fin_seen, "the MMDS closes the connection after a 413");
}

#[test]
fn a_syn_flood_beyond_the_connection_limit_replaces_the_idlest_and_stays_bounded() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    for port in 0..(3 * MAX_CONNECTIONS as u16) {
        s.receive(tcp_frame(20000 + port, 7, None, TcpControl::Syn, b""));
        s.poll(now + Duration::from_millis(u64::from(port)));
        let answers: Vec<Segment> = take(&mut s).iter().map(|f| segment(f)).collect();
        assert!(
            answers.iter().any(|a| a.control == TcpControl::Syn),
            "port {port}: every SYN gets a SYN-ACK: {answers:?}"
        );
    }
    assert_eq!(s.slots.len(), MAX_CONNECTIONS);
    let m = metrics(&mut s);
    assert_eq!(m.connections_created, 3 * MAX_CONNECTIONS as u64);
    assert_eq!(m.connections_destroyed, 2 * MAX_CONNECTIONS as u64);
    // A real client still gets through.
    let mut c = Client::connect(&mut s, 40000, now + Duration::from_secs(1));
    let answer = c.request(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert_eq!(body(&answer), "ami-12345678");
}

#[test]
fn hostile_frames_are_counted_and_dropped_without_panicking() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    let good = tcp_frame(40000, 1, None, TcpControl::Syn, b"");
    let mut frames: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    let arp = arp_request(DEFAULT_IPV4);
    frames.extend((0..arp.len()).map(|n| arp[..n].to_vec()));
    // Lying IPv4 lengths and header lengths, a bad TCP data offset, ICMP, an ARP reply.
    for (at, value) in [
        (16, 0xff),
        (17, 0x00),
        (14, 0x4f),
        (14, 0x41),
        (14, 0x65),
        (46, 0xf0),
        (46, 0x10),
        (23, 1),
    ] {
        let mut f = good.clone();
        f[at] = value;
        frames.push(f);
    }
    let mut reply = arp.clone();
    reply[21] = 2;
    frames.push(reply);
    let mut bad_sum = good.clone();
    bad_sum[50] ^= 0xff;
    frames.push(bad_sum);
    let mut huge = good.clone();
    huge.resize(MAX_INPUT_FRAME_LEN + 1, 0);
    frames.push(huge);
    let n = frames.len() as u64;
    for f in frames {
        s.receive(f);
        s.poll(now);
    }
    let m = metrics(&mut s);
    assert_eq!(m.rx_accepted, n);
    assert!(
        m.rx_bad_eth > 0 && m.rx_accepted_err > 0 && m.rx_accepted_unusual > 0,
        "{m:?}"
    );
    // Too many frames before a poll: the excess is dropped.
    for _ in 0..3 {
        for _ in 0..2 * MAX_INPUT_FRAMES {
            s.receive(arp.clone());
        }
        assert_eq!(s.link.input.len(), MAX_INPUT_FRAMES);
        s.poll(now);
    }
    // Output beyond the bound is dropped and counted, never queued.
    assert_eq!(s.link.output.len(), MAX_PENDING_FRAMES);
    assert!(metrics(&mut s).tx_errors > 0);
}

#[test]
fn a_guest_that_takes_no_frames_is_not_polled_for_until_it_takes_one() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    for _ in 0..MAX_PENDING_FRAMES / MAX_INPUT_FRAMES {
        for _ in 0..MAX_INPUT_FRAMES {
            s.receive(arp_request(DEFAULT_IPV4));
        }
        s.poll(now);
    }
    assert_eq!(s.link.output.len(), MAX_PENDING_FRAMES);
    // The SYN-ACK has nowhere to go: no timer to spin on, it waits for room.
    s.receive(tcp_frame(40000, 1, None, TcpControl::Syn, b""));
    assert_eq!(s.poll(now), None);
    assert_eq!(s.poll(now + Duration::from_millis(5)), None);
    let mut buf = [0u8; 64];
    assert!(s.pop_frame(&mut buf).is_some());
    assert!(s.needs_poll(), "room opened up");
    s.poll(now + Duration::from_millis(10));
    let last = s.link.output.back().expect("a frame").clone();
    assert_eq!(segment(&last).control, TcpControl::Syn);
}

#[test]
fn random_frames_to_the_mmds_never_panic_and_state_stays_bounded() {
    let mut s = stack(MmdsVersion::V2);
    let now = Instant::now();
    let templates = [
        tcp_frame(40000, 5, None, TcpControl::Syn, b""),
        tcp_frame(
            40000,
            6,
            Some(1),
            TcpControl::Psh,
            b"GET / HTTP/1.1\r\n\r\n",
        ),
        arp_request(DEFAULT_IPV4),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut f = templates[(seed % 3) as usize].clone();
        // Corrupt a few bytes past the address fields, so the frame is still detoured.
        for k in 0..3 {
            let at = 34 + ((seed >> (8 * k)) as usize % (f.len() - 34).max(1));
            if let Some(b) = f.get_mut(at) {
                *b = (seed >> (8 * k + 3)) as u8;
            }
        }
        f.truncate(f.len() - (seed >> 40) as usize % 8);
        s.receive(f);
        s.poll(now + Duration::from_millis(round));
        take(&mut s);
    }
    for slot in &s.slots {
        assert!(slot.request.len() <= MAX_REQUEST_LEN);
    }
}

/// Found by the mmds_frames fuzz target: smoltcp panicked answering a SYN from 0.0.0.0, which
/// killed ember. Segments from addresses that cannot be answered are dropped and counted.
#[test]
fn a_tcp_syn_from_a_non_unicast_address_is_dropped() {
    let mut s = stack(MmdsVersion::V1);
    let now = Instant::now();
    let sources = [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 1),
    ];
    for src in sources {
        s.receive(tcp_frame_from(src, 40000, 1000, None, TcpControl::Syn, b""));
        s.poll(now);
    }
    assert!(
        take(&mut s).is_empty(),
        "the stack answered a non-unicast source"
    );
    assert_eq!(metrics(&mut s).rx_accepted_err, sources.len() as u64);
    // A unicast source is still answered.
    s.receive(tcp_frame(40000, 1000, None, TcpControl::Syn, b""));
    s.poll(now);
    assert_eq!(take(&mut s).len(), 1);
}

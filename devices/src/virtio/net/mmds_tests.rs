// The MMDS tests of `device.rs`, included into its test module (whose rig they use).

use std::net::Ipv4Addr;

use smoltcp::wire::TcpControl;

use crate::mmds::testing::{self, GUEST_MAC, segment, tcp_frame};
use crate::mmds::{DEFAULT_IPV4, MMDS_MAC, Mmds, MmdsStack};
use crate::rate_limiter::tests::readable;

/// `frame` after a virtio-net header, as the guest transmits it.
fn with_header(frame: Vec<u8>) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(frame);
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    with_header(testing::arp_request(target))
}

/// The rig's device, serving MMDS at the default address, with its I/O handler.
fn mmds_rig() -> (Rig, NetHandler<Mock>) {
    let (rig, handler, _) = mmds_rig_with_store();
    (rig, handler)
}

fn mmds_rig_with_store() -> (Rig, NetHandler<Mock>, crate::mmds::SharedMmds) {
    let mut rig = Rig::new(all());
    let placeholder = Net::new(
        "unused",
        Mock::default(),
        MacAddr([6, 0, 0, 0, 0, 1]),
        None,
        rig.mem.clone(),
        rig.irq.clone(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    );
    let net = std::mem::replace(&mut rig.net, placeholder);
    let store = Arc::new(Mutex::new(Mmds::default()));
    let stack = MmdsStack::new(DEFAULT_IPV4, store.clone());
    rig.net = net.with_mmds(stack).unwrap();
    let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let handler = rig.net.handler([evt(), evt()]);
    (rig, handler, store)
}

/// Puts `frames` in the transmit queue (one chain each, at 0x3000 apart).
fn transmit(rig: &mut Rig, frames: &[Vec<u8>]) {
    for (i, f) in frames.iter().enumerate() {
        let addr = BUFS + 0x10_0000 + i as u64 * 0x1000;
        rig.mem.write_slice(f, GuestAddress(addr)).unwrap();
        rig.tx.add(&rig.mem, &[(addr, f.len() as u32, false)]).unwrap();
    }
}

/// A round of the handler after the guest kicked the transmit queue.
fn kick_tx(handler: &mut NetHandler<Mock>) {
    let mut watches = Vec::new();
    handler.interest(&mut watches);
    let mut ready = vec![Ready::default(); watches.len()];
    ready[WATCH_TX].readable = true;
    while handler.ready(&ready) {
        ready = vec![Ready::default(); watches.len()];
    }
}

fn is_arp_reply(frame: &[u8]) -> bool {
    frame.len() == 42 && frame[..6] == GUEST_MAC && frame[6..12] == MMDS_MAC && frame[21] == 2
}

#[test]
fn a_frame_to_the_mmds_never_reaches_the_tap_and_its_answer_arrives_with_the_tap_idle() {
    let (mut rig, mut handler) = mmds_rig();
    let mut watches = Vec::new();
    handler.interest(&mut watches);
    assert!(watches[WATCH_MMDS_TIMER].readable, "the worker waits on the MMDS timer");
    let other = arp_request(Ipv4Addr::new(172, 16, 0, 1));
    transmit(&mut rig, &[arp_request(DEFAULT_IPV4), other.clone()]);
    rig.rx.add(&rig.mem, &[(BUFS, 2048, true)]).unwrap();
    kick_tx(&mut handler);
    // Only the other frame reached the TAP; the TAP had nothing to read.
    assert_eq!(*rig.sent.lock().unwrap(), [other]);
    let used = rig.rx.take_used(&rig.mem).unwrap();
    assert_eq!(used, [(0, (VNET_HDR_LEN + 42) as u32)]);
    let got = guest_bytes(&rig.mem, &[(BUFS, VNET_HDR_LEN + 42)]);
    assert_eq!(got[frame::NUM_BUFFERS_OFFSET], 1);
    assert!(is_arp_reply(&got[VNET_HDR_LEN..]), "{got:?}");
    let s = rig.stats();
    assert_eq!((s.tx_frames, s.rx_frames), (1, 1), "MMDS frames are not the TAP's");
}

#[test]
fn mmds_answers_wait_for_receive_buffers_and_take_turns_with_the_tap() {
    let (mut rig, mut handler) = mmds_rig();
    transmit(
        &mut rig,
        &[arp_request(DEFAULT_IPV4), arp_request(DEFAULT_IPV4), arp_request(DEFAULT_IPV4)],
    );
    kick_tx(&mut handler);
    assert!(rig.rx.take_used(&rig.mem).unwrap().is_empty(), "no buffers yet");
    for _ in 0..3 {
        rig.inbound(frame([0; VNET_HDR_LEN], 100));
    }
    for i in 0..6 {
        rig.rx
            .add(&rig.mem, &[(BUFS + i * 0x1000, 2048, true)])
            .unwrap();
    }
    rig.server.process_rx(64);
    let used = rig.rx.take_used(&rig.mem).unwrap();
    let lens: Vec<u32> = used.iter().map(|&(_, len)| len).collect();
    let (tap, mmds) = ((VNET_HDR_LEN + 100) as u32, (VNET_HDR_LEN + 42) as u32);
    // The answer that found no buffers goes first, then one each in turn.
    assert_eq!(lens, [mmds, tap, mmds, tap, mmds, tap]);
}

#[test]
fn without_mmds_frames_to_its_address_go_to_the_tap() {
    let mut rig = Rig::new(all());
    let f = arp_request(DEFAULT_IPV4);
    transmit(&mut rig, std::slice::from_ref(&f));
    rig.server.process_tx(64);
    assert_eq!(*rig.sent.lock().unwrap(), [f]);
}

#[test]
fn tcp_answers_and_timed_acks_reach_the_guest_through_the_worker() {
    let (mut rig, mut handler) = mmds_rig();
    for i in 0..4 {
        rig.rx
            .add(&rig.mem, &[(BUFS + i * 0x1000, 2048, true)])
            .unwrap();
    }
    transmit(&mut rig, &[with_header(tcp_frame(40000, 99, None, TcpControl::Syn, b""))]);
    kick_tx(&mut handler);
    let used = rig.rx.take_used(&rig.mem).unwrap();
    assert_eq!(used.len(), 1, "the SYN-ACK, with the TAP idle");
    let synack = guest_bytes(&rig.mem, &[(BUFS, used[0].1 as usize)]);
    let synack = segment(&synack[VNET_HDR_LEN..]);
    assert_eq!((synack.control, synack.ack), (TcpControl::Syn, Some(100)));
    // Half a request: the MMDS delays its ACK, and the worker's timer sends it.
    let ack = synack.seq.wrapping_add(1);
    let partial = tcp_frame(40000, 100, Some(ack), TcpControl::Psh, b"GET / HT");
    transmit(&mut rig, &[with_header(partial)]);
    kick_tx(&mut handler);
    assert!(rig.rx.take_used(&rig.mem).unwrap().is_empty(), "the ACK waits");
    let mut watches = Vec::new();
    handler.interest(&mut watches);
    let timer = watches[WATCH_MMDS_TIMER];
    assert!(readable(timer.fd, 2000), "the MMDS timer fires");
    let mut ready = vec![Ready::default(); watches.len()];
    ready[WATCH_MMDS_TIMER].readable = true;
    while handler.ready(&ready) {
        ready = vec![Ready::default(); watches.len()];
    }
    let used = rig.rx.take_used(&rig.mem).unwrap();
    assert_eq!(used.len(), 1);
    let got = guest_bytes(&rig.mem, &[(BUFS + 0x1000, used[0].1 as usize)]);
    let acked = segment(&got[VNET_HDR_LEN..]);
    assert_eq!((acked.ack, acked.payload.len()), (Some(108), 0));
    assert!(rig.sent.lock().unwrap().is_empty(), "nothing reached the TAP");
}

#[test]
fn an_oversized_frame_to_the_mmds_is_dropped_uncopied_and_counted() {
    let (mut rig, mut handler, store) = mmds_rig_with_store();
    let mut big = with_header(tcp_frame(40000, 1, None, TcpControl::None, b""));
    big.resize(VNET_HDR_LEN + crate::mmds::MAX_INPUT_FRAME_LEN + 1, 0);
    transmit(&mut rig, &[big]);
    kick_tx(&mut handler);
    assert!(rig.sent.lock().unwrap().is_empty());
    assert_eq!(rig.tx.take_used(&rig.mem).unwrap().len(), 1, "the chain is returned");
    let m = lock(&store).metrics();
    assert_eq!((m.rx_accepted, m.rx_accepted_err), (1, 1));
}

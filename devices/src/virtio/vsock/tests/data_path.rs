//! vsock's data path between guest memory and host sockets: one host read filling several
//! receive chains, and guest packets a full host socket takes only part of.

use super::*;

/// The stream's byte at `i`, for data whose order matters.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[test]
fn one_host_read_fills_several_receive_buffers_each_with_its_own_header_in_order() {
    let mut rig = Rig::new("scatter");
    let (mut host, local) = rig.host_connect(30);
    let data: Vec<u8> = (0..3 * 4096 + 500).map(pattern).collect();
    host.write_all(&data).unwrap();
    rig.pump();
    let got = rig.received();
    let lens: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, [4096, 4096, 4096, 500], "each buffer full, in order");
    for (hdr, _) in &got {
        let want = Header {
            src_cid: 2,
            dst_cid: GUEST_CID,
            src_port: local,
            dst_port: 30,
            len: hdr.len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        };
        assert_eq!(*hdr, want);
    }
    let bytes: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(bytes, data);
    assert_eq!(rig.server.stats().rx_bytes_count, data.len() as u64);
}

/// Writes four receive buffers' worth of host data and serves it; returns the interrupts the
/// device raised meanwhile, after checking the four packets arrived whole.
fn interrupts_for_one_host_read(rig: &mut Rig, host: &mut UnixStream) -> u64 {
    let data: Vec<u8> = (0..4 * 4096).map(pattern).collect();
    host.write_all(&data).unwrap();
    rig.pump();
    let raised = rig.irq.read().unwrap_or(0);
    let got = rig.received();
    let lens: Vec<u32> = got.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, [4096; 4]);
    let bytes: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
    assert_eq!(bytes, data);
    raised
}

#[test]
fn one_host_read_filling_several_buffers_raises_one_interrupt_and_none_the_driver_suppressed() {
    // Without EVENT_IDX: one interrupt for the batch, not one per packet.
    let mut rig = Rig::negotiated(
        "one-irq",
        RING,
        Some(1 << crate::virtio::VIRTIO_F_VERSION_1),
    );
    let (mut host, _) = rig.host_connect(32);
    let _ = rig.irq.read();
    assert_eq!(interrupts_for_one_host_read(&mut rig, &mut host), 1);

    // With EVENT_IDX, as Linux negotiates it: one when the driver asked for it...
    let mut rig = Rig::new("event-idx");
    let (mut host, _) = rig.host_connect(33);
    let _ = rig.irq.read();
    assert!(!rig.rx.enable_interrupt(&rig.mem).unwrap());
    assert_eq!(interrupts_for_one_host_read(&mut rig, &mut host), 1);
    // ...and none while it is still busy with earlier buffers (it has not asked again).
    assert_eq!(interrupts_for_one_host_read(&mut rig, &mut host), 0);
    assert!(!rig.rx.enable_interrupt(&rig.mem).unwrap());
    assert_eq!(interrupts_for_one_host_read(&mut rig, &mut host), 1);
}

#[test]
fn a_host_read_across_chains_of_several_buffers_skips_an_unusable_chain_in_order() {
    // One usual buffer, for the connection request.
    let mut rig = Rig::with_rx_buffers("chains", 1);
    let (mut host, local) = rig.host_connect(31);
    // Now available: the usual buffer the rig put back (head 1, 4096 bytes of payload); a
    // chain of a header buffer and two payload buffers (head 2); a device-readable chain,
    // which cannot take data (head 5); one more usual-sized buffer (head 6).
    let (a0, a1, a2, c) = (0x30_0000, 0x30_1000, 0x30_3000, 0x30_8000);
    let a = [
        (a0, HDR_LEN as u32, true),
        (a1, 1000, true),
        (a2, 2000, true),
    ];
    rig.rx.add(&rig.mem, &a).unwrap();
    rig.rx.add(&rig.mem, &[(0x30_6000, 64, false)]).unwrap();
    rig.rx.add(&rig.mem, &[(c, RX_LEN, true)]).unwrap();
    let data: Vec<u8> = (0..9000).map(pattern).collect();
    host.write_all(&data).unwrap();
    rig.pump();
    let used = rig.rx.take_used(&rig.mem).unwrap();
    let (first, second) = (HDR_LEN as u32 + 4096, HDR_LEN as u32 + 3000);
    let rest = HDR_LEN as u32 + 9000 - 4096 - 3000;
    assert_eq!(used, [(1, first), (2, second), (5, 0), (6, rest)]);
    let read = |addr: u64, len: usize| {
        let mut b = vec![0u8; len];
        rig.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    };
    let header = |addr: u64| {
        let hdr = Header::parse(&read(addr, HDR_LEN).try_into().unwrap());
        assert_eq!((hdr.op, hdr.src_port, hdr.dst_port), (op::RW, local, 31));
        hdr.len
    };
    let usual = RX_DATA + 0x2000;
    assert_eq!([header(usual), header(a0), header(c)], [4096, 3000, 1904]);
    let mut bytes = read(usual + HDR_LEN as u64, 4096);
    bytes.extend(read(a1, 1000));
    bytes.extend(read(a2, 2000));
    bytes.extend(read(c + HDR_LEN as u64, 1904));
    assert_eq!(bytes, data);
    assert_eq!(rig.server.stats().rx_queue_event_fails, 1);
}

#[test]
fn a_receive_buffer_with_room_for_only_a_header_does_not_end_the_host_stream() {
    let mut rig = Rig::with_rx_buffers("header-only", 1);
    let (mut host, _) = rig.host_connect(32);
    // Available: the usual buffer the rig put back (head 1), a header-sized one (head 2) and
    // another usual one (head 3).
    rig.rx
        .add(&rig.mem, &[(0x30_0000, HDR_LEN as u32, true)])
        .unwrap();
    rig.rx
        .add(&rig.mem, &[(RX_DATA + 0x2000 * 3, RX_LEN, true)])
        .unwrap();
    host.write_all(b"abc").unwrap();
    rig.pump();
    host.write_all(b"defg").unwrap();
    rig.pump();
    let used = rig.rx.take_used(&rig.mem).unwrap();
    let hdr = HDR_LEN as u32;
    assert_eq!(
        used,
        [(1, hdr + 3), (2, 0), (3, hdr + 4)],
        "the header-sized buffer is returned empty; no SHUTDOWN: the host did not end its stream"
    );
    let mut payload = [0u8; 4];
    let at = GuestAddress(RX_DATA + 0x2000 * 3 + HDR_LEN as u64);
    rig.mem.read_slice(&mut payload, at).unwrap();
    assert_eq!(&payload, b"defg");
    assert_eq!(rig.server.stats().rx_queue_event_fails, 1);
}

/// The forwarded count ember tells the guest when asked.
fn told_fwd_cnt(rig: &mut Rig, guest_port: u32, host_port: u32) -> u32 {
    rig.send(op::CREDIT_REQUEST, guest_port, host_port, &[]);
    let got = rig.received();
    let update = got.iter().find(|(h, _)| h.op == op::CREDIT_UPDATE);
    update.expect("a credit update").0.fwd_cnt
}

#[test]
fn guest_data_the_host_socket_takes_only_part_of_goes_out_whole_and_in_order_later() {
    let mut rig = Rig::new("partial");
    rig.buf_alloc = 1 << 20;
    let mut port_path = rig.path.clone().into_os_string();
    port_path.push("_40");
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path).unwrap();
    rig.send(op::REQUEST, 6000, 40, &[]);
    assert_eq!(rig.ops(), [op::RESPONSE]);
    let (mut host, _) = listener.accept().unwrap();
    std::fs::remove_file(&port_path).unwrap();
    // The host reads nothing: packets go straight to its socket until one fits only in part.
    let packet = MAX_PAYLOAD as usize;
    let data: Vec<u8> = (0..8 << 20).map(pattern).collect();
    let mut got = vec![0u8; data.len()];
    let (mut sent, mut have, mut shifts) = (0, 0, 0);
    // Where the packets sent end in the stream.
    let mut ends = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        rig.send(op::RW, 6000, 40, &data[sent..sent + packet]);
        sent += packet;
        ends.push(sent);
        let fwd = told_fwd_cnt(&mut rig, 6000, 40) as usize;
        if fwd == sent {
            continue;
        }
        if !ends.contains(&fwd) {
            // Credit counts exactly what the host socket took: what the host can read now.
            host.set_nonblocking(true).unwrap();
            while let Ok(n) = host.read(&mut got[have..]) {
                assert!(n > 0);
                have += n;
            }
            host.set_nonblocking(false).unwrap();
            assert_eq!(
                have, fwd,
                "the forwarded count is what the host socket holds"
            );
            break;
        }
        // The socket filled exactly at a packet's end (its buffer may be a multiple of the
        // packets): drain it, shift where packets end by about half a packet, fill it again.
        shifts += 1;
        assert!(shifts < 8, "the host socket never took part of a packet");
        while have < sent {
            rig.pump();
            have += host.read(&mut got[have..sent]).unwrap();
        }
        let odd = packet / 2 + 777 * shifts;
        rig.send(op::RW, 6000, 40, &data[sent..sent + odd]);
        sent += odd;
        ends.push(sent);
    }
    // One more packet waits behind the rest; everything arrives in order, none twice.
    rig.send(op::RW, 6000, 40, &data[sent..sent + packet]);
    sent += packet;
    while have < sent {
        rig.pump();
        match host.read(&mut got[have..sent]) {
            Ok(n) => have += n,
            Err(e) => panic!("stalled at {have} of {sent}: {e}"),
        }
    }
    assert_eq!(&got[..sent], &data[..sent]);
    assert_eq!(told_fwd_cnt(&mut rig, 6000, 40) as usize, sent);
    assert_eq!(rig.server.stats().tx_bytes_count, sent as u64);
}

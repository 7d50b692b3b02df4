//! Frames a guest sends to the MMDS, built with `smoltcp`'s wire types, for the tests of the
//! stack and of the network device.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::{DEFAULT_IPV4, MMDS_MAC, MMDS_PORT};

/// The guest's MAC and address in the tests.
pub(crate) const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
pub(crate) const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const ETH_HEADER: usize = 14;

/// An ARP request from the guest for `target`.
pub(crate) fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut frame = vec![0u8; ETH_HEADER + repr.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_HEADER..]));
    frame
}

/// A TCP segment from the guest's `port` to the MMDS.
pub(crate) fn tcp_frame(
    port: u16,
    seq: i32,
    ack: Option<i32>,
    control: TcpControl,
    payload: &[u8],
) -> Vec<u8> {
    tcp_frame_from(GUEST_IP, port, seq, ack, control, payload)
}

/// A TCP segment from `src`'s `port` to the MMDS.
pub(crate) fn tcp_frame_from(
    src: Ipv4Addr,
    port: u16,
    seq: i32,
    ack: Option<i32>,
    control: TcpControl,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: port,
        dst_port: MMDS_PORT,
        control,
        seq_number: TcpSeqNumber(seq),
        ack_number: ack.map(TcpSeqNumber),
        window_len: 65535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: DEFAULT_IPV4,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; ETH_HEADER + ip.buffer_len() + tcp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(MMDS_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut frame[ETH_HEADER..]);
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &src.into(),
        &DEFAULT_IPV4.into(),
        &caps,
    );
    frame
}

/// A TCP segment the MMDS sent.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The guest's port it goes to.
    pub(crate) port: u16,
    pub(crate) control: TcpControl,
    pub(crate) seq: i32,
    pub(crate) ack: Option<i32>,
    pub(crate) payload: Vec<u8>,
}

/// The TCP segment in a frame the MMDS sent, checked down to its checksums and size.
pub(crate) fn segment(frame: &[u8]) -> Segment {
    assert!(frame.len() <= ETH_HEADER + 1500, "{} bytes", frame.len());
    let eth = EthernetFrame::new_checked(frame).expect("an Ethernet frame");
    assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
    assert_eq!(eth.src_addr(), EthernetAddress(MMDS_MAC));
    let caps = ChecksumCapabilities::default();
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("an IPv4 packet");
    let ip_repr = Ipv4Repr::parse(&ip, &caps).expect("a valid IPv4 header and checksum");
    assert_eq!(
        (ip_repr.src_addr, ip_repr.dst_addr),
        (DEFAULT_IPV4, GUEST_IP)
    );
    let tcp = TcpPacket::new_checked(ip.payload()).expect("a TCP segment");
    let repr = TcpRepr::parse(&tcp, &DEFAULT_IPV4.into(), &GUEST_IP.into(), &caps)
        .expect("a valid TCP checksum");
    Segment {
        port: repr.dst_port,
        control: repr.control,
        seq: repr.seq_number.0,
        ack: repr.ack_number.map(|a| a.0),
        payload: repr.payload.to_vec(),
    }
}

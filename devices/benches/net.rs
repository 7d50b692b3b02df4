//! The virtio-net device model's throughput and CPU cost between a real TAP (in a network
//! namespace of its own) and mock guest queues, next to a plain read/write loop on the same
//! TAP in the same run (the physical limit).
//!
//! Transmit (guest to host): the device gathers each frame from guest memory and writes it to
//! the TAP; the loop writes the same bytes from one buffer. Frames are addressed to a MAC that
//! is not the TAP's, so the host kernel drops them right after taking them: the cost measured
//! is the TAP's, not a protocol stack's. Receive (host to guest): the TAP's queue is filled
//! through a packet socket (with virtio-net headers, so 64 KiB TCP segments stay whole on an
//! offloading TAP), then drained into the guest's mergeable 4 KiB receive buffers, or by the
//! loop's reads: into one buffer ("ratio"), and into the same 4 KiB guest buffers the device
//! fills ("vs guest": writing a guest's scattered buffers costs the kernel more than one hot
//! buffer, whoever asks). Sizes: 1514-byte frames, and 64 KiB TSO frames with the offloads
//! negotiated.
//! "ember us" is the device's user CPU per frame inside `process_tx`/`process_rx`, ember's own
//! work beyond the syscalls.
//!
//! Needs root (namespaces and TAPs). Run: `cargo bench -p devices --bench net`
#![allow(clippy::unwrap_used)] // benchmark code

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::VirtioDevice;
use devices::virtio::VirtioInterrupt;
use devices::virtio::net::{MacAddr, Net, NetServer, Tap};
use devices::virtio::testing::Driver;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use common::{since, thread_cpu};

const HDR: usize = 12;
const QUEUE: u16 = 256;
const RXQ: u64 = 0x1_0000;
const TXQ: u64 = 0x2_0000;
const FRAMES: u64 = 0x10_0000;
const RXBUF: u64 = 0x100_0000;
const RXBUF_LEN: u32 = 4096;
/// Fill-and-drain rounds per receive measurement.
const RX_ROUNDS: usize = 8;
const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 2];
const OTHER_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 9];

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {}", args.join(" "));
}

/// An IPv4 frame (with its virtio-net header) of `len` bytes to `dst`: UDP, or for a 64 KiB
/// one a TCP segment marked for segmentation offload.
fn frame(len: usize, dst: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; HDR + len];
    let tso = len > 1514;
    if tso {
        f[0] = 1; // NEEDS_CSUM
        f[1] = 1; // GSO_TCPV4
        f[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        f[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    let e = &mut f[HDR..];
    e[..6].copy_from_slice(&dst);
    e[6..12].copy_from_slice(&[0x06, 0, 0, 0, 0, 1]);
    e[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut e[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = if tso { 6 } else { 17 };
    ip[12..16].copy_from_slice(&[10, 0, 9, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 9, 2]);
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let l4 = &mut e[34..];
    l4[..2].copy_from_slice(&5000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5001u16.to_be_bytes());
    if tso {
        l4[12] = 5 << 4; // data offset
        l4[13] = 0x10; // ACK
    } else {
        l4[4..6].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    }
    f
}

struct Figures {
    frames: u64,
    bytes: u64,
    wall: Duration,
    cpu: (Duration, Duration),
}

impl Figures {
    fn new() -> Self {
        Self {
            frames: 0,
            bytes: 0,
            wall: Duration::ZERO,
            cpu: (Duration::ZERO, Duration::ZERO),
        }
    }
    fn add(&mut self, other: &Figures) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.wall += other.wall;
        self.cpu = (self.cpu.0 + other.cpu.0, self.cpu.1 + other.cpu.1);
    }
    fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.wall.as_secs_f64() / 1e9
    }
    fn fps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64()
    }
    fn us_per_frame(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.frames.max(1) as f64
    }
}

fn loop_tx(fd: RawFd, frame: &[u8], count: u64) -> Figures {
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..count {
        // SAFETY: writes `frame`, a live buffer of that length, to an open descriptor.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        assert_eq!(
            n as usize,
            frame.len(),
            "{}",
            std::io::Error::last_os_error()
        );
    }
    Figures {
        frames: count,
        bytes: count * (frame.len() - HDR) as u64,
        wall: start.elapsed(),
        cpu: since(cpu),
    }
}

/// Fills the TAP's queue with `count` copies of `frame` from the host side.
fn fill(packet: RawFd, ifindex: i32, frame: &[u8], count: u64) {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    // The packet socket's virtio-net header is the 10-byte one: no num_buffers.
    let body = [&frame[..10], &frame[HDR..]].concat();
    for _ in 0..count {
        // SAFETY: sends `body`, a live buffer, to a valid address of the stated size.
        unsafe {
            libc::sendto(
                packet,
                body.as_ptr().cast(),
                body.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
    }
    // Let the host's transmit softirq move everything out of the qdisc into the TAP.
    std::thread::sleep(Duration::from_millis(100));
}

fn loop_rx(fd: RawFd) -> Figures {
    let mut buf = vec![0u8; 65562];
    let (mut frames, mut bytes) = (0, 0);
    let (start, cpu) = (Instant::now(), thread_cpu());
    loop {
        // SAFETY: reads into `buf`, a live buffer of that length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        frames += 1;
        bytes += n as u64 - HDR as u64;
    }
    Figures {
        frames,
        bytes,
        wall: start.elapsed(),
        cpu: since(cpu),
    }
}

/// Where the guest's receive buffers are in host memory.
fn guest_buffers(mem: &GuestMemoryMmap, len: usize) -> *mut u8 {
    let slice = mem.get_slice(GuestAddress(RXBUF), len).unwrap();
    slice.ptr_guard_mut().as_ptr()
}

/// The same loop, reading each frame with `readv` into the guest's own 4 KiB receive buffers
/// in turn, as many per read as the device offers (enough for any frame): the limit for
/// frames that must land in guest memory rather than in one hot buffer.
fn loop_rx_guest_like(fd: RawFd, ring: *mut u8, ring_len: usize) -> Figures {
    let chunks = ring_len / RXBUF_LEN as usize;
    // As many buffers as the largest frame needs, like the device.
    let per_read = 65562usize.div_ceil(RXBUF_LEN as usize);
    let (mut frames, mut bytes, mut next) = (0, 0, 0usize);
    let (start, cpu) = (Instant::now(), thread_cpu());
    loop {
        let iovecs: Vec<libc::iovec> = (0..per_read)
            .map(|i| libc::iovec {
                iov_base: ring
                    .wrapping_add(((next + i) % chunks) * RXBUF_LEN as usize)
                    .cast(),
                iov_len: RXBUF_LEN as usize,
            })
            .collect();
        // SAFETY: the iovecs point into the guest's receive buffers, mapped for the whole
        // benchmark and not used by the device while this loop runs.
        let n = unsafe { libc::readv(fd, iovecs.as_ptr(), iovecs.len() as i32) };
        if n <= 0 {
            break;
        }
        frames += 1;
        bytes += n as u64 - HDR as u64;
        next += (n as usize).div_ceil(RXBUF_LEN as usize);
    }
    Figures {
        frames,
        bytes,
        wall: start.elapsed(),
        cpu: since(cpu),
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    net: Net<Tap>,
    server: NetServer<Tap>,
    rx: Driver,
    tx: Driver,
    /// Receive buffers the driver has made available and not had back.
    rx_posted: u16,
    rx_next: u64,
}

fn device_tx(rig: &mut Rig, frame: &[u8], count: u64) -> Figures {
    rig.mem.write_slice(frame, GuestAddress(FRAMES)).unwrap();
    let (mut wall, mut cpu) = (Duration::ZERO, (Duration::ZERO, Duration::ZERO));
    let before = rig.server.stats();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(u64::from(QUEUE));
        for _ in 0..batch {
            rig.tx
                .add(&rig.mem, &[(FRAMES, frame.len() as u32, false)])
                .unwrap();
        }
        let (t, c) = (Instant::now(), thread_cpu());
        rig.server.process_tx(QUEUE as usize);
        let d = since(c);
        wall += t.elapsed();
        cpu = (cpu.0 + d.0, cpu.1 + d.1);
        sent += rig.tx.take_used(&rig.mem).unwrap().len() as u64;
    }
    let after = rig.server.stats();
    assert_eq!(
        after.tx_dropped, before.tx_dropped,
        "the device dropped frames"
    );
    Figures {
        frames: after.tx_frames - before.tx_frames,
        bytes: after.tx_bytes - before.tx_bytes,
        wall,
        cpu,
    }
}

fn device_rx(rig: &mut Rig) -> Figures {
    let before = rig.server.stats();
    let (mut wall, mut cpu) = (Duration::ZERO, (Duration::ZERO, Duration::ZERO));
    loop {
        while rig.rx_posted < QUEUE {
            let addr = RXBUF + (rig.rx_next % u64::from(QUEUE)) * u64::from(RXBUF_LEN);
            rig.rx.add(&rig.mem, &[(addr, RXBUF_LEN, true)]).unwrap();
            rig.rx_next += 1;
            rig.rx_posted += 1;
        }
        let frames_before = rig.server.stats().rx_frames;
        let (t, c) = (Instant::now(), thread_cpu());
        rig.server.process_rx(64);
        let d = since(c);
        wall += t.elapsed();
        cpu = (cpu.0 + d.0, cpu.1 + d.1);
        rig.rx_posted -= rig.rx.take_used(&rig.mem).unwrap().len() as u16;
        if rig.server.stats().rx_frames == frames_before {
            break;
        }
    }
    let after = rig.server.stats();
    Figures {
        frames: after.rx_frames - before.rx_frames,
        bytes: after.rx_bytes - before.rx_bytes,
        wall,
        cpu,
    }
}

fn report(name: &str, host: &Figures, dev: &Figures, guest_like: Option<&Figures>) {
    let like = guest_like.map_or("-".to_owned(), |g| {
        format!("{:.0}%", dev.gbits() / g.gbits() * 100.0)
    });
    println!(
        "{:<24} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>6.0}% {:>8} {:>9.2} {:>9.2} {:>9.2}",
        name,
        host.fps(),
        dev.fps(),
        host.gbits(),
        dev.gbits(),
        dev.gbits() / host.gbits() * 100.0,
        like,
        dev.us_per_frame(dev.cpu.0),
        dev.us_per_frame(dev.cpu.1),
        host.us_per_frame(host.cpu.0 + host.cpu.1),
    );
}

fn main() {
    env_logger::init();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the net benchmark creates a network namespace and a TAP: run it as root");
        std::process::exit(1);
    }
    let ns = format!("ember-bench-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    ip(&["netns", "add", &ns]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    ip(&["-n", &ns, "tuntap", "add", "tap0", "mode", "tap"]);
    // The TAP's queue is sized when ember attaches; room for a whole fill.
    ip(&[
        "-n",
        &ns,
        "link",
        "set",
        "tap0",
        "txqueuelen",
        "20000",
        "up",
    ]);
    ip(&["-n", &ns, "addr", "add", "10.0.9.1/24", "dev", "tap0"]);
    let nsfile = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: enters the namespace we created; it changes only this thread.
    let entered = unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());

    let tap = Tap::open("tap0").unwrap();
    let fd = tap.as_raw_fd();
    tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
        .unwrap();
    // SAFETY: plain socket creation.
    let packet = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(packet >= 0, "{}", std::io::Error::last_os_error());
    let on: libc::c_int = 1;
    // SAFETY: PACKET_VNET_HDR reads one int.
    let rc = unsafe {
        libc::setsockopt(
            packet,
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            (&raw const on).cast(),
            4,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new("tap0").unwrap();
    // SAFETY: `name` is a valid C string. (/sys would show the namespace it was mounted in.)
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0);

    let cases = [
        ("1514-byte frames", 1514usize, 200_000u64, 10_000u64),
        ("64 KiB TSO frames", 65_014, 20_000, 1_000),
    ];
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    // Fault the receive buffers in, as a running guest's would be.
    mem.write_slice(&vec![0u8; 2 << 20], GuestAddress(RXBUF))
        .unwrap();
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut net = Net::new(
        "bench",
        tap,
        MacAddr(GUEST_MAC),
        None,
        mem.clone(),
        irq,
        wake,
    );
    let (rx, tx) = (Driver::new(RXQ, QUEUE), Driver::new(TXQ, QUEUE));
    let features = net.features();
    // Every offload the device offers, as a Linux guest negotiates them; the TAP gets the
    // matching offloads, so the plain loop below sees the same frames.
    net.activate(vec![rx.queue().unwrap(), tx.queue().unwrap()], features)
        .unwrap();
    let server = net.server();
    let mut rig = Rig {
        mem,
        net,
        server,
        rx,
        tx,
        rx_posted: 0,
        rx_next: 0,
    };

    println!(
        "{:<24} {:>10} {:>10} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "workload",
        "host fr/s",
        "dev fr/s",
        "host Gb/s",
        "dev Gb/s",
        "ratio",
        "vs guest",
        "ember us",
        "kernel us",
        "host us"
    );
    let ring_len = usize::from(QUEUE) * RXBUF_LEN as usize;
    let best = |a: Figures, b: Figures| if a.gbits() >= b.gbits() { a } else { b };
    for &(name, len, tx_count, rx_count) in &cases {
        let (to_other, to_guest) = (frame(len, OTHER_MAC), frame(len, GUEST_MAC));
        // Each side twice, interleaved; the better run of each counts.
        let mut host_tx = loop_tx(fd, &to_other, tx_count);
        let mut dev_tx = device_tx(&mut rig, &to_other, tx_count);
        host_tx = best(host_tx, loop_tx(fd, &to_other, tx_count));
        dev_tx = best(dev_tx, device_tx(&mut rig, &to_other, tx_count));
        report(&format!("tx {name}"), &host_tx, &dev_tx, None);
        // A fill is at most the TAP's queue (a few ms of work): several, interleaved, summed.
        let (mut host_rx, mut like_rx, mut dev_rx) =
            (Figures::new(), Figures::new(), Figures::new());
        for _ in 0..RX_ROUNDS {
            fill(packet, ifindex, &to_guest, rx_count);
            host_rx.add(&loop_rx(fd));
            fill(packet, ifindex, &to_guest, rx_count);
            // The same buffers of the same guest memory the device fills.
            let l = loop_rx_guest_like(fd, guest_buffers(&rig.mem, ring_len), ring_len);
            like_rx.add(&l);
            fill(packet, ifindex, &to_guest, rx_count);
            let d = device_rx(&mut rig);
            dev_rx.add(&d);
        }
        // The host side may also see a few frames of the host's own (neighbour discovery).
        assert!(
            dev_rx.frames * 100 >= host_rx.frames * 99,
            "the device received {} of {} frames ({:?})",
            dev_rx.frames,
            host_rx.frames,
            rig.server.stats()
        );
        report(&format!("rx {name}"), &host_rx, &dev_rx, Some(&like_rx));
    }
    drop(rig.net);
}

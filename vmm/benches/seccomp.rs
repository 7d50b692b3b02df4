//! The seccomp filters' cost on ember's threads.
//!
//! Installing: each thread installs its filter as it starts, and the kernel checks the
//! program, compiles it and runs it once per syscall number (its action cache). Each thread
//! kind's filter is installed on 200 new threads, and a one-rule filter (trap `ptrace`, allow
//! the rest: what any filter costs) for comparison.
//!
//! Running: a filter runs on every syscall the cache does not settle, and the kernel takes the
//! slower syscall path for every syscall of a filtered thread, so a device thread's throughput
//! changes by what that adds to each of its syscalls. Each case runs in rounds on fresh
//! threads, in turn (each round starting with the next) under its thread kind's real filter
//! (`block`, `net`), under the one-rule filter and without; each figure is in operations per
//! second of the serving thread's CPU time (not wall time: other processes on the machine take
//! turns with it), and the rounds are compared pairwise: the median change, with its 95%
//! confidence interval.
//!
//! The device models, on mock guest memory and queues (devices' test driver), served exactly
//! as ember's I/O thread serves them (`process_queue`, `process_tx`; the CPU counted is the
//! time inside those calls, not the mock driver's):
//! - virtio-blk, Sync engine: 4 KiB reads spread over a 64 MiB file in the page cache, 64
//!   requests per notification (one `preadv` each, one interrupt per batch);
//! - virtio-net transmit: 1514-byte frames to a TAP in a network namespace of its own, 64 per
//!   notification (one `writev` each): UDP datagrams to a host socket that a thread reads (the
//!   host's IP and UDP receive run in the `writev`, as for a guest's traffic), and frames to a
//!   MAC that is not the TAP's, which the host drops right after taking them (the worst case:
//!   the filter's share of the thread's CPU is the largest it can be). Both need root
//!   (namespaces and TAPs); without root the rows say so and are skipped.
//!
//! The bare syscall loops of the same threads: 4 KiB `preadv` from the same file (the block
//! thread), and 1514-byte frames, `writev` then `readv`, through a datagram socket pair (the
//! NIC's thread).
//!
//! No guest runs; nothing is emulated. Start to API ready and InstanceStart with and without
//! the filters are in `benches/api.rs`.
//!
//! Run: `cargo bench -p ember --bench seccomp` (as root for the net device rows).
#![allow(clippy::unwrap_used)] // benchmark code

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use devices::virtio::block::{Block, Disk};
use devices::virtio::net::{MacAddr, Net, Tap};
use devices::virtio::testing::Driver;
use devices::virtio::{VirtioDevice, VirtioInterrupt};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::seccomp::{self, Mode, ThreadKind};
use vmm_sys_util::eventfd::EventFd;

use common::paired_change;

mod common;

const ROUNDS: usize = 21;
const ROUND: Duration = Duration::from_millis(200);
const FILE_BYTES: u64 = 64 << 20;
const FRAME: usize = 1514;
/// Requests or frames the mock driver makes available per notification.
const BATCH: u64 = 64;
const QUEUE: u16 = 256;
/// Guest memory of the device cases: rings, request headers, data buffers.
const MEM: usize = 2 << 20;
const FIRST_RINGS: u64 = 0;
const SECOND_RINGS: u64 = 0x4000;
const HEADERS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
/// The TAP the net device row uses, in a network namespace of the benchmark's own.
const TAP: &str = "tap0";
/// The TAP's MAC and the host's address on it, and the guest's address: the delivered frames'.
const TAP_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 1];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_PORT: u16 = 5555;

/// What a case's thread runs under.
#[derive(Clone, Copy)]
enum Filter {
    /// ember's filter of this kind of thread.
    Ember(ThreadKind),
    /// A filter of one rule (trap `ptrace`, allow the rest): what seccomp costs whatever the
    /// filter says.
    OneRule,
    Off,
}

static ONE_RULE: OnceLock<BpfProgram> = OnceLock::new();

/// The rate `body` measures on a new thread under `filter`. `body` opens what it needs, calls
/// its argument (which installs the filter, as an I/O thread does once its descriptors are
/// open) and returns its operations per second of CPU time.
fn rate(filter: Filter, body: Body) -> f64 {
    std::thread::spawn(move || {
        let install = || match filter {
            Filter::Ember(kind) => seccomp::apply(kind).unwrap(),
            Filter::OneRule => seccompiler::apply_filter(ONE_RULE.get().unwrap()).unwrap(),
            Filter::Off => {}
        };
        body(&install)
    })
    .join()
    .unwrap()
}

fn one_rule() -> BpfProgram {
    let rules = [(libc::SYS_ptrace, vec![])].into();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trap,
        TargetArch::x86_64,
    );
    filter.unwrap().try_into().unwrap()
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A case's body; see [`rate`].
type Body = fn(&dyn Fn()) -> f64;

fn file_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ember-bench-seccomp-{}.img", std::process::id()))
}

/// Guest memory for a device case, faulted in as a running guest's is.
fn guest_memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&vec![0u8; MEM], GuestAddress(0)).unwrap();
    mem
}

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ))
}

/// The virtio-blk model serving 4 KiB reads spread over the file, [`BATCH`] per notification.
fn block_device(filter: &dyn Fn()) -> f64 {
    let mem = guest_memory();
    let mut driver = Driver::new(FIRST_RINGS, QUEUE);
    let disk = Disk::open(&file_path(), true, false).unwrap();
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut block = Block::new(disk, None, "bench", mem.clone(), interrupt(), wake);
    block
        .activate(vec![driver.queue().unwrap()], block.features())
        .unwrap();
    let server = block.queue_server();
    filter();
    let (mut cpu, mut done, mut offset) = (Duration::ZERO, 0, 0u64);
    let end = Instant::now() + ROUND;
    while Instant::now() < end {
        for i in 0..BATCH {
            let header = HEADERS + i * 16;
            // VIRTIO_BLK_T_IN, reserved, sector.
            mem.write_obj(0u32, GuestAddress(header)).unwrap();
            mem.write_obj(0u32, GuestAddress(header + 4)).unwrap();
            mem.write_obj(offset / 512, GuestAddress(header + 8))
                .unwrap();
            let data = DATA + i * 4096;
            let chain = [
                (header, 16, false),
                (data, 4096, true),
                (STATUS + i, 1, true),
            ];
            driver.add(&mem, &chain).unwrap();
            offset = (offset + 4096 * 7) % FILE_BYTES;
        }
        let start = thread_cpu();
        while server.process_queue(usize::MAX) {}
        cpu += thread_cpu() - start;
        assert_eq!(driver.take_used(&mem).unwrap().len() as u64, BATCH);
        done += BATCH;
    }
    let stats = server.stats();
    assert_eq!((stats.ok, stats.errors), (done, 0), "{stats:?}");
    done as f64 / cpu.as_secs_f64()
}

/// The virtio-net model transmitting 1514-byte frames to the TAP, [`BATCH`] per notification,
/// to a MAC that is not the TAP's: the host kernel drops each right after taking it, so the
/// serving thread's CPU is the device model's and the syscall's, and the filter's share of it
/// is the largest it can be.
fn net_dropped(filter: &dyn Fn()) -> f64 {
    net_device(filter, Destination::Dropped)
}

/// The virtio-net model transmitting 1514-byte UDP datagrams through the TAP to a socket of
/// the host's that a thread of its own reads: the host's IP and UDP receive run in the
/// serving thread's `writev`, as they do for a guest's traffic to the host.
fn net_delivered(filter: &dyn Fn()) -> f64 {
    net_device(filter, Destination::HostSocket)
}

#[derive(Clone, Copy, PartialEq)]
enum Destination {
    Dropped,
    HostSocket,
}

/// The frame the guest sends: a zero virtio-net header (12 bytes), then an Ethernet frame from
/// the guest's MAC, to one that is not the TAP's with a local experimental EtherType, or to the
/// TAP's with an IPv4 UDP datagram to [`HOST_IP`]:[`HOST_PORT`].
fn frame(guest_mac: MacAddr, to: Destination) -> Vec<u8> {
    let mut frame = vec![0u8; 12 + FRAME];
    frame[18..24].copy_from_slice(&guest_mac.0);
    if to == Destination::Dropped {
        frame[12..18].copy_from_slice(&[0x06, 0, 0, 0, 0, 9]);
        frame[24..26].copy_from_slice(&[0x88, 0xb5]);
        return frame;
    }
    frame[12..18].copy_from_slice(&TAP_MAC);
    frame[24..26].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[26..46];
    let total = (FRAME - 14) as u16;
    ip[..4].copy_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8]);
    // No fragment id, don't fragment, TTL 64, UDP.
    ip[4..10].copy_from_slice(&[0, 0, 0x40, 0, 64, 17]);
    ip[12..16].copy_from_slice(&GUEST_IP);
    ip[16..20].copy_from_slice(&HOST_IP);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut frame[46..54];
    // From port 4444 to HOST_PORT, this long, no checksum (IPv4 allows it).
    let len = total - 20;
    udp[..2].copy_from_slice(&4444u16.to_be_bytes());
    udp[2..4].copy_from_slice(&HOST_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    frame
}

/// A thread that reads the host socket's datagrams until it is told to stop.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Receiver {
    fn start() -> Self {
        let socket = UdpSocket::bind((std::net::Ipv4Addr::from(HOST_IP), HOST_PORT)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut buf, mut got) = ([0u8; FRAME], 0);
            while !done.load(Ordering::Relaxed) {
                got += u64::from(socket.recv(&mut buf).is_ok());
            }
            got
        });
        Receiver { stop, thread }
    }

    /// Stops the thread; the datagrams it read.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn net_device(filter: &dyn Fn(), to: Destination) -> f64 {
    let mem = guest_memory();
    let (rx, mut tx) = (
        Driver::new(FIRST_RINGS, QUEUE),
        Driver::new(SECOND_RINGS, QUEUE),
    );
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tap = Tap::open(TAP).unwrap();
    let guest_mac = MacAddr([0x06, 0, 0, 0, 0, 2]);
    let mut net = Net::new(
        "bench",
        tap,
        guest_mac,
        None,
        mem.clone(),
        interrupt(),
        wake,
    );
    let queues = vec![rx.queue().unwrap(), tx.queue().unwrap()];
    net.activate(queues, net.features()).unwrap();
    let server = net.server();
    let frame = frame(guest_mac, to);
    mem.write_slice(&frame, GuestAddress(DATA)).unwrap();
    // Started before the filter: the serving thread creates no threads.
    let receiver = (to == Destination::HostSocket).then(Receiver::start);
    filter();
    let (mut cpu, mut sent) = (Duration::ZERO, 0);
    let end = Instant::now() + ROUND;
    while Instant::now() < end {
        for _ in 0..BATCH {
            tx.add(&mem, &[(DATA, frame.len() as u32, false)]).unwrap();
        }
        let start = thread_cpu();
        while server.process_tx(usize::MAX) {}
        cpu += thread_cpu() - start;
        assert_eq!(tx.take_used(&mem).unwrap().len() as u64, BATCH);
        sent += BATCH;
    }
    let stats = server.stats();
    assert_eq!((stats.tx_frames, stats.tx_dropped), (sent, 0), "{stats:?}");
    if let Some(receiver) = receiver {
        // The host's stack took the datagrams (it may drop some under load, not most).
        let got = receiver.stop();
        assert!(
            got > sent / 2,
            "the host socket read {got} of {sent} datagrams"
        );
    }
    sent as f64 / cpu.as_secs_f64()
}

/// 4 KiB reads spread over the file, as a block thread serving the Sync engine makes them.
fn block_reads(filter: &dyn Fn()) -> f64 {
    let file = File::open(file_path()).unwrap();
    filter();
    let mut buf = vec![0u8; 4096];
    let (mut ops, mut offset) = (0u64, 0u64);
    let cpu = thread_cpu();
    let end = Instant::now() + ROUND;
    while Instant::now() < end {
        for _ in 0..256 {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            assert_eq!(preadv(&file, &mut bufs, offset), 4096);
            offset = (offset + 4096 * 7) % FILE_BYTES;
            ops += 1;
        }
    }
    ops as f64 / (thread_cpu() - cpu).as_secs_f64()
}

fn preadv(file: &File, bufs: &mut [IoSliceMut<'_>], offset: u64) -> usize {
    // SAFETY: the iovecs describe live, writable buffers; the descriptor is open.
    let n = unsafe {
        libc::preadv(
            file.as_raw_fd(),
            bufs.as_mut_ptr().cast(),
            bufs.len() as libc::c_int,
            offset as libc::off_t,
        )
    };
    usize::try_from(n).unwrap()
}

/// Frames written and read back, as a NIC's thread moves them between the queues and the TAP.
fn net_frames(filter: &dyn Fn()) -> f64 {
    // Made before the filter, as the TAP is opened before the thread starts.
    let (a, b) = UnixDatagram::pair().unwrap();
    filter();
    let frame = [0x5au8; FRAME];
    let mut back = [0u8; FRAME];
    let mut ops = 0u64;
    let cpu = thread_cpu();
    let end = Instant::now() + ROUND;
    while Instant::now() < end {
        for _ in 0..256 {
            let sent = writev(
                &a,
                &[IoSlice::new(&frame[..12]), IoSlice::new(&frame[12..])],
            );
            assert_eq!(sent, FRAME);
            let got = readv(&b, &mut [IoSliceMut::new(&mut back)]);
            assert_eq!(got, FRAME);
            ops += 1;
        }
    }
    ops as f64 / (thread_cpu() - cpu).as_secs_f64()
}

fn writev(socket: &UnixDatagram, bufs: &[IoSlice<'_>]) -> usize {
    // SAFETY: the iovecs describe live buffers; the descriptor is open.
    let n = unsafe {
        libc::writev(
            socket.as_raw_fd(),
            bufs.as_ptr().cast(),
            bufs.len() as libc::c_int,
        )
    };
    usize::try_from(n).unwrap()
}

fn readv(socket: &UnixDatagram, bufs: &mut [IoSliceMut<'_>]) -> usize {
    // SAFETY: the iovecs describe live, writable buffers; the descriptor is open.
    let n = unsafe {
        libc::readv(
            socket.as_raw_fd(),
            bufs.as_mut_ptr().cast(),
            bufs.len() as libc::c_int,
        )
    };
    usize::try_from(n).unwrap()
}

/// A network namespace with a TAP for the net device row, entered by the calling thread (the
/// cases' threads inherit it); deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let ns = Netns(format!("ember-bench-seccomp-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "tuntap", "add", TAP, "mode", "tap"]);
        let mac = TAP_MAC.map(|b| format!("{b:02x}")).join(":");
        ip(&["-n", &ns.0, "link", "set", TAP, "address", &mac]);
        ip(&["-n", &ns.0, "addr", "add", "10.0.0.1/24", "dev", TAP]);
        ip(&["-n", &ns.0, "link", "set", TAP, "up"]);
        let file = File::open(format!("/run/netns/{}", ns.0)).unwrap();
        // SAFETY: enters the namespace made above; it changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {}", args.join(" "));
}

/// A case's name, the thread kind whose filter it runs under, its body, and its unit.
type Case = (&'static str, ThreadKind, Body, &'static str);

fn main() {
    seccomp::init(&Mode::BuiltIn).unwrap();
    ONE_RULE.set(one_rule()).unwrap();
    let path = file_path();
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..(FILE_BYTES >> 20) {
        file.write_all(&chunk).unwrap();
    }
    // Just written, so in the page cache: the figures are the threads' CPU cost, not the
    // disk's.
    drop(file);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let _netns = root.then(Netns::new);
    install_cost();
    let net_cases: [Case; 2] = [
        (
            "net device model: tx 1514-byte frames through a TAP to a host UDP socket",
            ThreadKind::Net,
            net_delivered,
            "frames/s",
        ),
        (
            "net device model: tx 1514-byte frames to a TAP, dropped there (the worst case)",
            ThreadKind::Net,
            net_dropped,
            "frames/s",
        ),
    ];
    let cases: [Case; 3] = [
        (
            "block device model: 4 KiB reads, Sync engine",
            ThreadKind::Block,
            block_device,
            "requests/s",
        ),
        (
            "block thread's syscall: 4 KiB preadv",
            ThreadKind::Block,
            block_reads,
            "reads/s",
        ),
        (
            "net thread's syscalls: 1514-byte writev+readv",
            ThreadKind::Net,
            net_frames,
            "frames/s",
        ),
    ];
    let mut all = cases.to_vec();
    if root {
        all.splice(1..1, net_cases);
    } else {
        for (name, ..) in net_cases {
            println!("{name}: skipped, it needs root (a TAP in a network namespace)");
        }
    }
    let filters = |kind| [Filter::Ember(kind), Filter::OneRule, Filter::Off];
    for (name, kind, body, unit) in all {
        // Per filter, per round: the rate. Each round starts with the next filter.
        let mut rounds = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            for turn in 0..3 {
                let which = (round + turn) % 3;
                rounds[which].push(rate(filters(kind)[which], body));
            }
        }
        let [on, one, off] = &rounds;
        let median = |v: &[f64]| common::stats(v).median;
        println!(
            "seccomp on / off, {name} ({ROUNDS} rounds of {ROUND:?} each, p50 and the rounds' median change): {:.0} / {:.0} {unit}, {} (target: under 3%); a one-rule filter: {:.0}, {}",
            median(on),
            median(off),
            paired_change(on, off),
            median(one),
            paired_change(one, off),
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// What installing a filter costs a thread as it starts: the kernel checks the program,
/// compiles it and runs it once per syscall number for its action cache.
fn install_cost() {
    const THREADS: usize = 200;
    let time = |install: fn(ThreadKind), kind| {
        let mut times: Vec<f64> = (0..THREADS)
            .map(|_| {
                std::thread::spawn(move || {
                    let start = Instant::now();
                    install(kind);
                    start.elapsed().as_secs_f64() * 1e6
                })
                .join()
                .unwrap()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[THREADS / 2]
    };
    let ember = |kind| seccomp::apply(kind).unwrap();
    let one_rule = |_| seccompiler::apply_filter(ONE_RULE.get().unwrap()).unwrap();
    let per_kind: Vec<String> = ThreadKind::ALL
        .iter()
        .map(|&kind| {
            let length = seccomp::program_length(kind).unwrap_or_default();
            format!(
                "{} {:.0} us ({length} instructions)",
                kind.name(),
                time(ember, kind)
            )
        })
        .collect();
    println!(
        "installing a thread's filter ({THREADS} new threads each, p50): {}; a one-rule filter {:.0} us",
        per_kind.join(", "),
        time(one_rule, ThreadKind::Vmm)
    );
}

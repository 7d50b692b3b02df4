//! The seccomp filters' cost on the device I/O threads: a filter runs on every syscall, so a
//! device thread's throughput changes by what its filter adds to each of its syscalls. Each
//! case runs in rounds on fresh threads, in turn under its thread kind's real filter (`block`,
//! `net`), under a one-rule filter (trap `ptrace`, allow the rest: what having a filter at all
//! costs, whatever it says) and without; the medians of the rounds, in operations per second
//! of the serving thread's CPU time (not wall time: other processes on the machine take turns
//! with it), are compared.
//!
//! The device models, on mock guest memory and queues (devices' test driver), served exactly
//! as ember's I/O thread serves them (`process_queue`, `process_tx`; the CPU counted is the
//! time inside those calls, not the mock driver's):
//! - virtio-blk, Sync engine: 4 KiB reads spread over a 64 MiB file in the page cache, 64
//!   requests per notification (one `preadv` each, one interrupt per batch);
//! - virtio-net transmit: 1514-byte frames to a TAP in a network namespace of its own, 64 per
//!   notification (one `writev` each), addressed to a MAC that is not the TAP's so the host
//!   kernel drops them right after taking them. It needs root (namespaces and TAPs); without
//!   root the row says so and is skipped.
//!
//! The bare syscall loops of the same threads, where the filter's share is largest: 4 KiB
//! `preadv` from the same file (the block thread), and 1514-byte frames, `writev` then
//! `readv`, through a datagram socket pair (the NIC's thread).
//!
//! No guest runs; nothing is emulated. Start to API ready and InstanceStart with and without
//! the filters are in `benches/api.rs`.
//!
//! Run: `cargo bench -p ember --bench seccomp` (as root for the net device row).
#![allow(clippy::unwrap_used)] // benchmark code

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
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

/// The virtio-net model transmitting 1514-byte frames to the TAP, [`BATCH`] per notification.
fn net_device(filter: &dyn Fn()) -> f64 {
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
    // A zero virtio-net header (12 bytes), then an Ethernet frame from the guest's MAC to one
    // that is not the TAP's, of a local experimental EtherType: the host drops it.
    let mut frame = vec![0u8; 12 + FRAME];
    frame[12..18].copy_from_slice(&[0x06, 0, 0, 0, 0, 9]);
    frame[18..24].copy_from_slice(&guest_mac.0);
    frame[24..26].copy_from_slice(&[0x88, 0xb5]);
    mem.write_slice(&frame, GuestAddress(DATA)).unwrap();
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
    let net_device_case: Case = (
        "net device model: tx 1514-byte frames to a TAP",
        ThreadKind::Net,
        net_device,
        "frames/s",
    );
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
        all.insert(1, net_device_case);
    } else {
        println!(
            "{}: skipped, it needs root (a TAP in a network namespace)",
            net_device_case.0
        );
    }
    for (name, kind, body, unit) in all {
        let (mut on, mut one, mut off) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            on.push(rate(Filter::Ember(kind), body));
            one.push(rate(Filter::OneRule, body));
            off.push(rate(Filter::Off, body));
        }
        let (on, one, off) = (median(on), median(one), median(off));
        let change = |x: f64| (x - off) / off * 100.0;
        println!(
            "seccomp on / off, {name} ({ROUNDS} rounds of {ROUND:?} each): {on:.0} / {off:.0} {unit} ({:+.1}%) (target: under 3%); a one-rule filter: {one:.0} ({:+.1}%)",
            change(on),
            change(one)
        );
    }
    let _ = std::fs::remove_file(&path);
}

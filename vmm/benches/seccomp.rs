//! The seccomp filters' cost on the device I/O threads: a filter runs on every syscall, so a
//! device thread's throughput changes by what its filter adds to each of its syscalls. Each
//! round runs the syscall loop of a block and a network I/O thread on a fresh thread, once
//! under that kind's filter (`block`, `net`) and once without, alternating; the medians of the
//! rounds, in operations per second of the thread's CPU time, are compared. Block: 4 KiB `preadv` from a 64 MiB file in the page cache (the Sync
//! engine's read). Net: 1514-byte frames, `writev` then `readv`, through a datagram socket pair
//! (a TAP needs root and a namespace; the syscalls the NIC's thread makes are the same). No
//! guest runs; nothing is emulated. Start to API ready and InstanceStart with and without the
//! filters are in `benches/api.rs`.
//!
//! Run: `cargo bench -p ember --bench seccomp`.
#![allow(clippy::unwrap_used)] // benchmark code

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vmm::seccomp::{self, Mode, ThreadKind};

const ROUNDS: usize = 21;
const ROUND: Duration = Duration::from_millis(200);
const FILE_BYTES: u64 = 64 << 20;
const FRAME: usize = 1514;

/// Operations per second of the thread's CPU time (not wall time: other processes on the
/// machine take turns with it) of `body` on a new thread, under `kind`'s filter if `filtered`.
/// `body` opens what it needs, calls its argument (which installs the filter, as an I/O thread
/// does once its descriptors are open) and returns how many operations it did in `ROUND`.
fn rate(kind: ThreadKind, filtered: bool, body: Body) -> f64 {
    std::thread::spawn(move || {
        let filter = || {
            if filtered {
                seccomp::apply(kind).unwrap();
            }
        };
        let cpu = thread_cpu();
        let ops = body(&filter);
        ops as f64 / (thread_cpu() - cpu).as_secs_f64()
    })
    .join()
    .unwrap()
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

/// A loop of an I/O thread's syscalls; see [`rate`].
type Body = fn(&dyn Fn()) -> u64;

fn file_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ember-bench-seccomp-{}.img", std::process::id()))
}

/// 4 KiB reads spread over the file, as a block thread serving the Sync engine makes them.
fn block_reads(filter: &dyn Fn()) -> u64 {
    let file = File::open(file_path()).unwrap();
    filter();
    let mut buf = vec![0u8; 4096];
    let (mut ops, mut offset) = (0u64, 0u64);
    let end = Instant::now() + ROUND;
    while Instant::now() < end {
        for _ in 0..256 {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            assert_eq!(preadv(&file, &mut bufs, offset), 4096);
            offset = (offset + 4096 * 7) % FILE_BYTES;
            ops += 1;
        }
    }
    ops
}

fn preadv(file: &File, bufs: &mut [IoSliceMut<'_>], offset: u64) -> usize {
    use std::os::fd::AsRawFd;
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
fn net_frames(filter: &dyn Fn()) -> u64 {
    // Made before the filter, as the TAP is opened before the thread starts.
    let (a, b) = UnixDatagram::pair().unwrap();
    filter();
    let frame = [0x5au8; FRAME];
    let mut back = [0u8; FRAME];
    let mut ops = 0;
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
    ops
}

fn writev(socket: &UnixDatagram, bufs: &[IoSlice<'_>]) -> usize {
    use std::os::fd::AsRawFd;
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
    use std::os::fd::AsRawFd;
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

/// A case's name, the thread kind whose filter it runs under, its loop, and its unit.
type Case = (&'static str, ThreadKind, Body, &'static str);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    seccomp::init(&Mode::BuiltIn).unwrap();
    let path = file_path();
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..(FILE_BYTES >> 20) {
        file.write_all(&chunk).unwrap();
    }
    // Just written, so in the page cache: the figures are the threads' CPU cost, not the
    // disk's.
    drop(file);
    let cases: [Case; 2] = [
        (
            "block: 4 KiB preadv",
            ThreadKind::Block,
            block_reads,
            "reads/s",
        ),
        (
            "net: 1514-byte writev+readv",
            ThreadKind::Net,
            net_frames,
            "frames/s",
        ),
    ];
    for (name, kind, body, unit) in cases {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            on.push(rate(kind, true, body));
            off.push(rate(kind, false, body));
        }
        let (on, off) = (median(on), median(off));
        println!(
            "seccomp on / off, {name} ({ROUNDS} rounds of {ROUND:?} each): {on:.0} / {off:.0} {unit} ({:+.1}%) (target: under 3%)",
            (on - off) / off * 100.0
        );
    }
    let _ = std::fs::remove_file(&path);
}

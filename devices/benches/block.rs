//! The virtio-blk device model's throughput and CPU cost, fed by a mock guest memory and queue
//! (virtio-queue's test helpers), next to the host's own pread/pwrite of the same file with the
//! same sizes and offsets, in the same run (the physical limit).
//!
//! Workloads: 4 KiB random, 64 KiB and 1 MiB sequential, reads and writes, on a 256 MiB file in
//! the target directory (page cache warm for both sides). The host loop reuses one buffer; the
//! device's guest memory is faulted in first and requests cycle through 8 guest buffers. The
//! host loop runs before and after the device and the faster run counts. "ember us" is the
//! serving thread's user-space CPU time per request inside `process_queue` (not the mock driver
//! filling the queue): ember's own work beyond the syscalls, whose kernel time is shown apart.
//!
//! A second table sets the Sync engine against the Async one (io_uring) and both against the
//! host's own I/O: 4 KiB random reads, 64 KiB and 1 MiB sequential reads and writes, at queue
//! depth 1 and 32, from the page cache and (reads) from the disk.
//!
//! Run: `cargo bench -p devices --bench block`
#![allow(clippy::unwrap_used)] // benchmark code

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::VirtioDevice;
use devices::virtio::VirtioInterrupt;
use devices::virtio::block::{Block, Disk, Uring};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use common::{since, thread_cpu};

const FILE_SIZE: u64 = 256 << 20;
const QUEUE: u16 = 256;
const USED: u64 = 0x8000;
const HEADERS: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;
const MEM: usize = 96 << 20;
/// Guest data buffers the requests cycle through, like a guest reusing its page cache.
const DATA_BUFFERS: usize = 8;

struct Workload {
    name: &'static str,
    size: u64,
    random: bool,
    write: bool,
    requests: usize,
}

/// Offsets the workload visits (a fixed pseudo-random sequence for the random ones).
fn offsets(w: &Workload) -> Vec<u64> {
    let slots = FILE_SIZE / w.size;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..w.requests as u64)
        .map(|i| {
            let slot = if w.random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % slots
            } else {
                i % slots
            };
            slot * w.size
        })
        .collect()
}

struct Result {
    wall: Duration,
    /// User-space CPU: the serving code itself.
    user: Duration,
    /// Kernel CPU: the syscalls (file I/O and copies).
    system: Duration,
}

fn host(file: &File, w: &Workload, offs: &[u64]) -> Result {
    let mut buf = vec![0x5au8; w.size as usize];
    let (start, cpu0) = (Instant::now(), thread_cpu());
    for off in offs {
        if w.write {
            file.write_all_at(&buf, *off).unwrap();
        } else {
            file.read_exact_at(&mut buf, *off).unwrap();
        }
    }
    let (user, system) = since(cpu0);
    Result {
        wall: start.elapsed(),
        user,
        system,
    }
}

/// Which engine serves the device, and how many requests the driver keeps in flight.
#[derive(Clone, Copy)]
struct Setup {
    uring: bool,
    depth: usize,
}

fn device(path: &Path, w: &Workload, offs: &[u64], setup: Setup) -> Result {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE);
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let disk = Disk::open(path, false, true).unwrap();
    let ring = setup.uring.then(|| Uring::new().unwrap());
    let mut block = Block::new(
        disk,
        ring,
        "bench",
        mem.clone(),
        irq,
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    );
    let mut queue: Queue = vq.create_queue().unwrap();
    // The mock lays its used ring over the upper half of its avail ring; use a separate one.
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    block.activate(vec![queue], block.features()).unwrap();

    // A running guest's memory is populated: fault it in before measuring.
    let zeroes = vec![0u8; 1 << 20];
    for at in (0..MEM).step_by(zeroes.len()) {
        mem.write_slice(&zeroes, GuestAddress(at as u64)).unwrap();
    }
    let batch = setup.depth;
    let (mut wall, mut user, mut system) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for chunk in offs.chunks(batch) {
        let mut avail = vq.avail().idx().load();
        for (i, off) in chunk.iter().enumerate() {
            let hdr = HEADERS + i as u64 * 16;
            mem.write_obj(u32::from(w.write), GuestAddress(hdr))
                .unwrap();
            mem.write_obj(off / 512, GuestAddress(hdr + 8)).unwrap();
            let d = (i * 3) as u16;
            let data_flags = if w.write { 1 } else { 1 | 2 };
            let data = DATA + (i % DATA_BUFFERS) as u64 * w.size;
            let table = vq.desc_table();
            let head = Descriptor::new(hdr, 16, 1, d + 1);
            let data_desc = Descriptor::new(data, w.size as u32, data_flags, d + 2);
            let status = Descriptor::new(STATUS + i as u64, 1, 2, 0);
            for (k, desc) in [head, data_desc, status].into_iter().enumerate() {
                table
                    .store(d + k as u16, RawDescriptor::from(desc))
                    .unwrap();
            }
            // The mock's own helper does not wrap the ring index, so publish by hand.
            let slot = usize::from(avail % QUEUE);
            vq.avail().ring().ref_at(slot).unwrap().store(d);
            avail = avail.wrapping_add(1);
        }
        vq.avail().idx().store(avail);
        let (start, cpu0) = (Instant::now(), thread_cpu());
        while block.process_queue(usize::MAX) {}
        block.settle().unwrap();
        wall += start.elapsed();
        let (u, k) = since(cpu0);
        user += u;
        system += k;
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            0,
            "request failed"
        );
    }
    assert_eq!(block.stats().ok, offs.len() as u64, "{:?}", block.stats());
    Result { wall, user, system }
}

fn main() {
    env_logger::init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-block");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..FILE_SIZE / chunk.len() as u64 {
        file.write_all_at(&chunk, i * chunk.len() as u64).unwrap();
    }
    file.sync_all().unwrap();

    let workloads = [
        Workload {
            name: "4 KiB random read",
            size: 4096,
            random: true,
            write: false,
            requests: 100_000,
        },
        Workload {
            name: "4 KiB random write",
            size: 4096,
            random: true,
            write: true,
            requests: 100_000,
        },
        Workload {
            name: "64 KiB sequential read",
            size: 64 << 10,
            random: false,
            write: false,
            requests: 20_000,
        },
        Workload {
            name: "64 KiB sequential write",
            size: 64 << 10,
            random: false,
            write: true,
            requests: 20_000,
        },
        Workload {
            name: "1 MiB sequential read",
            size: 1 << 20,
            random: false,
            write: false,
            requests: 2_000,
        },
        Workload {
            name: "1 MiB sequential write",
            size: 1 << 20,
            random: false,
            write: true,
            requests: 2_000,
        },
    ];
    println!(
        "{:<26} {:>12} {:>12} {:>11} {:>11} {:>7} {:>10}",
        "workload", "host MB/s", "device MB/s", "host req/s", "dev req/s", "ratio", "ember us"
    );
    for w in &workloads {
        let offs = offsets(w);
        // Warm both paths once, then measure.
        host(&file, w, &offs[..offs.len().min(1000)]);
        let h1 = host(&file, w, &offs);
        let d = device(&path, w, &offs, SYNC_BATCH);
        // Host before and after the device, to cancel order effects (write-back throttling):
        // the faster one is the limit.
        let h2 = host(&file, w, &offs);
        let h = if h1.wall <= h2.wall { h1 } else { h2 };
        let n = offs.len() as f64;
        let bytes = n * w.size as f64;
        let mbps = |r: &Result| bytes / r.wall.as_secs_f64() / 1e6;
        let rps = |r: &Result| n / r.wall.as_secs_f64();
        let per_req = |t: Duration| t.as_secs_f64() * 1e6 / n;
        println!(
            "{:<26} {:>12.0} {:>12.0} {:>11.0} {:>11.0} {:>6.0}% {:>8.2}   (kernel us/req: host {:.2}, device {:.2}; host user {:.2})",
            w.name,
            mbps(&h),
            mbps(&d),
            rps(&h),
            rps(&d),
            100.0 * mbps(&d) / mbps(&h),
            per_req(d.user),
            per_req(h.system),
            per_req(d.system),
            per_req(h.user),
        );
    }
    engines(&file, &path);
    std::fs::remove_file(&path).unwrap();
}

/// The Sync engine's requests as the host table measures them: a third of the queue per
/// notification.
const SYNC_BATCH: Setup = Setup {
    uring: false,
    depth: QUEUE as usize / 3,
};

/// Sync against Async, and both against the host's own pread/pwrite of the same file with
/// the same sizes and offsets (one at a time: the host loop has no queue depth): 4 KiB random
/// reads, 64 KiB and 1 MiB sequential reads and writes, at queue depth 1 and 32 (the driver
/// makes that many requests available, then waits for all of them). "page cache" rows run
/// warm; "disk" rows drop the file's cached pages before each run (reads only: writes land in
/// the page cache either way), so they read from whatever backs the file's disk.
fn engines(file: &File, path: &Path) {
    println!(
        "\n{:<46} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7}",
        "Sync vs Async vs host, MB/s", "host", "Sync", "Async", "A/S", "S/host", "A/host"
    );
    let rows = [
        ("4 KiB random read", 4096, true, false, [100_000, 20_000]),
        (
            "64 KiB sequential read",
            64 << 10,
            false,
            false,
            [20_000, 4096],
        ),
        ("1 MiB sequential read", 1 << 20, false, false, [2_000, 256]),
        (
            "64 KiB sequential write",
            64 << 10,
            false,
            true,
            [20_000, 0],
        ),
        ("1 MiB sequential write", 1 << 20, false, true, [2_000, 0]),
    ];
    for (name, size, random, write, counts) in rows {
        for (cache, requests) in ["page cache", "disk"].into_iter().zip(counts) {
            if requests == 0 {
                continue;
            }
            let w = Workload {
                name,
                size,
                random,
                write,
                requests,
            };
            let offs = offsets(&w);
            let prepare = || {
                if cache == "disk" {
                    drop_cache(file);
                } else {
                    host(file, &w, &offs);
                }
            };
            let host_run = || {
                prepare();
                host(file, &w, &offs).wall
            };
            // Here the first read from the disk after the page-cache rows (of a freshly
            // written file at all) runs several times slower than the next ones, whoever does
            // it (this machine's disk is virtual): a pass that does not count goes first.
            host_run();
            let before = host_run();
            let devices = [1, 32].map(|depth| {
                [false, true].map(|uring| {
                    prepare();
                    device(path, &w, &offs, Setup { uring, depth }).wall
                })
            });
            // Host before and after the devices, as in the first table: the faster one is
            // the limit.
            let host_wall = before.min(host_run());
            for (depth, [sync, uring]) in [1, 32].into_iter().zip(devices) {
                let row = format!("{name}, {cache}, queue depth {depth}");
                print_engines_row(&row, requests, size, [host_wall, sync, uring]);
            }
        }
    }
}

/// One row of the engines table from the (host, Sync, Async) times for `requests` of `size`.
fn print_engines_row(row: &str, requests: usize, size: u64, wall: [Duration; 3]) {
    let mbps = wall.map(|t| (requests as u64 * size) as f64 / t.as_secs_f64() / 1e6);
    let rps = wall.map(|t| requests as f64 / t.as_secs_f64());
    println!(
        "{row:<46} {:>10.0} {:>10.0} {:>10.0} {:>6.2}x {:>6.0}% {:>6.0}%   (req/s: host {:.0}, Sync {:.0}, Async {:.0})",
        mbps[0],
        mbps[1],
        mbps[2],
        mbps[2] / mbps[1],
        100.0 * mbps[1] / mbps[0],
        100.0 * mbps[2] / mbps[0],
        rps[0],
        rps[1],
        rps[2],
    );
}

/// Drops the file's pages from the host's page cache, so reads go to the disk.
fn drop_cache(file: &File) {
    file.sync_all().unwrap();
    // SAFETY: fadvise only advises the kernel about the fd's cached pages.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

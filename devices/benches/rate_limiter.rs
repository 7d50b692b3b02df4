//! Rate limiter accuracy: the rate a limited client achieves against the rate configured,
//! over a fixed time (10 s, or `EMBER_BENCH_SECS`), with the target of 5%.
//!
//! Each case is run two ways. "limiter": a loop charges requests to a bare [`RateLimiter`] as
//! a device does (`consume_op`: one op and the request's bytes), and when refused waits with
//! `poll` on the limiter's timerfd, calls `timer_fired` and goes on. "block": a virtio-blk
//! device with the limiter serves 4 KiB or larger reads (page cache) from a driver that keeps
//! 32 requests available, run by a loop that does what ember's I/O worker does (poll the
//! handler's watches: the queue's notification and the limiter's timer; hand it what is
//! ready); the rate counts the requests the driver got back.
//!
//! Buckets are configured as Firecracker users usually do: `size` = one second's worth,
//! `refill_time` = 1000 ms. A bucket starts full, so the first second would run at twice the
//! rate; the clock starts once the limiter first refuses, and what is measured is the steady
//! rate after that.
//!
//! Run: `cargo bench -p devices --bench rate_limiter` (`EMBER_BENCH_SECS=2` for a quick run).
#![allow(clippy::unwrap_used)] // benchmark code

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::rate_limiter::{BucketConfig, LimiterConfig, RateLimiter};
use devices::virtio::VirtioDevice;
use devices::virtio::VirtioInterrupt;
use devices::virtio::block::{Block, Disk};
use devices::virtio::testing::Driver;
use devices::virtio::worker::{IoHandler, Ready, Watch};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The target: achieved within this many percent of the configured rate.
const TARGET_PERCENT: f64 = 5.0;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Requests the block driver keeps available.
const DEPTH: usize = 32;
const QUEUE: u16 = 256;
const HEADER: u64 = 0x1_0000;
const STATUS: u64 = 0x1_1000;
const DATA: u64 = 0x10_0000;
const MEM: usize = 4 << 20;

/// What is limited: bytes per second or operations per second, and each request's size.
#[derive(Clone, Copy)]
enum Limit {
    Bandwidth { rate: u64, request: u64 },
    Ops { rate: u64, request: u64 },
}

impl Limit {
    fn request(self) -> u64 {
        match self {
            Limit::Bandwidth { request, .. } | Limit::Ops { request, .. } => request,
        }
    }

    fn config(self) -> LimiterConfig {
        let bucket = |rate| {
            Some(BucketConfig {
                size: rate,
                one_time_burst: 0,
                refill_time_ms: 1000,
            })
        };
        match self {
            Limit::Bandwidth { rate, .. } => LimiterConfig {
                bandwidth: bucket(rate),
                ops: None,
            },
            Limit::Ops { rate, .. } => LimiterConfig {
                bandwidth: None,
                ops: bucket(rate),
            },
        }
    }

    /// The configured rate, and the achieved one given `requests` served in `time`.
    fn rates(self, requests: u64, time: Duration) -> (f64, f64) {
        let per_s = requests as f64 / time.as_secs_f64();
        match self {
            Limit::Bandwidth { rate, request } => (rate as f64, per_s * request as f64),
            Limit::Ops { rate, .. } => (rate as f64, per_s),
        }
    }

    fn describe(self) -> String {
        match self {
            Limit::Bandwidth { rate, request } => {
                format!("{} MiB/s, {} KiB requests", rate / MIB, request / KIB)
            }
            Limit::Ops { rate, request } => {
                format!("{rate} ops/s, {} KiB requests", request / KIB)
            }
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Limit::Bandwidth { .. } => "MiB/s",
            Limit::Ops { .. } => "ops/s",
        }
    }

    fn scale(self) -> f64 {
        match self {
            Limit::Bandwidth { .. } => MIB as f64,
            Limit::Ops { .. } => 1.0,
        }
    }
}

/// Waits until `fd` is readable (or a second passes, which the caller then just retries).
fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 1000) };
}

/// Requests granted by a bare limiter for `run` after its first refusal, and the time from
/// that refusal to the last grant (the bucket is empty at both ends, so no wait is half
/// counted).
fn bare(limit: Limit, run: Duration) -> (u64, Duration) {
    let limiter = RateLimiter::new(limit.config()).unwrap();
    let cost = limit.request();
    // Spend the bucket's initial contents.
    while limiter.consume_op(cost) {}
    let start = Instant::now();
    let (mut granted, mut last) = (0, start);
    while start.elapsed() < run {
        if limiter.consume_op(cost) {
            granted += 1;
            last = Instant::now();
        } else {
            wait_readable(limiter.timer_fd());
            limiter.timer_fired();
        }
    }
    (granted, last - start)
}

/// Polls `watches` (not waiting if `more`), as ember's I/O worker does, into `ready`.
fn poll_watches(watches: &[Watch], more: bool, ready: &mut Vec<Ready>) {
    let mut fds: Vec<libc::pollfd> = watches
        .iter()
        .map(|w| libc::pollfd {
            fd: w.fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = if more { 0 } else { 1000 };
    // SAFETY: `fds` is a valid array of fds.len() pollfds for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    ready.clear();
    ready.extend(fds.iter().map(|fd| Ready {
        readable: fd.revents & libc::POLLIN != 0,
        ..Ready::default()
    }));
}

/// Reads served by a block device under the limiter for `run` after its first refusal, and
/// the time from that refusal to the last completion (as for [`bare`]).
fn block(image: &Path, limit: Limit, run: Duration) -> (u64, Duration) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let notify = wake.try_clone().unwrap();
    let limiter = Arc::new(RateLimiter::new(limit.config()).unwrap());
    let disk = Disk::open(image, true, false).unwrap();
    let mut block =
        Block::new(disk, None, "bench", mem.clone(), irq, wake).with_rate_limiter(limiter.clone());
    let mut driver = Driver::new(0, QUEUE);
    block
        .activate(vec![driver.queue().unwrap()], block.features())
        .unwrap();
    let mut server = block.queue_server();
    // Every request reads the first `request` bytes into the same buffer: what is measured
    // is the limiter, not the disk.
    let request = (HEADER, 16, false);
    let data = (DATA, limit.request() as u32, true);
    let status = (STATUS, 1, true);

    let (mut watches, mut ready) = (Vec::new(), Vec::new());
    let (mut available, mut more) = (0, false);
    let mut start: Option<Instant> = None;
    let (mut served, mut last) = (0, Instant::now());
    while start.is_none_or(|s| s.elapsed() < run) {
        let used = driver.take_used(&mem).unwrap().len();
        available -= used;
        if start.is_some() && used > 0 {
            served += used as u64;
            last = Instant::now();
        } else if start.is_none() && limiter.is_blocked() {
            // The bucket's initial contents are spent: measure from here.
            start = Some(Instant::now());
        }
        if available < DEPTH {
            while available < DEPTH {
                driver.add(&mem, &[request, data, status]).unwrap();
                available += 1;
            }
            notify.write(1).unwrap();
        }
        server.interest(&mut watches);
        poll_watches(&watches, more, &mut ready);
        more = server.ready(&ready);
    }
    let elapsed = start.map_or(Duration::ZERO, |s| last - s);
    assert_eq!(block.stats().errors, 0, "{:?}", block.stats());
    (served, elapsed)
}

fn main() {
    env_logger::init();
    let secs = std::env::var("EMBER_BENCH_SECS").map_or(10.0, |s| {
        s.parse::<f64>()
            .unwrap_or_else(|_| panic!("EMBER_BENCH_SECS={s}: not a number of seconds"))
    });
    let run = Duration::from_secs_f64(secs);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-rate-limiter");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0xa5u8; MIB as usize]).unwrap();

    let cases = [
        Limit::Bandwidth {
            rate: 10 * MIB,
            request: 64 * KIB,
        },
        Limit::Bandwidth {
            rate: 100 * MIB,
            request: MIB,
        },
        Limit::Ops {
            rate: 1000,
            request: 4 * KIB,
        },
        Limit::Ops {
            rate: 10_000,
            request: 4 * KIB,
        },
    ];
    println!("{secs} s per run; target: achieved within {TARGET_PERCENT}% of configured\n");
    println!(
        "{:<30} {:<8} {:>18} {:>18} {:>8}",
        "limit", "driver", "configured", "achieved", "error"
    );
    for limit in cases {
        for (driver, (requests, time)) in [
            ("limiter", bare(limit, run)),
            ("block", block(&image, limit, run)),
        ] {
            let (configured, achieved) = limit.rates(requests, time);
            let error = 100.0 * (achieved - configured) / configured;
            let verdict = if error.abs() <= TARGET_PERCENT {
                "PASS"
            } else {
                "FAIL"
            };
            let rate = |r: f64| format!("{:.1} {}", r / limit.scale(), limit.unit());
            println!(
                "{:<30} {:<8} {:>18} {:>18} {:>+7.2}% {verdict}  ({requests} requests in {:.2} s)",
                limit.describe(),
                driver,
                rate(configured),
                rate(achieved),
                error,
                time.as_secs_f64(),
            );
        }
    }
    std::fs::remove_file(&image).unwrap();
}

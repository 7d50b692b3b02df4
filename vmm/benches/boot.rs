//! ember's own costs at boot, printed as figures (median, min, max over several runs):
//!
//! - setup: from just before the process is spawned to vCPU 0's first KVM_RUN (memory mapping,
//!   kernel load, boot structures, devices, vCPU setup), for the vmlinux and the bzImage, with a
//!   1-vCPU 128 MiB guest;
//! - memory overhead: ember's RSS minus the guest memory the guest touched, with a Linux guest
//!   idling at its root-device wait;
//! - virtio-mmio against virtio-pci (`--enable-pci`): setup and memory overhead with four disks
//!   on each transport, alternating run by run (this build only: a baseline may lack the flag);
//! - emulated guest boot: from spawn to the initramfs init's EMBER-INIT marker. On a host whose
//!   KVM emulates guest kernel code (PVM) this measures the emulator, not ember, and is labelled;
//! - a kernel-CI run: `ember run` of a trivial test in the initramfs, start to exit status, and
//!   ember's own share of it: setup (spawn to first KVM_RUN) plus teardown (vCPU 0 leaving the
//!   guest after the exit-port write, to ember returning from main); the host kernel's process
//!   exit (freeing guest memory, destroying the VM) is reported apart.
//!
//! Run: `EMBER_TEST_KERNEL=... EMBER_TEST_BZIMAGE=... cargo bench -p ember --bench boot`
//! (without them the kernel is built by resources/build-kernel.sh).
//!
//! Baseline mode: with `EMBER_BENCH_BASELINE=/path/to/another/ember`, every figure is measured
//! for that binary and for this build in the same run, alternating between the two on every run
//! so that host drift hits both alike, and printed side by side with the change in percent.
//! Build the baseline the way this bench builds its own binary (`cargo bench -p ember --bench
//! boot --no-run` in a checkout of the old commit, leaving `target/release/ember`): a plain
//! `cargo build --release` makes a different binary, as the bench's dev-dependencies turn on
//! features of shared crates (serde_json, memchr) that a release build leaves off.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::vcpu::monotonic_ns;

use common::{artifact, memory_overhead, setup_time, stats, wait_for_line};

const RUNS: usize = 15;
/// Setup runs per binary in baseline mode: a run takes milliseconds, and a comparison needs
/// more of them than a single figure to see a few percent through the host's noise.
const SETUP_RUNS_BASELINE: usize = 60;
const EMULATED_RUNS: usize = 3;
/// EMBER_BENCH_QUICK=1 skips the emulated-guest parts (minutes on a PVM host).
const QUICK: &str = "EMBER_BENCH_QUICK";
const CI_RUNS: usize = 5;
/// Memory-overhead boots per binary in baseline mode (each boots Linux: tens of seconds under
/// PVM); without a baseline one boot is reported, as the figure barely moves between runs.
const MEMORY_RUNS_BASELINE: usize = 3;
/// Path of another ember binary to measure side by side with this build.
const BASELINE: &str = "EMBER_BENCH_BASELINE";
/// The ember binaries a figure is measured for.
struct Binaries {
    /// `EMBER_BENCH_BASELINE`, when set.
    baseline: Option<PathBuf>,
    /// The binary built with this bench.
    this: PathBuf,
}

impl Binaries {
    fn from_env() -> Self {
        let baseline = std::env::var_os(BASELINE).map(PathBuf::from);
        if let Some(path) = &baseline {
            assert!(
                path.is_file(),
                "{BASELINE}={} is not a file: point it at another ember binary",
                path.display()
            );
        }
        Binaries {
            baseline,
            this: PathBuf::from(env!("CARGO_BIN_EXE_ember")),
        }
    }

    /// `alone` without a baseline, `side_by_side` with one.
    fn runs(&self, alone: usize, side_by_side: usize) -> usize {
        match self.baseline {
            Some(_) => side_by_side,
            None => alone,
        }
    }

    /// Runs `measure` `runs` times on each binary, baseline and this build taking turns run by
    /// run so that slow drift of the host (thermal, page cache, neighbours) hits both alike.
    fn interleaved<T>(&self, runs: usize, mut measure: impl FnMut(&Path) -> T) -> Pair<Vec<T>> {
        let mut baseline = self.baseline.as_ref().map(|_| Vec::with_capacity(runs));
        let mut this = Vec::with_capacity(runs);
        for _ in 0..runs {
            if let (Some(path), Some(samples)) = (&self.baseline, &mut baseline) {
                samples.push(measure(path));
            }
            this.push(measure(&self.this));
        }
        Pair { baseline, this }
    }
}

/// One figure's values for this build and, in baseline mode, for the baseline binary.
struct Pair<T> {
    baseline: Option<T>,
    this: T,
}

impl<T> Pair<T> {
    fn map<U>(&self, f: impl Fn(&T) -> U) -> Pair<U> {
        Pair {
            baseline: self.baseline.as_ref().map(&f),
            this: f(&self.this),
        }
    }
}

/// Wall time from spawn to the initramfs init's marker.
fn time_to_init(binary: &Path, kernel: &Path, initramfs: &Path) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs)
        .args(["--memory", "128", "--timeout", "600", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for_line(child.stdout.take().unwrap(), "EMBER-INIT");
    let took = seen.map(|_| start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    took.expect("the guest never printed EMBER-INIT")
}

/// One `ember run` of a trivial test.
struct CiRun {
    /// Start to exit status.
    wall: Duration,
    /// Spawn to the first KVM_RUN.
    setup: Duration,
    /// vCPU 0 leaving the guest to ember returning from main.
    teardown: Duration,
    /// ember returning from main to the parent reaping it (the host kernel tearing down the
    /// process, its guest memory and the KVM VM).
    exit: Duration,
}

fn ci_run(binary: &Path, kernel: &Path, initramfs: &Path) -> CiRun {
    let start = monotonic_ns();
    let out = Command::new(binary)
        .arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs)
        .args([
            "--memory",
            "128",
            "--timeout",
            "600",
            "--level",
            "info",
            "--serial-out",
        ])
        .arg("/dev/null")
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let end = monotonic_ns();
    assert!(
        out.status.success(),
        "the trivial CI test failed: {:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stamp = |marker: &str| -> u64 {
        let line = stderr.lines().find(|l| l.contains(marker)).unwrap();
        let rest = line.split("monotonic ").nth(1).unwrap();
        rest.trim_end_matches(" ns").parse().unwrap()
    };
    let entered = stamp("entering the guest");
    let left = stamp("left the guest");
    let exiting = stamp("ember exiting");
    CiRun {
        wall: Duration::from_nanos(end - start),
        setup: Duration::from_nanos(entered - start),
        teardown: Duration::from_nanos(exiting - left),
        exit: Duration::from_nanos(end - exiting),
    }
}

fn report(name: &str, samples: &Pair<Vec<f64>>, unit: &str) {
    let Pair { baseline, this } = samples.map(|s| stats(s));
    match baseline {
        None => println!(
            "{name:<58} median {:>9.2} {unit}  min {:>9.2}  max {:>9.2}  (n={})",
            this.median, this.min, this.max, this.n
        ),
        Some(base) => println!(
            "{name:<58} baseline {:>9.2} {unit} / this {:>9.2} {unit} (change {:+.1}%)  \
             min {:.2} / {:.2}  max {:.2} / {:.2}  (n={} each)",
            base.median,
            this.median,
            (this.median - base.median) / base.median * 100.0,
            base.min,
            this.min,
            base.max,
            this.max,
            this.n
        ),
    }
}

fn report_setup(bins: &Binaries, vmlinux: &Path, bzimage: &Path) {
    for (name, kernel) in [("vmlinux", vmlinux), ("bzImage", bzimage)] {
        let runs = bins.runs(RUNS, SETUP_RUNS_BASELINE);
        let ms = bins.interleaved(runs, |bin| setup_time(bin, kernel, &[]).as_secs_f64() * 1e3);
        report(
            &format!("setup: spawn to first KVM_RUN, {name}, 128 MiB"),
            &ms,
            "ms",
        );
    }
}

fn report_memory(bins: &Binaries, vmlinux: &Path) {
    let runs = bins.runs(1, MEMORY_RUNS_BASELINE);
    let samples = bins.interleaved(runs, |bin| memory_overhead(bin, vmlinux, &[]));
    if samples.baseline.is_some() {
        let overhead = samples.map(|s| s.iter().map(|(t, g)| (t - g) as f64).collect());
        let rss = samples.map(|s| s.iter().map(|&(t, _)| t as f64).collect());
        report(
            "memory: overhead, ember RSS minus guest-touched",
            &overhead,
            "KiB",
        );
        report(
            "memory: ember RSS, Linux at its root-device wait",
            &rss,
            "KiB",
        );
        return;
    }
    for (total, guest) in samples.this {
        println!(
            "memory: ember RSS {total} KiB, guest-touched {guest} KiB, overhead {} KiB ({:.2} MiB)",
            total - guest,
            (total - guest) as f64 / 1024.0
        );
    }
}

/// Setup time and memory overhead with four 1 MiB disks on virtio-mmio and on virtio-pci, the
/// two taking turns run by run (this build only).
fn report_pci(bins: &Binaries, vmlinux: &Path) {
    let dir = std::env::temp_dir().join(format!("ember-bench-pci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut disks = Vec::new();
    for i in 0..4 {
        let disk = dir.join(format!("disk{i}.img"));
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        disks.extend(["--disk".to_owned(), disk.display().to_string()]);
    }
    let mut pci = disks.clone();
    pci.push("--enable-pci".to_owned());
    let transports = [("virtio-mmio", &disks), ("virtio-pci", &pci)];
    let mut setup = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (samples, (_, flags)) in setup.iter_mut().zip(&transports) {
            samples.push(setup_time(&bins.this, vmlinux, flags).as_secs_f64() * 1e3);
        }
    }
    for (samples, (name, _)) in setup.into_iter().zip(&transports) {
        let samples = Pair {
            baseline: None,
            this: samples,
        };
        report(
            &format!("setup: spawn to first KVM_RUN, 4 disks, {name}"),
            &samples,
            "ms",
        );
    }
    for (name, flags) in transports {
        let (total, guest) = memory_overhead(&bins.this, vmlinux, flags);
        println!(
            "memory: 4 disks, {name}: ember RSS {total} KiB, guest-touched {guest} KiB, \
             overhead {} KiB ({:.2} MiB)",
            total - guest,
            (total - guest) as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The emulated guest boot and the kernel-CI run (minutes on a PVM host).
fn report_guest(bins: &Binaries, vmlinux: &Path, initramfs: &Path) {
    let emulated = Path::new("/sys/module/kvm_pvm").exists();
    let label = if emulated {
        " [emulated guest: measures the host's emulator]"
    } else {
        ""
    };
    let secs = bins.interleaved(EMULATED_RUNS, |bin| {
        time_to_init(bin, vmlinux, initramfs).as_secs_f64()
    });
    report(
        &format!("guest: spawn to EMBER-INIT, vmlinux, 1 vCPU, 128 MiB{label}"),
        &secs,
        "s",
    );

    let runs = bins.interleaved(CI_RUNS, |bin| ci_run(bin, vmlinux, initramfs));
    let each = |f: fn(&CiRun) -> Duration, scale: f64| -> Pair<Vec<f64>> {
        runs.map(|r| r.iter().map(|r| f(r).as_secs_f64() * scale).collect())
    };
    report(
        &format!("ci: `ember run -- true` start to exit status{label}"),
        &each(|r| r.wall, 1.0),
        "s",
    );
    report(
        "ci: ember's share, setup + teardown",
        &each(|r| r.setup + r.teardown, 1e3),
        "ms",
    );
    report(
        "ci: ember's setup, spawn to first KVM_RUN",
        &each(|r| r.setup, 1e3),
        "ms",
    );
    report(
        "ci: ember's teardown, guest exit write to return from main",
        &each(|r| r.teardown, 1e3),
        "ms",
    );
    report(
        "ci: host process exit, return from main to reaped",
        &each(|r| r.exit, 1e3),
        "ms",
    );
}

fn main() {
    let vmlinux = artifact("EMBER_TEST_KERNEL", "vmlinux", "build-kernel.sh");
    let bzimage = artifact("EMBER_TEST_BZIMAGE", "bzImage", "build-kernel.sh");
    let initramfs = artifact("EMBER_TEST_INITRAMFS", "initramfs.cpio", "build-rootfs.sh");
    let bins = Binaries::from_env();
    if let Some(baseline) = &bins.baseline {
        println!(
            "baseline: {}\nthis:     {}",
            baseline.display(),
            bins.this.display()
        );
    }
    report_setup(&bins, &vmlinux, &bzimage);
    report_memory(&bins, &vmlinux);
    report_pci(&bins, &vmlinux);
    if std::env::var(QUICK).as_deref() == Ok("1") {
        return;
    }
    report_guest(&bins, &vmlinux, &initramfs);
}

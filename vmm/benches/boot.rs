//! ember's own costs at boot, printed as figures (median, min, max over several runs):
//!
//! - setup: from just before the process is spawned to vCPU 0's first KVM_RUN (memory mapping,
//!   kernel load, boot structures, devices, vCPU setup), for the vmlinux and the bzImage, with a
//!   1-vCPU 128 MiB guest;
//! - memory overhead: ember's RSS minus the guest memory the guest touched, with a Linux guest
//!   idling at its root-device wait;
//! - emulated guest boot: from spawn to the initramfs init's EMBER-INIT marker. On a host whose
//!   KVM emulates guest kernel code (PVM) this measures the emulator, not ember, and is labelled;
//! - a kernel-CI run: `ember run` of a trivial test in the initramfs, start to exit status, and
//!   ember's own share of it: setup (spawn to first KVM_RUN) plus teardown (vCPU 0 leaving the
//!   guest after the exit-port write, to ember returning from main); the host kernel's process
//!   exit (freeing guest memory, destroying the VM) is reported apart.
//!
//! Run: `EMBER_TEST_KERNEL=... EMBER_TEST_BZIMAGE=... cargo bench -p ember --bench boot`
//! (without them the kernel is built by resources/build-kernel.sh).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::vcpu::monotonic_ns;

const RUNS: usize = 15;
const EMULATED_RUNS: usize = 3;
/// EMBER_BENCH_QUICK=1 skips the emulated-guest parts (minutes on a PVM host).
const QUICK: &str = "EMBER_BENCH_QUICK";
const CI_RUNS: usize = 5;
const ROOTWAIT: &str = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vdz rootwait";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn artifact(var: &str, built: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let ok = Command::new(root().join("resources").join(script))
        .status()
        .unwrap()
        .success();
    assert!(ok, "resources/{script} failed");
    root().join("build/guest").join(built)
}

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

/// Reads `stream` until a line contains `needle`; returns that line.
fn wait_for_line(stream: impl std::io::Read, needle: &str) -> Option<String> {
    BufReader::new(stream)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|line| String::from_utf8_lossy(&line).into_owned())
        .find(|line| line.contains(needle))
}

/// Spawns ember on `kernel` (stopping it at its first KVM_RUN) and returns the setup time.
fn setup_time(kernel: &Path) -> Duration {
    let start = monotonic_ns();
    let mut child = ember()
        .arg("--kernel")
        .arg(kernel)
        .args([
            "--memory",
            "128",
            "--level",
            "info",
            "--timeout",
            "30",
            "--cmdline",
            ROOTWAIT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(
        child.stderr.take().unwrap(),
        "entering the guest at monotonic ",
    );
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("ember never entered the guest");
    let entered: u64 = line
        .rsplit("monotonic ")
        .next()
        .unwrap()
        .trim_end_matches(" ns")
        .parse()
        .unwrap();
    Duration::from_nanos(entered - start)
}

/// Boots Linux to its root-device wait and returns (ember's RSS, guest-touched RSS) in KiB.
fn memory_overhead(kernel: &Path) -> (u64, u64) {
    let mut child = ember()
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", "128", "--timeout", "600", "--cmdline", ROOTWAIT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(child.stdout.take().unwrap(), "Waiting for root device");
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let (mut total, mut guest) = (0, 0);
    let mut in_guest = false;
    for line in smaps.lines() {
        let field = |name: &str| -> Option<u64> {
            line.strip_prefix(name)?
                .trim()
                .trim_end_matches(" kB")
                .parse()
                .ok()
        };
        if let Some(size) = field("Size:") {
            // The guest RAM mapping is the one anonymous mapping of exactly 128 MiB.
            in_guest = size == 128 * 1024;
        } else if let Some(rss) = field("Rss:") {
            total += rss;
            if in_guest {
                guest += rss;
            }
        }
    }
    (total, guest)
}

/// Wall time from spawn to the initramfs init's marker.
fn time_to_init(kernel: &Path, initramfs: &Path) -> Duration {
    let start = Instant::now();
    let mut child = ember()
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

fn ci_run(kernel: &Path, initramfs: &Path) -> CiRun {
    let start = monotonic_ns();
    let out = ember()
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

fn report(name: &str, mut samples: Vec<f64>, unit: &str) {
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!(
        "{name:<58} median {median:>9.2} {unit}  min {:>9.2}  max {:>9.2}  (n={})",
        samples[0],
        samples[samples.len() - 1],
        samples.len()
    );
}

fn main() {
    let vmlinux = artifact("EMBER_TEST_KERNEL", "vmlinux", "build-kernel.sh");
    let bzimage = artifact("EMBER_TEST_BZIMAGE", "bzImage", "build-kernel.sh");
    let initramfs = artifact("EMBER_TEST_INITRAMFS", "initramfs.cpio", "build-rootfs.sh");
    let emulated = Path::new("/sys/module/kvm_pvm").exists();
    let label = if emulated {
        " [emulated guest: measures the host's emulator]"
    } else {
        ""
    };

    for (name, kernel) in [("vmlinux", &vmlinux), ("bzImage", &bzimage)] {
        let ms = (0..RUNS)
            .map(|_| setup_time(kernel).as_secs_f64() * 1e3)
            .collect();
        report(
            &format!("setup: spawn to first KVM_RUN, {name}, 128 MiB"),
            ms,
            "ms",
        );
    }
    let (total, guest) = memory_overhead(&vmlinux);
    println!(
        "memory: ember RSS {total} KiB, guest-touched {guest} KiB, overhead {} KiB ({:.2} MiB)",
        total - guest,
        (total - guest) as f64 / 1024.0
    );
    if std::env::var(QUICK).as_deref() == Ok("1") {
        return;
    }
    let secs = (0..EMULATED_RUNS)
        .map(|_| time_to_init(&vmlinux, &initramfs).as_secs_f64())
        .collect();
    report(
        &format!("guest: spawn to EMBER-INIT, vmlinux, 1 vCPU, 128 MiB{label}"),
        secs,
        "s",
    );

    let runs: Vec<_> = (0..CI_RUNS).map(|_| ci_run(&vmlinux, &initramfs)).collect();
    let each = |f: fn(&CiRun) -> Duration, scale: f64| -> Vec<f64> {
        runs.iter().map(|r| f(r).as_secs_f64() * scale).collect()
    };
    report(
        &format!("ci: `ember run -- true` start to exit status{label}"),
        each(|r| r.wall, 1.0),
        "s",
    );
    report(
        "ci: ember's share, setup + teardown",
        each(|r| r.setup + r.teardown, 1e3),
        "ms",
    );
    report(
        "ci: ember's setup, spawn to first KVM_RUN",
        each(|r| r.setup, 1e3),
        "ms",
    );
    report(
        "ci: ember's teardown, guest exit write to return from main",
        each(|r| r.teardown, 1e3),
        "ms",
    );
    report(
        "ci: host process exit, return from main to reaped",
        each(|r| r.exit, 1e3),
        "ms",
    );
}

//! Machinery the VMM benchmarks share: guest artifacts, ember's setup time to its first
//! KVM_RUN, its memory overhead at a Linux guest's root-device wait, and sample statistics
//! (a binary's spread, two variants' paired change).
#![allow(dead_code)] // each benchmark uses a different subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmm::vcpu::monotonic_ns;

pub const ROOTWAIT: &str = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vdz rootwait";

/// Stops the benchmark with a clear message unless /dev/kvm can be opened for reading and
/// writing.
pub fn require_kvm() {
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm cannot be opened: this benchmark needs KVM (and the rights to use it)"
    );
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn artifact(var: &str, built: &str, script: &str) -> PathBuf {
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

/// Reads `stream` until a line contains `needle`; returns that line.
pub fn wait_for_line(stream: impl std::io::Read, needle: &str) -> Option<String> {
    BufReader::new(stream)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|line| String::from_utf8_lossy(&line).into_owned())
        .find(|line| line.contains(needle))
}

/// Spawns ember on `kernel` with the `extra` flags (stopping it at its first KVM_RUN) and
/// returns the setup time.
pub fn setup_time(binary: &Path, kernel: &Path, extra: &[String]) -> Duration {
    time_to_first_kvm_run(
        Command::new(binary)
            .arg("--kernel")
            .arg(kernel)
            .args(extra)
            .args([
                "--memory",
                "128",
                "--level",
                "info",
                "--timeout",
                "30",
                "--cmdline",
                ROOTWAIT,
            ]),
    )
}

/// Spawns `ember` (logging at level info, so that it says when vCPU 0 enters the guest),
/// kills it at its first KVM_RUN and returns the time from just before the spawn to then.
pub fn time_to_first_kvm_run(ember: &mut Command) -> Duration {
    let start = monotonic_ns();
    let mut child = ember
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

/// Boots Linux with the `extra` flags to its root-device wait and returns (ember's RSS,
/// guest-touched RSS) in KiB.
pub fn memory_overhead(binary: &Path, kernel: &Path, extra: &[String]) -> (u64, u64) {
    let mut child = Command::new(binary)
        .arg("--kernel")
        .arg(kernel)
        .args(extra)
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

/// Median, min and max of one binary's samples.
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stats(samples: &[f64]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Stats {
        median: sorted[sorted.len() / 2],
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        n: sorted.len(),
    }
}

/// How much `on` differs from `off` when both were measured in the same rounds (in turns,
/// round by round): the median of the rounds' changes, with a 95% confidence interval of that
/// median from the order statistics of the changes (no assumption about their distribution),
/// in percent. Pairing the rounds takes out the machine's drift between them.
pub struct Change {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

pub fn paired_change(on: &[f64], off: &[f64]) -> Change {
    assert_eq!(on.len(), off.len(), "paired samples");
    let mut changes: Vec<f64> = on
        .iter()
        .zip(off)
        .map(|(on, off)| (on / off - 1.0) * 100.0)
        .collect();
    changes.sort_by(f64::total_cmp);
    // The median's rank is Binomial(n, 1/2): n/2 +- 1.96 sqrt(n)/2 covers 95%.
    let n = changes.len() as f64;
    let spread = 0.98 * n.sqrt();
    let low = (n / 2.0 - spread).floor().max(0.0) as usize;
    let high = ((n / 2.0 + spread).ceil() as usize).min(changes.len() - 1);
    Change {
        median: changes[changes.len() / 2],
        low: changes[low],
        high: changes[high],
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:+.1}% (95% CI {:+.1}% to {:+.1}%)",
            self.median, self.low, self.high
        )
    }
}

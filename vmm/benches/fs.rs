//! virtio-fs's costs to ember (issue 16), printed as figures:
//!
//! - setup: spawn to vCPU 0's first KVM_RUN with one `--share` and with none, taking turns run
//!   by run (medians; with a share this includes starting virtiofsd and the vhost-user
//!   handshake);
//! - memory: ember's RSS minus the guest-touched memory with a Linux guest at its root-device
//!   wait, with one share and with none (one boot each; a share makes guest RAM a memfd);
//! - ember's own CPU while the guest works on a share: one boot with a share and an ext4
//!   virtio-blk scratch disk, whose init creates 1000 small files and stats each (shell
//!   builtins: no forks) on the disk, then on the share. Around each loop (between the guest's
//!   start and end markers on the console) the host samples the on-CPU time of ember's threads
//!   except the vCPUs (`fc_vcpu N`) from /proc/<pid>/task/*/ (`schedstat`, nanoseconds; the
//!   thread names from `comm`) and virtiofsd's, all threads. virtio-fs's data path is
//!   virtiofsd's: ember's share should cost ~0. The guest's own timings of the loops are
//!   printed too, labelled emulated: on a host whose KVM emulates guest kernel code (PVM) they
//!   measure the emulator, not ember or virtiofsd.
//!
//! Needs KVM, a kernel with virtio-fs and ext4 (`EMBER_TEST_ACPI_KERNEL`, such as
//! /work/shared/guest/full-vmlinux or build/guest/vmlinux from resources/build-kernel.sh), the
//! initramfs (`EMBER_TEST_INITRAMFS`, else built by resources/build-rootfs.sh), virtiofsd
//! (`EMBER_VIRTIOFSD` or PATH; resources/setup-host.sh installs it) and mkfs.ext4; fails saying
//! which is missing.
//!
//! Run: `EMBER_TEST_ACPI_KERNEL=... cargo bench -p ember --bench fs`
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{artifact, memory_overhead, require_kvm, setup_time, stats};

const RUNS: usize = 15;
const FILES: usize = 1000;
/// The longest the guest may take for both loops (emulated: minutes).
const LIMIT: Duration = Duration::from_secs(1200);
/// vCPU threads are named `fc_vcpu N` (Firecracker's names).
const VCPU_PREFIX: &str = "fc_vcpu";

/// The guest's script, run from the share: `FSBENCH <fs>-start` and `FSBENCH <fs>-end <t0>
/// <t1>` (uptime seconds) around each loop, `FSBENCH done` at the end. The share's loop runs
/// first, so no writeback of the disk's loop lands in its window.
fn script(files: usize) -> String {
    format!(
        r#"
loop() {{
  mkdir -p "$1/d" || return 1
  echo "FSBENCH $2-start"
  read -r a _ < /proc/uptime
  i=0
  while [ $i -lt {files} ]; do
    echo x > "$1/d/f$i" && [ -e "$1/d/f$i" ] || return 1
    i=$((i+1))
  done
  read -r b _ < /proc/uptime
  echo "FSBENCH $2-end $a $b"
}}
mkdir /b && mount -t ext4 /dev/vda /b && sync || exit 1
loop /a share && loop /b blk && echo "FSBENCH done"
"#
    )
}

fn main() {
    require_kvm();
    let kernel = PathBuf::from(
        std::env::var_os("EMBER_TEST_ACPI_KERNEL").unwrap_or_else(|| {
            panic!(
                "EMBER_TEST_ACPI_KERNEL is not set: point it at a Linux kernel with virtio-fs and \
             ext4, such as /work/shared/guest/full-vmlinux or build/guest/vmlinux from \
             resources/build-kernel.sh"
            )
        }),
    );
    assert!(
        kernel.is_file(),
        "EMBER_TEST_ACPI_KERNEL={} is not a file",
        kernel.display()
    );
    if let Err(err) = vmm::virtiofsd::find() {
        panic!("{err}");
    }
    let initramfs = artifact("EMBER_TEST_INITRAMFS", "initramfs.cpio", "build-rootfs.sh");
    let ember = PathBuf::from(env!("CARGO_BIN_EXE_ember"));
    let dir = std::env::temp_dir().join(format!("ember-bench-fs-{}", std::process::id()));
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let share_flags = ["--share".to_owned(), format!("{},tag=rw", share.display())];

    report_setup(&ember, &kernel, &share_flags);
    for (name, flags) in [("no share", &[][..]), ("one share", &share_flags[..])] {
        let (total, guest) = memory_overhead(&ember, &kernel, flags);
        println!(
            "memory: {name}: ember RSS {total} KiB, guest-touched {guest} KiB, overhead {} KiB \
             ({:.2} MiB)",
            total - guest,
            (total - guest) as f64 / 1024.0
        );
    }
    report_loops(&ember, &kernel, &initramfs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn report_setup(ember: &Path, kernel: &Path, share: &[String]) {
    let cases = [("no share", &[][..]), ("one share", share)];
    let mut ms = [Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (samples, (_, flags)) in ms.iter_mut().zip(&cases) {
            samples.push(setup_time(ember, kernel, flags).as_secs_f64() * 1e3);
        }
    }
    for (samples, (name, _)) in ms.iter().zip(&cases) {
        let s = stats(samples);
        println!(
            "setup: spawn to first KVM_RUN, {name:<9} median {:>7.2} ms  min {:>7.2}  max {:>7.2}  \
             (n={})",
            s.median, s.min, s.max, s.n
        );
    }
}

/// On-CPU time so far of each thread of `pid` (by thread id: name, nanoseconds).
fn thread_cpu(pid: u32) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // schedstat's first field is the time on a CPU in nanoseconds; stat's utime and stime
        // (fields 14 and 15) count in clock ticks, too coarse for a short loop.
        let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        else {
            continue;
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        out.insert(tid, (name.trim_end().to_owned(), ns));
    }
    out
}

/// The pid of the virtiofsd `ember` started.
fn virtiofsd_of(ember: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == ember && name.starts_with("virtiofsd")).then_some(pid)
    })
}

/// CPU samples of ember's non-vCPU threads (by name) and of virtiofsd, at one instant.
struct Sample {
    ember: BTreeMap<String, (String, u64)>,
    virtiofsd: u64,
}

fn sample(ember: u32, virtiofsd: Option<u32>) -> Sample {
    let mut threads = thread_cpu(ember);
    threads.retain(|_, (name, _)| !name.starts_with(VCPU_PREFIX));
    let virtiofsd = virtiofsd.map_or(0, |p| thread_cpu(p).values().map(|(_, ns)| ns).sum());
    Sample {
        ember: threads,
        virtiofsd,
    }
}

/// What one loop cost: the guest's time (emulated) and the host CPU meanwhile.
fn report_loop(name: &str, before: &Sample, after: &Sample, guest_secs: f64) {
    let mut by_thread: BTreeMap<&str, u64> = BTreeMap::new();
    for (tid, (thread, ns)) in &after.ember {
        let start = before.ember.get(tid).map_or(0, |(_, ns)| *ns);
        *by_thread.entry(thread.as_str()).or_default() += ns - start;
    }
    let total: u64 = by_thread.values().sum();
    let threads: Vec<String> = by_thread
        .iter()
        .map(|(t, ns)| format!("{t} {:.2}", *ns as f64 / 1e6))
        .collect();
    println!(
        "{name}: {FILES} files created and stat'ed in {guest_secs:.2} s of guest time \
         [emulated]; ember's non-vCPU CPU meanwhile {:.2} ms ({}), virtiofsd's {:.2} ms",
        total as f64 / 1e6,
        threads.join(", "),
        (after.virtiofsd - before.virtiofsd) as f64 / 1e6,
    );
}

/// Boots Linux with a share and an ext4 scratch disk; the guest runs the loops on each while
/// the host samples CPU around them.
fn report_loops(ember: &Path, kernel: &Path, initramfs: &Path, dir: &Path) {
    let share = dir.join("share");
    std::fs::write(share.join("t.sh"), script(FILES)).unwrap();
    let disk = dir.join("scratch.ext4");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap_or_else(|e| panic!("cannot run mkfs.ext4 ({e}): install e2fsprogs"));
    assert!(mkfs.success(), "mkfs.ext4 failed on {}", disk.display());
    let mut child = Command::new(ember)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs)
        .args(["--memory", "256", "--timeout"])
        .arg(LIMIT.as_secs().to_string())
        .arg("--disk")
        .arg(&disk)
        .arg("--share")
        .arg(format!("{},tag=rw", share.display()))
        .args(["--", "mkdir /a && mount -t virtiofs rw /a && sh /a/t.sh"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // ember starts virtiofsd during setup, before the guest prints anything.
    let mut virtiofsd = None;
    for _ in 0..500 {
        virtiofsd = virtiofsd_of(pid);
        if virtiofsd.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        virtiofsd.is_some(),
        "ember started no virtiofsd within 10 s"
    );
    let mut started = None;
    let mut log = String::new();
    let mut done = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        log.push_str(&line);
        log.push('\n');
        let Some(marker) = line.split("FSBENCH ").nth(1) else {
            continue;
        };
        let mut words = marker.split_whitespace();
        match words.next().unwrap_or_default() {
            "done" => {
                done = true;
                break;
            }
            m if m.ends_with("-start") => started = Some(sample(pid, virtiofsd)),
            m => {
                let after = sample(pid, virtiofsd);
                let t: Vec<f64> = words.filter_map(|w| w.parse().ok()).collect();
                let (Some(before), &[t0, t1]) = (started.take(), &t[..]) else {
                    panic!("unexpected marker '{line}'\n{log}");
                };
                let fs = m.trim_end_matches("-end");
                let name = if fs == "share" {
                    "virtio-fs share"
                } else {
                    "virtio-blk ext4"
                };
                report_loop(name, &before, &after, t1 - t0);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(done, "the guest did not finish its loops; console:\n{log}");
}

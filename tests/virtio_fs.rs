//! Shared host directories (virtio-fs over vhost-user) end to end. One Linux boot
//! ($EMBER_TEST_ACPI_KERNEL, which has VIRTIO_FS and FUSE) mounts three shares: `rw` and `ro`
//! served by virtiofsd processes ember starts (`--share`), `ext` by one this test starts
//! (`--fs socket=`). The guest reads a host file byte-exact (copying it across shares, which
//! the host compares), creates, renames and deletes files and a directory the host then sees,
//! is refused a write on `ro` with EROFS, sees a file the host writes after the mount, and
//! after the test kills `ro`'s virtiofsd gets an error there (not a hang) while `rw` still
//! works. After ember exits, no virtiofsd it started is left. A second boot with
//! `--enable-pci` reads and writes a share that is a virtio-pci function with MSI-X, and a
//! vhost-user-blk drive served by qemu-storage-daemon, also on PCI. Bad input
//! (a missing directory, a file, a long or repeated tag, no virtiofsd) is refused before any VM
//! starts.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(900);

/// The virtiofsd binary the tests (and ember) use: $EMBER_VIRTIOFSD or virtiofsd on PATH.
fn virtiofsd() -> PathBuf {
    if let Some(path) = std::env::var_os("EMBER_VIRTIOFSD") {
        return path.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "virtiofsd is not installed: run resources/setup-host.sh (it runs `cargo \
                 install virtiofsd`), or set EMBER_VIRTIOFSD"
            )
        })
}

/// The guest's script, run from the `rw` share: one `VERDICT name value` line per check. It
/// forks as little as it can (shell builtins read files): on the nested-PVM development hosts a
/// fresh busybox now and then dies at start (see resources/rootfs/init).
const SCRIPT: &str = r#"
mkdir -p /b /e
mount -t virtiofs ro /b && mount -t virtiofs ext /e && echo 'VERDICT mounted yes'
read -r line < /a/hello.txt; echo "VERDICT hello $line"
cp /e/data.bin /a/copy.bin && echo 'VERDICT copied yes'
mkdir /a/made && echo made-in-guest > /a/made/first && mv /a/made/first /a/made/second \
  && mv /a/made /a/renamed && rm /a/doomed.txt && echo 'VERDICT changed yes'
touch /b/refused 2>/a/ro.err; read -r line < /a/ro.err; echo "VERDICT ro-write $line"
echo 'VERDICT waiting-for-host yes'
i=0; while [ ! -f /a/late.txt ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
read -r line < /a/late.txt; echo "VERDICT late $line"
echo 'VERDICT kill-ro now'
i=0; while [ ! -f /a/killed ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
ls /b >/dev/null 2>/a/dead.err; status=$?; read -r line < /a/dead.err
echo "VERDICT ro-dead $status $line"
read -r line < /a/hello.txt; echo "VERDICT rw-after $line"
"#;

/// The processes whose parent is `parent`, with their command lines.
fn children(parent: libc::pid_t) -> Vec<(libc::pid_t, String)> {
    let proc = std::fs::read_dir("/proc").unwrap().flatten();
    proc.filter_map(|e| {
        let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: libc::pid_t = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == parent).then(|| (pid, String::from_utf8_lossy(&cmdline).into_owned()))
    })
    .collect()
}

/// The pid of the virtiofsd ember started for `tag` (a child of `ember`).
fn ember_virtiofsd(ember: libc::pid_t, tag: &str) -> Option<libc::pid_t> {
    let want = format!("--tag\0{tag}\0");
    children(ember)
        .into_iter()
        .find_map(|(pid, cmdline)| cmdline.contains(&want).then_some(pid))
}

fn alive(pid: libc::pid_t) -> bool {
    // A zombie has no command line.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// A virtiofsd this test started, killed when dropped (also when the test fails).
struct External(Child);

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd for `dir` with `tag` on `socket` and waits for its socket.
fn start_virtiofsd(dir: &Path, tag: &str, socket: &Path) -> External {
    let child = Command::new(virtiofsd())
        .arg("--shared-dir")
        .arg(dir)
        .arg("--socket-path")
        .arg(socket)
        // No sandbox: its default one forks, and the fork would outlive the kill below.
        .args(["--tag", tag, "--log-level=error", "--sandbox=none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = External(child);
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no virtiofsd socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn verdict<'a>(log: &'a str, name: &str) -> &'a str {
    let prefix = format!("VERDICT {name} ");
    log.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no verdict '{name}' in the console:\n{log}"))
        .trim_end()
}

#[test]
fn a_linux_guest_reads_writes_and_survives_a_dead_backend_on_three_shares() {
    let Some(_turn) = linux_slot() else {
        return;
    };
    let dir = tempdir("virtio-fs");
    let (rw, ro, ext) = (dir.join("rw"), dir.join("ro"), dir.join("ext"));
    for d in [&rw, &ro, &ext] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(rw.join("t.sh"), SCRIPT).unwrap();
    std::fs::write(rw.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(rw.join("doomed.txt"), "delete me").unwrap();
    std::fs::write(ro.join("kept.txt"), "read-only").unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(ext.join("data.bin"), &data).unwrap();
    let kernel = linux_acpi_kernel();
    let socket = dir.join("ext.sock");
    let external = start_virtiofsd(&ext, "ext", &socket);

    let command = "mkdir /a && mount -t virtiofs rw /a && sh /a/t.sh";
    let mut ember_cmd = ember();
    ember_cmd
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs())
        .args(["--memory", "256", "--timeout", "600"])
        .arg("--share")
        .arg(format!("{},tag=rw", rw.display()))
        .arg("--share")
        .arg(format!("{},tag=ro,ro", ro.display()))
        .arg("--fs")
        .arg(format!("socket={},tag=ext", socket.display()))
        .args(["--", command]);
    let mut started = Vec::new();
    let (log, status, stderr) = run_watching(&mut ember_cmd, LIMIT, |line, pid| {
        if started.is_empty() && line.contains("EMBER-RUN") {
            // Every thread, the three shares' among them, runs under its seccomp filter.
            let shares = ["ember_fs_rw", "ember_fs_ro", "ember_fs_ext", "fc_vcpu 0"];
            assert_seccomp_on_every_thread(pid as u32, &shares);
            started = ["rw", "ro"]
                .iter()
                .map(|t| ember_virtiofsd(pid, t).expect("no virtiofsd of ember's"))
                .collect();
        }
        if line.contains("VERDICT waiting-for-host") {
            std::fs::write(rw.join("late.txt"), "written after the mount").unwrap();
        }
        if line.contains("VERDICT kill-ro") {
            // SAFETY: a virtiofsd of this test's ember, found by its parent and tag.
            unsafe { libc::kill(started[1], libc::SIGKILL) };
            std::fs::write(rw.join("killed"), "").unwrap();
        }
    });
    drop(external);

    assert_eq!(code(&status), EXIT_OK, "log:\n{log}\nstderr:\n{stderr}");
    assert_eq!(verdict(&log, "mounted"), "yes");
    assert_eq!(verdict(&log, "hello"), "hello from the host");
    assert_eq!(verdict(&log, "copied"), "yes");
    assert_eq!(std::fs::read(rw.join("copy.bin")).unwrap(), data);
    assert_eq!(verdict(&log, "changed"), "yes");
    let second = std::fs::read_to_string(rw.join("renamed/second")).unwrap();
    assert_eq!(second, "made-in-guest\n");
    assert!(!rw.join("made").exists() && !rw.join("doomed.txt").exists());
    assert!(verdict(&log, "ro-write").contains("Read-only file system"));
    assert!(!ro.join("refused").exists());
    assert_eq!(verdict(&log, "late"), "written after the mount");
    // The dead share fails (EIO from ember), the live one goes on.
    let dead = verdict(&log, "ro-dead");
    assert!(
        dead.starts_with('1') && dead.contains("Input/output error"),
        "{dead}"
    );
    assert_eq!(verdict(&log, "rw-after"), "hello from the host");
    assert_contains(
        &stderr,
        "virtio-fs 'ro': the vhost-user backend hung up; the guest's requests on this share fail \
         with EIO",
    );
    // After ember, none of its virtiofsd processes is left.
    assert_eq!(started.len(), 2);
    for pid in started {
        assert!(!alive(pid), "virtiofsd {pid} outlived ember");
    }
    let leftovers: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("virtiofsd") && c.contains(&*dir.to_string_lossy())
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "a virtiofsd serving a share under {} is left",
        dir.display()
    );
}

/// Run from the share on PCI: the read, a write, and the interrupt lines of the share's queues;
/// then the vhost-user-blk disk's pattern and a write to it.
const PCI_SCRIPT: &str = r#"
read -r line < /a/hello.txt; echo "VERDICT hello $line"
echo written-over-pci > /a/from-guest.txt && echo 'VERDICT wrote yes'
read -r line < /dev/vda; echo "VERDICT blk $line"
echo blk-over-pci | dd of=/dev/vda bs=512 seek=8 conv=notrunc,fsync 2>/dev/null \
  && echo 'VERDICT blk-wrote yes'
while read -r l; do case "$l" in *requests*) echo "VERDICT irq $l";; esac; done < /proc/interrupts
"#;

/// The same boot carries a vhost-user-blk drive (qemu-storage-daemon), a virtio-pci function
/// too.
#[test]
fn with_enable_pci_a_share_and_a_vhost_user_blk_drive_are_pci_functions_with_msix() {
    let Some(_turn) = linux_slot() else {
        return;
    };
    let dir = tempdir("virtio-fs-pci");
    let rw = dir.join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(rw.join("t.sh"), PCI_SCRIPT).unwrap();
    std::fs::write(rw.join("hello.txt"), "hello over pci\n").unwrap();
    let (disk, socket) = (dir.join("disk.img"), dir.join("blk.sock"));
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..21].copy_from_slice(b"vhost-user-blk-on-pci");
    bytes[21] = b'\n';
    std::fs::write(&disk, bytes).unwrap();
    let daemon = StorageDaemon::start(&[(&disk, &socket)]);
    let mut ember_cmd = ember();
    ember_cmd
        .arg("--kernel")
        .arg(linux_acpi_kernel())
        .arg("--initrd")
        .arg(initramfs())
        .args(["--memory", "256", "--timeout", "600", "--enable-pci"])
        .arg("--share")
        .arg(format!("{},tag=rw", rw.display()))
        .arg("--disk")
        .arg(format!("socket={}", socket.display()))
        .args(["--", "mkdir /a && mount -t virtiofs rw /a && sh /a/t.sh"]);
    let (log, status, stderr) = run_watching(&mut ember_cmd, LIMIT, |_, _| {});
    drop(daemon);
    assert_eq!(code(&status), EXIT_OK, "log:\n{log}\nstderr:\n{stderr}");
    assert_eq!(verdict(&log, "hello"), "hello over pci");
    assert_eq!(verdict(&log, "wrote"), "yes");
    let written = std::fs::read_to_string(rw.join("from-guest.txt")).unwrap();
    assert_eq!(written, "written-over-pci\n");
    // The request queue's interrupt is an MSI-X vector of the PCI function, which virtiofsd
    // raised itself (the guest's reads completed).
    let irq = verdict(&log, "irq");
    assert!(irq.contains("PCI-MSI"), "{irq}");
    assert_eq!(verdict(&log, "blk"), "vhost-user-blk-on-pci");
    assert_eq!(verdict(&log, "blk-wrote"), "yes");
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(&written[8 * 512..8 * 512 + 13], b"blk-over-pci\n");
}

/// ember with `args` on a kernel that is never loaded: every error here comes first.
fn refused(args: &[&str], env: Option<(&str, &str)>) -> String {
    let dir = tempdir("virtio-fs-bad");
    let kernel = dir.join("never-loaded");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let mut cmd = ember();
    cmd.arg("--kernel").arg(&kernel).args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{stderr}");
    stderr
}

#[test]
fn bad_shares_are_clear_errors_before_the_vm_starts() {
    let dir = tempdir("virtio-fs-bad-input");
    let d = dir.to_str().unwrap();
    let missing = refused(&["--share", "/no/such/dir"], None);
    assert_contains(
        &missing,
        "the shared directory '/no/such/dir' cannot be used",
    );
    let file = refused(&["--share", "/proc/version,tag=v"], None);
    assert_contains(&file, "'/proc/version' is not a directory");
    let long = format!("{d},tag={}", "t".repeat(37));
    assert_contains(&refused(&["--share", &long], None), "must be 1 to 36 bytes");
    let twice = ["--share", &format!("{d},tag=x"), "--fs", "socket=/s,tag=x"];
    assert_contains(&refused(&twice, None), "uses the tag 'x' of fs 'x'");
    let share = format!("{d},tag=t");
    let bad_env = refused(
        &["--share", &share],
        Some(("EMBER_VIRTIOFSD", "/no/virtiofsd")),
    );
    assert_contains(&bad_env, "EMBER_VIRTIOFSD=/no/virtiofsd is not a file");
    // A virtiofsd that fails at start: its exit status and its own words, no hang.
    let fake = dir.join("failing-virtiofsd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake virtiofsd: cannot serve' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let failed = refused(
        &["--share", &share],
        Some(("EMBER_VIRTIOFSD", fake.to_str().unwrap())),
    );
    assert_contains(&failed, "fake virtiofsd: cannot serve");
    assert_contains(&failed, "virtiofsd exited at start (exit status: 3)");
}

/// A process, killed when dropped (also when the test fails).
struct Pid(libc::pid_t);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; a pid that is gone gives ESRCH.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// An ember killed between forking virtiofsd and the child setting its death signal (a debug
/// build's child waits there for $EMBER_TEST_VIRTIOFSD_PAUSE_MS) leaves no virtiofsd behind:
/// one did, serving no one for ever, and holding ember's stderr open, until the child learned
/// to check that ember was still its parent. The virtiofsd here is a stand-in that would sleep
/// for ten minutes.
#[test]
fn a_virtiofsd_starting_as_ember_dies_does_not_outlive_it() {
    if !cfg!(debug_assertions) {
        return; // Release builds have no pause to kill ember in.
    }
    let dir = tempdir("virtio-fs-orphan");
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let kernel = dir.join("never-loaded");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let fake = dir.join("sleeping-virtiofsd");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut ember = ember()
        .arg("--kernel")
        .arg(&kernel)
        .arg("--share")
        .arg(format!("{},tag=orphan", share.display()))
        .env("EMBER_VIRTIOFSD", &fake)
        .env("EMBER_TEST_VIRTIOFSD_PAUSE_MS", "1000")
        // The socket ember makes for virtiofsd, left by the kill.
        .env("TMPDIR", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ember_pid = ember.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (child, cmdline) = loop {
        if let Some((pid, cmdline)) = children(ember_pid).into_iter().next() {
            break (Pid(pid), cmdline);
        }
        assert!(ember.try_wait().unwrap().is_none(), "ember exited");
        assert!(Instant::now() < deadline, "ember never started virtiofsd");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Still ember's copy, paused before the death signal: the window this test is about.
    assert!(cmdline.contains("--share"), "{cmdline}");
    ember.kill().unwrap();
    ember.wait().unwrap();
    // The child's pause ends a second after the fork; it then exits instead of serving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(child.0) {
        assert!(
            Instant::now() < deadline,
            "the virtiofsd ember was starting ({}) outlived it",
            child.0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Gone: its pid may be another process's by now, which the guard must not kill.
    std::mem::forget(child);
}

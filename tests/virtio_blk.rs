//! virtio-blk end to end with a tiny guest that carries its own minimal virtio-mmio block
//! driver (tests/guests/virtio_blk.c): data integrity, flush durability across SIGKILL,
//! GET_ID, discard, read-only disks, malformed chains (each with both I/O engines), rate
//! limiting, and the errors users get for bad drives.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// A fully allocated image of `mib` MiB of pseudo-random bytes.
fn image(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let path = dir.join(name);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..mib * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The I/O engine a guest test's drive uses: the tests that move data run with both.
#[derive(Debug, Clone, Copy)]
enum Engine {
    Sync,
    Async,
}

impl Engine {
    /// What `--disk` adds for it.
    fn option(self) -> &'static str {
        match self {
            Self::Sync => "",
            Self::Async => ",async",
        }
    }
}

/// Runs each named test function once per engine, as `sync_engine::NAME` and
/// `async_engine::NAME`.
macro_rules! for_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sync_engine {
            $(#[test] fn $test() { super::$test(super::Engine::Sync) })*
        }
        mod async_engine {
            $(#[test] fn $test() { super::$test(super::Engine::Async) })*
        }
    };
}

for_both_engines!(
    data_is_durable_after_flush_even_when_ember_is_killed,
    a_read_only_disk_refuses_writes_and_is_unchanged,
    malformed_chains_are_refused_and_ember_keeps_serving,
);

fn driver(mode: &str) -> std::process::Command {
    let mut cmd = ember();
    cmd.arg("--kernel")
        .arg(guest("virtio_blk"))
        .args(["--cmdline", mode]);
    cmd
}

fn data_is_durable_after_flush_even_when_ember_is_killed(engine: Engine) {
    if !kvm_available() {
        return;
    }
    let dir = tempdir(&format!("blk-rw-{engine:?}"));
    let disk = image(&dir, "disk.img", 4);
    let before = std::fs::read(&disk).unwrap();
    let blocks_before = std::fs::metadata(&disk).unwrap().blocks();
    let (sock, metrics) = (dir.join("api.sock"), dir.join("metrics.json"));
    let mut cmd = driver("rw");
    cmd.arg("--disk")
        .arg(format!("{},id=tinydisk{}", disk.display(), engine.option()))
        .arg("--api-sock")
        .arg(&sock)
        .arg("--metrics-path")
        .arg(&metrics);
    let mut killed = false;
    let (log, status, stderr) = run_watching(&mut cmd, LIMIT, |line, pid| {
        if !killed && line.contains("FLUSHED") {
            // The device's counters say whether the flush reached the host's disk: the page
            // cache survives SIGKILL, so the image alone cannot tell a synced flush from one
            // acknowledged without syncing ("Unsafe").
            let mut api = ApiClient::connect(&sock);
            let (status, _) = api.request(
                "PUT",
                "/actions",
                Some(r#"{"action_type": "FlushMetrics"}"#),
            );
            assert_eq!(status, 204);
            // SAFETY: `pid` is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
    });
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&metrics).unwrap().trim()).unwrap();
    assert_eq!(line["block_tinydisk"]["flush_count"], 1, "{line}");
    assert_eq!(line["block_tinydisk"]["sync_count"], 1, "{line}");
    assert!(log.contains("RW OK"), "{log}\n{stderr}");
    assert!(log.contains("ID tinydisk"), "{log}");
    assert!(log.contains("DISCARD OK"), "{log}");
    assert_eq!(status.code(), None, "ember was killed, it did not exit");

    let after = std::fs::read(&disk).unwrap();
    // The pattern the guest wrote to sectors 10-17, acknowledged by a flush.
    let written: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(&after[10 * 512..18 * 512], &written[..]);
    // Discarded (sectors 2048-3071) and zeroed (3072-3079) ranges read as zero.
    assert!(after[2048 * 512..3080 * 512].iter().all(|b| *b == 0));
    // Everything else is as it was.
    assert_eq!(&after[..10 * 512], &before[..10 * 512]);
    assert_eq!(&after[18 * 512..2048 * 512], &before[18 * 512..2048 * 512]);
    assert_eq!(&after[3080 * 512..], &before[3080 * 512..]);
    // The discard gave 512 KiB back to the host filesystem.
    let blocks_after = std::fs::metadata(&disk).unwrap().blocks();
    assert!(
        blocks_after + 1000 <= blocks_before,
        "allocated 512-byte blocks: {blocks_before} -> {blocks_after}"
    );
}

fn a_read_only_disk_refuses_writes_and_is_unchanged(engine: Engine) {
    if !kvm_available() {
        return;
    }
    let dir = tempdir(&format!("blk-ro-{engine:?}"));
    let disk = image(&dir, "disk.img", 1);
    let before = std::fs::read(&disk).unwrap();
    let out = run(
        driver("ro")
            .arg("--disk")
            .arg(format!("{},ro{}", disk.display(), engine.option())),
        LIMIT,
    );
    assert_eq!(
        text(&out.stdout),
        "RO WRITE REFUSED\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(code(&out.status), EXIT_OK);
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the read-only image changed"
    );
}

fn malformed_chains_are_refused_and_ember_keeps_serving(engine: Engine) {
    if !kvm_available() {
        return;
    }
    let dir = tempdir(&format!("blk-hostile-{engine:?}"));
    let disk = image(&dir, "disk.img", 1);
    let before = std::fs::read(&disk).unwrap();
    let drive = format!("{}{}", disk.display(), engine.option());
    let out = run(driver("hostile").arg("--disk").arg(drive), LIMIT);
    let log = text(&out.stdout);
    let stderr = text(&out.stderr);
    // With a status byte: VIRTIO_BLK_S_IOERR. Without a usable one: returned untouched.
    for line in [
        "outside-memory status=255 len=0",
        "loop status=255 len=0",
        "writable-header status=1 len=1",
        "unaligned-length status=1 len=1",
        "past-the-end status=1 len=1",
        "huge-length status=255 len=0",
        "no-status status=255 len=0",
        "STILL SERVING",
        "NEEDS RESET",
        "HOSTILE DONE",
    ] {
        assert!(log.contains(line), "'{line}' missing:\n{log}\n{stderr}");
    }
    assert_eq!(code(&out.status), EXIT_OK, "{stderr}");
    assert!(
        stderr.contains("bad request"),
        "malformed requests are logged: {stderr}"
    );
    assert!(stderr.contains("corrupted the available ring"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(std::fs::read(&disk).unwrap() == before, "the image changed");
}

fn drive_error(args: &[&str], needle: &str) {
    let out = run(
        ember().arg("--kernel").arg(guest("hello")).args(args),
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
}

#[test]
fn bad_drives_get_clear_errors() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("blk-bad");
    let good = image(&dir, "good.img", 1);
    let good = good.to_str().unwrap();
    drive_error(
        &["--disk", "/nonexistent/disk.img,id=data"],
        "drive 'data': cannot open",
    );
    drive_error(&["--disk", dir.to_str().unwrap()], "drive 'disk0'");
    let odd = dir.join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    drive_error(&["--disk", odd.to_str().unwrap()], "not a multiple of 512");
    let twice = format!("{good},id=a");
    drive_error(
        &["--disk", &twice, "--disk", &twice],
        "two drives have the id 'a'",
    );
    let root = format!("{good},root");
    drive_error(&["--disk", &root, "--disk", &root], "are both root devices");
    drive_error(
        &["--disk", "x.img,id=no-dashes"],
        "invalid drive id 'no-dashes'",
    );
    drive_error(&["--disk", "x.img,rw"], "unknown option 'rw'");
    // vhost-user-blk drives: no backend listening, or an image drive's setting.
    drive_error(
        &["--disk", "socket=/nonexistent/blk.sock,id=vu"],
        "cannot connect to the vhost-user socket '/nonexistent/blk.sock' (is its backend running?)",
    );
    drive_error(
        &["--disk", "socket=/run/blk.sock,ro,id=vu"],
        "drive 'vu': is_read_only cannot be used with socket",
    );

    // An image the user may not open for writing (as an unprivileged user: root may open
    // anything). The image is reported before /dev/kvm is touched.
    assert!(
        is_root(),
        "run the suite as root (as CI does) to test file permissions"
    );
    let private = image(&dir, "private.img", 1);
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ember"))
        .arg("--kernel")
        .arg(guest("hello"))
        .arg("--disk")
        .arg(format!("{},id=private", private.display()));
    let out = run(&mut cmd, LIMIT);
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{err}");
    assert!(
        err.contains("drive 'private': cannot open the disk image")
            && err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn random_port_and_mmio_traffic_cannot_hurt_ember() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("fuzz");
    let disk = image(&dir, "disk.img", 1);
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("fuzz"))
            .args(["--cmdline", "20000"])
            .arg("--disk")
            .arg(&disk),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(
        text(&out.stdout).ends_with("SURVIVED\n"),
        "stderr: {stderr}"
    );
    assert_eq!(code(&out.status), EXIT_OK, "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the `stream` guest (256 KiB read in 4 KiB requests) on a drive with `rate_limiter`;
/// returns how long ember ran.
fn stream_with(name: &str, rate_limiter: serde_json::Value) -> Duration {
    let dir = tempdir(name);
    let disk = image(&dir, "disk.img", 1);
    let cfg = dir.join("vm.json");
    let vm = json!({
        "boot-source": {"kernel_image_path": guest("virtio_blk"), "boot_args": "stream"},
        "drives": [{"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                    "rate_limiter": rate_limiter}],
    });
    std::fs::write(&cfg, vm.to_string()).unwrap();
    let started = std::time::Instant::now();
    let out = run(ember().arg("--config-file").arg(&cfg), LIMIT);
    let took = started.elapsed();
    assert_eq!(text(&out.stdout), "READ 262144\n", "{}", text(&out.stderr));
    assert_eq!(code(&out.status), EXIT_OK);
    took
}

#[test]
fn a_rate_limited_drive_takes_as_long_as_its_limit_says_and_an_unlimited_one_does_not() {
    if !kvm_available() {
        return;
    }
    // 32 KiB per 125 ms (256 KiB/s), starting full: the other 224 KiB take 875 ms at least.
    let bandwidth = json!({"bandwidth": {"size": 32768, "refill_time": 125}});
    let limited = stream_with("blk-limited", bandwidth);
    assert!(limited >= Duration::from_millis(875), "{limited:?}");
    // The same reads unlimited ({} as Kata Containers sends it) do not wait for a limiter.
    let unlimited = stream_with("blk-unlimited", json!({}));
    assert!(unlimited < Duration::from_millis(875), "{unlimited:?}");
}

/// The guest's checks on its vhost-user-blk data disk (/dev/vdb): a known pattern, a write the
/// host then finds in the image, and after the test restarts the backend a read of a part of
/// the disk it never read before (caches dropped), which only the new backend can answer.
const VHOST_SCRIPT: &str = "head -c 24 /dev/vdb; \
    echo guest-wrote-this | dd of=/dev/vdb bs=512 seek=8 conv=notrunc,fsync 2>/dev/null \
    && echo VERDICT wrote yes; \
    echo VERDICT restart-backend now; sleep 3; echo 3 > /proc/sys/vm/drop_caches; \
    dd if=/dev/vdb bs=512 skip=1024 count=1 2>/dev/null | head -c 24";

/// Firecracker's `socket` drives: a Linux guest whose root and data disks are vhost-user-blk
/// devices served by qemu-storage-daemon reads and writes them, and keeps working when the
/// daemon is killed and started again (ember reconnects, the guest is not rebooted).
#[test]
fn a_linux_guest_boots_from_a_vhost_user_blk_root_and_survives_a_restarted_backend() {
    let Some(_turn) = linux_slot() else {
        return;
    };
    let dir = tempdir("vhost-user-blk");
    let root = dir.join("root.ext4");
    std::fs::copy(rootfs_image(), &root).unwrap();
    let data = dir.join("data.img");
    let mut bytes = vec![0u8; MIB];
    bytes[..24].copy_from_slice(b"EMBER-VHOST-PATTERN-ONE\n");
    bytes[1024 * 512..1024 * 512 + 24].copy_from_slice(b"EMBER-VHOST-PATTERN-TWO\n");
    std::fs::write(&data, bytes).unwrap();
    let (root_sock, data_sock) = (dir.join("root.sock"), dir.join("data.sock"));
    let exports = [(root.as_path(), root_sock.as_path()), (&data, &data_sock)];
    let mut daemon = Some(StorageDaemon::start(&exports));

    let mut cmd = ember();
    cmd.arg("--kernel")
        .arg(linux_vmlinux())
        .args(["--memory", "256", "--timeout", "600"])
        .arg("--disk")
        .arg(format!("socket={},root", root_sock.display()))
        .arg("--disk")
        .arg(format!("socket={},id=data", data_sock.display()))
        .args(["--", VHOST_SCRIPT]);
    let (log, status, stderr) = run_watching(&mut cmd, Duration::from_secs(900), |line, _| {
        // Only the guest's own line: the command line is echoed at boot too.
        if line.trim_end() == "VERDICT restart-backend now" {
            drop(daemon.take());
            std::thread::sleep(Duration::from_secs(1));
            daemon = Some(StorageDaemon::start(&exports));
        }
    });
    drop(daemon);
    assert_eq!(code(&status), EXIT_OK, "log:\n{log}\nstderr:\n{stderr}");
    assert_contains(&log, "EXT4-fs (vda): mounted filesystem");
    assert_line(&log, "EMBER-VHOST-PATTERN-ONE");
    assert_line(&log, "VERDICT wrote yes");
    let written = std::fs::read(&data).unwrap();
    assert_eq!(&written[8 * 512..8 * 512 + 17], b"guest-wrote-this\n");
    assert_line(&log, "EMBER-VHOST-PATTERN-TWO");
    assert_line(&log, "EMBER-DONE: status=0");
    assert_contains(
        &stderr,
        "drive 'data' (vhost-user-blk): the vhost-user backend hung up",
    );
    assert_contains(
        &stderr,
        &format!(
            "drive 'data' (vhost-user-blk): reconnected to the vhost-user backend at {}",
            data_sock.display()
        ),
    );
}

//! The guests the tests boot: tiny ring-0 guests and static Linux programs built from
//! tests/guests/, and the Linux kernels, root filesystem and initramfs, from the environment
//! or built by resources/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::root;

/// Builds tiny guest `name` (tests/guests/NAME.c) once per test process and returns its ELF.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<()>> = OnceLock::new();
    let _lock = BUILT.get_or_init(|| Mutex::new(())).lock().unwrap();
    let src = root().join("tests/guests");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.elf"));
    let status = Command::new("gcc")
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-Wl,-z,noexecstack",
        ])
        .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
        .arg("-o")
        .arg(&out)
        .arg(src.join("start.S"))
        .arg(src.join(format!("{name}.c")))
        .status()
        .expect("gcc is needed to build the tiny test guests (apt-get install gcc)");
    assert!(status.success(), "building tiny guest {name} failed");
    out
}

/// Builds tests/guests/NAME.c as a static Linux program (for a Linux guest, unlike the tiny
/// guests) into a disk image in `dir`, padded to whole sectors; returns the image and the
/// program's length, for the guest to copy it out with `head -c LEN /dev/vdX`.
pub fn program_disk(dir: &Path, name: &str) -> (PathBuf, usize) {
    let bin = dir.join(name);
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(root().join(format!("tests/guests/{name}.c")))
        .status()
        .expect("gcc (with a static libc) is needed to build the Linux test programs");
    assert!(status.success(), "building {name}.c failed");
    let mut image = std::fs::read(&bin).unwrap();
    let len = image.len();
    image.resize(len.div_ceil(512) * 512, 0);
    let disk = dir.join(format!("{name}.img"));
    std::fs::write(&disk, image).unwrap();
    (disk, len)
}

/// Runs a script from resources/ (once per test process per script), failing on error.
fn resource(script: &str) {
    static LOCK: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let mut done = LOCK.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap();
    if done.iter().any(|s| s == script) {
        return;
    }
    let status = Command::new(root().join("resources").join(script))
        .status()
        .unwrap_or_else(|e| panic!("cannot run resources/{script}: {e}"));
    assert!(status.success(), "resources/{script} failed");
    done.push(script.into());
}

fn artifact(var: &str, script: &str, built: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "{var}={} does not exist", path.display());
        return path;
    }
    resource(script);
    root().join("build/guest").join(built)
}

/// Kernel parameters the multi-vCPU Linux boots add so that a host starved of CPU (a busy CI
/// machine, or one emulating the guest kernel) slows the guest down without breaking it: a
/// starved vCPU makes RCU report a stall, which sends NMIs for backtraces to the other vCPUs,
/// and after long enough the guest moves its clocksource from kvm-clock to the raw TSC, whose
/// readings then jump. Neither is what these tests check, and on a loaded host either can end
/// the guest; on a quiet one they change nothing. (Unknown to a kernel without RCU stall
/// detection, the first becomes an environment variable of init, which ignores it.)
pub const SLOW_HOST_PARAMS: &str = "rcupdate.rcu_cpu_stall_suppress=1 clocksource=kvm-clock";

/// The Linux guest kernel as an ELF vmlinux: $EMBER_TEST_KERNEL, else built by resources/.
pub fn linux_vmlinux() -> PathBuf {
    artifact("EMBER_TEST_KERNEL", "build-kernel.sh", "vmlinux")
}

/// A Linux kernel with ACPI, for power-off: $EMBER_TEST_ACPI_KERNEL, which resources/test.sh
/// points at the kernel resources/build-kernel.sh builds (and .ci/run at a prebuilt one).
/// Required: the prebuilt lean kernel has no ACPI, and a test that cannot power off must not
/// pass quietly.
pub fn linux_acpi_kernel() -> PathBuf {
    let path = std::env::var_os("EMBER_TEST_ACPI_KERNEL").unwrap_or_else(|| {
        panic!(
            "EMBER_TEST_ACPI_KERNEL is not set: point it at a Linux kernel built with \
             CONFIG_ACPI, such as build/guest/vmlinux from resources/build-kernel.sh \
             (resources/test.sh does this for you)"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "EMBER_TEST_ACPI_KERNEL={} does not exist",
        path.display()
    );
    path
}

/// The same kernel as a bzImage: $EMBER_TEST_BZIMAGE, else built by resources/.
pub fn linux_bzimage() -> PathBuf {
    artifact("EMBER_TEST_BZIMAGE", "build-kernel.sh", "bzImage")
}

/// Debian's stock cloud kernel (a bzImage), fetched by resources/.
pub fn debian_kernel() -> PathBuf {
    artifact(
        "EMBER_TEST_DEBIAN_KERNEL",
        "fetch-debian-kernel.sh",
        "debian-vmlinuz",
    )
}

/// The test root filesystem (ext4 image), built by resources/. Tests copy it before use.
pub fn rootfs_image() -> PathBuf {
    artifact("EMBER_TEST_ROOTFS", "build-rootfs.sh", "rootfs.ext4")
}

/// The test initramfs (uncompressed cpio), built by resources/.
pub fn initramfs() -> PathBuf {
    artifact("EMBER_TEST_INITRAMFS", "build-rootfs.sh", "initramfs.cpio")
}

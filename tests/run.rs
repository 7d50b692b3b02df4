//! `ember run IMAGE`: one Linux boot of a busybox image (two layers the test writes as an OCI
//! layout and pushes with skopeo to Debian's docker-registry on 127.0.0.1, then pulled into the
//! image cache) checks what a user relies on (the program's output alone on stdout, its exit
//! status as ember's, the image's Env, WorkingDir and User with -e and the words after `--`
//! over them, the image's files readable, the second layer's whiteout and opaque directory in
//! effect, the image's ext4 unchanged by the container's writes, and with `--rootfs-size` those
//! writes on a disk of that size that leaves no file behind); errors ember reports before
//! booting need no boot.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::oci::{Registry, layout_of, tar_of};
use common::{EXIT_CONFIG, code, ember, kvm_available, linux_acpi_kernel, linux_slot, run, text};

/// An OCI image layout in `dir` (tag v1): busybox-static, an /etc/passwd and /etc/group naming
/// `app`, a data file, and a configuration with Env, WorkingDir, User and Cmd; a second layer
/// whites out a file of the first (`/etc/gone`) and makes a directory opaque (`/opq`).
fn busybox_image(dir: &Path) -> PathBuf {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let busybox = std::fs::read("/bin/busybox")
        .expect("this test needs busybox-static (resources/setup-host.sh installs it)");
    let passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    let layer = tar_of(&[
        ("bin/", D, b"", 0, 0o755),
        ("bin/busybox", F, &busybox, 0, 0o755),
        ("bin/sh", S, b"busybox", 0, 0o777),
        ("etc/", D, b"", 0, 0o755),
        ("etc/passwd", F, passwd, 0, 0o644),
        (
            "etc/group",
            F,
            b"root:x:0:\nwheel:x:10:app\napp:x:1001:\n",
            0,
            0o644,
        ),
        ("srv/", D, b"", 0, 0o755),
        ("srv/data.txt", F, b"from the image\n", 0, 0o644),
        ("home/", D, b"", 0, 0o755),
        // The user's home is the user's, so that the container can write there.
        ("home/app/", D, b"", 1000, 0o755),
        ("etc/gone", F, b"whited out\n", 0, 0o644),
        ("opq/", D, b"", 0, 0o755),
        ("opq/old", F, b"lower\n", 0, 0o644),
    ]);
    let upper = tar_of(&[
        ("etc/.wh.gone", F, b"", 0, 0o644),
        ("opq/.wh..wh..opq", F, b"", 0, 0o644),
        ("opq/new", F, b"upper\n", 0, 0o644),
    ]);
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "FROM_IMAGE=image", "OVERRIDDEN=image"],
        "WorkingDir": "/srv", "User": "app", "Cmd": ["sh", "-c", "echo default"]
    });
    layout_of(&dir.join("layout"), &[&layer, &upper], config)
}

/// ember with its image cache in `cache`.
fn ember_in(cache: &Path) -> Command {
    let mut cmd = ember();
    cmd.env("EMBER_CACHE_DIR", cache);
    cmd
}

/// A fresh directory, removed first if an earlier run left it.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The program's output alone on stdout, its status as ember's, and the image untouched.
#[test]
fn a_program_in_an_image_runs_as_its_user_with_its_env_and_its_status_is_embers() {
    if !kvm_available() {
        return;
    }
    let kernel = linux_acpi_kernel();
    let dir = fresh_dir("run-boot");
    // Served by a registry on 127.0.0.1, as a user's image comes from one.
    let registry = Registry::start(&dir.join("registry"));
    let image = registry.push(&busybox_image(&dir), "test/busybox");
    let cache = dir.join("cache");
    // Pulled first so that the root filesystem's checksum can be taken before the run.
    let pulled = run(
        ember_in(&cache).args(["pull", &image]),
        Duration::from_secs(120),
    );
    assert_eq!(code(&pulled.status), 0, "{}", text(&pulled.stderr));
    let stdout = text(&pulled.stdout);
    let rootfs_path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("root filesystem: "))
        .unwrap_or_else(|| panic!("ember pull names no root filesystem: {stdout}"));
    let rootfs = std::fs::read(rootfs_path).unwrap();
    let _slot = linux_slot();
    // The --rootfs-size disk is made here, so that the test sees it leaves nothing behind.
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // Each line is one verdict; the program writes into the image's directories (the overlay)
    // and its own home, lists what the second layer left of the first (the opaque directory's
    // new file only, the whited-out file gone), says what holds the overlay's upper layer (the second disk's size in
    // sectors, and the root's file system as df sees it: overlayfs reports its upper layer's),
    // then ends with status 3.
    let script = "echo hello; echo \"env $FROM_IMAGE $OVERRIDDEN $HOME\"; echo \"cwd $(pwd)\"; \
        echo \"ids $(busybox id -u) $(busybox id -g) $(busybox id -G)\"; \
        busybox cat data.txt; echo written > $HOME/new; busybox cat $HOME/new; \
        echo \"layers $(busybox ls /opq) $(busybox cat /etc/gone 2>/dev/null || echo none)\"; \
        echo \"upper $(busybox cat /sys/block/vdb/size) $(busybox df -k / | busybox tail -n 1)\"; \
        echo err >&2; exit 3";
    let out = run(
        ember_in(&cache)
            .env("TMPDIR", &tmp)
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args([
                "-e",
                "OVERRIDDEN=flag",
                "--timeout",
                "300",
                "--rootfs-size",
                "64M",
            ])
            .arg(&image)
            .args(["--", "sh", "-c", script]),
        Duration::from_secs(360),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let (upper, rest): (Vec<&str>, Vec<&str>) =
        stdout.lines().partition(|l| l.starts_with("upper "));
    assert_eq!(
        rest.join("\n"),
        "hello\nenv image flag /home/app\ncwd /srv\nids 1000 1001 1001 10\n\
         from the image\nwritten\nlayers new none\nerr",
        "stdout is the program's output, byte for byte (stderr:\n{stderr})"
    );
    assert!(stdout.ends_with('\n'), "{stdout}");
    assert_eq!(code(&out.status), 3, "stderr:\n{stderr}");
    assert_eq!(stderr, "", "ember says nothing when the program ends");
    // `upper 131072 overlay <1K-blocks> <used> <available> <use%> /`: a 64 MiB /dev/vdb whose
    // ext4 (a little smaller, for its metadata) is what the root's writes fill, not a tmpfs
    // (half the guest's 512 MiB).
    let fields: Vec<&str> = upper
        .first()
        .map_or(vec![], |l| l.split_whitespace().collect());
    assert_eq!(
        fields.get(1..3),
        Some(&["131072", "overlay"][..]),
        "{stdout}"
    );
    let blocks: u64 = fields[3].parse().unwrap();
    assert!((48 << 10..64 << 10).contains(&blocks), "{stdout}");
    assert!(
        std::fs::read(rootfs_path).unwrap() == rootfs,
        "the container's writes changed the image's ext4"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(
        left.is_empty(),
        "the --rootfs-size disk was left in TMPDIR: {left:?}"
    );
}

/// Errors found before booting: each a one-line reason and ember's configuration status.
#[test]
fn errors_before_boot_say_what_to_do() {
    let dir = fresh_dir("run-errors");
    let image = format!("oci:{}:v1", busybox_image(&dir).display());
    let cache = dir.join("cache");
    let kernel = std::env::current_exe().unwrap();
    let fail = |args: &[&str], env_kernel: Option<&str>, needle: &str| {
        let mut cmd = ember_in(&cache);
        cmd.arg("run").args(args).env_remove("EMBER_KERNEL");
        if let Some(k) = env_kernel {
            cmd.env("EMBER_KERNEL", k);
        }
        // No installed kernel is found from an empty working directory on a host without the
        // package; the test says so if the host has it.
        cmd.current_dir(fresh_dir("run-cwd"));
        let out = run(&mut cmd, Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(code(&out.status), EXIT_CONFIG, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    };
    let image = image.as_str();
    let k = kernel.to_str().unwrap();
    if !Path::new(vmm::run::PACKAGED_KERNEL).exists() {
        fail(
            &[image, "true"],
            None,
            "no guest kernel: give --kernel PATH",
        );
    }
    fail(
        &[image],
        Some("/nonexistent"),
        "EMBER_KERNEL '/nonexistent' is not a file",
    );
    fail(
        &["--kernel", k, "-u", "app:", image, "true"],
        None,
        "is not USER[:GROUP]",
    );
    fail(
        &["--kernel", k, "-v", "relative", image],
        None,
        "is not HOSTDIR:GUESTDIR",
    );
    fail(
        &["--kernel", k, "/nonexistent-image"],
        None,
        "no such OCI layout",
    );
    fail(
        &["--kernel", k, "--entrypoint", "", image],
        None,
        "no Entrypoint or Cmd",
    );
    fail(
        &["--kernel", k, "--net", "tap=t", image],
        None,
        "has no ip=",
    );
    fail(&["-x", image], None, "unexpected argument '-x'");
    fail(
        &["--kernel", k, "--rootfs-size", "10", image],
        None,
        "'--rootfs-size <SIZE>': '10' is less than the smallest size, 16M",
    );
    fail(
        &["--kernel", k, "--rootfs-size", "1.5G", image],
        None,
        "'1.5G' is not a size: give a number with K, M, G or T",
    );
}

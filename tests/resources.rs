//! The scripts in resources/ that users and CI run: the test runner goes on after a failing
//! test binary and sums up the whole suite, and the guest-image builder notices an image that
//! is no longer what it built.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::*;

/// Writes a crate with two test binaries, the first (by name) failing and the second passing
/// with one ignored test, under `dir`.
fn write_two_binary_crate(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"two_binaries\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("tests/a_early.rs"),
        "#[test]\nfn fails() { panic!(\"early failure\") }\n#[test]\nfn passes() {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tests/z_late.rs"),
        "#[test]\nfn late_passes() {}\n#[test]\n#[ignore]\nfn late_ignored() {}\n",
    )
    .unwrap();
}

#[test]
fn test_sh_reports_a_failure_in_an_early_binary_and_still_runs_the_later_ones() {
    let dir = tempdir("cargo-test-summary");
    write_two_binary_crate(&dir);
    let out = Command::new(root().join("resources/cargo-test.sh"))
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        !out.status.success(),
        "a failed test must fail the run:\n{stdout}"
    );
    assert!(
        stdout.contains("test late_passes ... ok"),
        "the later binary did not run:\n{stdout}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(last, "2 passed, 1 failed, 1 ignored", "{stdout}");
}

/// Runs resources/build-rootfs.sh into `dir`; returns what it said.
fn build_rootfs(dir: &std::path::Path) -> String {
    let out = Command::new(root().join("resources/build-rootfs.sh"))
        .env("EMBER_GUEST_DIR", dir)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "build-rootfs.sh failed: {stderr}");
    stderr
}

#[test]
fn build_rootfs_rebuilds_an_image_that_was_changed_after_it_was_built() {
    let dir = tempdir("rootfs-stamp");
    build_rootfs(&dir);
    assert!(build_rootfs(&dir).contains("up to date"));
    // What booting the image read-write does: a changed superblock.
    let image = dir.join("rootfs.ext4");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[1024 + 0x2c] ^= 0xff;
    std::fs::write(&image, &bytes).unwrap();
    let said = build_rootfs(&dir);
    assert!(said.contains("changed since it was built"), "{said}");
    assert!(build_rootfs(&dir).contains("up to date"));
    let header = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&image)
        .output()
        .unwrap();
    assert!(text(&header.stdout).contains("Last mount time:          n/a"));
}

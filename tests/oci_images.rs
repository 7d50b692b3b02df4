//! `ember pull`, `images`, `rmi` and `image prune` end to end, with no internet: the test
//! builds an OCI image layout itself (busybox-static's /bin/busybox and a config with Env,
//! WorkingDir, User, Entrypoint and Cmd; a second layer with a whiteout and an opaque
//! directory), serves it from Debian's docker-registry on 127.0.0.1 (pushed with skopeo),
//! and checks the ext4 root filesystem ember builds with debugfs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::oci::{Registry, blob, free_port, require, sha256, tar_of};
use common::{code, text};

/// Long enough for a cold pull and mkfs on a loaded CI machine; a hang fails the test.
const LIMIT: Duration = Duration::from_secs(120);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-oci-it-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds an OCI image layout at `layout`, tagged `v1`, for `arch`; `marker` goes into a file
/// so that images differ in their blobs. Returns the layout.
fn build_layout(layout: &Path, arch: &str, marker: &str) -> PathBuf {
    use tar::EntryType::{Char, Directory as D, Regular as F, Symlink as S};
    fs::create_dir_all(layout).unwrap();
    let busybox = fs::read(require("busybox", "busybox-static")).unwrap();
    let lower = tar_of(&[
        ("bin/", D, b"", 0, 0o755),
        ("bin/busybox", F, &busybox, 0, 0o755),
        ("bin/sh", S, b"busybox", 0, 0o777),
        ("dev/", D, b"", 0, 0o755),
        ("dev/null", Char, b"", 0, 0o666),
        ("etc/", D, b"", 0, 0o755),
        ("etc/gone", F, b"whited out", 0, 0o644),
        ("etc/kept", F, b"kept", 0, 0o644),
        ("home/app/", D, b"", 1000, 0o750),
        ("home/app/owned", F, b"by 1000", 1000, 0o600),
        ("opq/", D, b"", 0, 0o755),
        ("opq/old", F, b"lower", 0, 0o644),
        ("marker", F, marker.as_bytes(), 0, 0o644),
    ]);
    let upper = tar_of(&[
        ("etc/.wh.gone", F, b"", 0, 0o644),
        ("opq/.wh..wh..opq", F, b"", 0, 0o644),
        ("opq/new", F, b"upper", 0, 0o644),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&lower).unwrap();
    let lower_gz = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello"], "WorkingDir": "/home/app", "User": "1000:1000",
            "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING"]
        },
        "rootfs": {"type": "layers", "diff_ids": [
            format!("sha256:{}", sha256(&lower)), format!("sha256:{}", sha256(&upper))
        ]}
    });
    let config = config.to_string().into_bytes();
    let descriptor = |media: &str, bytes: &[u8], digest: String| serde_json::json!({"mediaType": media, "size": bytes.len(), "digest": digest});
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, blob(layout, &config)),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &lower_gz, blob(layout, &lower_gz)),
            descriptor("application/vnd.oci.image.layer.v1.tar", &upper, blob(layout, &upper)),
        ]
    });
    let manifest = manifest.to_string().into_bytes();
    let mut entry = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
        blob(layout, &manifest),
    );
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    if arch != "amd64" {
        // An index listing the one foreign platform, as multi-arch images do.
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout.to_path_buf()
}

/// ember with its cache in `cache`.
fn ember(cache: &Path, args: &[&str]) -> Output {
    let mut cmd = common::ember();
    cmd.env("EMBER_CACHE_DIR", cache).args(args);
    common::run(&mut cmd, LIMIT)
}

fn ok(cache: &Path, args: &[&str]) -> String {
    let out = ember(cache, args);
    assert_eq!(
        code(&out.status),
        0,
        "ember {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn fails(cache: &Path, args: &[&str]) -> String {
    let out = ember(cache, args);
    assert_eq!(
        code(&out.status),
        1,
        "ember {args:?} should fail: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// The root filesystem path `ember pull` printed.
fn rootfs_of(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("root filesystem: "))
        .unwrap_or_else(|| panic!("no root filesystem in: {stdout}"));
    PathBuf::from(line)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new(require("debugfs", "e2fsprogs"))
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    text(&out.stdout)
}

/// The image's files are there, with owners, modes and node types; the whiteouts took effect.
fn check_rootfs(image: &Path) {
    let root = debugfs(image, "ls -l /");
    for name in ["bin", "dev", "etc", "home", "opq", "marker"] {
        assert!(root.contains(name), "{name} missing from /:\n{root}");
    }
    let bin = debugfs(image, "stat /bin/busybox");
    assert!(bin.contains("Mode:  0755"), "{bin}");
    let size = fs::metadata("/bin/busybox").unwrap().len();
    assert!(bin.contains(&format!("Size: {size}")), "{bin}");
    assert!(debugfs(image, "stat /bin/sh").contains("Type: symlink"));
    let null = debugfs(image, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    let owned = debugfs(image, "stat /home/app/owned");
    assert!(
        owned.contains("User:  1000") && owned.contains("Mode:  0600"),
        "{owned}"
    );
    let etc = debugfs(image, "ls /etc");
    assert!(
        etc.contains("kept") && !etc.contains("gone"),
        "whiteout: {etc}"
    );
    let opq = debugfs(image, "ls /opq");
    assert!(
        opq.contains("new") && !opq.contains("old") && !opq.contains(".wh."),
        "opaque: {opq}"
    );
    assert_eq!(debugfs(image, "cat /opq/new"), "upper");
}

/// A port nothing listens on (bound, then released).
/// The hex digest of the layout's gzip layer (the one to corrupt).
fn first_layer(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string()
}

/// Flips the middle byte of a file in place (same size, different digest).
fn corrupt(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

#[test]
fn pull_from_a_local_registry_list_remove_and_prune() {
    require("mkfs.ext4", "e2fsprogs");
    let dir = temp_dir("registry");
    let cache = dir.join("cache");
    let registry = Registry::start(&dir);
    let good = registry.push(
        &build_layout(&dir.join("good"), "amd64", "good"),
        "test/busybox",
    );
    let arm = registry.push(&build_layout(&dir.join("arm"), "arm64", "arm"), "test/arm");
    let bad_layout = build_layout(&dir.join("bad"), "amd64", "bad");
    let bad = registry.push(&bad_layout, "test/bad");

    let out = ok(&cache, &["pull", &good]);
    let image = rootfs_of(&out);
    check_rootfs(&image);
    let digest = out
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{out}");
    assert!(fs::metadata(&image).unwrap().permissions().readonly());

    // A second pull of the same image builds nothing: the same file, untouched.
    let built = fs::metadata(&image).unwrap().modified().unwrap();
    let again = ok(&cache, &["pull", &good]);
    assert_eq!(rootfs_of(&again), image);
    assert_eq!(fs::metadata(&image).unwrap().modified().unwrap(), built);

    // An index with arm64 only: a clear error naming what it has.
    let err = fails(&cache, &["pull", &arm]);
    assert!(
        err.contains("no linux/amd64 image") && err.contains("linux/arm64"),
        "{err}"
    );

    // A registry that serves a corrupt layer: refused, and nothing of it cached.
    let layer = first_layer(&bad_layout);
    let stored = registry
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    corrupt(&stored);
    let err = fails(&cache, &["pull", &bad]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!cache.join("blobs/sha256").join(&layer).exists());
    assert!(
        fs::read_dir(cache.join("tmp")).unwrap().next().is_none(),
        "tmp/ is not empty"
    );

    // images lists it; rmi forgets it; prune then frees its blobs and root filesystem.
    let listed = ok(&cache, &["images"]);
    assert!(
        listed.contains(&good) && listed.contains(&digest[..19]),
        "{listed}"
    );
    let err = fails(&cache, &["rmi", "no/such:image"]);
    assert!(err.contains("no cached image"), "{err}");
    ok(&cache, &["rmi", &good]);
    assert!(!ok(&cache, &["images"]).contains(&good));
    assert!(image.exists(), "rmi leaves the data to prune");
    ok(&cache, &["image", "prune"]);
    assert!(!image.exists());
    // The bad image's manifest and good layers were cached without a reference: pruned too.
    assert_eq!(fs::read_dir(cache.join("blobs/sha256")).unwrap().count(), 0);
    drop(registry);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pull_from_layouts_and_archives() {
    require("mkfs.ext4", "e2fsprogs");
    let dir = temp_dir("local");
    let cache = dir.join("cache");
    let layout = build_layout(&dir.join("layout"), "amd64", "local");
    let from_layout = ok(&cache, &["pull", &format!("oci:{}:v1", layout.display())]);
    check_rootfs(&rootfs_of(&from_layout));
    // A path to a layout directory works as well, and finds the same image already built.
    let by_path = ok(&cache, &["pull", layout.to_str().unwrap()]);
    assert_eq!(rootfs_of(&by_path), rootfs_of(&from_layout));

    // An OCI archive: the layout as a tar.
    let archive = dir.join("oci.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.into_inner().unwrap().sync_all().unwrap();
    let fresh = dir.join("cache2");
    let from_archive = ok(
        &fresh,
        &["pull", &format!("oci-archive:{}:v1", archive.display())],
    );
    check_rootfs(&rootfs_of(&from_archive));

    // A docker save archive, written by skopeo.
    let docker = dir.join("docker.tar");
    let out = Command::new(require("skopeo", "skopeo"))
        .args(["--insecure-policy", "copy", "-q"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-archive:{}:test/local:v1", docker.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", text(&out.stderr));
    let from_docker = ok(
        &fresh,
        &["pull", &format!("docker-archive:{}", docker.display())],
    );
    check_rootfs(&rootfs_of(&from_docker));
    let listed = ok(&fresh, &["images"]);
    assert!(
        listed.contains("oci-archive:") && listed.contains("docker-archive:"),
        "{listed}"
    );

    // A corrupt blob in a layout is refused and not cached.
    let layer = first_layer(&layout);
    corrupt(&layout.join("blobs/sha256").join(&layer));
    let empty = dir.join("cache3");
    let err = fails(&empty, &["pull", &format!("oci:{}:v1", layout.display())]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(!empty.join("blobs/sha256").join(&layer).exists());
    let err = fails(&empty, &["pull", &format!("oci:{}:v2", layout.display())]);
    assert!(
        err.contains("no image is tagged 'v2'") && err.contains("v1"),
        "{err}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unreachable_registry_is_an_error_not_a_hang() {
    let dir = temp_dir("unreachable");
    let port = free_port();
    let start = Instant::now();
    let err = fails(&dir, &["pull", &format!("127.0.0.1:{port}/x:1")]);
    assert!(err.contains("cannot reach registry"), "{err}");
    // Far below LIMIT: a refused connection is reported at once, not after a timeout.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let err = fails(&dir, &["pull", "Bad_Name"]);
    assert!(err.contains("not an image reference"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

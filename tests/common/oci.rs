//! OCI images in tests: blobs named by their sha256, tar layers, image layouts, and Debian's
//! docker-registry on 127.0.0.1 to push them to with skopeo.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The lowercase hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `bytes` as a blob of the layout: its descriptor's digest.
pub fn blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = sha256(bytes);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// A tar entry: (path, kind, content or link target, uid, mode).
pub type Spec<'a> = (&'a str, tar::EntryType, &'a [u8], u64, u32);

/// A tar archive of `entries`, in order, with a fixed modification time.
pub fn tar_of(entries: &[Spec]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data, uid, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_path(path).unwrap();
        header.set_mode(*mode);
        header.set_uid(*uid);
        header.set_gid(*uid);
        header.set_mtime(1_700_000_000);
        let body: &[u8] = if kind.is_file() { data } else { &[] };
        header.set_size(body.len() as u64);
        if kind.is_symlink() {
            header
                .set_link_name(std::str::from_utf8(data).unwrap())
                .unwrap();
        }
        if *kind == tar::EntryType::Char {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A layout at `layout` tagged `v1` for linux/amd64 whose layers are `layers` (uncompressed
/// tars, the first lowest) and whose configuration's `config` section is `config`. Returns the
/// layout.
pub fn layout_of(layout: &Path, layers: &[&[u8]], config: serde_json::Value) -> PathBuf {
    fs::create_dir_all(layout).unwrap();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|tar| format!("sha256:{}", sha256(tar)))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string()
    .into_bytes();
    let descriptor = |media: &str, bytes: &[u8], digest: String| serde_json::json!({"mediaType": media, "size": bytes.len(), "digest": digest});
    let layers: Vec<_> = layers
        .iter()
        .map(|tar| {
            descriptor(
                "application/vnd.oci.image.layer.v1.tar",
                tar,
                blob(layout, tar),
            )
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, blob(layout, &config)),
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    let mut entry = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
        blob(layout, &manifest),
    );
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout.to_path_buf()
}

/// Fails the test, naming the package, when a tool it needs is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(tool);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "this test needs {tool} (Debian package {package}); resources/setup-host.sh installs it"
    );
}

/// A TCP port on 127.0.0.1 that nothing listens on (just now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's docker-registry on 127.0.0.1, storing under `dir`; killed when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Self {
        let binary = require("docker-registry", "docker-registry");
        let port = free_port();
        let storage = dir.join("storage");
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            storage,
        }
    }

    /// Pushes `layout`'s `v1` to `repo:v1` with skopeo (the whole index); returns the
    /// reference.
    pub fn push(&self, layout: &Path, repo: &str) -> String {
        let reference = format!("{}/{repo}:v1", self.addr);
        let out = Command::new(require("skopeo", "skopeo"))
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--dest-tls-verify=false",
                "-q",
            ])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

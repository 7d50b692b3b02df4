//! Building OCI image layouts in tests: blobs named by their sha256, tar layers, and a
//! one-layer layout for tests that only need an image to run.

use std::fs;
use std::path::{Path, PathBuf};

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

/// A layout at `layout` tagged `v1` whose one layer is `tar` (uncompressed) and whose
/// configuration's `config` section is `config`. Returns the layout.
pub fn one_layer_layout(layout: &Path, tar: &[u8], config: serde_json::Value) -> PathBuf {
    fs::create_dir_all(layout).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(tar))]}
    })
    .to_string()
    .into_bytes();
    let descriptor = |media: &str, bytes: &[u8], digest: String| serde_json::json!({"mediaType": media, "size": bytes.len(), "digest": digest});
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, blob(layout, &config)),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", tar, blob(layout, tar))],
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

//! Manifests and indexes: what a manifest's bytes say (an image, or a list of images per
//! platform), and the choice of the linux/amd64 image from an index. Docker's v2 schema 2
//! manifest and manifest list have the same shape as OCI's image manifest and index, so
//! oci-spec's types read both.

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};

use crate::Error;
use crate::digest::Digest;

/// Largest manifest or index accepted (real ones are a few KiB).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image configuration accepted.
pub const MAX_CONFIG: u64 = 16 << 20;

/// The media types asked for, in the `Accept` header, and recognised.
pub const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What a manifest's bytes hold.
#[derive(Debug)]
pub enum Parsed {
    /// One image.
    Image(Box<ImageManifest>),
    /// Images per platform.
    Index(Box<ImageIndex>),
}

/// Reads a manifest or index; `what` names it in errors (a reference or digest).
pub fn parse(bytes: &[u8], what: &str) -> Result<Parsed, Error> {
    let bad = |why: String| Error::BadManifest {
        what: what.into(),
        why,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(bad(
            "not a schema version 2 manifest (Docker's old schema 1 is not supported)".into(),
        ));
    }
    if value.get("manifests").is_some() {
        serde_json::from_value(value)
            .map(|i| Parsed::Index(Box::new(i)))
            .map_err(|e| bad(e.to_string()))
    } else if value.get("layers").is_some() {
        serde_json::from_value(value)
            .map(|m| Parsed::Image(Box::new(m)))
            .map_err(|e| bad(e.to_string()))
    } else {
        Err(bad("neither an image manifest nor an index".into()))
    }
}

/// The platform ember runs: x86_64 Linux guests.
fn is_ours(os: &Os, arch: &Arch) -> bool {
    *os == Os::Linux && *arch == Arch::Amd64
}

/// The linux/amd64 entry of an index; an error lists the platforms it has instead.
pub fn select_platform<'a>(index: &'a ImageIndex, what: &str) -> Result<&'a Descriptor, Error> {
    let mut available = Vec::new();
    for m in index.manifests() {
        match m.platform() {
            Some(p) if is_ours(p.os(), p.architecture()) => return Ok(m),
            // Build attestations are listed as "unknown/unknown": not a platform.
            Some(p) if p.os().to_string() != "unknown" => {
                let mut name = format!("{}/{}", p.os(), p.architecture());
                if let Some(variant) = p.variant() {
                    name = format!("{name}/{variant}");
                }
                available.push(name);
            }
            _ => {}
        }
    }
    // An index of one image without platform fields (an OCI layout's index.json) is that image.
    if let [only] = index.manifests().as_slice() {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    Err(Error::NoPlatform {
        what: what.into(),
        available,
    })
}

/// Checks that an image's configuration is for linux/amd64 (for manifests reached without an
/// index to choose from).
pub fn check_config_platform(config: &ImageConfiguration, what: &str) -> Result<(), Error> {
    if is_ours(config.os(), config.architecture()) {
        return Ok(());
    }
    Err(Error::NoPlatform {
        what: what.into(),
        available: vec![format!("{}/{}", config.os(), config.architecture())],
    })
}

/// A descriptor's digest, in the form the cache takes.
pub fn digest_of(descriptor: &Descriptor) -> Result<Digest, Error> {
    Digest::parse(descriptor.digest().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str)]) -> ImageIndex {
        let manifests: Vec<String> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch))| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
                    "digest":"sha256:{}","platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                    format!("{i}").repeat(64)
                )
            })
            .collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{}]}}"#,
            manifests.join(",")
        );
        match parse(json.as_bytes(), "test").unwrap() {
            Parsed::Index(index) => *index,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let idx = index(&[("linux", "arm64"), ("linux", "amd64"), ("windows", "amd64")]);
        let chosen = select_platform(&idx, "x").unwrap();
        assert_eq!(digest_of(chosen).unwrap().hex(), "1".repeat(64));
    }

    #[test]
    fn an_index_without_amd64_names_what_it_has() {
        let idx = index(&[
            ("linux", "arm64"),
            ("linux", "s390x"),
            ("unknown", "unknown"),
        ]);
        let err = select_platform(&idx, "r/x:1").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::NoPlatform { .. }));
        assert!(
            text.contains("linux/arm64") && text.contains("linux/s390x"),
            "{text}"
        );
        assert!(
            text.contains("r/x:1") && !text.contains("unknown"),
            "{text}"
        );
    }

    #[test]
    fn docker_manifests_and_schema1() {
        let docker = r#"{"schemaVersion":2,
            "mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,
              "digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3,
              "digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]}"#;
        assert!(matches!(
            parse(docker.as_bytes(), "d"),
            Ok(Parsed::Image(_))
        ));
        let err = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "old").unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(parse(b"not json", "x").is_err());
    }
}

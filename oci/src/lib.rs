//! OCI and Docker images for `ember run IMAGE`: where an image comes from (a registry, an OCI
//! image layout directory, a `docker save` or OCI archive), the content-addressed cache its
//! blobs live in, and the read-only ext4 root filesystem unpacked from its layers.
//!
//! The one entry point for running an image is [`prepare`]: it resolves the reference, fetches
//! what the cache lacks (verifying every blob against its digest), and returns the ext4 image of
//! the root filesystem, built once per image digest. This crate knows nothing about VMs: it must
//! not boot, mount or configure anything beyond the files in its cache.

use std::path::PathBuf;

mod cache;
mod digest;
mod ext4;
mod local;
mod manifest;
mod pull;
mod reference;
mod registry;
mod unpack;

pub use cache::{CACHE_DIR_ENV, ImageEntry};
pub use ext4::mkfs as mkfs_ext4;
pub use pull::{images, prepare, prune, pull, remove};

/// Where images come from and how to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`HOST` or `HOST:PORT`) reached over plain HTTP instead of HTTPS, as
    /// `--insecure-registry` names them (localhost and 127.0.0.1 always are).
    pub insecure_registries: Vec<String>,
    /// The cache directory, instead of `$EMBER_CACHE_DIR`, `$XDG_CACHE_HOME/ember` or
    /// `~/.cache/ember` (tests use their own).
    pub cache_dir: Option<PathBuf>,
}

/// An image ready to boot: its identity, its root filesystem and its configuration.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The image manifest digest, `sha256:...`.
    pub digest: String,
    /// A read-only ext4 image of the unpacked root filesystem, cached by digest (boot it
    /// read-only: it is shared by every run of the image).
    pub rootfs: PathBuf,
    /// The image configuration: Env, WorkingDir, User, Entrypoint, Cmd and the rest.
    pub config: oci_spec::image::ImageConfiguration,
}

/// Errors getting, listing or removing images. Each names what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest that is not `sha256:` and 64 hex digits.
    #[error("'{0}' is not a digest (expected sha256: and 64 lowercase hex digits)")]
    BadDigest(String),
    /// A digest algorithm other than sha256.
    #[error("digest '{0}': only sha256 digests are supported")]
    UnsupportedDigest(String),
    /// A malformed image reference.
    #[error("'{reference}' is not an image reference: {why}")]
    BadReference {
        /// What was given.
        reference: String,
        /// What is wrong with it.
        why: String,
    },
    /// A path argument that does not exist.
    #[error("{0}: no such OCI layout directory or archive file")]
    NoSuchPath(PathBuf),
    /// No cache directory can be found.
    #[error("no cache directory: set EMBER_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// The cache cannot be read or written.
    #[error("image cache {0}")]
    Cache(PathBuf, #[source] std::io::Error),
    /// `images.json` is unreadable.
    #[error("image cache index {0} is damaged (remove it and pull again)")]
    CacheIndex(PathBuf, #[source] serde_json::Error),
    /// Content that is not what its digest says.
    #[error(
        "content of {expected} does not match its digest (got {actual}, {size} bytes): \
         the source is corrupt or was tampered with; nothing was cached"
    )]
    DigestMismatch {
        /// The digest that was asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
        /// How many bytes came.
        size: u64,
    },
    /// A manifest or configuration larger than any real one.
    #[error("{0} is larger than {1} bytes, too large for a manifest or configuration")]
    TooLarge(String, u64),
    /// Writing a download failed.
    #[error("writing {0} into the image cache failed")]
    Fetch(String, #[source] std::io::Error),
    /// `rmi` of a reference that is not cached.
    #[error("no cached image is called '{0}' (ember images lists them)")]
    NotCached(String),
    /// A manifest that cannot be used.
    #[error("manifest of {what}: {why}")]
    BadManifest {
        /// The image.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// An image configuration that cannot be read.
    #[error("configuration of {what}: {why}")]
    BadConfig {
        /// The image.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// An image for other platforms only.
    #[error(
        "{what} has no linux/amd64 image (it has: {}); ember runs x86_64 Linux guests",
        if available.is_empty() { "no platform listed".to_string() } else { available.join(", ") }
    )]
    NoPlatform {
        /// The image.
        what: String,
        /// The platforms it has.
        available: Vec<String>,
    },
    /// The registry cannot be reached.
    #[error("cannot reach registry {registry} at {url}: check the name and the network{hint}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// What else may help.
        hint: String,
        /// Where it was looked for.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The registry answered an error.
    #[error("{url}: the registry answered {status} {body}")]
    RegistryStatus {
        /// The request.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The registry wants credentials.
    #[error("registry {registry} refused an anonymous pull: {why}")]
    AuthRequired {
        /// The registry.
        registry: String,
        /// What it said.
        why: String,
    },
    /// An archive that cannot be read.
    #[error("archive {0}")]
    Archive(PathBuf, #[source] std::io::Error),
    /// A layout file that cannot be read.
    #[error("OCI layout file {0}")]
    Layout(PathBuf, #[source] std::io::Error),
    /// A file a layout or archive must have.
    #[error("the image has no {0}: not an OCI image layout or docker save archive")]
    MissingFile(String),
    /// No image with the asked tag, or several and none asked.
    #[error(
        "{}; the images there are: {}",
        if tag.is_empty() { "it holds several images: name one".to_string() } else { format!("no image is tagged '{tag}'") },
        if tags.is_empty() { "(untagged)".to_string() } else { tags.join(", ") }
    )]
    NoSuchTag {
        /// The tag asked for (empty: none).
        tag: String,
        /// The tags there are.
        tags: Vec<String>,
    },
    /// A layer that cannot be read.
    #[error("layer {layer} cannot be read")]
    Layer {
        /// The layer's digest.
        layer: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A layer path that would write outside the root filesystem.
    #[error("layer {layer}: refusing path '{path}': {why}")]
    UnsafePath {
        /// The layer's digest.
        layer: String,
        /// The path in the layer.
        path: String,
        /// Why it is refused.
        why: String,
    },
    /// A file of a layer cannot be written.
    #[error("layer {layer}: cannot write '{path}'")]
    LayerFile {
        /// The layer's digest.
        layer: String,
        /// The path in the layer.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root filesystem image cannot be written.
    #[error("root filesystem image {0}")]
    Rootfs(PathBuf, #[source] std::io::Error),
    /// mkfs.ext4 is missing.
    #[error("mkfs.ext4 not found: install e2fsprogs")]
    NoMkfs,
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
}

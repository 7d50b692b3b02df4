//! OCI and Docker images for `ember run IMAGE`: where an image comes from (a registry, an OCI
//! image layout directory, a `docker save` or OCI archive), the content-addressed cache its
//! blobs live in, and the read-only ext4 root filesystem unpacked from its layers.
//!
//! The one entry point for running an image is [`prepare`]: it resolves the reference, fetches
//! what the cache lacks (verifying every blob against its digest), and returns the ext4 image of
//! the root filesystem, built once per image digest. This crate knows nothing about VMs: it must
//! not boot, mount or configure anything beyond the files in its cache.

use std::path::PathBuf;

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

/// Errors getting an image ready.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("images are not supported yet")]
    Unsupported,
}

/// Resolves `image`, fetches what the cache lacks, and returns its root filesystem and
/// configuration. `image` is a registry reference (`alpine`, `docker.io/library/alpine:3.20`,
/// `localhost:5000/x@sha256:...`, optionally prefixed `docker://`), an OCI image layout
/// (`oci:DIR[:TAG]`, or a path to a directory holding `oci-layout`) or an archive
/// (`docker-archive:FILE`, `oci-archive:FILE[:TAG]`, or a path to a `.tar` file).
/// A second call for a cached image copies nothing.
pub fn prepare(image: &str, opts: &PullOptions) -> Result<PreparedImage, Error> {
    let _ = (image, opts);
    Err(Error::Unsupported)
}

//! Where `ember run` gets its image: the one seam between the VM side of `ember run` and the
//! image side. [`prepare`] returns what the `oci` crate's `prepare` returns (the same fields),
//! so wiring that crate in replaces this file's body and nothing else.
//!
//! Until then the image is an unpacked one: a directory holding `rootfs.ext4` (the root
//! filesystem, booted read-only) and `config.json` (the OCI image configuration, with `Env`,
//! `WorkingDir`, `User`, `Entrypoint` and `Cmd`), as the tests build with `mkfs.ext4 -d`.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

/// An image ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// What identifies the image (`local:DIR` for an unpacked image).
    pub digest: String,
    /// A read-only ext4 image of its root filesystem.
    pub rootfs: PathBuf,
    /// Its configuration.
    pub config: ImageConfiguration,
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not a directory ember can read.
    #[error(
        "image '{0}': no such directory (ember run takes an unpacked image: a directory with \
         rootfs.ext4 and config.json)"
    )]
    NotFound(String),
    /// The directory lacks the root filesystem.
    #[error("image '{0}' has no rootfs.ext4 (make one with mkfs.ext4 -d ROOTDIR rootfs.ext4 SIZE)")]
    NoRootfs(String),
    /// The configuration cannot be read.
    #[error("image '{image}': cannot read its configuration config.json")]
    Config {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// Finds `image` and reads its configuration.
pub fn prepare(image: &str) -> Result<PreparedImage, ImageError> {
    let dir = Path::new(image);
    if !dir.is_dir() {
        return Err(ImageError::NotFound(image.into()));
    }
    let rootfs = dir.join("rootfs.ext4");
    if !rootfs.is_file() {
        return Err(ImageError::NoRootfs(image.into()));
    }
    let config = ImageConfiguration::from_file(dir.join("config.json")).map_err(|source| {
        ImageError::Config {
            image: image.into(),
            source,
        }
    })?;
    Ok(PreparedImage {
        digest: format!("local:{image}"),
        rootfs,
        config,
    })
}

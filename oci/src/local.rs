//! Images from files: an OCI image layout directory, a tar of one (`oci-archive`), or a
//! `docker save` tarball. An archive's files are copied into the cache as blobs as they are
//! read (each named by the digest computed while copying, so they are verified by
//! construction); a layout directory's blobs are copied when needed and checked against the
//! digests the manifests give.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageIndex;
use serde::Deserialize;

use crate::Error;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::manifest::{self, MAX_MANIFEST, Parsed};

/// The annotation an OCI layout's index.json names each image's tag with.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The files of a layout or archive.
pub enum Files {
    /// An OCI image layout directory.
    Dir(PathBuf),
    /// An archive whose files are in the cache: path in the archive -> (digest, size).
    Archive(HashMap<String, (Digest, u64)>),
}

impl Files {
    /// Copies every file of the tar archive `path` into the cache.
    pub fn extract(path: &Path, cache: &Cache) -> Result<Self, Error> {
        let bad = |e: std::io::Error| Error::Archive(path.to_path_buf(), e);
        let file = File::open(path).map_err(bad)?;
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = Vec::new();
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = normalize(&entry.path().map_err(bad)?);
            let kind = entry.header().entry_type();
            if kind.is_file() {
                let (digest, size) = cache.put_any_blob(&mut entry)?;
                files.insert(name, (digest, size));
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                let target = if kind.is_symlink() {
                    // A symbolic link is relative to its own directory.
                    Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(target)
                } else {
                    target.into_owned()
                };
                links.push((name, normalize(&target)));
            }
        }
        for (name, target) in links {
            if let Some(found) = files.get(&target).cloned() {
                files.insert(name, found);
            }
        }
        Ok(Self::Archive(files))
    }

    /// Reads file `rel` whole (index.json, manifest.json and the like).
    fn read(&self, rel: &str, cache: &Cache) -> Result<Vec<u8>, Error> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(rel);
                let file = File::open(&path).map_err(|e| Error::Layout(path.clone(), e))?;
                let mut bytes = Vec::new();
                file.take(MAX_MANIFEST + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::Layout(path.clone(), e))?;
                if bytes.len() as u64 > MAX_MANIFEST {
                    return Err(Error::TooLarge(path.display().to_string(), MAX_MANIFEST));
                }
                Ok(bytes)
            }
            Self::Archive(files) => {
                let (digest, _) = files
                    .get(rel)
                    .ok_or_else(|| Error::MissingFile(rel.into()))?;
                cache.read_blob(digest, MAX_MANIFEST)
            }
        }
    }

    /// Reads manifest or index `digest` from `blobs/`, checking its digest.
    pub fn manifest(&self, digest: &Digest, cache: &Cache) -> Result<Vec<u8>, Error> {
        let bytes = self.read(&blob_rel(digest), cache)?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Puts blob `digest` in the cache (verified), unless it is there.
    pub fn blob(&self, digest: &Digest, size: u64, cache: &Cache) -> Result<(), Error> {
        if cache.has_blob(digest) {
            return Ok(());
        }
        match self {
            Self::Dir(dir) => {
                let path = dir.join(blob_rel(digest));
                let file = File::open(&path).map_err(|e| Error::Layout(path.clone(), e))?;
                cache.put_blob(digest, Some(size), file).map(|_| ())
            }
            Self::Archive(files) => match files.get(&blob_rel(digest)) {
                // Cached under the digest its content has: if that is not `digest`, the
                // archive's blob is corrupt.
                Some((actual, len)) => Err(Error::DigestMismatch {
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                    size: *len,
                }),
                None => Err(Error::MissingFile(blob_rel(digest))),
            },
        }
    }

    /// The top manifest of an OCI layout: the index.json entry tagged `tag`, or its only one.
    pub fn oci_top(&self, tag: Option<&str>, cache: &Cache) -> Result<(Vec<u8>, Digest), Error> {
        let layout = self.read("oci-layout", cache)?;
        if !String::from_utf8_lossy(&layout).contains("imageLayoutVersion") {
            return Err(Error::MissingFile("oci-layout".into()));
        }
        let index = self.read("index.json", cache)?;
        let index: ImageIndex = match manifest::parse(&index, "index.json")? {
            Parsed::Index(index) => *index,
            Parsed::Image(_) => return Err(Error::MissingFile("index.json".into())),
        };
        let tags: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|m| m.annotations().as_ref()?.get(REF_NAME).cloned())
            .collect();
        let chosen = match tag {
            Some(tag) => index.manifests().iter().find(|m| {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|t| t == tag)
            }),
            None if index.manifests().len() == 1 => index.manifests().first(),
            None => None,
        };
        let chosen = chosen.ok_or_else(|| Error::NoSuchTag {
            tag: tag.unwrap_or("").into(),
            tags,
        })?;
        let digest = manifest::digest_of(chosen)?;
        Ok((self.manifest(&digest, cache)?, digest))
    }

    /// The manifest of a `docker save` archive (`manifest.json`), written as an OCI manifest
    /// and cached as a blob: its bytes and digest.
    pub fn docker_top(&self, cache: &Cache) -> Result<(Vec<u8>, Digest), Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let Self::Archive(files) = self else {
            return Err(Error::MissingFile("manifest.json".into()));
        };
        let bytes = self.read("manifest.json", cache)?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&bytes).map_err(|e| Error::BadManifest {
                what: "manifest.json".into(),
                why: e.to_string(),
            })?;
        let entry = match entries.as_slice() {
            [one] => one,
            _ => {
                return Err(Error::NoSuchTag {
                    tag: String::new(),
                    tags: entries.iter().flat_map(|e| e.repo_tags.clone()).collect(),
                });
            }
        };
        let descriptor = |rel: &String, media_type: &str| -> Result<serde_json::Value, Error> {
            let (digest, size) = files
                .get(&normalize(Path::new(rel)))
                .ok_or_else(|| Error::MissingFile(rel.clone()))?;
            Ok(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": size
            }))
        };
        let layers = entry
            .layers
            .iter()
            .map(|l| descriptor(l, "application/vnd.oci.image.layer.v1.tar"))
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor(&entry.config, "application/vnd.oci.image.config.v1+json")?,
            "layers": layers,
        });
        let bytes = manifest.to_string().into_bytes();
        let (digest, _) = cache.put_any_blob(bytes.as_slice())?;
        Ok((bytes, digest))
    }

    /// Whether the archive holds an OCI layout (else it is taken for a `docker save` one).
    pub fn is_oci(&self) -> bool {
        matches!(self, Self::Dir(_))
            || matches!(self, Self::Archive(f) if f.contains_key("oci-layout") && f.contains_key("index.json"))
    }
}

/// `blobs/sha256/<hex>`.
fn blob_rel(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// An archive path without `./` and `..` (lexically; archive entries are only looked up,
/// never written to paths of their own).
fn normalize(path: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_normalised() {
        assert_eq!(normalize(Path::new("./blobs/sha256/ab")), "blobs/sha256/ab");
        assert_eq!(normalize(Path::new("x/../y/layer.tar")), "y/layer.tar");
        assert_eq!(normalize(Path::new("/manifest.json")), "manifest.json");
    }
}

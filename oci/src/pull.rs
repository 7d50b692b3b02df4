//! Getting an image ready: resolve the source's manifest (choosing linux/amd64 from an
//! index), bring its config and layers into the cache, record the reference, and build the
//! root filesystem once per manifest digest. Also the cache's listing and removals.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::cache::{Cache, ImageEntry};
use crate::digest::{Digest, HashingReader};
use crate::local::Files;
use crate::manifest::{self, MAX_CONFIG, MAX_MANIFEST, Parsed};
use crate::reference::Source;
use crate::registry::Registry;
use crate::{Error, PreparedImage, PullOptions, ext4, unpack};

/// Where manifests and blobs come from.
enum Fetcher {
    Registry(Box<Registry>, String),
    Files(Files, Option<String>, bool),
}

impl Fetcher {
    fn new(source: &Source, cache: &Cache, opts: &PullOptions) -> Result<Self, Error> {
        Ok(match source {
            Source::Registry(r) => Self::Registry(
                Box::new(Registry::new(r, &opts.insecure_registries)),
                r.manifest_ref(),
            ),
            Source::Layout { dir, tag } => Self::Files(Files::Dir(dir.clone()), tag.clone(), true),
            Source::OciArchive { file, tag } => {
                Self::Files(Files::extract(file, cache)?, tag.clone(), true)
            }
            Source::DockerArchive(file) => Self::Files(Files::extract(file, cache)?, None, false),
            Source::Archive(file) => {
                let files = Files::extract(file, cache)?;
                let oci = files.is_oci();
                Self::Files(files, None, oci)
            }
        })
    }

    /// The manifest or index the source names, and its digest.
    fn top(&mut self, cache: &Cache) -> Result<(Vec<u8>, Digest), Error> {
        match self {
            Self::Registry(registry, reference) => registry.manifest(reference),
            Self::Files(files, tag, true) => files.oci_top(tag.as_deref(), cache),
            Self::Files(files, _, false) => files.docker_top(cache),
        }
    }

    /// Manifest `digest`, checked.
    fn manifest(&mut self, digest: &Digest, cache: &Cache) -> Result<Vec<u8>, Error> {
        match self {
            Self::Registry(registry, _) => registry.manifest(&digest.to_string()).map(|(b, _)| b),
            Self::Files(files, _, _) => files.manifest(digest, cache),
        }
    }

    /// Puts blob `digest` in the cache, verified, unless it is there.
    fn blob(&mut self, digest: &Digest, size: u64, cache: &Cache) -> Result<(), Error> {
        if cache.has_blob(digest) {
            return Ok(());
        }
        match self {
            Self::Registry(registry, _) => registry.blob(cache, digest, size),
            Self::Files(files, _, _) => files.blob(digest, size, cache),
        }
    }
}

/// Resolves `image`, fetches what the cache lacks, and returns its root filesystem and
/// configuration. `image` is a registry reference (`alpine`, `docker.io/library/alpine:3.20`,
/// `localhost:5000/x@sha256:...`, optionally prefixed `docker://`), an OCI image layout
/// (`oci:DIR[:TAG]`, or a path to a directory holding `oci-layout`) or an archive
/// (`docker-archive:FILE`, `oci-archive:FILE[:TAG]`, or a path to a file).
///
/// A registry image or archive already cached under that name is used as it is, without
/// contacting the registry (as `docker run` does; [`pull`] refreshes it); a layout directory
/// is read again each time (cheaply: only blobs the cache lacks are copied). A second call for
/// a cached image copies nothing.
pub fn prepare(image: &str, opts: &PullOptions) -> Result<PreparedImage, Error> {
    get(image, opts, false)
}

/// Fetches `image` from its source again (the registry's current manifest for a tag) and
/// builds its root filesystem if it is new.
pub fn pull(image: &str, opts: &PullOptions) -> Result<PreparedImage, Error> {
    get(image, opts, true)
}

fn get(image: &str, opts: &PullOptions, refresh: bool) -> Result<PreparedImage, Error> {
    let source = Source::parse(image)?;
    let cache = Cache::open(opts.cache_dir.as_deref())?;
    let _lock = cache.lock(false)?;
    let name = source.name();
    let reuse = !refresh && !matches!(source, Source::Layout { .. });
    if let Some(entry) = reuse
        .then(|| cache.images())
        .transpose()?
        .and_then(|i| i.get(&name).cloned())
    {
        let digest = Digest::parse(&entry.digest)?;
        if let Ok((manifest, config)) = cached_image(&cache, &digest) {
            let rootfs = build_rootfs(&cache, &digest, &manifest)?;
            return Ok(PreparedImage {
                digest: entry.digest,
                rootfs,
                config,
            });
        }
    }
    let mut fetcher = Fetcher::new(&source, &cache, opts)?;
    let (digest, manifest, config) = fetch(&mut fetcher, &cache, &name)?;
    let size = manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    cache.add_image(
        &name,
        ImageEntry {
            digest: digest.to_string(),
            size,
        },
    )?;
    let rootfs = build_rootfs(&cache, &digest, &manifest)?;
    Ok(PreparedImage {
        digest: digest.to_string(),
        rootfs,
        config,
    })
}

/// Brings manifest, config and layers into the cache: the manifest's digest, the manifest
/// and the configuration.
fn fetch(
    fetcher: &mut Fetcher,
    cache: &Cache,
    name: &str,
) -> Result<(Digest, ImageManifest, ImageConfiguration), Error> {
    let (mut bytes, mut digest) = fetcher.top(cache)?;
    let mut from_index = false;
    if let Parsed::Index(index) = manifest::parse(&bytes, name)? {
        digest = manifest::digest_of(manifest::select_platform(&index, name)?)?;
        bytes = fetcher.manifest(&digest, cache)?;
        from_index = true;
    }
    let Parsed::Image(image) = manifest::parse(&bytes, name)? else {
        return Err(Error::BadManifest {
            what: name.into(),
            why: "an index inside an index".into(),
        });
    };
    if !cache.has_blob(&digest) {
        cache.put_blob(&digest, None, bytes.as_slice())?;
    }
    let config = image.config();
    let config_digest = manifest::digest_of(config)?;
    fetcher.blob(&config_digest, config.size(), cache)?;
    let config = read_config(cache, &config_digest, name)?;
    if !from_index {
        manifest::check_config_platform(&config, name)?;
    }
    for layer in image.layers() {
        fetcher.blob(&manifest::digest_of(layer)?, layer.size(), cache)?;
    }
    Ok((digest, *image, config))
}

fn read_config(cache: &Cache, digest: &Digest, name: &str) -> Result<ImageConfiguration, Error> {
    let bytes = cache.read_blob(digest, MAX_CONFIG)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadConfig {
        what: name.into(),
        why: e.to_string(),
    })
}

/// A cached image's manifest and configuration, read back (and verified) from the cache.
fn cached_image(
    cache: &Cache,
    digest: &Digest,
) -> Result<(ImageManifest, ImageConfiguration), Error> {
    let name = digest.to_string();
    let bytes = cache.read_blob(digest, MAX_MANIFEST)?;
    let Parsed::Image(image) = manifest::parse(&bytes, &name)? else {
        return Err(Error::BadManifest {
            what: name,
            why: "not an image manifest".into(),
        });
    };
    let config = read_config(cache, &manifest::digest_of(image.config())?, &name)?;
    Ok((*image, config))
}

/// Removes a temp file or tree when dropped.
struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0).or_else(|_| fs::remove_file(&self.0));
    }
}

/// The root filesystem of manifest `digest`: the cached one, or one unpacked now (one build
/// at a time per image; a concurrent run waits and then uses it).
fn build_rootfs(cache: &Cache, digest: &Digest, image: &ImageManifest) -> Result<PathBuf, Error> {
    let path = cache.rootfs_path(digest);
    if path.is_file() {
        return Ok(path);
    }
    let _build = cache.rootfs_lock(digest)?;
    if path.is_file() {
        return Ok(path);
    }
    let tree = TempGuard(cache.temp_path("unpack"));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&tree.0)
        .map_err(|e| Error::Rootfs(tree.0.clone(), e))?;
    for layer in image.layers() {
        apply_cached_layer(cache, &tree.0, &manifest::digest_of(layer)?)?;
    }
    let staged = TempGuard(cache.temp_path("rootfs"));
    ext4::build(&tree.0, &staged.0)?;
    fs::rename(&staged.0, &path).map_err(|e| Error::Rootfs(path.clone(), e))?;
    Ok(path)
}

/// Applies cached layer `digest`, hashing it as it is read: a blob changed on disk since it
/// was verified fails the build (and is dropped from the cache).
fn apply_cached_layer(cache: &Cache, tree: &Path, digest: &Digest) -> Result<(), Error> {
    let blob = cache.blob_path(digest);
    let file = File::open(&blob).map_err(|e| Error::Cache(blob.clone(), e))?;
    let mut reader = HashingReader::new(file);
    unpack::apply_layer(tree, &mut reader, &digest.to_string())?;
    let (actual, size) = reader.finish().map_err(|e| Error::Cache(blob.clone(), e))?;
    if actual != *digest {
        let _ = fs::remove_file(&blob);
        return Err(Error::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
            size,
        });
    }
    Ok(())
}

/// The cached references, by name.
pub fn images(opts: &PullOptions) -> Result<Vec<(String, ImageEntry)>, Error> {
    let cache = Cache::open(opts.cache_dir.as_deref())?;
    Ok(cache.images()?.into_iter().collect())
}

/// Forgets reference `name` (as `ember images` lists it, or as pulled: `alpine`); its blobs
/// stay until [`prune`].
pub fn remove(name: &str, opts: &PullOptions) -> Result<(String, ImageEntry), Error> {
    let cache = Cache::open(opts.cache_dir.as_deref())?;
    let canonical = Source::parse(name)
        .map(|s| s.name())
        .unwrap_or_else(|_| name.into());
    match cache.remove_image(&canonical) {
        Err(Error::NotCached(_)) if canonical != name => {
            cache.remove_image(name).map(|e| (name.to_string(), e))
        }
        other => other.map(|e| (canonical, e)),
    }
}

/// Removes every blob and root filesystem no cached reference needs, and leftovers of
/// interrupted pulls: the number of files and bytes freed.
pub fn prune(opts: &PullOptions) -> Result<(u64, u64), Error> {
    let cache = Cache::open(opts.cache_dir.as_deref())?;
    let _lock = cache.lock(true)?;
    let mut keep = Vec::new();
    let mut keep_rootfs = Vec::new();
    for (_, entry) in cache.images()? {
        let digest = Digest::parse(&entry.digest)?;
        if let Ok((image, _)) = cached_image(&cache, &digest) {
            for d in std::iter::once(image.config()).chain(image.layers()) {
                keep.push(manifest::digest_of(d)?);
            }
        }
        keep.push(digest.clone());
        keep_rootfs.push(digest);
    }
    cache.prune(&keep, &keep_rootfs)
}

//! The content-addressed cache: blobs by digest, one ext4 root filesystem per image manifest
//! digest, and the list of references pulled (`images.json`).
//!
//! Layout under the cache root (`$EMBER_CACHE_DIR`, `$XDG_CACHE_HOME/ember` or
//! `~/.cache/ember`):
//! - `blobs/sha256/<hex>`: manifests, configs and layers, each verified against its digest
//!   before it is renamed into place (temp file, fsync, rename), so a killed pull leaves at
//!   most a file in `tmp/`, never a half blob under its digest;
//! - `rootfs/<hex>.ext4`: the image's root filesystem, `<hex>` the manifest digest;
//! - `images.json`: reference -> manifest digest, for `ember images`, `rmi` and prune;
//! - `tmp/`: downloads and unpacking in progress;
//! - `lock`: pulls hold it shared, `rmi` and prune exclusively, so that prune never removes
//!   what a pull is writing; `images.lock` guards `images.json`, `rootfs/<hex>.lock` one build.
//!
//! This module owns every path under the root; nothing else writes there.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::digest::{Digest, HashingWriter};

/// The environment variable that overrides the cache's place.
pub const CACHE_DIR_ENV: &str = "EMBER_CACHE_DIR";

/// One reference in `images.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageEntry {
    /// The image manifest digest.
    pub digest: String,
    /// Bytes of the image's blobs (config and layers, as stored).
    pub size: u64,
}

/// `images.json`: every reference pulled, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageList {
    images: BTreeMap<String, ImageEntry>,
}

/// The cache directory and its locks.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
}

/// A held `flock`; released when dropped (the file closes).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Cache {
    /// Opens (creating) the cache at `dir`, or at the default place.
    pub fn open(dir: Option<&Path>) -> Result<Self, Error> {
        let root = match dir {
            Some(dir) => dir.to_path_buf(),
            None => default_dir()?,
        };
        for sub in ["blobs/sha256", "rootfs", "tmp"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::Cache(path, e))?;
        }
        Ok(Self { root })
    }

    fn lock_file(&self, path: PathBuf, exclusive: bool) -> Result<Lock, Error> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Cache(path.clone(), e))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock only takes a lock on the open descriptor, which `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(Error::Cache(path, io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }

    /// The cache-wide lock: shared for pulls, exclusive for removals.
    pub fn lock(&self, exclusive: bool) -> Result<Lock, Error> {
        self.lock_file(self.root.join("lock"), exclusive)
    }

    /// The lock of one root filesystem build.
    pub fn rootfs_lock(&self, digest: &Digest) -> Result<Lock, Error> {
        self.lock_file(
            self.root.join(format!("rootfs/{}.lock", digest.hex())),
            true,
        )
    }

    /// Where blob `digest` lives (whether or not it is there yet).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where the root filesystem of manifest `digest` lives.
    pub fn rootfs_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.ext4", digest.hex()))
    }

    /// A fresh path under `tmp/` for `what` (`what` names it for anyone looking).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{nanos}-{n}", std::process::id()))
    }

    /// Whether blob `digest` is cached.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Copies `reader` into the cache as a blob, checking that it is `expected` (digest and,
    /// when known, size; at most `size` bytes are read, so a server cannot fill the disk).
    /// Nothing is cached when it is not.
    pub fn put_blob(
        &self,
        expected: &Digest,
        size: Option<u64>,
        reader: impl Read,
    ) -> Result<PathBuf, Error> {
        let limit = size.map_or(u64::MAX, |s| s.saturating_add(1));
        let (tmp, actual, len) = self.write_temp("blob", reader.take(limit))?;
        let mismatch = actual != *expected || size.is_some_and(|s| s != len);
        if mismatch {
            let _ = fs::remove_file(&tmp);
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
                size: len,
            });
        }
        self.commit_blob(&tmp, &actual)
    }

    /// Copies `reader` into the cache under whatever digest it has, and returns that.
    pub fn put_any_blob(&self, reader: impl Read) -> Result<(Digest, u64), Error> {
        let (tmp, digest, len) = self.write_temp("blob", reader)?;
        self.commit_blob(&tmp, &digest)?;
        Ok((digest, len))
    }

    /// Writes `reader` to a temp file, synced, and returns it with its digest and length.
    fn write_temp(
        &self,
        what: &str,
        mut reader: impl Read,
    ) -> Result<(PathBuf, Digest, u64), Error> {
        let tmp = self.temp_path(what);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::Cache(tmp.clone(), e))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        let copied = io::copy(&mut reader, &mut writer);
        let flushed = copied.and_then(|_| writer.flush());
        let (buf, digest, len) = writer.finish();
        let synced = flushed
            .and_then(|_| buf.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all());
        if let Err(e) = synced {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Fetch(what.into(), e));
        }
        Ok((tmp, digest, len))
    }

    /// Renames a verified temp file into place as blob `digest`.
    fn commit_blob(&self, tmp: &Path, digest: &Digest) -> Result<PathBuf, Error> {
        let path = self.blob_path(digest);
        fs::rename(tmp, &path).map_err(|e| Error::Cache(path.clone(), e))?;
        Ok(path)
    }

    /// Reads a cached blob whole (manifests and configs, at most `limit` bytes), checking its
    /// digest: a blob altered on disk is removed and reported.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| Error::Cache(path.clone(), e))?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Cache(path.clone(), e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge(digest.to_string(), limit));
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            let _ = fs::remove_file(&path);
            return Err(Error::DigestMismatch {
                expected: digest.to_string(),
                actual: actual.to_string(),
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// Records that `name` is image `entry`.
    pub fn add_image(&self, name: &str, entry: ImageEntry) -> Result<(), Error> {
        self.update_images(|list| {
            list.images.insert(name.into(), entry);
            Ok(())
        })
    }

    /// Forgets reference `name`; an error names it when it is not there.
    pub fn remove_image(&self, name: &str) -> Result<ImageEntry, Error> {
        let mut removed = None;
        self.update_images(|list| {
            removed = list.images.remove(name);
            Ok(())
        })?;
        removed.ok_or_else(|| Error::NotCached(name.into()))
    }

    /// Every reference cached, by name.
    pub fn images(&self) -> Result<BTreeMap<String, ImageEntry>, Error> {
        let _lock = self.lock_file(self.root.join("images.lock"), false)?;
        Ok(self.read_images()?.images)
    }

    fn read_images(&self) -> Result<ImageList, Error> {
        let path = self.root.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CacheIndex(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImageList::default()),
            Err(e) => Err(Error::Cache(path, e)),
        }
    }

    fn update_images(
        &self,
        change: impl FnOnce(&mut ImageList) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _lock = self.lock_file(self.root.join("images.lock"), true)?;
        let mut list = self.read_images()?;
        change(&mut list)?;
        let path = self.root.join("images.json");
        let json =
            serde_json::to_vec_pretty(&list).map_err(|e| Error::CacheIndex(path.clone(), e))?;
        let (tmp, _, _) = self.write_temp("images", json.as_slice())?;
        fs::rename(&tmp, &path).map_err(|e| Error::Cache(path, e))
    }

    /// Removes blobs and root filesystems no reference needs, and leftovers in `tmp/`; needs
    /// the exclusive lock (no pull runs meanwhile). `keep` are the blobs of cached images.
    /// Returns the number of files and bytes removed.
    pub fn prune(&self, keep: &[Digest], keep_rootfs: &[Digest]) -> Result<(u64, u64), Error> {
        let mut removed = (0, 0);
        let keep_blob: std::collections::HashSet<&str> = keep.iter().map(Digest::hex).collect();
        let keep_fs: std::collections::HashSet<&str> =
            keep_rootfs.iter().map(Digest::hex).collect();
        // Lock files go with their root filesystem: no build runs while prune holds the lock.
        let keep_name = |dir: &str, name: &str| match dir {
            "blobs/sha256" => keep_blob.contains(name),
            "rootfs" => name
                .rsplit_once('.')
                .is_some_and(|(hex, _)| keep_fs.contains(hex)),
            _ => false,
        };
        for sub in ["blobs/sha256", "rootfs", "tmp"] {
            let dir = self.root.join(sub);
            let entries = fs::read_dir(&dir).map_err(|e| Error::Cache(dir.clone(), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::Cache(dir.clone(), e))?;
                if !keep_name(sub, &entry.file_name().to_string_lossy()) {
                    remove_entry(&entry.path(), &mut removed)?;
                }
            }
        }
        Ok(removed)
    }
}

/// Removes a file or directory tree, counting it in `removed` (files, bytes).
fn remove_entry(path: &Path, removed: &mut (u64, u64)) -> Result<(), Error> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::Cache(path.into(), e))?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|e| Error::Cache(path.into(), e))?;
    removed.0 += 1;
    removed.1 += meta.len();
    Ok(())
}

/// `$EMBER_CACHE_DIR`, else `$XDG_CACHE_HOME/ember`, else `~/.cache/ember`.
fn default_dir() -> Result<PathBuf, Error> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var(CACHE_DIR_ENV) {
        return Ok(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("ember"));
    }
    var("HOME")
        .map(|home| home.join(".cache/ember"))
        .ok_or(Error::NoCacheDir)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn temp_cache(name: &str) -> (Cache, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ember-oci-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (Cache::open(Some(&dir)).unwrap(), dir)
    }

    #[test]
    fn a_blob_whose_digest_differs_is_refused_and_not_cached() {
        let (cache, dir) = temp_cache("mismatch");
        let claimed = Digest::of(b"the real content");
        let err = cache
            .put_blob(&claimed, None, &b"tampered content"[..])
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!cache.has_blob(&claimed));
        // Nothing is left behind in tmp/ either.
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        // Right content but the wrong size is refused too.
        let err = cache
            .put_blob(&claimed, Some(3), &b"the real content"[..])
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let path = cache
            .put_blob(&claimed, Some(16), &b"the real content"[..])
            .unwrap();
        assert_eq!(fs::read(path).unwrap(), b"the real content");
        // A blob altered on disk after it was cached is caught when read and dropped.
        fs::write(cache.blob_path(&claimed), b"rotten").unwrap();
        assert!(cache.read_blob(&claimed, 100).is_err());
        assert!(!cache.has_blob(&claimed));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn images_are_listed_removed_and_pruned() {
        let (cache, dir) = temp_cache("images");
        let (kept, _) = cache.put_any_blob(&b"kept"[..]).unwrap();
        let (gone, _) = cache.put_any_blob(&b"gone"[..]).unwrap();
        let entry = ImageEntry {
            digest: kept.to_string(),
            size: 4,
        };
        cache
            .add_image("docker.io/library/a:latest", entry.clone())
            .unwrap();
        assert_eq!(cache.images().unwrap().len(), 1);
        assert!(matches!(
            cache.remove_image("nope"),
            Err(Error::NotCached(_))
        ));
        fs::write(cache.temp_path("left-over"), b"x").unwrap();
        let (files, _) = cache.prune(std::slice::from_ref(&kept), &[]).unwrap();
        assert_eq!(files, 2);
        assert!(cache.has_blob(&kept) && !cache.has_blob(&gone));
        assert_eq!(
            cache.remove_image("docker.io/library/a:latest").unwrap(),
            entry
        );
        assert!(cache.images().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}

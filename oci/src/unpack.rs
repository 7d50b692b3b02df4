//! Applying image layers to a directory: decompression (gzip, zstd or none, told by magic
//! bytes), OCI whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties a directory of
//! what lower layers put there), and every file type with its owner, mode, times and xattrs.
//!
//! Nothing a layer says may reach outside the root: absolute entry paths and `..` are
//! refused, parent directories are resolved component by component without following a
//! symbolic link above the root (an absolute link target is resolved inside the root, as the
//! container sees it), and an entry never writes through a link of its own name (the link is
//! replaced). Errors name the layer and the path.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::{Entry, EntryType};

use crate::Error;

/// The prefix that marks a whiteout.
const WHITEOUT: &str = ".wh.";
/// The name that marks an opaque directory.
const OPAQUE: &str = ".wh..wh..opq";
/// Most symbolic links followed resolving one path (as Linux's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// One layer being applied: its name for errors and the paths it has written so far.
struct Layer<'a> {
    root: &'a Path,
    name: &'a str,
    written: HashSet<PathBuf>,
}

/// Applies the layer read from `reader` (compressed or not) to `root`; `name` (its digest)
/// names it in errors. Reads the tar to its end, not the stream: the caller drains it.
pub fn apply_layer(root: &Path, reader: impl Read, name: &str) -> Result<(), Error> {
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let io_err = |e: io::Error| Error::Layer {
        layer: name.into(),
        source: e,
    };
    let magic = buffered.fill_buf().map_err(io_err)?;
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(io_err)?)
    } else {
        Box::new(buffered)
    };
    let mut layer = Layer {
        root,
        name,
        written: HashSet::new(),
    };
    let mut archive = tar::Archive::new(decoded);
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.into_owned();
        layer.entry(&mut entry, &path)?;
    }
    Ok(())
}

impl Layer<'_> {
    fn unsafe_path(&self, path: &Path, why: &str) -> Error {
        Error::UnsafePath {
            layer: self.name.into(),
            path: path.display().to_string(),
            why: why.into(),
        }
    }

    fn io(&self, path: &Path, source: io::Error) -> Error {
        Error::LayerFile {
            layer: self.name.into(),
            path: path.display().to_string(),
            source,
        }
    }

    /// An entry's path as plain components under the root; `..` and absolute paths refused.
    fn relative(&self, path: &Path) -> Result<PathBuf, Error> {
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                Component::ParentDir => return Err(self.unsafe_path(path, "it contains '..'")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_path(path, "it is absolute"));
                }
            }
        }
        Ok(rel)
    }

    /// The host path of directory `rel`, following symbolic links inside the root only;
    /// missing directories are created when `create`, else `None` is returned.
    fn resolve_dir(
        &self,
        rel: &Path,
        entry: &Path,
        create: bool,
    ) -> Result<Option<PathBuf>, Error> {
        let mut pending: Vec<OsString> = rel
            .components()
            .rev()
            .map(|c| c.as_os_str().to_owned())
            .collect();
        let mut current: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if current.pop().is_none() {
                    return Err(self.unsafe_path(entry, "a symbolic link leads out of the root"));
                }
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let host = self.host(&current).join(&part);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(self.unsafe_path(entry, "too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&host).map_err(|e| self.io(entry, e))?;
                    if target.is_absolute() {
                        current.clear();
                    }
                    pending.extend(
                        target
                            .components()
                            .rev()
                            .filter(|c| !matches!(c, Component::RootDir))
                            .map(|c| c.as_os_str().to_owned()),
                    );
                }
                Ok(meta) if meta.is_dir() => current.push(part),
                Ok(_) => return Err(self.unsafe_path(entry, "a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&host)
                        .map_err(|e| self.io(entry, e))?;
                    current.push(part);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.io(entry, e)),
            }
        }
        Ok(Some(self.host(&current)))
    }

    fn host(&self, parts: &[OsString]) -> PathBuf {
        parts.iter().fold(self.root.to_path_buf(), |p, c| p.join(c))
    }

    /// Applies one tar entry.
    fn entry<R: Read>(&mut self, entry: &mut Entry<R>, path: &Path) -> Result<(), Error> {
        let rel = self.relative(path)?;
        let Some(name) = rel.file_name().map(OsStr::to_owned) else {
            // The root itself ("./"): only its metadata.
            if entry.header().entry_type().is_dir() {
                return self.set_metadata(entry, self.root, path);
            }
            return Ok(());
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE {
            return self.opaque(parent_rel, path);
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if let Some(dir) = self.resolve_dir(parent_rel, path, false)? {
                remove_any(&dir.join(hidden)).map_err(|e| self.io(path, e))?;
            }
            return Ok(());
        }
        let dir = self
            .resolve_dir(parent_rel, path, true)?
            .ok_or_else(|| self.unsafe_path(path, "its directory cannot be created"))?;
        let dest = dir.join(&name);
        for ancestor in rel.ancestors() {
            self.written.insert(ancestor.to_path_buf());
        }
        self.create(entry, &dest, path)
    }

    /// Removes from directory `rel` everything lower layers put there.
    fn opaque(&self, rel: &Path, entry: &Path) -> Result<(), Error> {
        let Some(dir) = self.resolve_dir(rel, entry, false)? else {
            return Ok(());
        };
        let children = fs::read_dir(&dir).map_err(|e| self.io(entry, e))?;
        for child in children {
            let child = child.map_err(|e| self.io(entry, e))?;
            if !self.written.contains(&rel.join(child.file_name())) {
                remove_any(&child.path()).map_err(|e| self.io(entry, e))?;
            }
        }
        Ok(())
    }

    /// Creates the file, directory, link or node `entry` describes at `dest`.
    fn create<R: Read>(&self, entry: &mut Entry<R>, dest: &Path, path: &Path) -> Result<(), Error> {
        let kind = entry.header().entry_type();
        let existing = fs::symlink_metadata(dest).ok();
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(dest).map_err(|e| self.io(path, e))?;
        }
        let io = |e| self.io(path, e);
        match kind {
            EntryType::Directory if keep_dir => {}
            EntryType::Directory => fs::DirBuilder::new().mode(0o755).create(dest).map_err(io)?,
            EntryType::Regular | EntryType::Continuous => {
                let mut file = File::create(dest).map_err(io)?;
                io::copy(entry, &mut file).map_err(io)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(io)?.unwrap_or_default();
                std::os::unix::fs::symlink(&target, dest).map_err(io)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(io)?
                    .unwrap_or_default()
                    .into_owned();
                let target_rel = self.relative(&target)?;
                let target_dir = self
                    .resolve_dir(target_rel.parent().unwrap_or(Path::new("")), path, false)?
                    .ok_or_else(|| self.unsafe_path(path, "its hard link target does not exist"))?;
                let source = target_dir.join(target_rel.file_name().unwrap_or_default());
                fs::hard_link(&source, dest).map_err(io)?;
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.mknod(entry, dest, path)?
            }
            other => {
                log::warn!(
                    "layer {}: skipping {} (tar entry type {other:?})",
                    self.name,
                    path.display()
                );
                return Ok(());
            }
        }
        self.set_metadata(entry, dest, path)
    }

    fn mknod<R: Read>(&self, entry: &Entry<R>, dest: &Path, path: &Path) -> Result<(), Error> {
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Char => libc::S_IFCHR,
            EntryType::Block => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        let c_path = CString::new(dest.as_os_str().as_bytes())
            .map_err(|_| self.unsafe_path(path, "it contains a NUL byte"))?;
        let mode = header.mode().unwrap_or(0o600) & 0o7777;
        // SAFETY: mknod reads the NUL-terminated path, which lives across the call.
        let rc = unsafe { libc::mknod(c_path.as_ptr(), kind | mode, libc::makedev(major, minor)) };
        if rc != 0 {
            return Err(self.io(path, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Owner, then mode (chown clears set-id bits), xattrs and modification time.
    fn set_metadata<R: Read>(
        &self,
        entry: &mut Entry<R>,
        dest: &Path,
        path: &Path,
    ) -> Result<(), Error> {
        let header = entry.header();
        let io = |e| self.io(path, e);
        let uid = header.uid().map_err(io)?;
        let gid = header.gid().map_err(io)?;
        let uid =
            u32::try_from(uid).map_err(|_| self.unsafe_path(path, "its uid is out of range"))?;
        let gid =
            u32::try_from(gid).map_err(|_| self.unsafe_path(path, "its gid is out of range"))?;
        std::os::unix::fs::lchown(dest, Some(uid), Some(gid)).map_err(io)?;
        let is_link = header.entry_type().is_symlink();
        if !is_link {
            let mode = header.mode().map_err(io)? & 0o7777;
            fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        let mtime = header.mtime().unwrap_or(0);
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for ext in extensions.flatten() {
                let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                set_xattr(dest, attr, ext.value_bytes()).map_err(io)?;
            }
        }
        let time = filetime::FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
        filetime::set_symlink_file_times(dest, time, time).map_err(io)
    }
}

/// Sets extended attribute `name` on `path` itself (not a link's target).
fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| invalid())?;
    let c_name = CString::new(name).map_err(|_| invalid())?;
    // SAFETY: both strings are NUL-terminated and live across the call; the value pointer and
    // length describe `value`.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes a file, link or directory tree; a missing one is not an error.
fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{Builder, Header};

    /// A layer built from (path, kind, content or link target).
    fn layer(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            let body: &[u8] = if kind.is_file() { data.as_bytes() } else { &[] };
            header.set_size(body.len() as u64);
            if kind.is_symlink() || kind.is_hard_link() {
                header.set_link_name(data).unwrap();
            }
            // set_path refuses "..": write the raw name for the escape tests.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, body).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn whiteouts_and_opaque_directories() {
        let dir = root("whiteout");
        let lower = layer(&[
            ("etc/", D, ""),
            ("etc/keep", F, "k"),
            ("etc/gone", F, "g"),
            ("opaque/", D, ""),
            ("opaque/old", F, "o"),
            ("opaque/sub/", D, ""),
            ("opaque/sub/deep", F, "d"),
        ]);
        apply_layer(&dir, lower.as_slice(), "lower").unwrap();
        let upper = layer(&[
            ("etc/.wh.gone", F, ""),
            ("opaque/new", F, "n"),
            ("opaque/.wh..wh..opq", F, ""),
            ("missing/.wh.x", F, ""),
        ]);
        apply_layer(&dir, upper.as_slice(), "upper").unwrap();
        assert!(dir.join("etc/keep").exists());
        assert!(!dir.join("etc/gone").exists());
        assert!(!dir.join("etc/.wh.gone").exists());
        assert!(!dir.join("opaque/old").exists() && !dir.join("opaque/sub").exists());
        assert_eq!(fs::read_to_string(dir.join("opaque/new")).unwrap(), "n");
        assert!(!dir.join("opaque/.wh..wh..opq").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compressed_layers_links_and_metadata() {
        let dir = root("kinds");
        let tar = layer(&[
            ("bin/", D, ""),
            ("bin/busybox", F, "elf"),
            ("bin/sh", S, "busybox"),
            ("bin/ls", H, "bin/busybox"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        apply_layer(&dir, gz.finish().unwrap().as_slice(), "gz").unwrap();
        assert_eq!(
            fs::read_link(dir.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(dir.join("bin/ls")).unwrap();
        assert_eq!(meta.nlink(), 2);
        assert_eq!(meta.mtime(), 1_700_000_000);
        assert_eq!(meta.mode() & 0o7777, 0o644);
        let zst = zstd::encode_all(layer(&[("z", F, "zstd")]).as_slice(), 1).unwrap();
        apply_layer(&dir, zst.as_slice(), "zst").unwrap();
        assert_eq!(fs::read_to_string(dir.join("z")).unwrap(), "zstd");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        let dir = root("escape");
        let outside = dir.join("outside");
        let inner = dir.join("root");
        fs::create_dir_all(&inner).unwrap();
        for (case, entries) in [
            ("dotdot", vec![("../outside-file", F, "x")]),
            ("absolute", vec![("/etc/evil", F, "x")]),
            (
                "link-up",
                vec![("up", S, "../.."), ("up/outside-file", F, "x")],
            ),
            ("hard-link-up", vec![("h", H, "../outside-file")]),
        ] {
            let err = apply_layer(&inner, layer(&entries).as_slice(), "sha256:bad").unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::UnsafePath { .. }), "{case}: {text}");
            assert!(text.contains("sha256:bad"), "{case}: {text}");
            assert!(!dir.join("outside-file").exists(), "{case}");
        }
        // An absolute link target is the container's path: it resolves inside the root.
        let abs = layer(&[
            ("etc/", D, ""),
            ("evil", S, "/etc"),
            ("evil/passwd", F, "inside"),
        ]);
        apply_layer(&inner, abs.as_slice(), "abs").unwrap();
        assert_eq!(
            fs::read_to_string(inner.join("etc/passwd")).unwrap(),
            "inside"
        );
        assert!(!outside.exists());
        fs::remove_dir_all(dir).unwrap();
    }
}

//! `ember run --rootfs-size SIZE`: the overlay's upper layer (everything the container writes)
//! on a disk instead of a tmpfs in guest memory, so a container can write more than its RAM.
//!
//! The disk is a sparse file formatted with `mkfs.ext4` and attached as the second virtio-blk
//! drive. The file has no name from the moment it exists (`O_TMPFILE` in `$TMPDIR`, else
//! `/var/tmp`), so it is gone however ember ends, killed included; mkfs.ext4 reaches it as its
//! stdin and the drive as `/proc/self/fd/N`. This module owns that file and the size syntax; it
//! must not touch the image cache or the VM's devices.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The smallest disk: room for ext4's metadata and a useful amount of data.
pub const MIN_SIZE: u64 = 16 << 20;
/// The largest: the largest file ext4 (4 KiB blocks) holds, whatever the host's file system.
pub const MAX_SIZE: u64 = 16 << 40;
/// Where the file is made when `$TMPDIR` is not set: on disk (/tmp is often a tmpfs, which
/// would put the container's writes back in memory).
pub const DEFAULT_DIR: &str = "/var/tmp";

/// Why the disk cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// The file cannot be created or sized.
    #[error(
        "cannot create the --rootfs-size disk in {}: set TMPDIR to a writable directory \
         with room for it",
        dir.display()
    )]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 is missing.
    #[error(transparent)]
    NoMkfs(#[from] oci::Error),
    /// mkfs.ext4 could not be run or failed.
    #[error("mkfs.ext4 could not format the --rootfs-size disk: {0}")]
    Mkfs(String),
}

/// A `--rootfs-size` value: bytes, or a number with a binary unit K, M, G or T (`512M`, `1G`;
/// `KiB`, `MB` and lower case are read alike, as powers of 1024), rounded up to a whole MiB.
pub fn parse_size(arg: &str) -> Result<u64, String> {
    let bad = || format!("'{arg}' is not a size: give a number with K, M, G or T (1G, 512M)");
    let lower = arg.trim().to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_end);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let too_large = || format!("'{arg}' is more than the largest size, 16T");
    let number: u64 = match number.parse() {
        Ok(n) => n,
        // All digits, so too many of them.
        Err(_) if !number.is_empty() => return Err(too_large()),
        Err(_) => return Err(bad()),
    };
    let bytes = number
        .checked_mul(1 << shift)
        .and_then(|b| b.checked_next_multiple_of(1 << 20))
        .filter(|b| *b <= MAX_SIZE)
        .ok_or_else(too_large)?;
    if bytes < MIN_SIZE {
        return Err(format!("'{arg}' is less than the smallest size, 16M"));
    }
    Ok(bytes)
}

/// The directory the disk is made in: `$TMPDIR` if set, else [`DEFAULT_DIR`].
pub fn dir(tmpdir: Option<std::ffi::OsString>) -> PathBuf {
    tmpdir
        .filter(|d| !d.is_empty())
        .map_or_else(|| DEFAULT_DIR.into(), PathBuf::from)
}

/// An empty ext4 of `size` bytes in an unnamed sparse file in `dir`, and the path the drive
/// opens it by (valid while the file stays open).
pub fn create(dir: &Path, size: u64) -> Result<(File, String), UpperError> {
    let create_err = |source| UpperError::Create {
        dir: dir.to_owned(),
        source,
    };
    let file = unnamed_file(dir).map_err(create_err)?;
    file.set_len(size).map_err(create_err)?;
    // No journal (nothing outlives the run, so there is nothing to recover), no reserved blocks,
    // and no discard pass over a file that is all holes already. The inode tables are left to
    // the kernel's lazy initialisation, which the init turns off (noinit_itable): the file
    // reads as zeroes, so they are initialised already.
    let output = Command::new(oci::mkfs_ext4()?)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-O", "^has_journal"])
        .args(["-E", "nodiscard", "-L", "ember-upper", "/dev/stdin"])
        .stdin(file.try_clone().map_err(create_err)?)
        .output()
        .map_err(|e| UpperError::Mkfs(e.to_string()))?;
    if !output.status.success() {
        let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(UpperError::Mkfs(why));
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok((file, path))
}

/// A file in `dir` that no path names: `O_TMPFILE`, or where the file system lacks it a new
/// file removed as soon as it is open. Written with std rather than the tempfile crate, which
/// would link rustix and getrandom into ember for these few lines.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    let tmpfile = options.clone().custom_flags(libc::O_TMPFILE).open(dir);
    match tmpfile {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
            let path = dir.join(format!(".ember-rootfs-{}", std::process::id()));
            let file = options.create_new(true).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_are_bounded() {
        let mib = 1u64 << 20;
        for (arg, bytes) in [
            ("1G", 1 << 30),
            ("1g", 1 << 30),
            ("1GiB", 1 << 30),
            ("1GB", 1 << 30),
            ("512M", 512 * mib),
            ("65536k", 64 * mib),
            ("16777216", 16 * mib),
            ("16777217", 17 * mib),
            ("2T", 2 << 40),
            ("16T", MAX_SIZE),
        ] {
            assert_eq!(parse_size(arg), Ok(bytes), "{arg}");
        }
        for bad in ["", "G", "1.5G", "-1G", "1X", "1 G", "ten", "1GG", "1bb"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.contains("is not a size") && err.contains("1G"),
                "{bad}: {err}"
            );
        }
        for big in ["17T", "99999999999999999999", "18446744073709551615K"] {
            let err = parse_size(big).unwrap_err();
            assert!(err.contains("largest size, 16T"), "{big}: {err}");
        }
        for small in ["0", "15M", "1024"] {
            let err = parse_size(small).unwrap_err();
            assert!(err.contains("smallest size, 16M"), "{small}: {err}");
        }
    }

    #[test]
    fn the_disk_goes_to_tmpdir_or_var_tmp() {
        assert_eq!(dir(Some("/scratch".into())), Path::new("/scratch"));
        assert_eq!(dir(Some("".into())), Path::new(DEFAULT_DIR));
        assert_eq!(dir(None), Path::new(DEFAULT_DIR));
    }

    #[test]
    fn the_disk_is_an_empty_sparse_ext4_that_no_path_names() {
        let dir = std::env::temp_dir().join(format!("ember-upper-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, path) = create(&dir, 64 << 20).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 8 << 20,
            "sparse"
        );
        let mut superblock = [0u8; 2048];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&path).unwrap(),
            &mut superblock,
            0,
        )
        .unwrap();
        assert_eq!(
            &superblock[1024 + 0x38..1024 + 0x3a],
            &[0x53, 0xef],
            "ext4 magic"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name left");
        let err = create(&dir.join("missing"), 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set TMPDIR"), "{err}");
        drop(file);
        std::fs::remove_dir(&dir).unwrap();
    }
}

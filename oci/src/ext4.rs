//! The root filesystem image: `mkfs.ext4 -d DIR` (e2fsprogs) writes an unpacked tree into a
//! new ext4 image, owners, modes, links, device nodes and xattrs included, without mounting
//! anything. The image is sized from the tree with headroom and has no journal (it is only
//! ever mounted read-only).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Filesystem block size.
const BLOCK: u64 = 4096;
/// Inode size (256: timestamps past 2038, inline xattrs).
const INODE_SIZE: u64 = 256;
/// Room beyond the content: mkfs's own metadata (group descriptors, bitmaps) and slack.
const HEADROOM: u64 = 16 << 20;

/// What a tree needs: bytes of blocks and number of inodes.
fn measure(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut inodes) = (BLOCK, 1);
    let mut stack = vec![dir.to_path_buf()];
    let mut seen_links = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        let mut entries = 0;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            entries += 1;
            if meta.nlink() > 1 && !meta.is_dir() && !seen_links.insert((meta.dev(), meta.ino())) {
                continue;
            }
            inodes += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                // Data rounded up to blocks, plus an extent or indirect block for big files.
                bytes += meta.len().div_ceil(BLOCK) * BLOCK + (meta.len() >> 20) * 8;
            }
        }
        // Directory blocks: ~32 bytes per entry.
        bytes += (entries * 32u64).div_ceil(BLOCK).max(1) * BLOCK;
    }
    Ok((bytes, inodes))
}

/// `mkfs.ext4`: on PATH, else in /usr/sbin or /sbin (not on a user's PATH on Debian). Public
/// for `ember run --rootfs-size`, which makes an empty ext4 of its own.
pub fn mkfs() -> Result<PathBuf, Error> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .ok_or(Error::NoMkfs)
}

/// Writes the tree `dir` as a new ext4 image at `image` (which must not exist).
pub fn build(dir: &Path, image: &Path) -> Result<(), Error> {
    let (bytes, inodes) = measure(dir).map_err(|e| Error::Rootfs(dir.to_path_buf(), e))?;
    let inodes = inodes + inodes / 10 + 256;
    let size = (bytes + bytes / 10 + inodes * INODE_SIZE + HEADROOM).div_ceil(BLOCK) * BLOCK;
    let file = fs::File::create_new(image).map_err(|e| Error::Rootfs(image.to_path_buf(), e))?;
    file.set_len(size)
        .map_err(|e| Error::Rootfs(image.to_path_buf(), e))?;
    drop(file);
    let output = Command::new(mkfs()?)
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
        ])
        .args(["-O", "^has_journal", "-L", "rootfs"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(dir)
        .arg(image)
        .output()
        .map_err(|e| Error::Rootfs(image.to_path_buf(), e))?;
    if !output.status.success() {
        return Err(Error::Mkfs(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let file = fs::File::open(image).map_err(|e| Error::Rootfs(image.to_path_buf(), e))?;
    file.sync_all()
        .map_err(|e| Error::Rootfs(image.to_path_buf(), e))?;
    fs::set_permissions(image, std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .map_err(|e| Error::Rootfs(image.to_path_buf(), e))
}

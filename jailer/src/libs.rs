//! The shared libraries a dynamically linked exec file needs, copied into the jail.
//!
//! Firecracker's jailer expects a static binary; ember is usually built (and packaged)
//! against the host's glibc, and a jail has no `/lib`. So the jailer asks the exec file's own
//! dynamic loader (its `PT_INTERP`, run with `--list`, which is what `ldd` does) which
//! libraries it would load, opens them while the host's files are in reach ([`open`]), and
//! writes copies at the same paths inside the jail after entering it ([`install`]), where a
//! symbolic link an earlier tenant left can only point inside the jail. The copies are
//! root's and read-only to the jailed user. A static exec file (no `PT_INTERP`) needs nothing.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// ELF program header type of the interpreter's path.
const PT_INTERP: u32 = 3;

/// Why the libraries could not be found or copied.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    /// The exec file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The exec file is not a 64-bit little-endian ELF file.
    #[error("{0} is not an x86-64 ELF executable")]
    NotElf(PathBuf),
    /// The dynamic loader could not list the libraries.
    #[error("{interp} --list {exec} failed: {stderr}")]
    List {
        /// The loader.
        interp: PathBuf,
        /// The exec file.
        exec: PathBuf,
        /// What it said.
        stderr: String,
    },
    /// A library could not be copied into the jail.
    #[error("cannot copy library {0} into the jail")]
    Copy(PathBuf, #[source] std::io::Error),
}

/// A library to put in the jail: its path (the same inside) and the open host file.
#[derive(Debug)]
pub struct Library {
    path: PathBuf,
    file: File,
}

/// The exec file's `PT_INTERP`, if it has one.
fn interpreter(exec: &Path) -> Result<Option<PathBuf>, LibsError> {
    let mut image = Vec::new();
    File::open(exec)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut image))
        .map_err(|e| LibsError::Read(exec.to_owned(), e))?;
    let not_elf = || LibsError::NotElf(exec.to_owned());
    // ELF64 (class 2), little-endian (data 1).
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(not_elf());
    }
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        image
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    let (phoff, phentsize, phnum) = (
        u64_at(0x20).ok_or_else(not_elf)?,
        usize::from(u16_at(0x36).ok_or_else(not_elf)?),
        usize::from(u16_at(0x38).ok_or_else(not_elf)?),
    );
    for index in 0..phnum {
        let header = phoff.saturating_add(index.saturating_mul(phentsize));
        if u32_at(header).ok_or_else(not_elf)? != PT_INTERP {
            continue;
        }
        let offset = u64_at(header + 8).ok_or_else(not_elf)?;
        let size = u64_at(header + 32).ok_or_else(not_elf)?;
        let path = image
            .get(offset..offset.saturating_add(size))
            .ok_or_else(not_elf)?;
        let path = path.split(|b| *b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(OsStr::from_bytes(path))));
    }
    Ok(None)
}

/// The paths in the loader's `--list` output: `name => /path (0x...)` and `/path (0x...)`
/// lines; the vDSO (no path) is the kernel's.
fn listed(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let target = line.split_once("=>").map_or(line, |(_, t)| t).trim();
            let path = target.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Opens the libraries (the loader included) `exec` needs; none for a static file.
pub fn open(exec: &Path) -> Result<Vec<Library>, LibsError> {
    let Some(interp) = interpreter(exec)? else {
        return Ok(Vec::new());
    };
    let list_error = |stderr: String| LibsError::List {
        interp: interp.clone(),
        exec: exec.to_owned(),
        stderr,
    };
    let out = Command::new(&interp)
        .arg("--list")
        .arg(exec)
        .env_clear()
        .output()
        .map_err(|e| list_error(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout.contains("not found") {
        let said = format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout);
        return Err(list_error(said.trim().to_owned()));
    }
    let mut paths = listed(&stdout);
    if !paths.contains(&interp) {
        paths.push(interp.clone());
    }
    paths
        .into_iter()
        .map(|path| match File::open(&path) {
            Ok(file) => Ok(Library { path, file }),
            Err(e) => Err(LibsError::Read(path, e)),
        })
        .collect()
}

/// Inside the jail: writes each library at its path, replacing what is there.
pub fn install(libs: Vec<Library>) -> Result<(), LibsError> {
    for mut lib in libs {
        let err = |e| LibsError::Copy(lib.path.clone(), e);
        if let Some(dir) = lib.path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(err)?;
        }
        match std::fs::remove_file(&lib.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let mut copy = File::options()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o755)
            .open(&lib.path)
            .map_err(err)?;
        std::io::copy(&mut lib.file, &mut copy).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_loaders_list_gives_the_library_paths_without_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f40)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f40)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f40)\n";
        assert_eq!(
            listed(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_dynamic_binary_names_its_loader_and_its_libraries_open() {
        let exe = std::env::current_exe().unwrap();
        let interp = interpreter(&exe).unwrap();
        let libs = open(&exe).unwrap();
        match interp {
            Some(interp) => {
                assert!(libs.iter().any(|l| l.path == interp));
                assert!(
                    libs.iter().any(|l| l.path.ends_with("libc.so.6")),
                    "{libs:?}"
                );
            }
            None => assert!(libs.is_empty()),
        }
        let err = interpreter(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(err, LibsError::NotElf(_)), "{err}");
    }
}

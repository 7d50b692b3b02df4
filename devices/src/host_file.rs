//! Opening the host files a user names: disk images, kernels, initrds, config files, console
//! output files, ember's log and metrics. Every such open goes through [`open`], which owns
//! three rules:
//!
//! - **Opening never waits.** A named pipe (or a device) opened for reading blocks `open(2)`
//!   until a writer appears, and ember would hang there with its stop signals blocked. So the
//!   open is non-blocking, the file's type is read from the open descriptor (`fstat`, so what is
//!   checked is what was opened) and a type the use does not allow is refused, naming it.
//! - **What ember creates is private.** Console, log and metrics files are created mode 0600.
//! - **Writes never follow a symbolic link.** ember often runs as root, and a link planted in a
//!   shared directory would otherwise redirect (or, for a console file, truncate) any file on
//!   the host. Files ember only reads (disk images included) follow links, as
//!   `/dev/disk/by-id/...` paths need.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a file is opened for, which decides how it is opened and what it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read: a kernel, an initrd, a config file. A regular file.
    Read,
    /// A disk image, written too unless `read_only`. A regular file or a block device.
    Disk {
        /// Opened for reading only.
        read_only: bool,
    },
    /// Written from its start (a console log): created if missing, truncated otherwise. A
    /// regular file.
    Create,
    /// Appended to (ember's log, metrics): created if missing. A regular file or a named pipe;
    /// the descriptor stays non-blocking, so a pipe nobody reads drops lines instead of
    /// stalling ember.
    Append,
}

/// Why a named file cannot be used. The caller's error names the path and what it was for.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// The OS refused the open.
    #[error(transparent)]
    Os(#[from] io::Error),
    /// The path names something this use cannot take.
    #[error("it is a {found}, not a {wanted}")]
    WrongType {
        /// What the path is.
        found: &'static str,
        /// What the use needs.
        wanted: &'static str,
    },
    /// The path is a symbolic link, and ember writes only to files named directly.
    #[error("it is a symbolic link, which ember does not write through; name the file itself")]
    Symlink,
}

impl Use {
    /// Files ember writes to but does not own the contents of (disk images) may be links.
    fn follows_links(self) -> bool {
        matches!(self, Self::Read | Self::Disk { .. })
    }

    fn allows(self, file_type: std::fs::FileType) -> bool {
        file_type.is_file()
            || match self {
                Self::Disk { .. } => file_type.is_block_device(),
                Self::Append => file_type.is_fifo(),
                Self::Read | Self::Create => false,
            }
    }

    fn wanted(self) -> &'static str {
        match self {
            Self::Disk { .. } => "regular file or block device",
            Self::Append => "regular file or named pipe",
            Self::Read | Self::Create => "regular file",
        }
    }
}

/// The name of a file type, for messages.
pub fn type_name(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "named pipe"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for `how`, without waiting, and checks what it is. Returns the file (blocking
/// again, except for [`Use::Append`]) and its metadata as of the open.
pub fn open(path: &Path, how: Use) -> Result<(File, Metadata), HostFileError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !how.follows_links() {
        flags |= libc::O_NOFOLLOW;
    }
    let mut options = OpenOptions::new();
    options.custom_flags(flags);
    match how {
        Use::Read | Use::Disk { read_only: true } => options.read(true),
        Use::Disk { read_only: false } => options.read(true).write(true),
        // Create does not truncate here: only once the file is known to be a regular file.
        Use::Create => options.write(true).create(true).mode(0o600),
        // Read access lets a named pipe open without a reader (write-only would fail ENXIO).
        Use::Append => options.read(true).append(true).create(true).mode(0o600),
    };
    let file = options.open(path).map_err(|err| explain(path, how, err))?;
    let meta = file.metadata()?;
    if !how.allows(meta.file_type()) {
        return Err(HostFileError::WrongType {
            found: type_name(meta.file_type()),
            wanted: how.wanted(),
        });
    }
    if how == Use::Create {
        file.set_len(0)?;
    }
    if how != Use::Append {
        set_blocking(&file)?;
    }
    Ok((file, meta))
}

/// A failed open, said better where the path's type explains it: a symbolic link refused by
/// `O_NOFOLLOW`, or a socket or reader-less pipe refused with `ENXIO`. The look is only for the
/// message; nothing is opened by it.
fn explain(path: &Path, how: Use, err: io::Error) -> HostFileError {
    let meta = if how.follows_links() {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match meta {
        Ok(meta) if meta.file_type().is_symlink() => HostFileError::Symlink,
        Ok(meta) if !meta.file_type().is_dir() && !how.allows(meta.file_type()) => {
            HostFileError::WrongType {
                found: type_name(meta.file_type()),
                wanted: how.wanted(),
            }
        }
        _ => HostFileError::Os(err),
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor `file` owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on the same descriptor, with flags it just reported.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ember-host-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fifo(dir: &Path) -> PathBuf {
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[test]
    fn a_named_pipe_is_refused_without_waiting_for_a_writer_except_for_appending() {
        let dir = dir("fifo");
        let fifo = fifo(&dir);
        for how in [
            Use::Read,
            Use::Disk { read_only: true },
            Use::Disk { read_only: false },
            Use::Create,
        ] {
            let err = open(&fifo, how).unwrap_err();
            assert!(
                err.to_string().starts_with("it is a named pipe, not a "),
                "{how:?}: {err}"
            );
        }
        let (file, meta) = open(&fifo, Use::Append).unwrap();
        assert!(meta.file_type().is_fifo());
        drop(file);
    }

    #[test]
    fn devices_and_directories_are_named_when_refused() {
        let err = open(Path::new("/dev/zero"), Use::Read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is a character device, not a regular file"
        );
        let err = open(&std::env::temp_dir(), Use::Disk { read_only: true }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is a directory, not a regular file or block device"
        );
    }

    #[test]
    fn files_ember_writes_are_created_owner_only_and_never_through_a_link() {
        let dir = dir("create");
        for how in [Use::Create, Use::Append] {
            let path = dir.join(format!("{how:?}"));
            open(&path, how).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{how:?}");
            let target = dir.join("precious");
            std::fs::write(&target, b"keep").unwrap();
            let link = dir.join("link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(
                matches!(open(&link, how), Err(HostFileError::Symlink)),
                "{how:?}"
            );
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        }
    }

    #[test]
    fn create_truncates_only_regular_files_and_reads_follow_links() {
        let dir = dir("truncate");
        let path = dir.join("log");
        std::fs::write(&path, b"old contents").unwrap();
        let (file, _) = open(&path, Use::Create).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let (_, meta) = open(&link, Use::Read).unwrap();
        assert!(meta.is_file());
    }
}

//! The host side of a virtio-blk disk: a raw image file.
//!
//! Data moves with one `preadv`/`pwritev` per request, directly between the file and the guest
//! buffers (no intermediate copy). Flush is `fdatasync` when the disk caches writes
//! ("Writeback"); discard punches holes; write-zeroes punches holes when the guest allows
//! unmapping and zeroes the range in place otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::SECTOR_SIZE;
use crate::host_file::{self, HostFileError, Use};

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened as asked, or is not a regular file or block device.
    #[error("cannot open the disk image '{}' {mode}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// "read-only" or "for reading and writing".
        mode: &'static str,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// The size is not whole sectors.
    #[error("the disk image '{}' is {size} bytes, not a multiple of 512; pad it (truncate -s %512) or use another image", path.display())]
    Unaligned {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// A page of zeroes for writing zeroed ranges where the filesystem cannot zero in place.
static ZEROES: [u8; 4096] = [0; 4096];
/// Bytes of zeroes written per system call (256 iovecs of the zero page).
const ZERO_WRITE: u64 = 1 << 20;

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    writeback: bool,
    can_punch_holes: bool,
}

impl Disk {
    /// Opens `path`; `writeback` makes flush requests reach the disk (`fdatasync`).
    pub fn open(path: &Path, read_only: bool, writeback: bool) -> Result<Self, DiskError> {
        let mode = if read_only {
            "read-only"
        } else {
            "for reading and writing"
        };
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            mode,
            source,
        };
        let (file, meta) = host_file::open(path, Use::Disk { read_only }).map_err(open_err)?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            block_device_size(&file).map_err(|e| open_err(e.into()))?
        };
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::Unaligned {
                path: path.to_owned(),
                size,
            });
        }
        let can_punch_holes = !read_only && probe_punch_hole(&file, size);
        Ok(Self {
            file,
            size,
            read_only,
            writeback,
            can_punch_holes,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest may not write.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether flushes reach the disk.
    pub fn writeback(&self) -> bool {
        self.writeback
    }

    /// Whether the host filesystem can deallocate ranges (discard, unmapping write-zeroes).
    pub fn can_punch_holes(&self) -> bool {
        self.can_punch_holes
    }

    /// Reads at `offset` into the buffers, filling them all.
    ///
    /// # Safety
    /// Every iovec must describe writable memory that stays mapped for the call.
    pub unsafe fn read_vectored_at(
        &self,
        iovecs: &mut [libc::iovec],
        offset: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller vouches for the iovecs.
        unsafe { self.transfer(iovecs, offset, false) }
    }

    /// Writes the buffers at `offset`, all of them.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the call.
    pub unsafe fn write_vectored_at(
        &self,
        iovecs: &mut [libc::iovec],
        offset: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller vouches for the iovecs.
        unsafe { self.transfer(iovecs, offset, true) }
    }

    /// Moves all of `iovecs` at `offset`, retrying short transfers and interruptions.
    unsafe fn transfer(
        &self,
        mut iovecs: &mut [libc::iovec],
        mut offset: u64,
        write: bool,
    ) -> io::Result<()> {
        while !iovecs.is_empty() {
            let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let off = offset as libc::off_t;
            let fd = self.file.as_raw_fd();
            // SAFETY: the iovecs are valid per this function's contract; `count` is within
            // the slice; the fd is owned by `self`.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, iovecs.as_ptr(), count, off)
                } else {
                    libc::preadv(fd, iovecs.as_ptr(), count, off)
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            offset += n as u64;
            let consumed = advance(iovecs, n as usize);
            iovecs = &mut iovecs[consumed..];
        }
        Ok(())
    }

    /// Makes written data durable, if the disk caches writes; true if it reached the host's
    /// disk (`fdatasync`), false if the disk acknowledges flushes without syncing ("Unsafe").
    pub fn flush(&self) -> io::Result<bool> {
        if !self.writeback {
            return Ok(false);
        }
        self.file.sync_data()?;
        Ok(true)
    }

    /// Deallocates `[offset, offset + len)`; reads of it return zeroes afterwards.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `[offset, offset + len)` keeping it allocated.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The filesystem cannot zero in place (tmpfs, say): write zeroes, 1 MiB per
                // call from one shared page of zeroes, allocating nothing.
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(ZERO_WRITE);
                    let page = ZEROES.len() as u64;
                    let count = n.div_ceil(page) as usize;
                    let mut iov = [libc::iovec {
                        iov_base: ZEROES.as_ptr().cast_mut().cast(),
                        iov_len: ZEROES.len(),
                    }; (ZERO_WRITE / 4096) as usize];
                    iov[count - 1].iov_len = (n - (count as u64 - 1) * page) as usize;
                    // SAFETY: every iovec covers (part of) `ZEROES`, a static that lives
                    // forever; a write only reads the buffers, so the shared page is never
                    // written through the cast pointer.
                    unsafe { self.transfer(&mut iov[..count], offset + done, true) }?;
                    done += n;
                }
                Ok(())
            }
            other => other,
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate only acts on the fd `self` owns; bad ranges return an error.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
impl Disk {
    /// A writable writeback disk of `size` bytes over any file, even one [`Disk::open`]
    /// refuses: tests use `/dev/full`, whose writes fail with ENOSPC and flushes with EINVAL,
    /// to see what the host's errors become.
    pub(crate) fn over_any_file(file: File, size: u64) -> Self {
        Self {
            file,
            size,
            read_only: false,
            writeback: true,
            can_punch_holes: false,
        }
    }
}

impl AsRawFd for Disk {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// A writable writeback disk is synced as it is closed (its drive swapped by `PATCH /drives`,
/// or the VM's end): from then on the guest cannot flush it, and what it wrote would otherwise
/// reach the disk only when the host gets round to it. "Unsafe" disks promise nothing.
impl Drop for Disk {
    fn drop(&mut self) {
        if self.writeback && !self.read_only {
            if let Err(err) = self.file.sync_data() {
                log::warn!("cannot sync a disk image as it is closed: {err}");
            }
        }
    }
}

/// Accounts for `done` bytes moved from the start of `iovecs`: shortens the one it ends in;
/// returns how many were moved completely, which the next transfer skips.
pub(super) fn advance(iovecs: &mut [libc::iovec], mut done: usize) -> usize {
    for (i, iov) in iovecs.iter_mut().enumerate() {
        if done < iov.iov_len {
            // SAFETY: advancing within the same buffer, by less than its length.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
            iov.iov_len -= done;
            return i;
        }
        done -= iov.iov_len;
    }
    iovecs.len()
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which is valid for it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(size)
    }
}

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Whether punching a hole works here: tried past the end of the file, where it changes
/// nothing.
fn probe_punch_hole(file: &File, size: u64) -> bool {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: as in `Disk::fallocate`; the range lies beyond the data, so no data changes.
    unsafe { libc::fallocate(file.as_raw_fd(), mode, size as libc::off_t, 4096) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn image(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ember-disk-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    #[test]
    fn opens_images_and_refuses_bad_ones() {
        let ok = image("ok", &[0; 4096]);
        let disk = Disk::open(&ok, false, true).unwrap();
        assert_eq!(disk.size(), 4096);
        assert!(!disk.read_only());

        let odd = image("odd", &[0; 1000]);
        let err = Disk::open(&odd, false, true).unwrap_err();
        assert!(err.to_string().contains("not a multiple of 512"), "{err}");

        let err = Disk::open(Path::new("/nonexistent/disk.img"), true, false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");

        let err = Disk::open(&std::env::temp_dir(), true, false).unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Open {
                    source: HostFileError::WrongType { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn vectored_io_round_trips_across_buffers() {
        let path = image("io", &[0; 8192]);
        let disk = Disk::open(&path, false, true).unwrap();
        let mut a = [1u8; 512];
        let mut b = [2u8; 1024];
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        // SAFETY: the iovecs point at the live local arrays.
        unsafe { disk.write_vectored_at(&mut iov, 1024).unwrap() };
        assert!(disk.flush().unwrap(), "a writeback disk syncs");
        let mut back = [0u8; 1536];
        let mut iov = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: back.len(),
        }];
        // SAFETY: as above.
        unsafe { disk.read_vectored_at(&mut iov, 1024).unwrap() };
        assert_eq!(&back[..512], &[1; 512]);
        assert_eq!(&back[512..], &[2; 1024]);
        let mut past = [0u8; 512];
        let mut iov = [libc::iovec {
            iov_base: past.as_mut_ptr().cast(),
            iov_len: 512,
        }];
        // SAFETY: as above.
        let past_end = unsafe { disk.read_vectored_at(&mut iov, 8192) };
        assert!(past_end.is_err(), "reads past the end fail");
    }

    #[test]
    fn read_only_disks_are_opened_read_only() {
        let path = image("ro", &[7; 1024]);
        let disk = Disk::open(&path, true, true).unwrap();
        let mut data = [0u8; 512];
        let mut iov = [libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 512,
        }];
        // SAFETY: the iovec points at the live local array.
        assert!(unsafe { disk.write_vectored_at(&mut iov, 0) }.is_err());
        assert!(!disk.can_punch_holes());
    }

    #[test]
    fn write_zeroes_works_where_the_filesystem_cannot_zero_in_place() {
        // tmpfs has no FALLOC_FL_ZERO_RANGE: zeroes are written from the shared page.
        let path =
            std::path::Path::new("/dev/shm").join(format!("ember-wz-{}", std::process::id()));
        let len = 3 << 20;
        std::fs::write(&path, vec![0xa5u8; len]).unwrap();
        let disk = Disk::open(&path, false, true).unwrap();
        let (start, zeroed) = (512u64, (2 << 20) + 3 * 512);
        disk.write_zeroes(start, zeroed).unwrap();
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let end = (start + zeroed) as usize;
        assert!(back[..512].iter().all(|b| *b == 0xa5));
        assert!(back[512..end].iter().all(|b| *b == 0));
        assert!(back[end..].iter().all(|b| *b == 0xa5));
    }

    /// Runs `test` of this module in a child process of this test binary under strace, with
    /// `env`; returns the fdatasync calls it made, with the paths of their descriptors.
    fn fdatasyncs_of(test: &str, env: &[(&str, &Path)]) -> String {
        let trace = std::env::temp_dir().join(format!("ember-disk-{}-trace", std::process::id()));
        let name = format!("virtio::block::disk::tests::{test}");
        let status = std::process::Command::new("strace")
            .args(["-f", "-qq", "-y", "-e", "trace=fdatasync", "-o"])
            .arg(&trace)
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .expect("this test needs strace (apt-get install strace, or resources/setup-host.sh)");
        assert!(status.success());
        std::fs::read_to_string(&trace).unwrap()
    }

    #[test]
    fn closing_a_writeback_disk_syncs_it_and_an_unsafe_one_is_not_synced() {
        const WRITEBACK: &str = "EMBER_TEST_CLOSE_WRITEBACK";
        const UNSAFE: &str = "EMBER_TEST_CLOSE_UNSAFE";
        if let (Some(wb), Some(un)) = (std::env::var_os(WRITEBACK), std::env::var_os(UNSAFE)) {
            // The child: open both, write, close; no flush request ever comes.
            for (path, writeback) in [(wb, true), (un, false)] {
                let disk = Disk::open(Path::new(&path), false, writeback).unwrap();
                disk.write_zeroes(0, 512).unwrap();
                drop(disk);
            }
            return;
        }
        let wb = image("close-writeback", &[1; 4096]);
        let un = image("close-unsafe", &[1; 4096]);
        let trace = fdatasyncs_of(
            "closing_a_writeback_disk_syncs_it_and_an_unsafe_one_is_not_synced",
            &[(WRITEBACK, &wb), (UNSAFE, &un)],
        );
        assert!(trace.contains(&format!("<{}>", wb.display())), "{trace}");
        assert!(!trace.contains(&format!("<{}>", un.display())), "{trace}");
    }
}

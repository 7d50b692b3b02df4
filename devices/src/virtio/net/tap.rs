//! An existing host TAP interface, opened for one VM: non-blocking, no packet-information
//! prefix, a 12-byte virtio-net header on every frame (so checksum and segmentation offloads
//! cross the TAP unchanged). ember never creates or configures interfaces: the user (or the
//! orchestrator) owns the TAP, its addresses and its namespace.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::VNET_HDR_LEN;

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const MAX_NAME_LEN: usize = 15;

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("'{0}' is not a valid interface name (1 to {MAX_NAME_LEN} bytes, no '/' or spaces)")]
    BadName(String),
    /// No interface has that name.
    #[error(
        "there is no network interface '{0}'; create the TAP first (e.g. `ip tuntap add {0} mode tap`)"
    )]
    NotFound(String),
    /// The interface is not a TAP.
    #[error(
        "network interface '{0}' is not a TAP device; give ember a TAP (`ip tuntap add NAME mode tap`)"
    )]
    NotTap(String),
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded and readable by this user?)")]
    OpenTun(#[source] io::Error),
    /// Another process has the TAP open.
    #[error("TAP '{0}' is in use by another process; each VM needs a TAP of its own")]
    Busy(String),
    /// The user may not attach to this TAP.
    #[error(
        "not allowed to attach to TAP '{0}'; create it for this user (`ip tuntap add {0} mode tap user $USER`) or run with CAP_NET_ADMIN"
    )]
    Permission(String),
    /// The kernel refused a TAP ioctl.
    #[error("TAP '{name}': {what} failed (a multi-queue TAP or an old kernel?)")]
    Ioctl {
        /// The TAP.
        name: String,
        /// The operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, in a 40-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.contains(['/', ' ', '\0'])
            || name == "."
            || name == ".."
        {
            return Err(TapError::BadName(name.into()));
        }
        let sys = Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::NotFound(name.into()));
        }
        // Only tun/tap interfaces have this attribute; without the check TUNSETIFF would
        // create a fresh TAP when run with CAP_NET_ADMIN, hiding a typo.
        if !sys.join("tun_flags").exists() {
            return Err(TapError::NotTap(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` matches in layout
        // and size; the descriptor is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name.into()),
                Some(libc::EPERM) => TapError::Permission(name.into()),
                _ => TapError::Ioctl {
                    name: name.into(),
                    what: "TUNSETIFF",
                    source: err,
                },
            });
        }
        let tap = Self {
            file,
            name: name.into(),
        };
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `size`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads (`TUN_F_*`) frames read from the TAP may carry.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor is open.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Where frames go to and come from: the TAP, or a stand-in in tests and benchmarks.
pub trait Backend: Send {
    /// Reads one frame (header included) into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame (header included) gathered from `iovecs`; `WouldBlock` when full.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the call.
    unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize>;

    /// Applies the offloads (`TUN_F_*`) the guest can receive.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

impl Backend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        self.file.read(buf)
    }

    unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the caller vouches for the iovecs; `count` does not exceed their number.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_missing_names_are_refused_before_any_ioctl() {
        for bad in ["", "a/b", "with space", "sixteen-chars-xx", ".."] {
            assert!(matches!(Tap::open(bad), Err(TapError::BadName(_))), "{bad}");
        }
        let err = Tap::open("ember-no-such0").unwrap_err();
        assert!(matches!(err, TapError::NotFound(_)));
        assert!(err.to_string().contains("ip tuntap add ember-no-such0"));
        // Every Linux host has a loopback interface, and it is not a TAP.
        assert!(matches!(Tap::open("lo"), Err(TapError::NotTap(_))));
    }
}

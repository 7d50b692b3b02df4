//! An existing host TAP interface, opened for one VM: non-blocking, no packet-information
//! prefix, a 12-byte virtio-net header on every frame (so checksum and segmentation offloads
//! cross the TAP unchanged). ember never creates or configures interfaces: the user (or the
//! orchestrator) owns the TAP, its addresses and its namespace.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;
use super::uring::{self, Outcome, TxRing};

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

/// `struct ethtool_drvinfo`, as ETHTOOL_GDRVINFO fills it.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 32 * 4 + 12 + 20],
}

/// `struct ifreq` with a pointer in its union, for SIOCETHTOOL.
#[repr(C)]
struct IfReqData {
    name: [u8; 16],
    data: *mut DrvInfo,
    _pad: [u8; 16],
}

const ETHTOOL_GDRVINFO: u32 = 3;

/// The kernel driver behind interface `name` in ember's network namespace ("tun" for a TAP).
fn interface_driver(name: &str) -> io::Result<String> {
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 20],
    };
    let mut req = IfReqData {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO reads the ifreq and writes the drvinfo it
    // points at; both match the kernel's layouts and outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// An open TAP.
pub struct Tap {
    file: File,
    name: String,
    /// Runs of transmitted frames go through this ring, when the host has io_uring.
    ring: Option<TxRing>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("name", &self.name)
            .field("ring", &self.ring.is_some())
            .finish()
    }
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
        // Without this check TUNSETIFF would create a fresh TAP when run with CAP_NET_ADMIN,
        // hiding a typo. It asks the kernel, not /sys, which shows the network namespace it
        // was mounted in rather than ember's.
        match interface_driver(name) {
            Ok(driver) if driver == "tun" => {}
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => {
                return Err(TapError::NotFound(name.into()));
            }
            // Another driver, or one without driver information (the loopback device).
            _ => return Err(TapError::NotTap(name.into())),
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
            // Made here, on the thread that opens the TAP, before any filter: the device's
            // thread may only enter it.
            ring: TxRing::new(),
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

    /// Reads one frame (header included) scattered into `iovecs`; `WouldBlock` when none is
    /// waiting. A frame longer than the iovecs is cut short.
    ///
    /// # Safety
    /// Every iovec must describe writable memory that stays mapped for the call.
    unsafe fn recv_vectored(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize>;

    /// Writes one frame (header included) gathered from `iovecs`; `WouldBlock` when full.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the call.
    unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize>;

    /// Writes `frames` (at most [`uring::RUN`]), each gathered from its iovecs, in order,
    /// each frame's outcome into `outcomes`. One [`Backend::send`] each, stopping at the first
    /// that fails, unless the backend has a better way.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the call.
    unsafe fn send_run(&mut self, frames: &[&[libc::iovec]], outcomes: &mut [Outcome]) {
        // SAFETY: the caller vouches for every frame's iovecs.
        uring::send_each(frames, outcomes, |frame| unsafe { self.send(frame) })
    }

    /// Applies the offloads (`TUN_F_*`) the guest can receive.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

impl Backend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        self.file.read(buf)
    }

    unsafe fn recv_vectored(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the caller vouches for the iovecs; `count` does not exceed their number.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    unsafe fn send(&mut self, iovecs: &[libc::iovec]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let n = match iovecs {
            // A frame in one buffer (the common case): write skips importing an iovec array.
            // SAFETY: the caller vouches for the buffer.
            [one] => unsafe { libc::write(fd, one.iov_base, one.iov_len) },
            _ => {
                let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
                // SAFETY: the caller vouches for the iovecs; `count` does not exceed their
                // number.
                unsafe { libc::writev(fd, iovecs.as_ptr(), count) }
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    unsafe fn send_run(&mut self, frames: &[&[libc::iovec]], outcomes: &mut [Outcome]) {
        let mut from = 0;
        if let (Some(ring), [_, _, ..]) = (self.ring.as_mut(), frames) {
            // SAFETY: the caller vouches for the iovecs; the descriptor is open.
            let written = unsafe { ring.write(self.file.as_raw_fd(), frames, outcomes) };
            // A kernel whose TAP takes no non-blocking writes from io_uring refuses them all.
            let unsupported = outcomes.first() == Some(&Outcome::Refused(libc::EOPNOTSUPP));
            match written {
                Ok(()) if !unsupported => return,
                Ok(()) => log::warn!(
                    "TAP {}: io_uring cannot write to it; writing frames one by one",
                    self.name
                ),
                Err(err) => log::warn!(
                    "TAP {}: its transmit ring failed ({err}); writing frames one by one",
                    self.name
                ),
            }
            self.ring = None;
            // The frames the ring wrote stay written; those after the last it wrote (all of
            // them, when the kernel refused the first) go one write each.
            from = outcomes
                .iter()
                .take(frames.len())
                .rposition(|o| *o == Outcome::Sent)
                .map_or(0, |last| last + 1);
        }
        let (frames, outcomes) = (&frames[from..], &mut outcomes[from..]);
        // SAFETY: the caller vouches for every frame's iovecs.
        uring::send_each(frames, outcomes, |frame| unsafe { self.send(frame) })
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

//! The system calls the init makes that `std` does not wrap, declared against the C library
//! linked into the static binary (the init has no crates, so no `libc` crate: the layouts
//! below are x86_64 glibc's), each behind a safe function that returns a one-line reason.

use std::io::Error;

use super::c_string;

pub const MS_RDONLY: u64 = 1;
pub const MS_NOSUID: u64 = 2;
pub const MS_NODEV: u64 = 4;
pub const MS_NOEXEC: u64 = 8;
pub const MS_MOVE: u64 = 8192;

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;
pub const SIGCHLD: i32 = 17;

const SIG_BLOCK: i32 = 0;
const WNOHANG: i32 = 1;
const O_RDWR: i32 = 2;
const TIOCSCTTY: u64 = 0x540e;
const TIOCSWINSZ: u64 = 0x5414;
const OPOST: u32 = 1;
const ECHO: u32 = 0o10;
const TCSANOW: i32 = 0;
const LINUX_REBOOT_CMD_POWER_OFF: i32 = 0x4321_fedc;
/// ember's exit port (vmm/src/arch/x86_64/layout.rs, EXIT_PORT).
const EXIT_PORT: u16 = 0xf4;

/// glibc's `sigset_t`: 1024 bits.
#[repr(C)]
pub struct SigSet([u64; 16]);

/// glibc's `struct termios`.
#[repr(C)]
pub struct Termios {
    iflag: u32,
    oflag: u32,
    cflag: u32,
    lflag: u32,
    line: u8,
    cc: [u8; 32],
    ispeed: u32,
    ospeed: u32,
}

/// The C library's declarations, in a module of their own so that the safe wrappers below
/// can take their names.
mod c {
    use super::{SigSet, Termios};
    use std::ffi::c_void;

    unsafe extern "C" {
        pub fn mount(
            src: *const i8,
            target: *const i8,
            fstype: *const i8,
            flags: u64,
            data: *const c_void,
        ) -> i32;
        pub fn chroot(path: *const i8) -> i32;
        pub fn sethostname(name: *const i8, len: usize) -> i32;
        pub fn sigemptyset(set: *mut SigSet) -> i32;
        pub fn sigaddset(set: *mut SigSet, sig: i32) -> i32;
        pub fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
        pub fn sigwaitinfo(set: *const SigSet, info: *mut [u64; 16]) -> i32;
        pub fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
        pub fn kill(pid: i32, sig: i32) -> i32;
        pub fn setsid() -> i32;
        pub fn open(path: *const i8, flags: i32, ...) -> i32;
        pub fn ioctl(fd: i32, request: u64, ...) -> i32;
        pub fn dup2(old: i32, new: i32) -> i32;
        pub fn close(fd: i32) -> i32;
        pub fn setgroups(size: usize, list: *const u32) -> i32;
        pub fn setgid(gid: u32) -> i32;
        pub fn setuid(uid: u32) -> i32;
        pub fn tcgetattr(fd: i32, t: *mut Termios) -> i32;
        pub fn tcsetattr(fd: i32, action: i32, t: *const Termios) -> i32;
        pub fn sync();
        pub fn reboot(cmd: i32) -> i32;
    }
}

/// `Ok` when a C call returned 0 or more, else the reason with `what` in front.
fn check(ret: i32, what: impl FnOnce() -> String) -> Result<i32, String> {
    if ret < 0 {
        Err(format!("{}: {}", what(), Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: u64,
    data: &str,
) -> Result<(), String> {
    let (s, t, f, d) = (
        c_string(source)?,
        c_string(target)?,
        c_string(fstype)?,
        c_string(data)?,
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let ret = unsafe { c::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    check(ret, || {
        format!("cannot mount {source} on {target} ({fstype})")
    })?;
    Ok(())
}

/// Makes `new_root` the root, as switch_root does: the initramfs is the root mount, which
/// pivot_root cannot move, so the new root is moved over `/` and chrooted into.
pub fn switch_root(new_root: &str) -> Result<(), String> {
    std::env::set_current_dir(new_root).map_err(|e| format!("cannot enter {new_root}: {e}"))?;
    mount(".", "/", "", MS_MOVE, "")?;
    let dot = c_string(".")?;
    // SAFETY: a NUL-terminated path.
    check(unsafe { c::chroot(dot.as_ptr()) }, || {
        "cannot chroot into the container".into()
    })?;
    std::env::set_current_dir("/").map_err(|e| format!("cannot enter the new root: {e}"))
}

/// sethostname(2).
pub fn sethostname(name: &str) -> Result<(), String> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    let ret = unsafe { c::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, || format!("cannot set the host name to '{name}'"))?;
    Ok(())
}

/// `struct winsize`.
#[repr(C)]
struct WinSize {
    rows: u16,
    cols: u16,
    xpixel: u16,
    ypixel: u16,
}

/// The console's mode: an interactive terminal's (echo, CR-LF output) with `-t`, as large as
/// `size` (rows, columns: the host terminal's) when known; otherwise the program's bytes pass
/// unchanged, as through a pipe, and what ember forwards is not echoed.
pub fn set_console_mode(tty: bool, size: Option<(u16, u16)>) -> Result<(), String> {
    if tty {
        if let Some((rows, cols)) = size {
            let size = WinSize {
                rows,
                cols,
                xpixel: 0,
                ypixel: 0,
            };
            // SAFETY: fd 0 is the console; `size` is a valid struct winsize for the call.
            check(unsafe { c::ioctl(0, TIOCSWINSZ, &size) }, || {
                "cannot set the console's size".into()
            })?;
        }
        return Ok(());
    }
    // SAFETY: Termios is glibc's struct termios; tcgetattr fills it in.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is the console; `t` is a valid termios.
    check(unsafe { c::tcgetattr(0, &mut t) }, || {
        "cannot read the console's mode".into()
    })?;
    t.oflag &= !OPOST;
    t.lflag &= !ECHO;
    // SAFETY: as above.
    check(unsafe { c::tcsetattr(0, TCSANOW, &t) }, || {
        "cannot set the console's mode".into()
    })?;
    Ok(())
}

/// In the child before exec: a session of its own whose controlling terminal is the serial
/// console (so Ctrl-C reaches it as SIGINT), then the user's groups and ids.
pub fn enter_session_as(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    let last = |ret: i32| {
        if ret < 0 {
            Err(Error::last_os_error())
        } else {
            Ok(ret)
        }
    };
    // SAFETY: plain system calls on integers and a static NUL-terminated path; `groups` is a
    // valid slice for its length.
    unsafe {
        last(c::setsid())?;
        let tty = last(c::open(c"/dev/ttyS0".as_ptr(), O_RDWR))?;
        last(c::ioctl(tty, TIOCSCTTY, 0))?;
        for fd in 0..3 {
            last(c::dup2(tty, fd))?;
        }
        if tty > 2 {
            c::close(tty);
        }
        last(c::setgroups(groups.len(), groups.as_ptr()))?;
        last(c::setgid(gid))?;
        last(c::setuid(uid))?;
    }
    Ok(())
}

/// Signals blocked in the init so that it takes them one by one with sigwaitinfo.
pub struct SignalSet(SigSet);

impl SignalSet {
    /// Blocks `signals` (the child gets an empty mask: std resets it before exec).
    pub fn block(signals: &[i32]) -> Result<Self, String> {
        let mut set = SigSet([0; 16]);
        // SAFETY: `set` is a valid sigset_t for these calls.
        unsafe {
            c::sigemptyset(&mut set);
            for &s in signals {
                c::sigaddset(&mut set, s);
            }
            check(
                c::sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut()),
                || "cannot block signals".into(),
            )?;
        }
        Ok(Self(set))
    }

    /// Until `child` ends: reaps every child, forwards the other signals to `child`. Returns
    /// its exit status the way a shell reports it (128+N when signal N killed it).
    pub fn supervise(&self, child: i32) -> u8 {
        loop {
            let mut info = [0u64; 16];
            // SAFETY: the set is valid; `info` is as large as glibc's siginfo_t.
            let signo = unsafe { c::sigwaitinfo(&self.0, &mut info) };
            if signo > 0 && signo != SIGCHLD {
                // SAFETY: a signal to the program's process.
                unsafe { c::kill(child, signo) };
                continue;
            }
            loop {
                let mut status = 0;
                // SAFETY: `status` is a valid int.
                let pid = unsafe { c::waitpid(-1, &mut status, WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    return exit_code(status);
                }
            }
        }
    }
}

/// A wait status as a shell's `$?`.
fn exit_code(status: i32) -> u8 {
    let signal = status & 0x7f;
    if signal == 0 {
        ((status >> 8) & 0xff) as u8
    } else {
        128u8.wrapping_add(signal as u8)
    }
}

/// Flushes the filesystems (the volumes) and reports `code` to ember through the exit port,
/// which ends the VM; powers off (status 0) if the port cannot be reached. The port is written
/// through /dev/port: ioperm needs CONFIG_X86_IOPL_IOPERM, which ember's kernels leave out.
pub fn power_off(code: u8) -> ! {
    use std::os::unix::fs::FileExt;
    // SAFETY: sync takes nothing.
    unsafe { c::sync() };
    let port = std::fs::OpenOptions::new().write(true).open("/dev/port");
    let written = port.and_then(|p| p.write_at(&[code], u64::from(EXIT_PORT)));
    if let Err(e) = written {
        eprintln!("ember-init: cannot report the exit status {code} through /dev/port: {e}");
    }
    // SAFETY: reboot(2) with a valid command; it returns only if it fails.
    unsafe { c::reboot(LINUX_REBOOT_CMD_POWER_OFF) };
    loop {
        std::thread::park();
    }
}

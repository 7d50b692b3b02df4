//! The SIGSYS handler: a forbidden syscall ends ember with one line on stderr naming the
//! thread, its filter and the syscall. It runs under the very filter that refused the syscall
//! and may interrupt any code, so it only reads its thread's name from a thread-local
//! (recorded by [`name_thread`] before the filter went in), formats into a stack buffer and
//! makes two syscalls every filter allows: write(2) and exit_group(2).

use std::cell::Cell;
use std::io;

use super::{BAD_SYSCALL, ThreadKind, rules};

/// Bytes of a thread's name kept (Linux's own limit is 15).
const NAME_LEN: usize = 32;

thread_local! {
    /// This thread's name and filter, for the handler: no allocation or lock there.
    static THREAD: Cell<Option<([u8; NAME_LEN], usize, ThreadKind)>> = const { Cell::new(None) };
}

/// Records the calling thread's name and filter kind for the handler.
pub(super) fn name_thread(kind: ThreadKind) {
    let current = std::thread::current();
    let name = current.name().unwrap_or("unnamed").as_bytes();
    let len = name.len().min(NAME_LEN);
    let mut buf = [0; NAME_LEN];
    buf[..len].copy_from_slice(&name[..len]);
    THREAD.with(|t| t.set(Some((buf, len, kind))));
}

/// The layout of the kernel's siginfo for SIGSYS (`_sigsys` in the union), which the libc
/// crate does not expose.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

pub(super) fn install() -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid, empty action.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handle_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: the handler only does async-signal-safe work (see the module doc); the action
    // is a valid sigaction that outlives the call.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGSYS its
    // union holds `_sigsys`, which SigsysInfo lays out.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let mut line = Line::default();
    line.push(b"ember: seccomp: thread '");
    match THREAD.with(Cell::get) {
        Some((name, len, kind)) => {
            line.push(&name[..len]);
            line.push(b"' (");
            line.push(kind.name().as_bytes());
            line.push(b" filter)");
        }
        None => line.push(b"?'"),
    }
    line.push(b" made a forbidden syscall ");
    line.number(nr.into());
    line.push(b" (");
    let name = rules::syscall_name(nr.into()).unwrap_or("SYS_unknown");
    line.push(name.strip_prefix("SYS_").unwrap_or(name).as_bytes());
    line.push(b"); ember stops. Run with --no-seccomp to go on without filters.\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, BAD_SYSCALL);
    }
}

/// A line built without allocating; what does not fit is cut.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: i64) {
        if n < 0 {
            self.push(b"-");
            n = n.saturating_neg();
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

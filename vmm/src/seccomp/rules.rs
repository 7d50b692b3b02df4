//! The allow lists, one per [`ThreadKind`]: the syscalls each ember thread was seen to make
//! (`strace -f` over the test suites: tiny guests, disks, NICs, vsock, virtio-fs, the API) plus
//! what Rust's standard library and the allocator may make at any time (memory, futexes, exit,
//! the stderr log). Arguments are checked where they choose what a syscall can reach: ioctls by
//! number (KVM, TAP, terminal), socket families, `fcntl` commands, `openat` without `O_CREAT`.
//! A syscall not listed, or listed with arguments that match none of its rules, raises SIGSYS.
//!
//! This file is the readable description and the only one: [`rules`] gives a kind's list,
//! which vmm/build.rs compiles (through `compile.rs`, both included there by `#[path]`)
//! into the BPF programs ember installs, so it must build on its own: `std`, `libc`
//! and `kvm_bindings` only, nothing of ember's. The programs are for x86_64, as ember is; the
//! syscall and ioctl numbers are libc's and kvm-bindings' of the build host, which build.rs
//! checks is the target's architecture. Adding a rule: run the failing case with
//! `--no-seccomp` under `strace -f`, find the thread (its `prctl(PR_SET_NAME)` line) and add
//! the syscall here, with its arguments narrowed as far as the code that makes it allows.

// libc's ioctl requests are `c_ulong` with glibc but `c_int` with musl: the casts to u64 are
// needed on one of them.
#![allow(clippy::unnecessary_cast)]

use kvm_bindings::{
    kvm_clock_data, kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs, kvm_userspace_memory_region,
};

/// The kinds of ember thread, each with its own filter. [`ThreadKind::name`] is the key of its
/// filter in a `--seccomp-filter` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the event loop, the API's requests, the VM's end.
    Vmm,
    /// The API server thread.
    Api,
    /// A vCPU thread.
    Vcpu,
    /// A block device's I/O thread.
    Block,
    /// A network device's I/O thread.
    Net,
    /// The vsock device's I/O thread.
    Vsock,
    /// The entropy device's I/O thread.
    Rng,
    /// A vhost-user device's thread (virtio-fs, vhost-user-blk): its backend's socket.
    VhostUser,
    /// The serial console's output thread.
    SerialOut,
}

impl ThreadKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [ThreadKind; 9] = [
        Self::Vmm,
        Self::Api,
        Self::Vcpu,
        Self::Block,
        Self::Net,
        Self::Vsock,
        Self::Rng,
        Self::VhostUser,
        Self::SerialOut,
    ];

    /// The filter's name: `vmm`, `api` and `vcpu` as in Firecracker's filter files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Api => "api",
            Self::Vcpu => "vcpu",
            Self::Block => "block",
            Self::Net => "net",
            Self::Vsock => "vsock",
            Self::Rng => "rng",
            Self::VhostUser => "vhost_user",
            Self::SerialOut => "serial_out",
        }
    }
}

/// What a rule allows of one syscall's arguments.
// The arguments are read by compile.rs, which vmm/build.rs runs and the library compiles only
// for its tests: in the library proper, only the names are read (the SIGSYS handler).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(super) enum Args {
    /// Any arguments.
    Any,
    /// The second argument (an ioctl request, an fcntl command, a socket option level) is one
    /// of these.
    Arg1(&'static [u64]),
    /// The first argument (a socket family) is one of these.
    Arg0(&'static [u64]),
    /// `openat` whose flags (third argument) do not include `O_CREAT`: existing files only.
    NoCreate,
}

/// One syscall a thread may make, with the arguments it may pass.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub nr: i64,
    pub name: &'static str,
    #[cfg_attr(not(test), allow(dead_code))]
    pub args: Args,
}

/// `sys!(SYS_read)` allows `read` with any arguments; `sys!(SYS_ioctl, Arg1(&[A, B]))` allows
/// `ioctl` only when its request is A or B.
macro_rules! sys {
    ($nr:ident) => {
        sys!($nr, Any)
    };
    ($nr:ident, $args:ident $(($list:expr))?) => {
        Rule {
            nr: libc::$nr,
            name: stringify!($nr),
            args: Args::$args $(($list))?,
        }
    };
}

// Linux's ioctl request encoding (asm-generic/ioctl.h): direction, size, type, number.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, KVMIO, nr, 0)
}
const fn iow(nr: u64, size: usize) -> u64 {
    ioc(1, KVMIO, nr, size)
}
const fn ior(nr: u64, size: usize) -> u64 {
    ioc(2, KVMIO, nr, size)
}
const KVMIO: u64 = 0xAE;

const KVM_RUN: u64 = io(0x80);
const KVM_GET_REGS: u64 = ior(0x81, size_of::<kvm_regs>());
const KVM_SET_REGS: u64 = iow(0x82, size_of::<kvm_regs>());
const KVM_SET_USER_MEMORY_REGION: u64 = iow(0x46, size_of::<kvm_userspace_memory_region>());
const KVM_IRQ_LINE: u64 = iow(0x61, 8);
const KVM_SET_GSI_ROUTING: u64 = iow(0x6a, size_of::<kvm_irq_routing>());
const KVM_IRQFD: u64 = iow(0x76, size_of::<kvm_irqfd>());
const KVM_IOEVENTFD: u64 = iow(0x79, 64);
const KVM_SIGNAL_MSI: u64 = iow(0xa5, size_of::<kvm_msi>());
const KVM_GET_CLOCK: u64 = ior(0x7c, size_of::<kvm_clock_data>());
const KVM_SET_CLOCK: u64 = iow(0x7b, size_of::<kvm_clock_data>());

/// What every thread may need whatever it runs: the allocator (mmap and friends), locks and
/// channels (futex), std's thread exit and the process's, the logger's write to stderr or the
/// log file, dropped descriptors, the hash maps' seed, and the SIGSYS handler's own return.
const STD: &[Rule] = &[
    sys!(SYS_brk),
    sys!(SYS_mmap),
    sys!(SYS_munmap),
    sys!(SYS_mremap),
    sys!(SYS_mprotect),
    sys!(SYS_madvise),
    sys!(SYS_futex),
    sys!(SYS_sched_yield),
    sys!(SYS_sched_getaffinity),
    sys!(SYS_clock_gettime),
    sys!(SYS_clock_nanosleep),
    sys!(SYS_nanosleep),
    sys!(SYS_gettid),
    sys!(SYS_getpid),
    sys!(SYS_getrandom),
    sys!(SYS_rt_sigprocmask),
    sys!(SYS_rt_sigreturn),
    sys!(SYS_sigaltstack),
    sys!(SYS_write),
    sys!(SYS_writev),
    sys!(SYS_close),
    sys!(SYS_exit),
    sys!(SYS_exit_group),
];

/// Waiting on descriptors and using eventfds and timerfds (every thread that waits for work).
const WAIT: &[Rule] = &[
    sys!(SYS_poll),
    sys!(SYS_ppoll),
    sys!(SYS_read),
    sys!(SYS_timerfd_settime),
    sys!(SYS_timerfd_gettime),
];

/// `fcntl` as std and the device code use it: read and set descriptor and status flags.
const FCNTL: Rule = sys!(
    SYS_fcntl,
    Arg1(&[
        libc::F_GETFD as u64,
        libc::F_SETFD as u64,
        libc::F_GETFL as u64,
        libc::F_SETFL as u64,
    ])
);

/// The main thread once the guest runs: the event loop (console input, the exit, vCPU and
/// signal events, metrics and timeout timers, the API's requests), pausing and kicking vCPUs,
/// the API's updates (a drive's new backing file: existing files only), and the VM's end
/// (stopping virtiofsd, removing the API socket, the terminal's restore).
const VMM: &[Rule] = &[
    sys!(SYS_epoll_wait),
    sys!(SYS_epoll_pwait),
    sys!(SYS_epoll_ctl),
    sys!(SYS_eventfd2),
    sys!(SYS_readv),
    sys!(SYS_lseek),
    sys!(SYS_fstat),
    sys!(SYS_newfstatat),
    sys!(SYS_statx),
    sys!(SYS_openat, NoCreate),
    sys!(SYS_unlink),
    sys!(SYS_tgkill),
    sys!(SYS_kill),
    sys!(SYS_wait4),
    sys!(SYS_fsync),
    sys!(SYS_fdatasync),
    sys!(SYS_ftruncate),
    // A drive's new backing file: its discard probe, and its io_uring with the Async engine.
    sys!(SYS_fallocate),
    sys!(SYS_io_uring_setup),
    sys!(SYS_io_uring_register),
    sys!(SYS_io_uring_enter),
    sys!(SYS_dup),
    sys!(
        SYS_fcntl,
        Arg1(&[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ])
    ),
    sys!(
        SYS_ioctl,
        Arg1(&[
            libc::TCGETS as u64,
            libc::TCSETS as u64,
            libc::TCSETSW as u64,
            libc::TCSETSF as u64,
            libc::TIOCGWINSZ as u64,
            libc::FIONBIO as u64,
            KVM_IRQ_LINE,
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_GET_CLOCK,
            KVM_SET_CLOCK,
            BLKGETSIZE64,
            libc::TUNSETOFFLOAD as u64,
        ])
    ),
];

/// The API thread: accept a connection on its Unix socket, read requests, write replies, and
/// hand each request to the main thread over a channel and an eventfd.
const API: &[Rule] = &[
    sys!(SYS_accept4),
    sys!(SYS_recvfrom),
    sys!(SYS_recvmsg),
    sys!(SYS_sendto),
    sys!(SYS_sendmsg),
    sys!(SYS_shutdown),
    sys!(SYS_ioctl, Arg1(&[libc::FIONBIO as u64])),
    FCNTL,
];

/// A vCPU: KVM_RUN, and the device register accesses it serves in place: interrupts
/// (irqfd writes, MSI routing when the guest programs MSI-X), a device's activation (a NIC's
/// TAP offloads, virtio-fs's vhost-user messages to virtiofsd), the serial console's output
/// (a condvar to the drain thread), the exit and reset events.
const VCPU: &[Rule] = &[
    sys!(
        SYS_ioctl,
        Arg1(&[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_SET_REGS,
            KVM_IRQ_LINE,
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_SET_USER_MEMORY_REGION,
            libc::TUNSETOFFLOAD as u64,
            libc::FIONBIO as u64,
        ])
    ),
    sys!(SYS_sendmsg),
    sys!(SYS_recvmsg),
    sys!(SYS_eventfd2),
    sys!(SYS_tgkill),
    FCNTL,
];

/// A block device's I/O thread: reads, writes, flushes and discards on its backing file,
/// synchronously or through io_uring (whose operations the kernel runs without syscalls).
const BLOCK: &[Rule] = &[
    sys!(SYS_pread64),
    sys!(SYS_pwrite64),
    sys!(SYS_preadv),
    sys!(SYS_pwritev),
    sys!(SYS_readv),
    sys!(SYS_lseek),
    sys!(SYS_fsync),
    sys!(SYS_fdatasync),
    sys!(SYS_fallocate),
    sys!(SYS_io_uring_enter),
    FCNTL,
];

/// A NIC's I/O thread: frames to and from its TAP descriptor (runs of transmitted frames
/// through the TAP's io_uring, made before the thread starts), and the metadata service's
/// timer.
const NET: &[Rule] = &[sys!(SYS_readv), sys!(SYS_io_uring_enter), FCNTL];

/// The vsock device's I/O thread: the host side's Unix sockets (accepting on the listener,
/// connecting to `uds_path_PORT`, reading and writing streams).
const VSOCK: &[Rule] = &[
    sys!(SYS_socket, Arg0(&[libc::AF_UNIX as u64])),
    sys!(SYS_connect),
    sys!(SYS_accept4),
    sys!(SYS_recvfrom),
    sys!(SYS_recvmsg),
    sys!(SYS_sendto),
    sys!(SYS_sendmsg),
    sys!(SYS_readv),
    sys!(SYS_shutdown),
    sys!(SYS_getsockopt),
    // Each connection's send buffer (SO_SNDBUF): socket-level options only.
    sys!(SYS_setsockopt, Arg1(&[libc::SOL_SOCKET as u64])),
    sys!(SYS_ioctl, Arg1(&[libc::FIONBIO as u64])),
    FCNTL,
];

/// The entropy device's I/O thread: the kernel's random bytes.
const RNG: &[Rule] = &[FCNTL];

/// A vhost-user device's thread (virtio-fs, vhost-user-blk): it watches its backend's socket
/// for a hang-up and, for a backend reached by path, connects to a restarted one (a Unix
/// socket), replays the queues to it (messages with descriptors) and keeps a copy of its socket
/// to watch (`F_DUPFD_CLOEXEC`).
const VHOST_USER: &[Rule] = &[
    sys!(SYS_socket, Arg0(&[libc::AF_UNIX as u64])),
    sys!(SYS_connect),
    sys!(SYS_recvmsg),
    sys!(SYS_sendmsg),
    sys!(SYS_fcntl, Arg1(&[libc::F_DUPFD_CLOEXEC as u64])),
    FCNTL,
];

/// The console's output thread: the guest's serial bytes to stdout and the log file.
const SERIAL_OUT: &[Rule] = &[FCNTL];

/// `BLKGETSIZE64`: a block device's size, when a drive's backing file changes.
const BLKGETSIZE64: u64 = ioc(2, 0x12, 114, size_of::<u64>());

/// The rules of `kind`'s filter: what every thread needs, and its own.
pub(super) fn rules(kind: ThreadKind) -> impl Iterator<Item = &'static Rule> {
    let own: &[Rule] = match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Api => API,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Block => BLOCK,
        ThreadKind::Net => NET,
        ThreadKind::Vsock => VSOCK,
        ThreadKind::Rng => RNG,
        ThreadKind::VhostUser => VHOST_USER,
        ThreadKind::SerialOut => SERIAL_OUT,
    };
    STD.iter().chain(WAIT).chain(own)
}

/// Syscalls no filter allows but a thread may try, named for the SIGSYS line.
const NAMED: &[Rule] = &[
    sys!(SYS_getppid),
    sys!(SYS_execve),
    sys!(SYS_execveat),
    sys!(SYS_fork),
    sys!(SYS_vfork),
    sys!(SYS_clone),
    sys!(SYS_clone3),
    sys!(SYS_ptrace),
    sys!(SYS_mount),
    sys!(SYS_open),
    sys!(SYS_socket),
    sys!(SYS_bind),
    sys!(SYS_listen),
    sys!(SYS_uname),
    sys!(SYS_prctl),
    sys!(SYS_seccomp),
    sys!(SYS_ioctl),
    sys!(SYS_openat),
    sys!(SYS_pipe2),
];

/// The name (`SYS_read`) of syscall `nr`, if a list here names it. Safe in a signal handler:
/// it only reads static tables.
pub(super) fn syscall_name(nr: i64) -> Option<&'static str> {
    ThreadKind::ALL
        .into_iter()
        .flat_map(rules)
        .chain(NAMED)
        .find(|rule| rule.nr == nr)
        .map(|rule| rule.name)
}

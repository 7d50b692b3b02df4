//! The jailer's own process: inherited descriptors, resource limits, daemonizing, the fork
//! into a new PID namespace, the pid file, and the final exec of ember as the jailed user.
//! Everything here acts on the calling process; the jailer is single-threaded, which makes
//! its `fork`s safe.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::chroot::check;
use crate::cli::{Jail, Resource, ResourceLimit};

/// Where Firecracker serves its API when not told (`--api-sock`): Kata's jailed Firecracker
/// driver relies on it. ember serves no API unless told, so the jailer tells it.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// ember flags after which the jailer adds no `--api-sock`: those that name the API's socket
/// or refuse one, and those that must stand alone.
const NO_DEFAULT_SOCK: [&str; 8] = [
    "--api-sock",
    "--no-api",
    "--version",
    "-V",
    "--help",
    "-h",
    "--snapshot-version",
    "--describe-snapshot",
];

/// RLIMIT_NOFILE unless `--resource-limit no-file=N` says otherwise (Firecracker's default).
const DEFAULT_NO_FILE: u64 = 2048;

/// Why a process step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// close_range(2) failed.
    #[error("cannot close the inherited file descriptors (close_range needs Linux 5.9 or later)")]
    CloseFds(#[source] std::io::Error),
    /// setrlimit(2) failed.
    #[error("cannot set the resource limit {0:?} to {1}")]
    Limit(Resource, u64, #[source] std::io::Error),
    /// A step of daemonizing failed.
    #[error("cannot daemonize: {0} failed")]
    Daemonize(&'static str, #[source] std::io::Error),
    /// The new PID namespace could not be made.
    #[error("cannot start ember in a new PID namespace: {0} failed")]
    PidNs(&'static str, #[source] std::io::Error),
    /// The pid file could not be written.
    #[error("cannot write the pid file {0} in the jail")]
    PidFile(String, #[source] std::io::Error),
    /// exec(2) failed.
    #[error("cannot run /{0} in the jail as uid {1}, gid {2}")]
    Exec(String, u32, u32, #[source] std::io::Error),
}

/// Closes every descriptor above stderr, before the jailer opens any of its own: nothing the
/// caller left open reaches the jailed process.
pub fn close_inherited_fds() -> Result<(), ProcessError> {
    // SAFETY: close_range only closes descriptors; none above 2 is in use at this point.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, libc::c_uint::MAX, 0u32) };
    check(if rc < 0 { -1 } else { 0 }).map_err(ProcessError::CloseFds)
}

/// `clock` in microseconds (the unit of ember's start-time flags).
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    utils::time::clock_ns(clock) / 1000
}

/// Sets the resource limits (soft and hard), with RLIMIT_NOFILE at 2048 unless given.
pub fn set_limits(limits: &[ResourceLimit]) -> Result<(), ProcessError> {
    let no_file = ResourceLimit {
        resource: Resource::NoFile,
        value: DEFAULT_NO_FILE,
    };
    let given = |r| limits.iter().any(|l| l.resource == r);
    let default = (!given(Resource::NoFile)).then_some(&no_file);
    for limit in limits.iter().chain(default) {
        let which = match limit.resource {
            Resource::FileSize => libc::RLIMIT_FSIZE,
            Resource::NoFile => libc::RLIMIT_NOFILE,
        };
        let rlimit = libc::rlimit {
            rlim_cur: limit.value,
            rlim_max: limit.value,
        };
        // SAFETY: `rlimit` is a valid struct the call only reads.
        check(unsafe { libc::setrlimit(which, &rlimit) })
            .map_err(|e| ProcessError::Limit(limit.resource, limit.value, e))?;
    }
    Ok(())
}

/// fork(2): the child's pid in the parent, 0 in the child.
fn fork() -> std::io::Result<libc::pid_t> {
    // SAFETY: the jailer is single-threaded, so the child inherits a consistent process.
    let pid = unsafe { libc::fork() };
    check(pid).map(|()| pid)
}

/// Detaches as Firecracker's jailer does: fork (the caller's child exits), `setsid`, fork
/// again (so no terminal can become the controlling one), and stdio to `/dev/null`.
pub fn daemonize(dev_null: File) -> Result<(), ProcessError> {
    let fail = |step| move |e| ProcessError::Daemonize(step, e);
    if fork().map_err(fail("fork"))? != 0 {
        std::process::exit(0);
    }
    // SAFETY: setsid has no preconditions; the child of a fork is not a group leader.
    check(unsafe { libc::setsid() }).map_err(fail("setsid"))?;
    if fork().map_err(fail("fork"))? != 0 {
        std::process::exit(0);
    }
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors of a descriptor we own.
        check(unsafe { libc::dup2(dev_null.as_raw_fd(), fd) }).map_err(fail("dup2"))?;
    }
    Ok(())
}

/// Forks a child that is PID 1 of a new PID namespace; the parent writes the child's pid (as
/// the host sees it) to the pid file and exits 0. Returns in the child.
pub fn fork_into_new_pid_ns(exec_name: &str) -> Result<(), ProcessError> {
    // SAFETY: getsid and getpid have no preconditions.
    let leader = unsafe { libc::getsid(0) == libc::getpid() };
    // SAFETY: unshare has no memory preconditions; it affects the children made after it.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })
        .map_err(|e| ProcessError::PidNs("unshare(CLONE_NEWPID)", e))?;
    let child = fork().map_err(|e| ProcessError::PidNs("fork", e))?;
    if child != 0 {
        write_pid_file(exec_name, child.unsigned_abs())?;
        std::process::exit(0);
    }
    if leader {
        // The parent led the session: its exit would hang up the terminal on ember.
        // SAFETY: as in `daemonize`.
        check(unsafe { libc::setsid() }).map_err(|e| ProcessError::PidNs("setsid", e))?;
    }
    Ok(())
}

/// Writes `/<exec name>.pid` in the jail, as Firecracker's jailer does.
pub fn write_pid_file(exec_name: &str, pid: u32) -> Result<(), ProcessError> {
    let path = format!("/{exec_name}.pid");
    let err = |e| ProcessError::PidFile(path.clone(), e);
    // A file left by an earlier run of this id (perhaps a link planted by its tenant) is
    // replaced, not written through.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    write!(file, "{pid}").map_err(err)
}

/// True if ember's arguments (before a `--` that starts the guest's) need no
/// `--api-sock` [`DEFAULT_API_SOCK`] added.
fn names_api_sock(ember_args: &[OsString]) -> bool {
    ember_args
        .iter()
        .take_while(|a| *a != "--")
        .filter_map(|a| a.to_str())
        .any(|a| NO_DEFAULT_SOCK.contains(&a.split('=').next().unwrap_or(a)))
}

/// Execs `/<exec name>` as the jailed user with no supplementary groups (std's `Command`
/// drops them when root sets a uid) and an empty environment, passing Firecracker's flags
/// (`--id`; the start time; as Firecracker's jailer, the CPU clock at exec, which ember's
/// clock goes on from, and the jailer's own CPU time), `--api-sock /run/firecracker.socket` unless the caller's
/// arguments name a socket, then the caller's; returns only on failure.
pub fn exec(jail: &Jail, start_us: u64, jailer_cpu_us: u64) -> ProcessError {
    let exec_cpu_us = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let flags: [(&str, OsString); 4] = [
        ("--id", jail.id.clone().into()),
        ("--start-time-us", start_us.to_string().into()),
        ("--start-time-cpu-us", exec_cpu_us.to_string().into()),
        ("--parent-cpu-time-us", jailer_cpu_us.to_string().into()),
    ];
    let mut command = Command::new(format!("/{}", jail.exec_name));
    command.args(
        flags
            .iter()
            .flat_map(|(flag, value)| [flag.into(), value.clone()]),
    );
    if !names_api_sock(&jail.ember_args) {
        command.args(["--api-sock", DEFAULT_API_SOCK]);
    }
    let err = command
        .args(&jail.ember_args)
        .env_clear()
        .gid(jail.gid)
        .uid(jail.uid)
        .exec();
    ProcessError::Exec(jail.exec_name.clone(), jail.uid, jail.gid, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(args: &[&str]) -> bool {
        names_api_sock(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_default_socket_is_added_unless_the_caller_names_one_or_refuses_the_api() {
        assert!(!names(&[]));
        assert!(!names(&["--config-file", "/vm.json"]));
        assert!(names(&["--api-sock", "/run/x.sock"]));
        assert!(names(&["--api-sock=/run/x.sock"]));
        assert!(names(&["--no-api", "--config-file", "/vm.json"]));
        assert!(names(&["--version"]));
        // After `--` the words are the guest's.
        assert!(!names(&["--kernel", "/k", "--", "--api-sock"]));
    }
}

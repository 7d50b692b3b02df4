//! `ember-jailer`: Firecracker's jailer for ember. It takes Firecracker's jailer command line
//! ([`cli`]), so orchestrators written for Firecracker (firecracker-go-sdk's `JailerConfig`,
//! firecracker-containerd, Kata) can start ember jailed, and runs the same steps in the same
//! order ([`run`]):
//!
//! 1. (in `main`) close every inherited descriptor above stderr;
//! 2. check the arguments and open the network namespace and `/dev/null` while the host's
//!    files are in reach;
//! 3. make `<base>/<exec name>/<id>/root` and copy ember into it ([`chroot::prepare`]);
//!    open the shared libraries a dynamically linked ember needs ([`libs`]);
//! 4. make and join the cgroup ([`cgroup::setup`]), join the network namespace, set the
//!    resource limits;
//! 5. make the jail the root of a new mount namespace and put the device nodes in it
//!    ([`chroot::enter`], [`chroot::populate`]), and the libraries;
//! 6. daemonize and fork into a new PID namespace if asked, write `<exec name>.pid`;
//! 7. drop to `--uid`/`--gid` with no supplementary groups and an empty environment, and exec
//!    ember with `--id <id>`, Firecracker's start-time flags and the arguments after `--`.
//!
//! A failure before step 5 removes what step 3 made. This crate knows nothing of ember's
//! internals: it only runs the binary it is given.

pub mod cgroup;
pub mod chroot;
pub mod cli;
pub mod libs;
mod process;

use std::convert::Infallible;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

pub use cli::{Cli, Jail};
pub use process::close_inherited_fds;

/// Why the jailer stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line does not fit the host.
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    /// The cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The jail could not be built.
    #[error(transparent)]
    Chroot(#[from] chroot::ChrootError),
    /// The exec file's libraries could not be put in the jail.
    #[error(transparent)]
    Libs(#[from] libs::LibsError),
    /// A process step failed.
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    /// The network namespace cannot be opened.
    #[error("--netns {0}: cannot open it (create it with `ip netns add NAME`)")]
    NetnsOpen(PathBuf, #[source] std::io::Error),
    /// Joining the network namespace failed.
    #[error("--netns {0}: cannot join it (is it a network namespace?)")]
    NetnsJoin(PathBuf, #[source] std::io::Error),
    /// A host file the jailer reads could not be read.
    #[error("cannot read {0}")]
    Read(&'static str, #[source] std::io::Error),
}

/// Builds the jail and execs ember in it; returns only on failure (or, in a parent that a
/// `--daemonize` or `--new-pid-ns` fork leaves behind, not at all: it exits 0).
pub fn run(jail: Jail) -> Result<Infallible, Error> {
    let start_us = process::clock_us(libc::CLOCK_MONOTONIC);
    let start_cpu_us = process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    let netns = match &jail.netns {
        Some(path) => Some(File::open(path).map_err(|e| Error::NetnsOpen(path.clone(), e))?),
        None => None,
    };
    let dev_null = match jail.daemonize {
        true => Some(File::open("/dev/null").map_err(|e| Error::Read("/dev/null", e))?),
        false => None,
    };
    let uffd_minor = std::fs::read_to_string("/proc/misc")
        .ok()
        .and_then(|misc| chroot::userfaultfd_minor(&misc));
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| Error::Read("/proc/mounts", e))?;

    let libs = libs::open(&jail.exec_file)?;
    let dir = chroot::prepare(&jail)?;
    cgroup::setup(&jail, &mounts)?;
    if let (Some(file), Some(path)) = (&netns, &jail.netns) {
        // SAFETY: setns on a descriptor we own; it changes only this process's namespace.
        chroot::check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })
            .map_err(|e| Error::NetnsJoin(path.clone(), e))?;
    }
    drop(netns);
    process::set_limits(&jail.limits)?;
    chroot::enter(&jail.root)?;
    dir.keep();
    chroot::populate(jail.uid, jail.gid, uffd_minor)?;
    libs::install(libs)?;

    // Measured before any fork: a child's CPU clock starts again from zero.
    let jailer_cpu_us =
        process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(start_cpu_us);
    if let Some(dev_null) = dev_null {
        process::daemonize(dev_null)?;
    }
    if jail.new_pid_ns {
        process::fork_into_new_pid_ns(&jail.exec_name)?;
    } else {
        process::write_pid_file(&jail.exec_name, std::process::id())?;
    }
    Err(process::exec(&jail, start_us, jailer_cpu_us).into())
}

//! The backends of shared directories: the virtiofsd processes ember starts for `--share` (and
//! `shared_dir`), and the connection to each share's vhost-user backend, opened before KVM is
//! touched so that a share that cannot be served is the error a user sees first.
//!
//! virtiofsd is found through `$EMBER_VIRTIOFSD`, then `PATH`, then Debian's
//! `/usr/libexec/virtiofsd`. ember creates its listening socket and hands it over (`--fd`),
//! then connects at once: nothing waits for a socket to appear, and a virtiofsd that fails to
//! start is seen as a hang-up during negotiation, reported with its exit status.
//!
//! A [`Virtiofsd`] runs in a process group of its own and is owned by the device manager,
//! which kills the group and reaps virtiofsd when dropped, on every way ember's VM ends.
//! Should ember itself be killed, the kernel kills virtiofsd too (`PR_SET_PDEATHSIG`, set for
//! the main thread, which starts it and lives as long as ember; a child that finds ember gone
//! already, before the signal was set, exits before it execs); its sandbox is `chroot`
//! (as root), which does not fork, so there is no second process to leave behind. No
//! virtiofsd outlives ember.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use devices::virtio::fs::QUEUES;
use devices::virtio::vhost_user::{Backend, BackendError};
use log::{info, warn};

use crate::share::{FsBackend, FsSpec};

/// The environment variable naming the virtiofsd binary.
pub const VIRTIOFSD_ENV: &str = "EMBER_VIRTIOFSD";
/// Where Debian's virtiofsd package installs it (off PATH).
const DEBIAN_PATH: &str = "/usr/libexec/virtiofsd";

/// Errors starting or reaching a share's backend.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// No virtiofsd binary.
    #[error(
        "virtiofsd is not installed: install it (resources/setup-host.sh does, with `cargo \
         install virtiofsd`), put it on PATH or set {VIRTIOFSD_ENV}=/path/to/virtiofsd"
    )]
    NotFound,
    /// `$EMBER_VIRTIOFSD` names no file.
    #[error("{VIRTIOFSD_ENV}={} is not a file; point it at the virtiofsd binary", .0.display())]
    BadEnv(PathBuf),
    /// The socket handed to virtiofsd cannot be made.
    #[error("cannot create the socket for virtiofsd at '{}'", path.display())]
    Socket {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// virtiofsd cannot be started.
    #[error("cannot start virtiofsd '{}'", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// virtiofsd exited during negotiation.
    #[error("virtiofsd exited at start ({0}); its messages above say why")]
    Exited(ExitStatus),
    /// The backend failed negotiation.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A virtiofsd ember started, killed and reaped when dropped.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    tag: String,
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            warn!("virtiofsd of share '{}' had exited ({status})", self.tag);
        }
        // Its whole process group, even when virtiofsd itself is gone, in case anything it
        // started lives on. The group's id cannot be reused while the child is unreaped or
        // any member of the group lives.
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(-group, libc::SIGKILL) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                warn!("cannot stop virtiofsd of share '{}': {err}", self.tag);
            }
        }
        let _ = self.child.wait();
    }
}

/// A share's negotiated backend, and the virtiofsd serving it if ember started one.
pub struct OpenShare {
    /// The connection.
    pub backend: Backend,
    /// The process, for `--share`.
    pub daemon: Option<Virtiofsd>,
}

/// Starts or reaches the backend of `share` and negotiates with it.
pub fn open(share: &FsSpec) -> Result<OpenShare, ShareError> {
    match &share.backend {
        FsBackend::Socket(path) => Ok(OpenShare {
            backend: Backend::connect(path, QUEUES)?,
            daemon: None,
        }),
        FsBackend::Virtiofsd { dir, read_only } => {
            let (mut daemon, stream) = start(share, dir, *read_only)?;
            match Backend::from_stream(stream, QUEUES) {
                Ok(backend) => Ok(OpenShare {
                    backend,
                    daemon: Some(daemon),
                }),
                Err(err) => Err(exit_status(&mut daemon).map_or(err.into(), ShareError::Exited)),
            }
        }
    }
}

/// How `daemon` ended, if it did: a virtiofsd that failed to start closes its socket as it
/// exits, so its status follows within moments.
fn exit_status(daemon: &mut Virtiofsd) -> Option<ExitStatus> {
    for _ in 0..50 {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// The virtiofsd binary.
pub fn find() -> Result<PathBuf, ShareError> {
    if let Some(path) = std::env::var_os(VIRTIOFSD_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ShareError::BadEnv(path))
        };
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("virtiofsd"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_PATH)).filter(|p| p.is_file()))
        .ok_or(ShareError::NotFound)
}

/// Starts virtiofsd for `dir` on a socket ember made, and connects to it.
fn start(
    share: &FsSpec,
    dir: &Path,
    read_only: bool,
) -> Result<(Virtiofsd, UnixStream), ShareError> {
    let binary = find()?;
    let path =
        std::env::temp_dir().join(format!("ember-{}-fs-{}.sock", std::process::id(), share.id));
    let socket_err = |source| ShareError::Socket {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(socket_err)?;
    let started = spawn(&binary, &listener, share, dir, read_only);
    // The connection waits in the listener's queue until virtiofsd accepts it; ember's copy
    // of the listener goes, so that a virtiofsd that dies leaves no one to accept it.
    let stream = UnixStream::connect(&path);
    drop(listener);
    if let Err(err) = std::fs::remove_file(&path) {
        warn!("cannot remove the socket '{}': {err}", path.display());
    }
    let child = started?;
    info!(
        "share '{}': virtiofsd (pid {}) serves '{}'{}",
        share.tag,
        child.id(),
        dir.display(),
        if read_only { " read-only" } else { "" }
    );
    let daemon = Virtiofsd {
        child,
        tag: share.tag.clone(),
    };
    Ok((daemon, stream.map_err(socket_err)?))
}

/// Debug builds only: how long the child waits after the fork before it ties its life to
/// ember's ($EMBER_TEST_VIRTIOFSD_PAUSE_MS), so that a test can kill ember in that window.
/// Read before the fork: the child may not take the environment's lock.
fn test_pause() -> Option<libc::timespec> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let ms: u32 = std::env::var("EMBER_TEST_VIRTIOFSD_PAUSE_MS")
        .ok()?
        .parse()
        .ok()?;
    Some(libc::timespec {
        tv_sec: (ms / 1000).into(),
        tv_nsec: (ms % 1000 * 1_000_000).into(),
    })
}

fn spawn(
    binary: &Path,
    listener: &UnixListener,
    share: &FsSpec,
    dir: &Path,
    read_only: bool,
) -> Result<Child, ShareError> {
    let fd = listener.as_raw_fd();
    let mut args: Vec<OsString> = vec![
        "--shared-dir".into(),
        dir.into(),
        "--tag".into(),
        share.tag.clone().into(),
        format!("--fd={fd}").into(),
        "--log-level=warn".into(),
    ];
    if read_only {
        args.push("--readonly".into());
    }
    // Not virtiofsd's default sandbox (namespaces): in it, virtiofsd forks, and the fork that
    // serves becomes the init of a new PID namespace, which ignores the death signal its
    // parent set, so it would outlive a killed ember. chroot confines it without forking;
    // it needs root, without which there is no sandbox.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    args.push(
        if root {
            "--sandbox=chroot"
        } else {
            "--sandbox=none"
        }
        .into(),
    );
    let mut cmd = Command::new(binary);
    cmd.args(&args);
    let ember = std::process::id() as libc::pid_t;
    let pause = test_pause();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls, on a descriptor the child inherited and on itself.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(pause) = &pause {
                libc::nanosleep(pause, std::ptr::null_mut());
            }
            // The listener is close-on-exec in ember; virtiofsd must keep it. Its own process
            // group lets ember stop it and the processes it forks at once, and keeps a
            // terminal's Ctrl-C (which ember handles) away from it.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0
                || libc::setpgid(0, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // An ember that died since the fork (killed, or a thread's forbidden syscall)
            // sends no death signal: the child must not go on to serve no one for ever.
            // (0: ember is in an outer PID namespace, so the child cannot tell; as before.)
            let parent = libc::getppid();
            if parent != ember && parent != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ShareError::Spawn {
        path: binary.to_owned(),
        source,
    })
}

//! Seccomp filters: one per kind of ember thread ([`ThreadKind`]), each allowing only the
//! syscalls, and where they matter the arguments, that the thread makes ([`rules`]). Any other
//! syscall raises SIGSYS, whose handler names the thread and the syscall on stderr and ends
//! ember with status [`BAD_SYSCALL`], so that a missing rule shows at once.
//!
//! The built-in filters are compiled at build time: vmm/build.rs compiles the table of
//! [`rules`] into binary searches over the syscall numbers (`compile.rs`, which says why it
//! does not use seccompiler's compiler) and writes the BPF programs as static Rust arrays into
//! `$OUT_DIR/seccomp_filters.rs`, included here; at start ember only takes their addresses. A
//! unit test compiles the table again and compares; another requires the same decisions as
//! seccompiler's program of the same table. seccompiler compiles `--seccomp-filter` files.
//!
//! [`init`] runs on the main thread before any other thread exists: it takes the built-in
//! filters (or compiles a user's, `--seccomp-filter`) and installs the SIGSYS handler. Each
//! thread then calls [`apply`] first thing in its body; a thread inherits its creator's
//! filter, so no thread is created by a filtered one: the main thread installs its own last,
//! once the vCPUs and device threads exist, and the vCPUs wait for it before their first
//! `KVM_RUN` (`builder`). Without [`init`] (library tests) [`apply`] does nothing.
//!
//! This module owns the filters and the SIGSYS handler; it must not decide where threads
//! start (their owners call [`apply`]).

#[cfg(test)]
mod compile;
mod rules;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::{TargetArch, sock_filter};

pub use rules::ThreadKind;

/// A BPF program: built in (static), or compiled from a `--seccomp-filter` file.
type Program = Cow<'static, [sock_filter]>;

/// The exit status after a forbidden syscall: Firecracker's (`FcExitCode::BadSyscall`).
pub const BAD_SYSCALL: i32 = 148;

/// Which filters ember installs: `--no-seccomp`, `--seccomp-filter FILE`, or its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// ember's built-in filters.
    BuiltIn,
    /// No filters at all.
    Off,
    /// The filters a seccompiler JSON description in this file gives, one per thread kind.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read the seccomp filter file {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{} is not a seccompiler JSON filter description (Firecracker's compiled, bincode \
         filters are not supported: give the JSON that seccompiler-bin compiles)",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: seccompiler::Error,
    },
    #[error(
        "the seccomp filter file {} has no filter for the {kind} threads; it needs one for \
         each of: {}",
        path.display(), kind_names()
    )]
    Missing { path: PathBuf, kind: &'static str },
    #[error(
        "the seccomp filter file {} has a filter for `{name}`, which is no ember thread kind \
         (they are: {})",
        path.display(), kind_names()
    )]
    Unknown { path: PathBuf, name: String },
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
    #[error(
        "cannot install the seccomp filter of the {kind} thread (run with --no-seccomp on a kernel without seccomp)"
    )]
    Apply {
        kind: &'static str,
        source: seccompiler::Error,
    },
}

fn kind_names() -> String {
    ThreadKind::ALL.map(ThreadKind::name).join(", ")
}

/// The filters [`init`] made, or none with `--no-seccomp`.
struct Filters {
    programs: Option<HashMap<ThreadKind, Program>>,
    /// Debug builds only: the kind whose thread makes a forbidden syscall right after
    /// installing its filter ($EMBER_SECCOMP_TEST_TRIGGER), for the tests of each filter.
    trigger: Option<ThreadKind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Takes or compiles the filters `mode` asks for and installs the SIGSYS handler. Call once,
/// on the main thread before it starts any other.
pub fn init(mode: &Mode) -> Result<(), SeccompError> {
    let programs = match mode {
        Mode::Off => None,
        Mode::BuiltIn => Some(built_in()),
        Mode::File(path) => Some(from_file(path)?),
    };
    if programs.is_some() {
        handler::install().map_err(SeccompError::Handler)?;
    }
    let trigger = if cfg!(debug_assertions) {
        std::env::var("EMBER_SECCOMP_TEST_TRIGGER")
            .ok()
            .and_then(|name| ThreadKind::ALL.into_iter().find(|k| k.name() == name))
    } else {
        None
    };
    // A second call keeps the first filters: there is one process-wide choice.
    let _ = FILTERS.set(Filters { programs, trigger });
    Ok(())
}

/// Installs `kind`'s filter on the calling thread, unless filters are off or [`init`] never
/// ran.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let Some(program) = filters.programs.as_ref().and_then(|p| p.get(&kind)) else {
        return Ok(());
    };
    handler::name_thread(kind);
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Apply {
        kind: kind.name(),
        source,
    })?;
    if filters.trigger == Some(kind) {
        // SAFETY: getppid takes no arguments and touches no memory; the filter forbids it,
        // so this raises SIGSYS, which is the point.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// The length in instructions of the program [`apply`] installs for `kind`, if it installs
/// one (for the benchmarks).
pub fn program_length(kind: ThreadKind) -> Option<usize> {
    let programs = FILTERS.get()?.programs.as_ref()?;
    programs.get(&kind).map(|p| p.len())
}

/// [`apply`] for a thread that has no one to return an error to: a thread that cannot be
/// filtered must not run, so ember stops, saying why.
pub fn apply_or_exit(kind: ThreadKind) {
    if let Err(err) = apply(kind) {
        eprintln!("ember: error: {}", crate::error_chain(&err));
        std::process::exit(crate::ExitStatus::ConfigError.code().into());
    }
}

/// The built-in filters, as vmm/build.rs compiled them.
fn built_in() -> HashMap<ThreadKind, Program> {
    ThreadKind::ALL
        .map(|kind| (kind, Cow::Borrowed(built_in_program(kind))))
        .into()
}

// The built-in programs, compiled by vmm/build.rs from the table of `rules.rs`:
// `fn built_in_program(kind: ThreadKind) -> &'static [sock_filter]`.
include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// The architecture of every filter: ember runs on x86_64 only (vmm/build.rs refuses others).
const ARCH: TargetArch = TargetArch::x86_64;

/// The filters of a seccompiler JSON description (the input format of `seccompiler-bin`,
/// Firecracker's filter compiler): one named filter per [`ThreadKind`], no more, no fewer.
fn from_file(path: &Path) -> Result<HashMap<ThreadKind, Program>, SeccompError> {
    let file = std::fs::File::open(path).map_err(|source| SeccompError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut compiled =
        seccompiler::compile_from_json(io::BufReader::new(file), ARCH).map_err(|source| {
            SeccompError::Parse {
                path: path.to_owned(),
                source,
            }
        })?;
    let programs = ThreadKind::ALL
        .into_iter()
        .map(|kind| match compiled.remove(kind.name()) {
            Some(program) => Ok((kind, Cow::Owned(program))),
            None => Err(SeccompError::Missing {
                path: path.to_owned(),
                kind: kind.name(),
            }),
        })
        .collect::<Result<_, _>>()?;
    if let Some(name) = compiled.into_keys().next() {
        return Err(SeccompError::Unknown {
            path: path.to_owned(),
            name,
        });
    }
    Ok(programs)
}

mod handler;

#[cfg(test)]
mod tests;

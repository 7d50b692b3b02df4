//! Seccomp filters: one per kind of ember thread ([`ThreadKind`]), each allowing only the
//! syscalls, and where they matter the arguments, that the thread makes ([`rules`]). Any other
//! syscall raises SIGSYS, whose handler names the thread and the syscall on stderr and ends
//! ember with status [`BAD_SYSCALL`], so that a missing rule shows at once.
//!
//! [`init`] runs on the main thread before any other thread exists: it compiles the filters
//! (or reads a user's, `--seccomp-filter`) and installs the SIGSYS handler. Each thread then
//! calls [`apply`] first thing in its body; a thread inherits its creator's filter, so no
//! thread is created by a filtered one: the main thread installs its own last, once the vCPUs
//! and device threads exist, and the vCPUs wait for it before their first `KVM_RUN`
//! (`builder`). Without [`init`] (library tests) [`apply`] does nothing.
//!
//! This module owns the filters and the SIGSYS handler; it must not decide where threads
//! start (their owners call [`apply`]).

mod rules;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use rules::{Args, Rule};

/// The exit status after a forbidden syscall: Firecracker's (`FcExitCode::BadSyscall`).
pub const BAD_SYSCALL: i32 = 148;

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
    #[error("cannot compile the seccomp filter of the {kind} threads: {source}")]
    Compile {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
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
    programs: Option<HashMap<ThreadKind, BpfProgram>>,
    /// Debug builds only: the kind whose thread makes a forbidden syscall right after
    /// installing its filter ($EMBER_SECCOMP_TEST_TRIGGER), for the tests of each filter.
    trigger: Option<ThreadKind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Compiles or reads the filters `mode` asks for and installs the SIGSYS handler. Call once,
/// on the main thread before it starts any other.
pub fn init(mode: &Mode) -> Result<(), SeccompError> {
    let programs = match mode {
        Mode::Off => None,
        Mode::BuiltIn => Some(built_in()?),
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

/// [`apply`] for a thread that has no one to return an error to: a thread that cannot be
/// filtered must not run, so ember stops, saying why.
pub fn apply_or_exit(kind: ThreadKind) {
    if let Err(err) = apply(kind) {
        eprintln!("ember: error: {}", crate::error_chain(&err));
        std::process::exit(crate::ExitStatus::ConfigError.code().into());
    }
}

/// The built-in filters, compiled from [`rules`].
fn built_in() -> Result<HashMap<ThreadKind, BpfProgram>, SeccompError> {
    ThreadKind::ALL
        .into_iter()
        .map(|kind| {
            let compile = |source| SeccompError::Compile {
                kind: kind.name(),
                source,
            };
            let filter = SeccompFilter::new(
                syscall_rules(rules::rules(kind)).map_err(compile)?,
                SeccompAction::Trap,
                SeccompAction::Allow,
                arch(),
            )
            .map_err(compile)?;
            Ok((kind, BpfProgram::try_from(filter).map_err(compile)?))
        })
        .collect()
}

/// seccompiler's map from syscall to the rules of which one must match: no rules (any
/// arguments) if one of `rules` allows any; one rule per allowed value otherwise.
fn syscall_rules<'a>(
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let conditions = match rule.args {
            Args::Any => None,
            Args::Arg0(values) => Some(equal_to(0, values)?),
            Args::Arg1(values) => Some(equal_to(1, values)?),
            Args::NoCreate => Some(vec![SeccompRule::new(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::O_CREAT as u64),
                0,
            )?])?]),
        };
        let entry = map.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), conditions) {
            (Some(all), Some(more)) => all.extend(more),
            // Allowed with any arguments by one rule: the others add nothing.
            _ => *entry = None,
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

/// One rule per value: argument `index` (32 bits, as the kernel's `int` and `unsigned int`
/// arguments are) equals it.
fn equal_to(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|&value| {
            SeccompRule::new(vec![SeccompCondition::new(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?])
        })
        .collect()
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

/// The filters of a seccompiler JSON description (the input format of `seccompiler-bin`,
/// Firecracker's filter compiler): one named filter per [`ThreadKind`], no more, no fewer.
fn from_file(path: &Path) -> Result<HashMap<ThreadKind, BpfProgram>, SeccompError> {
    let file = std::fs::File::open(path).map_err(|source| SeccompError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut compiled =
        seccompiler::compile_from_json(io::BufReader::new(file), arch()).map_err(|source| {
            SeccompError::Parse {
                path: path.to_owned(),
                source,
            }
        })?;
    let programs = ThreadKind::ALL
        .into_iter()
        .map(|kind| match compiled.remove(kind.name()) {
            Some(program) => Ok((kind, program)),
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

//! ember: a KVM microVM monitor.
//!
//! One process runs one microVM. A configuration in Firecracker's model
//! ([`api_server::model::VmConfig`], from flags, a config file or the API) is parsed once into a
//! [`spec::VmSpec`]; [`builder::run`] turns that into a running VM: guest memory, the kernel and
//! its boot structures, the devices ([`device_manager`]), one thread per vCPU, and an event loop
//! on the calling thread that feeds the console, answers the API ([`lifecycle`]) and waits for
//! a reason to stop ([`controller`]). The [`ExitStatus`] it returns is ember's process exit status,
//! which CI users script against.

pub mod api;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod config;
pub mod console;
pub mod controller;
pub mod device_manager;
pub mod escape;
pub mod images;
pub mod io_worker;
pub mod lifecycle;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod mmds;
pub mod pause;
pub mod run;
pub mod seccomp;
pub mod share;
pub mod spec;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;

/// How an ember process ends. The numbers are part of ember's interface (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest rebooted, reset or powered off the machine: 0.
    GuestStopped,
    /// The guest wrote this code to the exit port: the code itself.
    GuestCode(u8),
    /// The guest kernel panicked: 123.
    GuestPanic,
    /// The VM could not be configured or started (flags, files, KVM access): 64.
    ConfigError,
    /// `--timeout` expired before the guest stopped: 124.
    Timeout,
    /// The guest or a vCPU failed: triple fault, KVM internal error, vCPU failure: 125.
    GuestCrash,
    /// ember was asked to stop by a signal: 128 + the signal number.
    Signal(i32),
    /// The user typed Ctrl-A x on the console: 130, the status Ctrl-C gives a program.
    ConsoleQuit,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::GuestStopped => 0,
            Self::GuestCode(code) => code,
            Self::GuestPanic => 123,
            Self::ConfigError => 64,
            Self::Timeout => 124,
            Self::GuestCrash => 125,
            Self::Signal(n) => u8::try_from(128 + n).unwrap_or(u8::MAX),
            Self::ConsoleQuit => 128 + libc::SIGINT as u8,
        }
    }
}

/// "outer: cause: root cause", each message once: how ember reports an error chain on stderr
/// and in API fault messages (shared with `ember-jailer`, hence in `utils`).
pub use utils::error_chain;

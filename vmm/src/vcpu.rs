//! vCPU threads: one named thread per vCPU runs `KVM_RUN` and forwards every port and MMIO exit
//! to the shared buses; any other exit ends the thread with a [`VcpuExit`] reported to the VMM.
//!
//! Stopping is cooperative but cannot be missed: the VMM sets the thread's stop flag and sends
//! it [`kick_signal`]; the handler sets `immediate_exit` in the vCPU's `kvm_run`, so a `KVM_RUN`
//! that is about to start returns at once and one in progress returns `EINTR`. The thread then
//! sees the flag and exits. This module must not know what devices exist.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once, RwLock};
use std::thread::{self, JoinHandle};

use devices::bus::Bus;
use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use log::{debug, error, info};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::regs::{self, RegsError};
use crate::pause::{Parker, PauseGate};
use crate::seccomp::{self, ThreadKind};

/// Errors preparing or starting a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM rejected the vCPU's CPUID.
    #[error("cannot set the CPUID of vCPU {index}")]
    Cpuid {
        /// The vCPU.
        index: u8,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A register could not be set.
    #[error("cannot set up vCPU {index}")]
    Regs {
        /// The vCPU.
        index: u8,
        /// What failed.
        #[source]
        source: RegsError,
    },
    /// The thread could not be spawned.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// The vCPU.
        index: u8,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
}

/// Why a vCPU thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// The VMM asked it to stop.
    Stopped,
    /// The guest asked the platform to reset (a system event from KVM).
    GuestReset,
    /// The guest asked the platform to power off (a system event from KVM).
    GuestShutdown,
    /// The guest triple-faulted.
    TripleFault,
    /// KVM could not continue running the guest.
    Failed(String),
}

/// What a vCPU thread reports when it ends.
#[derive(Debug)]
pub struct VcpuEvent {
    /// The vCPU.
    pub index: u8,
    /// Why it ended.
    pub exit: VcpuExit,
}

/// A configured vCPU, ready to run.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    /// Wraps vCPU `index`, whose exits go to the `pio` and `mmio` buses.
    pub fn new(index: u8, fd: VcpuFd, pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Self {
            index,
            fd,
            pio,
            mmio,
        }
    }

    /// Programs CPUID, MSRs, registers, FPU and LAPIC for the first instruction at `entry`.
    /// Application processors get the same state; KVM keeps them waiting for the INIT/SIPI the
    /// guest sends, which resets them.
    pub fn configure(&self, entry: u64, supported: &CpuId, count: u8) -> Result<(), VcpuError> {
        let index = self.index;
        let mut cpuid = supported.clone();
        cpuid::configure(cpuid.as_mut_slice(), VcpuTopology { index, count });
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let regs = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(&self.fd).map_err(regs)?;
        regs::setup_regs(&self.fd, entry).map_err(regs)?;
        regs::setup_fpu(&self.fd).map_err(regs)?;
        regs::setup_sregs(&self.fd).map_err(regs)?;
        regs::setup_lapic(&self.fd).map_err(regs)?;
        Ok(())
    }

    /// Starts the vCPU on its own thread; it runs until `stop` is raised (by the VMM through
    /// the handle, or by a device the guest asked to end the VM). When it ends, the thread
    /// sends a [`VcpuEvent`] on `events` and writes `exit_evt`. The thread installs its
    /// seccomp filter, then waits for a read lock on `hold` before entering the guest: the
    /// caller holds the write lock until the VMM's own filter is in (see [`crate::seccomp`]).
    pub fn start(
        self,
        events: Sender<VcpuEvent>,
        exit_evt: &EventFd,
        stop: Arc<AtomicBool>,
        gate: Arc<PauseGate>,
        hold: Arc<RwLock<()>>,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let exit_evt = exit_evt
            .try_clone()
            .map_err(|source| VcpuError::Spawn { index, source })?;
        let thread_stop = stop.clone();
        // Firecracker's thread name: orchestrators (Kata Containers) find vCPU threads by it
        // to pin them, as soon as the API says Running. A new thread takes its name once it
        // runs, so start() returns only then.
        let (running_tx, running) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("fc_vcpu {index}"))
            .spawn(move || {
                seccomp::apply_or_exit(ThreadKind::Vcpu);
                let _ = running_tx.send(());
                drop(devices::sync::read(&hold));
                let exit = self.run(&thread_stop, &gate);
                if events.send(VcpuEvent { index, exit }).is_ok() {
                    let _ = exit_evt.write(1);
                }
            })
            .map_err(|source| VcpuError::Spawn { index, source })?;
        // An error only means the thread ended first; its exit is reported as usual.
        let _ = running.recv();
        Ok(VcpuHandle { thread, stop })
    }

    fn run(mut self, stop: &AtomicBool, gate: &PauseGate) -> VcpuExit {
        if self.index == 0 {
            // The end of ember's own setup cost; benches/boot.rs reads this line.
            info!(
                "vcpu0 entering the guest at monotonic {} ns",
                monotonic_ns()
            );
        }
        let immediate_exit: *mut u8 = &raw mut self.fd.get_kvm_run().immediate_exit;
        KICK_TARGET.with(|t| t.set(immediate_exit));
        let exit = loop {
            if gate.is_paused() {
                gate.park(Parker::Vcpu, Some(stop));
            }
            if stop.load(Ordering::Acquire) {
                break VcpuExit::Stopped;
            }
            if let Some(exit) = self.run_once() {
                break exit;
            }
        };
        KICK_TARGET.with(|t| t.set(std::ptr::null_mut()));
        if self.index == 0 {
            // The start of ember's teardown; benches/boot.rs reads this line.
            info!("vcpu0 left the guest at monotonic {} ns", monotonic_ns());
        }
        exit
    }

    /// Runs the guest until its next exit and handles it; `Some` when the vCPU must end.
    fn run_once(&mut self) -> Option<VcpuExit> {
        match self.fd.run() {
            Ok(KvmExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    debug!("vcpu{}: read of unassigned port {port:#x}", self.index);
                }
                None
            }
            Ok(KvmExit::IoOut(port, data)) => {
                if !self.pio.write(u64::from(port), data) {
                    debug!("vcpu{}: write to unassigned port {port:#x}", self.index);
                }
                None
            }
            Ok(KvmExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    debug!("vcpu{}: read of unassigned MMIO {addr:#x}", self.index);
                }
                None
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    debug!("vcpu{}: write to unassigned MMIO {addr:#x}", self.index);
                }
                None
            }
            Ok(KvmExit::Shutdown) => Some(VcpuExit::TripleFault),
            Ok(KvmExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_RESET => VcpuExit::GuestReset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::GuestShutdown,
                KVM_SYSTEM_EVENT_CRASH => VcpuExit::Failed("the guest reported a crash".into()),
                other => VcpuExit::Failed(format!("unknown system event {other}")),
            }),
            Ok(KvmExit::InternalError) => Some(VcpuExit::Failed(
                "KVM internal error (emulation failure)".into(),
            )),
            Ok(KvmExit::FailEntry(reason, cpu)) => Some(VcpuExit::Failed(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(other) => Some(VcpuExit::Failed(format!("unexpected exit {other:?}"))),
            Err(err) if err.errno() == libc::EINTR => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(err) if err.errno() == libc::EAGAIN => None,
            Err(err) => {
                error!("vcpu{}: KVM_RUN failed: {err}", self.index);
                Some(VcpuExit::Failed(format!("KVM_RUN failed: {err}")))
            }
        }
    }
}

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl VcpuHandle {
    /// Asks the vCPU to stop and interrupts `KVM_RUN`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
    }

    /// Interrupts `KVM_RUN`, so the thread looks at its stop flag and the pause gate.
    pub fn kick(&self) {
        if !self.thread.is_finished() {
            if let Err(err) = self.thread.kill(kick_signal()) {
                debug!("cannot kick a vCPU thread: {err}");
            }
        }
    }

    /// Stops the vCPU and waits for its thread to end.
    pub fn join(self) {
        self.stop();
        if self.thread.join().is_err() {
            error!("a vCPU thread panicked");
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, comparable across processes on this host.
pub fn monotonic_ns() -> u64 {
    utils::time::clock_ns(libc::CLOCK_MONOTONIC)
}

/// The real-time signal that interrupts a vCPU thread.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// The `immediate_exit` flag in the `kvm_run` of the vCPU this thread runs, for the kick
    /// handler; null outside [`Vcpu::run`].
    static KICK_TARGET: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KICK_TARGET.with(|target| {
        let flag = target.get();
        if !flag.is_null() {
            // SAFETY: the pointer is set by `Vcpu::run` on this very thread to a byte of the
            // mmapped `kvm_run` of the vCPU it owns for the whole time the pointer is set, and
            // cleared before it returns; a signal handler runs on the interrupted thread, so the
            // mapping is alive. A volatile byte store is async-signal-safe, and KVM reads the
            // flag from that shared mapping.
            unsafe { flag.write_volatile(1) };
        }
    });
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result =
            register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::SignalHandler);
    });
    result
}

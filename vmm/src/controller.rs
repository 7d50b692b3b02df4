//! The VMM thread's view of the running VM: an event-loop subscriber that learns why the VM
//! must stop (an exit the guest asked a device for, a vCPU that ended, the `--timeout`
//! deadline, a termination signal, Ctrl-A x on the console) and records the [`Outcome`] the process exits with. It
//! decides, it does not act: tearing down vCPUs and devices is the caller's job once an
//! outcome is set.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use devices::{ExitNotifier, GuestExit};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::ExitStatus;
use crate::vcpu::{VcpuEvent, VcpuExit};

/// How the VM ended and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The process exit status.
    pub status: ExitStatus,
    /// A one-line explanation (empty when the guest simply rebooted).
    pub message: String,
}

const TOKEN_GUEST_EXIT: u32 = 0;
const TOKEN_VCPU: u32 = 1;
const TOKEN_TIMER: u32 = 2;
const TOKEN_SIGNAL: u32 = 3;
const TOKEN_CONSOLE_QUIT: u32 = 4;

/// Signals that stop ember gracefully (guest output flushed, terminal restored).
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for [`STOP_SIGNALS`], which are blocked in the calling thread (and so in every
/// thread it starts afterwards) so that they arrive here instead of killing the process.
pub struct StopSignals(OwnedFd);

impl StopSignals {
    /// Blocks the stop signals and opens a descriptor that reports them.
    pub fn block() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for sig in STOP_SIGNALS {
            // SAFETY: as above; `sig` is a valid signal number.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor, which nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Another descriptor for the same signals.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }

    /// The descriptor, to wait on.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    /// The next pending stop signal, if any.
    pub fn read(&self) -> Option<u32> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is exactly that large.
        let n = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut info).cast(), size) };
        (n == size as isize).then_some(info.ssi_signo)
    }
}

/// The subscriber that decides when and how the VM ends.
pub struct Controller {
    guest_exit: ExitNotifier,
    vcpu_evt: EventFd,
    vcpu_events: Receiver<VcpuEvent>,
    timer: Option<(TimerFd, Duration)>,
    signals: StopSignals,
    console_quit: EventFd,
    outcome: Option<Outcome>,
}

impl Controller {
    /// Watches the devices' `guest_exit`, `vcpu_evt` with its channel, `signals`, and a
    /// deadline of `timeout` from now if given.
    pub fn new(
        guest_exit: ExitNotifier,
        vcpu_evt: EventFd,
        vcpu_events: Receiver<VcpuEvent>,
        signals: StopSignals,
        timeout: Option<Duration>,
    ) -> io::Result<Self> {
        let timer = timeout
            .map(|t| -> io::Result<_> {
                let mut timer = TimerFd::new().map_err(io::Error::from)?;
                timer.reset(t, None).map_err(io::Error::from)?;
                Ok((timer, t))
            })
            .transpose()?;
        Ok(Self {
            guest_exit,
            vcpu_evt,
            vcpu_events,
            timer,
            signals,
            console_quit: EventFd::new(libc::EFD_NONBLOCK)?,
            outcome: None,
        })
    }

    /// The event the console's Ctrl-A x writes to end the VM.
    pub fn console_quit(&self) -> io::Result<EventFd> {
        self.console_quit.try_clone()
    }

    /// The outcome, once the VM must stop.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn finish(&mut self, status: ExitStatus, message: String) {
        // The first reason wins: stopping the other vCPUs makes them report too.
        if self.outcome.is_none() {
            info!("stopping the VM: {status:?} {message}");
            self.outcome = Some(Outcome { status, message });
        }
    }

    fn on_vcpu_events(&mut self) {
        let _ = self.vcpu_evt.read();
        while let Ok(VcpuEvent { index, exit }) = self.vcpu_events.try_recv() {
            debug!("vcpu{index} ended: {exit:?}");
            match exit {
                VcpuExit::Stopped => {}
                VcpuExit::GuestReset | VcpuExit::GuestShutdown => {
                    self.finish(ExitStatus::GuestStopped, String::new())
                }
                VcpuExit::TripleFault => self.finish(
                    ExitStatus::GuestCrash,
                    format!("the guest triple-faulted on vCPU {index}"),
                ),
                VcpuExit::Failed(why) => self.finish(
                    ExitStatus::GuestCrash,
                    format!("vCPU {index} failed: {why}"),
                ),
            }
        }
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |events| {
            if let Err(err) = ops.add(events) {
                warn!("cannot watch a VM event: {err}");
            }
        };
        add(Events::with_data(
            self.guest_exit.event(),
            TOKEN_GUEST_EXIT,
            EventSet::IN,
        ));
        add(Events::with_data(&self.vcpu_evt, TOKEN_VCPU, EventSet::IN));
        add(Events::with_data(
            &self.signals.0.as_fd(),
            TOKEN_SIGNAL,
            EventSet::IN,
        ));
        add(Events::with_data(
            &self.console_quit,
            TOKEN_CONSOLE_QUIT,
            EventSet::IN,
        ));
        if let Some((timer, _)) = &self.timer {
            add(Events::with_data(timer, TOKEN_TIMER, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_GUEST_EXIT => match self.guest_exit.requested() {
                Some(GuestExit::Reset | GuestExit::PowerOff) => {
                    self.finish(ExitStatus::GuestStopped, String::new())
                }
                Some(GuestExit::Code(0)) => self.finish(ExitStatus::GuestCode(0), String::new()),
                Some(GuestExit::Code(code)) => self.finish(
                    ExitStatus::GuestCode(code),
                    format!("the guest reported exit code {code}"),
                ),
                Some(GuestExit::Panic) => {
                    self.finish(ExitStatus::GuestPanic, "the guest kernel panicked".into())
                }
                None => {}
            },
            TOKEN_VCPU => self.on_vcpu_events(),
            TOKEN_TIMER => {
                if let Some((timer, after)) = &mut self.timer {
                    let _ = timer.wait();
                    let message = format!("timeout: stopped the guest after {:?}", *after);
                    self.finish(ExitStatus::Timeout, message);
                }
            }
            TOKEN_SIGNAL => {
                if let Some(signo) = self.signals.read() {
                    self.finish(
                        ExitStatus::Signal(signo as i32),
                        format!("stopped by signal {signo}"),
                    );
                }
            }
            TOKEN_CONSOLE_QUIT => {
                let _ = self.console_quit.read();
                self.finish(
                    ExitStatus::ConsoleQuit,
                    "the VM was ended from the console (Ctrl-A x)".into(),
                );
            }
            other => debug!("unexpected event token {other}"),
        }
    }
}

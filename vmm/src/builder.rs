//! From a [`VmSpec`] to a running VM and back to an exit status, as a list of short named
//! steps: the devices' host files, memory, KVM and the guest images (in parallel), boot
//! structures, devices ([`DeviceManager`]), vCPUs, the event loop, and the teardown.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use devices::ExitNotifier;
use devices::bus::Bus;
use devices::host_file::{self, HostFileError, Use};
use devices::mmds::SharedMmds;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::{info, warn};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi;
use crate::arch::x86_64::{self as arch, ArchError};
use crate::boot::{self, BootError};
use crate::config::ConfigError;
use crate::console::{
    CappedFile, ConsoleDrain, ConsoleOutput, RawTerminal, StdinKind, console_output,
};
use crate::controller::{Controller, Outcome, StopSignals};
use crate::device_manager::{self, Backends, DeviceError, DeviceManager};
use crate::lifecycle::{ApiSubscriber, Lifecycle, RunningVm};
use crate::memory::{self, MemoryError};
use crate::metrics::{self, FLUSH_PERIOD, Metrics, MetricsError, MetricsTimer};
use crate::pause::PauseGate;
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::spec::{VirtioTransport, VmSpec};
use crate::vcpu::{Vcpu, VcpuError, VcpuHandle};
use crate::vm::{Vm, VmError};

/// Errors that keep the VM from starting.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM could not be set up.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The boot structures could not be written.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A vCPU could not be set up or started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A `--serial-out` file could not be created.
    #[error("cannot create the serial output file '{}'", path.display())]
    SerialOut {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// A device could not be built.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The VMM thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The metrics file or timer could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The host refused an event fd, thread, signal mask or epoll instance.
    #[error("cannot set up ember's {what}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(io::Error) -> BuildError {
    move |source| BuildError::Host { what, source }
}

/// Boots the VM `spec` describes and runs it until it stops; returns how it ended. `signals`
/// must have been blocked before any thread was started. With an API, `lifecycle` learns
/// when the VM runs and answers requests while it does. The interfaces `spec` names answer
/// the guest's metadata requests from `mmds`, the process's one store.
pub fn run(
    spec: &VmSpec,
    signals: StopSignals,
    lifecycle: Option<Arc<Mutex<Lifecycle>>>,
    mmds: &SharedMmds,
) -> Result<Outcome, BuildError> {
    let backends = Backends::open(spec)?;
    let sharing = if spec.has_vhost_user() {
        memory::Sharing::Shared
    } else {
        memory::Sharing::Private
    };
    let mem = memory::create_guest_memory(spec.mem_mib, spec.pages, sharing)?;
    let (vm, entry) = create_vm_and_load_guest(&mem, spec)?;
    let guest_exit = ExitNotifier::new().map_err(host("exit event"))?;
    let (output, drain) = open_console(spec, &guest_exit)?;
    let booted = Booted {
        vm,
        mem,
        entry,
        guest_exit,
        signals,
    };
    let result = booted.run(spec, backends, output, lifecycle, mmds);
    let dropped = drain.finish();
    if dropped.slow > 0 {
        warn!(
            "{} bytes of guest console output were dropped because the output was too slow",
            dropped.slow
        );
    }
    if dropped.rate_limited > 0 {
        warn!(
            "{} bytes of guest console output were dropped by the serial rate limiter",
            dropped.rate_limited
        );
    }
    result
}

/// An event-loop subscriber as the VMM holds it.
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A VM with its memory loaded, ready for devices and vCPUs.
struct Booted {
    vm: Vm,
    mem: GuestMemoryMmap,
    entry: GuestAddress,
    guest_exit: ExitNotifier,
    signals: StopSignals,
}

/// The running VM's parts that its end must stop, in the order they stop.
struct Running {
    gate: Arc<PauseGate>,
    vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
    metrics: Option<Arc<Mutex<Metrics>>>,
}

impl Booted {
    /// Adds the devices and vCPUs and runs the event loop until the VM must stop.
    fn run(
        self,
        spec: &VmSpec,
        backends: Backends,
        output: ConsoleOutput,
        lifecycle: Option<Arc<Mutex<Lifecycle>>>,
        mmds: &SharedMmds,
    ) -> Result<Outcome, BuildError> {
        let mut dm = DeviceManager::new(&self.vm, output, &self.guest_exit)?;
        dm.add_virtio_devices(&self.vm, &self.mem, spec, backends, mmds)?;
        let metrics = spec
            .metrics
            .as_deref()
            .map(|path| -> Result<_, BuildError> {
                let sources = dm.take_metrics_sources();
                let out = metrics::open(path)?;
                Ok(Arc::new(Mutex::new(Metrics::new(
                    out,
                    sources,
                    spec.startup,
                ))))
            })
            .transpose()?;
        let (pio, mmio) = dm.buses(spec.boot_timer)?;
        let vcpus = create_vcpus(&self.vm, spec.vcpus, self.entry, pio, mmio)?;
        let (tx, rx) = mpsc::channel();
        let vcpu_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(host("vCPU exit event"))?;
        let stop = self.guest_exit.stop_flag();
        let controller = Controller::new(
            self.guest_exit,
            vcpu_evt.try_clone().map_err(host("vCPU exit event"))?,
            rx,
            self.signals,
            spec.timeout,
        )
        .map_err(host("timeout timer"))?;
        let controller = Arc::new(Mutex::new(controller));
        let stdin = StdinKind::of(libc::STDIN_FILENO);
        let mut event_loop = event_loop(
            &controller,
            &dm,
            stdin,
            metrics.as_ref(),
            lifecycle.as_ref(),
        )?;
        let running = Running {
            gate: dm.gate().clone(),
            vcpus: Arc::new(Mutex::new(Vec::new())),
            metrics,
        };
        let _raw_terminal = match stdin {
            StdinKind::Terminal => RawTerminal::enable(&io::stdin()).map_err(host("terminal"))?,
            StdinKind::Background | StdinKind::Stream => None,
        };
        // The vCPUs wait for this lock before entering the guest, and get it once this thread's
        // own seccomp filter is in: no guest code runs before every filter is.
        let hold = Arc::new(RwLock::new(()));
        let held = devices::sync::write(&hold);
        let mut started = Ok(());
        for vcpu in vcpus {
            let handle = vcpu.start(
                tx.clone(),
                &vcpu_evt,
                stop.clone(),
                running.gate.clone(),
                hold.clone(),
            );
            match handle {
                Ok(handle) => devices::sync::lock(&running.vcpus).push(handle),
                Err(err) => {
                    started = Err(BuildError::from(err));
                    break;
                }
            }
        }
        // The last thread this one starts is a vCPU: from here on it needs no clone(2).
        let started = started.and_then(|()| Ok(seccomp::apply(ThreadKind::Vmm)?));
        drop(held);
        info!(
            "started {} vCPUs",
            devices::sync::lock(&running.vcpus).len()
        );
        if let (Some(lifecycle), Ok(())) = (&lifecycle, &started) {
            devices::sync::lock(lifecycle).started(RunningVm {
                spec: spec.clone(),
                devices: dm.controls(),
                vcpus: running.vcpus.clone(),
                metrics: running.metrics.clone(),
            });
        }
        let outcome = started.and_then(|()| run_until_stopped(&mut event_loop, &controller));
        running.stop();
        outcome
    }
}

/// The event loop on this thread: the controller, the console's input, the metrics timer and
/// the API, each one a subscriber.
fn event_loop(
    controller: &Arc<Mutex<Controller>>,
    dm: &DeviceManager,
    stdin: StdinKind,
    metrics: Option<&Arc<Mutex<Metrics>>>,
    lifecycle: Option<&Arc<Mutex<Lifecycle>>>,
) -> Result<EventManager<Subscriber>, BuildError> {
    let mut event_loop: EventManager<Subscriber> =
        EventManager::new().map_err(|e| host("event loop")(io::Error::other(e)))?;
    event_loop.add_subscriber(controller.clone());
    let console_quit = devices::sync::lock(controller).console_quit();
    let console_quit = console_quit.map_err(host("console quit event"))?;
    if let Some(input) = dm.console_input(stdin, console_quit)? {
        event_loop.add_subscriber(Arc::new(Mutex::new(input)));
    }
    if let Some(metrics) = metrics {
        let timer = MetricsTimer::new(metrics.clone(), FLUSH_PERIOD)?;
        event_loop.add_subscriber(Arc::new(Mutex::new(timer)));
    }
    if let Some(lifecycle) = lifecycle {
        let api = ApiSubscriber(lifecycle.clone());
        event_loop.add_subscriber(Arc::new(Mutex::new(api)));
    }
    Ok(event_loop)
}

/// Runs the event loop until the controller has an outcome.
fn run_until_stopped(
    event_loop: &mut EventManager<Subscriber>,
    controller: &Arc<Mutex<Controller>>,
) -> Result<Outcome, BuildError> {
    loop {
        event_loop
            .run()
            .map_err(|e| host("event loop")(io::Error::other(e)))?;
        if let Some(outcome) = devices::sync::lock(controller).outcome() {
            return Ok(outcome.clone());
        }
    }
}

impl Running {
    /// Stops and joins the vCPUs and writes the last metrics line. The device I/O threads
    /// stop when the device manager is dropped, after this.
    fn stop(self) {
        // A paused VM ends too: open the gate so parked vCPUs and I/O threads see their stop.
        self.gate.resume();
        let handles = std::mem::take(&mut *devices::sync::lock(&self.vcpus));
        for handle in &handles {
            handle.stop();
        }
        handles.into_iter().for_each(VcpuHandle::join);
        // The last line covers the VM's end, as Firecracker writes one at exit.
        if let Some(metrics) = &self.metrics {
            if let Err(err) = devices::sync::lock(metrics).write() {
                warn!("{}", crate::error_chain(&err));
            }
        }
    }
}

/// Creates the KVM VM with its memory on a helper thread while this one loads the guest: the
/// two are independent, and on some hosts registering memory with KVM takes milliseconds.
/// A problem with the guest images is reported before one with KVM.
fn create_vm_and_load_guest(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
) -> Result<(Vm, GuestAddress), BuildError> {
    std::thread::scope(|scope| {
        let kvm = std::thread::Builder::new()
            .name("ember_kvm_setup".into())
            .spawn_scoped(scope, || -> Result<Vm, VmError> {
                let vm = Vm::new()?;
                vm.register_memory(mem)?;
                Ok(vm)
            })
            .map_err(host("KVM set-up thread"))?;
        let entry = load_guest(mem, spec);
        let vm = kvm
            .join()
            .map_err(|_| host("KVM set-up thread")(io::Error::other("panicked")))?;
        let entry = entry?;
        Ok((vm?, entry))
    })
}

/// Loads the kernel, initrd and command line and writes the boot structures; returns the
/// kernel's entry point.
fn load_guest(mem: &GuestMemoryMmap, spec: &VmSpec) -> Result<GuestAddress, BuildError> {
    let mem_bytes = (spec.mem_mib as u64) << 20;
    let (entry, info) = boot::load(
        mem,
        mem_bytes,
        &spec.kernel,
        spec.initrd.as_deref(),
        &spec.cmdline,
    )?;
    arch::write_boot_tables(mem)?;
    arch::write_mptable(mem, spec.vcpus)?;
    match spec.transport {
        VirtioTransport::Mmio => {
            let virtio: Vec<acpi::VirtioMmio> = spec.virtio_slots().map(|s| s.acpi()).collect();
            arch::write_acpi(mem, spec.vcpus, acpi::Virtio::Mmio(&virtio))?;
        }
        VirtioTransport::Pci => {
            let host = device_manager::pci::acpi_host(mem_bytes, spec.virtio_slots());
            arch::write_acpi(mem, spec.vcpus, acpi::Virtio::Pci(&host))?;
        }
    }
    arch::write_boot_params(mem, &arch::boot_params(&info))?;
    info!("kernel entry {:#x}", entry.0);
    Ok(entry)
}

/// Opens the console sinks and starts the output thread, which reports panics to `exit`.
fn open_console(
    spec: &VmSpec,
    exit: &ExitNotifier,
) -> Result<(ConsoleOutput, ConsoleDrain), BuildError> {
    let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
    for path in &spec.serial_out {
        if path.as_os_str() == "-" {
            sinks.push(Box::new(io::stdout()));
        } else {
            let (file, _) =
                host_file::open(path, Use::Create).map_err(|source| BuildError::SerialOut {
                    path: path.clone(),
                    source,
                })?;
            let limit = spec.serial_out_max_bytes;
            sinks.push(Box::new(CappedFile::new(file, path.clone(), limit)));
        }
    }
    console_output(sinks, Some(exit.clone()), spec.serial_rate_limiter)
        .map_err(host("console output thread"))
}

/// Creates and configures `count` vCPUs entering at `entry`.
fn create_vcpus(
    vm: &Vm,
    count: u8,
    entry: GuestAddress,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
) -> Result<Vec<Vcpu>, BuildError> {
    let max = vm.max_vcpus();
    if usize::from(count) > max {
        return Err(ConfigError::VcpuCount(count).into());
    }
    let cpuid = vm.supported_cpuid()?;
    (0..count)
        .map(|index| {
            let vcpu = Vcpu::new(index, vm.create_vcpu(index)?, pio.clone(), mmio.clone());
            vcpu.configure(entry.0, &cpuid, count)?;
            Ok(vcpu)
        })
        .collect()
}

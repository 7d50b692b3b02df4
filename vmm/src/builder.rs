//! From a validated configuration to a running VM and back to an exit status, as a list of
//! short named steps: memory, KVM, guest images, boot structures, devices, vCPUs, event loop.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::model::VmConfig;
use api_server::request::VmmData;
use devices::bus::{Bus, BusError, SharedDevice};
use devices::host_file::{self, HostFileError, Use};
use devices::legacy::{
    AcpiSleep, BootTimer, ExitPort, I8042, InputReadyEvent, PvPanic, SerialDevice,
};
use devices::virtio::block::Disk;
use devices::virtio::mmio::MMIO_WINDOW;
use devices::{ExitNotifier, IrqTrigger};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::{info, warn};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{Api, RuntimeApi, VmHandles};
use crate::arch::x86_64::acpi;
use crate::arch::x86_64::layout::{
    ACPI_SLEEP_CONTROL_PORT, BOOT_TIMER_LEN, BOOT_TIMER_START, COM1_IRQ, COM1_PORT, EXIT_PORT,
    I8042_IRQ, I8042_PORT, PVPANIC_PORT,
};
use crate::arch::x86_64::{self as arch, ArchError};
use crate::boot::{self, BootError};
use crate::config::{self, ConfigError, DEFAULT_CMDLINE};
use crate::console::{
    CappedFile, ConsoleDrain, ConsoleInput, ConsoleOutput, RawTerminal, SharedSerial, StdinKind,
    console_output,
};
use crate::controller::{Controller, Outcome, StopSignals};
use crate::memory::{self, MemoryError};
use crate::metrics::{self, FLUSH_PERIOD, Metrics, MetricsError, MetricsTimer, Source};
use crate::pause::PauseGate;
use crate::vcpu::{Vcpu, VcpuError, VcpuHandle};
use crate::virtio_devices::{self, NetPlan, Slot, VirtioError};
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
    /// A virtio device could not be built.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// The metrics file or timer could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Devices could not be placed on the bus.
    #[error("cannot place the devices on the bus")]
    Bus(#[from] BusError),
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

/// Options of one run that are not part of the VM's configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Where console output goes: files, `-` for stdout; stdout when empty.
    pub serial_out: Vec<PathBuf>,
    /// Most bytes written to each console file.
    pub serial_out_max_bytes: u64,
    /// Provide Firecracker's boot-timer device.
    pub boot_timer: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            serial_out: Vec::new(),
            serial_out_max_bytes: crate::console::DEFAULT_SERIAL_FILE_LIMIT,
            boot_timer: false,
        }
    }
}

/// The REST API, when ember serves one: it answers requests while the VM runs, and the
/// InstanceStart that booted it once the vCPUs run (`answer_start`).
pub struct ApiHook {
    /// The VMM's ends of the API channels.
    pub api: Arc<Api>,
    /// An InstanceStart request waits for its answer.
    pub answer_start: bool,
}

/// Boots the VM `cfg` describes and runs it until it stops; returns how it ended. `signals`
/// must have been blocked before any thread was started.
pub fn run(
    cfg: &VmConfig,
    opts: &RunOptions,
    signals: StopSignals,
    api: Option<ApiHook>,
) -> Result<Outcome, BuildError> {
    config::validate(cfg)?;
    let disks = virtio_devices::open_drives(&cfg.drives)?;
    let nics = virtio_devices::open_taps(cfg)?;
    let mem = memory::create_guest_memory(cfg.machine_config.mem_size_mib)?;
    let (vm, entry) = create_vm_and_load_guest(&mem, cfg)?;
    let guest_exit = ExitNotifier::new().map_err(host("exit event"))?;
    let (output, drain) = open_console(opts, &guest_exit)?;
    let booted = Booted {
        vm,
        mem,
        disks,
        nics,
        entry,
        guest_exit,
        signals,
    };
    let result = booted.run(cfg, opts, output, api);
    let dropped = drain.finish();
    if dropped > 0 {
        warn!(
            "{dropped} bytes of guest console output were dropped because the output was too slow"
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
    disks: Vec<(String, Disk, Slot)>,
    nics: Vec<NetPlan>,
    entry: GuestAddress,
    guest_exit: ExitNotifier,
    signals: StopSignals,
}

impl Booted {
    /// Adds the devices and vCPUs and runs the event loop until the VM must stop.
    fn run(
        self,
        cfg: &VmConfig,
        opts: &RunOptions,
        output: ConsoleOutput,
        api: Option<ApiHook>,
    ) -> Result<Outcome, BuildError> {
        let Self {
            vm,
            mem,
            disks,
            nics,
            entry,
            guest_exit,
            signals,
        } = self;
        let devices = LegacyDevices::new(&vm, output, &guest_exit)?;
        let mut mmio = mmio_bus(opts)?;
        let mut io = IoThreads::new()?;
        let gate = Arc::new(PauseGate::new().map_err(host("pause event"))?);
        let mut blocks = Vec::with_capacity(disks.len());
        let mut sources = Vec::with_capacity(disks.len() + nics.len());
        for disk in disks {
            let (id, base) = (disk.0.clone(), disk.2.base);
            let (block, thread) = virtio_devices::build_block(&vm, &mem, disk, &io.stop, &gate)?;
            io.threads.push(thread);
            mmio.insert(block.clone(), base, MMIO_WINDOW)?;
            let server = devices::sync::lock(&block).device().queue_server();
            sources.push((id.clone(), Source::Block(server)));
            blocks.push((id, block));
        }
        for nic in nics {
            let (id, base) = (nic.id().to_owned(), nic.base());
            let (net, thread) = virtio_devices::build_net(&vm, &mem, nic, &io.stop, &gate)?;
            io.threads.push(thread);
            sources.push((id, Source::Net(devices::sync::lock(&net).device().server())));
            mmio.insert(net, base, MMIO_WINDOW)?;
        }
        let metrics = match &cfg.metrics {
            Some(section) => {
                let out = metrics::open(Path::new(&section.metrics_path))?;
                Some(Arc::new(Mutex::new(Metrics::new(out, sources))))
            }
            None => None,
        };
        let mmio = Arc::new(mmio);
        let count = cfg.machine_config.vcpu_count;
        let vcpus = create_vcpus(&vm, count, entry, devices.pio.clone(), mmio)?;
        let stop = guest_exit.stop_flag();
        let (tx, rx) = mpsc::channel();
        let vcpu_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(host("vCPU exit event"))?;
        let controller = Controller::new(
            guest_exit,
            vcpu_evt.try_clone().map_err(host("vCPU exit event"))?,
            rx,
            signals,
            opts.timeout,
        )
        .map_err(host("timeout timer"))?;
        let controller = Arc::new(Mutex::new(controller));
        let mut event_loop: EventManager<Subscriber> =
            EventManager::new().map_err(|e| host("event loop")(io::Error::other(e)))?;
        event_loop.add_subscriber(controller.clone());
        let stdin = StdinKind::of(libc::STDIN_FILENO);
        let console_quit = devices::sync::lock(&controller).console_quit();
        let console_quit = console_quit.map_err(host("console quit event"))?;
        if let Some(input) = devices.console_input(stdin, console_quit)? {
            event_loop.add_subscriber(Arc::new(Mutex::new(input)));
        }
        if let Some(metrics) = &metrics {
            let timer = MetricsTimer::new(metrics.clone(), FLUSH_PERIOD)?;
            event_loop.add_subscriber(Arc::new(Mutex::new(timer)));
        }
        let handles: Arc<Mutex<Vec<VcpuHandle>>> = Arc::new(Mutex::new(Vec::new()));
        if let Some(hook) = &api {
            let vm = VmHandles {
                i8042: devices.i8042.clone(),
                gate: gate.clone(),
                vcpus: handles.clone(),
                io_workers: io.threads.len(),
                blocks,
                metrics: metrics.clone(),
            };
            let runtime = RuntimeApi::new(hook.api.clone(), cfg.clone(), vm);
            event_loop.add_subscriber(Arc::new(Mutex::new(runtime)));
        }

        let _raw_terminal = match stdin {
            StdinKind::Terminal => RawTerminal::enable(&io::stdin()).map_err(host("terminal"))?,
            StdinKind::Background | StdinKind::Stream => None,
        };
        let mut started = Ok(());
        for vcpu in vcpus {
            match vcpu.start(tx.clone(), &vcpu_evt, stop.clone(), gate.clone()) {
                Ok(handle) => devices::sync::lock(&handles).push(handle),
                Err(err) => {
                    started = Err(err);
                    break;
                }
            }
        }
        info!("started {} vCPUs", devices::sync::lock(&handles).len());
        if let Some(hook) = &api {
            if started.is_ok() {
                hook.api.mark_started();
                if hook.answer_start {
                    hook.api.reply(Ok(VmmData::Empty));
                }
            }
        }

        let outcome = started.map_err(BuildError::from).and_then(|()| {
            loop {
                event_loop
                    .run()
                    .map_err(|e| host("event loop")(io::Error::other(e)))?;
                if let Some(outcome) = devices::sync::lock(&controller).outcome() {
                    break Ok(outcome.clone());
                }
            }
        });
        // A paused VM ends too: open the gate so parked vCPUs and I/O threads see their stop.
        gate.resume();
        let handles = std::mem::take(&mut *devices::sync::lock(&handles));
        for handle in &handles {
            handle.stop();
        }
        handles.into_iter().for_each(VcpuHandle::join);
        // The last line covers the VM's end, as Firecracker writes one at exit.
        if let Some(metrics) = &metrics {
            if let Err(err) = devices::sync::lock(metrics).write() {
                warn!("{}", crate::error_chain(&err));
            }
        }
        outcome
    }
}

/// Creates the KVM VM with its memory on a helper thread while this one loads the guest: the
/// two are independent, and on some hosts registering memory with KVM takes milliseconds.
/// A problem with the guest images is reported before one with KVM.
fn create_vm_and_load_guest(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
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
        let entry = load_guest(mem, cfg);
        let vm = kvm
            .join()
            .map_err(|_| host("KVM set-up thread")(io::Error::other("panicked")))?;
        let entry = entry?;
        Ok((vm?, entry))
    })
}

/// Loads the kernel, initrd and command line and writes the boot structures; returns the
/// kernel's entry point.
fn load_guest(mem: &GuestMemoryMmap, cfg: &VmConfig) -> Result<GuestAddress, BuildError> {
    let boot_source = cfg.boot_source.as_ref().ok_or(ConfigError::NoBootSource)?;
    let mem_bytes = (cfg.machine_config.mem_size_mib as u64) << 20;
    let cmdline = kernel_cmdline(
        boot_source.boot_args.as_deref().unwrap_or(DEFAULT_CMDLINE),
        cfg,
    );
    let (entry, info) = boot::load(
        mem,
        mem_bytes,
        Path::new(&boot_source.kernel_image_path),
        boot_source.initrd_path.as_deref().map(Path::new),
        &cmdline,
    )?;
    arch::write_boot_tables(mem)?;
    arch::write_mptable(mem, cfg.machine_config.vcpu_count)?;
    let virtio: Vec<acpi::VirtioMmio> = virtio_devices::drive_slots(&cfg.drives)
        .iter()
        .map(|(_, slot)| slot)
        .chain(virtio_devices::net_slots(cfg).iter().map(|(_, slot)| slot))
        .map(|slot| acpi::VirtioMmio {
            base: slot.base,
            irq: slot.irq,
        })
        .collect();
    arch::write_acpi(mem, cfg.machine_config.vcpu_count, &virtio)?;
    arch::write_boot_params(mem, &arch::boot_params(&info))?;
    info!("kernel entry {:#x}", entry.0);
    Ok(entry)
}

/// The user's command line with the virtio devices (and root) added. Kernel parameters must
/// come before `--`, after which words belong to init.
fn kernel_cmdline(user: &str, cfg: &VmConfig) -> String {
    let devices = virtio_devices::cmdline_params(cfg);
    if devices.is_empty() {
        return user.to_owned();
    }
    match user.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} {devices} -- {init}"),
        None => format!("{user} {devices}"),
    }
}

/// The device I/O threads, stopped and joined when this is dropped, on every exit path.
struct IoThreads {
    stop: EventFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl IoThreads {
    fn new() -> Result<Self, BuildError> {
        Ok(Self {
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(host("device I/O stop event"))?,
            threads: Vec::new(),
        })
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        if let Err(err) = self.stop.write(1) {
            warn!("cannot stop the device I/O threads: {err}");
            return;
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("a device I/O thread panicked");
            }
        }
    }
}

/// Opens the console sinks and starts the output thread, which reports panics to `exit`.
fn open_console(
    opts: &RunOptions,
    exit: &ExitNotifier,
) -> Result<(ConsoleOutput, ConsoleDrain), BuildError> {
    let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
    for path in &opts.serial_out {
        if path.as_os_str() == "-" {
            sinks.push(Box::new(io::stdout()));
        } else {
            let (file, _) =
                host_file::open(path, Use::Create).map_err(|source| BuildError::SerialOut {
                    path: path.clone(),
                    source,
                })?;
            let limit = opts.serial_out_max_bytes;
            sinks.push(Box::new(CappedFile::new(file, path.clone(), limit)));
        }
    }
    if sinks.is_empty() {
        sinks.push(Box::new(io::stdout()));
    }
    console_output(sinks, Some(exit.clone())).map_err(host("console output thread"))
}

/// The legacy PC devices on the port bus.
struct LegacyDevices {
    pio: Arc<Bus>,
    serial: SharedSerial,
    i8042: Arc<Mutex<I8042>>,
    fifo_free: EventFd,
}

impl LegacyDevices {
    fn new(vm: &Vm, output: ConsoleOutput, exit: &ExitNotifier) -> Result<Self, BuildError> {
        let event = || EventFd::new(libc::EFD_NONBLOCK).map_err(host("device events"));
        let com1_irq = IrqTrigger(event()?);
        vm.register_irqfd(&com1_irq.0, COM1_IRQ)?;
        let fifo_free = event()?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            com1_irq,
            InputReadyEvent(fifo_free.try_clone().map_err(host("device events"))?),
            output,
        )));

        let kbd_irq = IrqTrigger(event()?);
        vm.register_irqfd(&kbd_irq.0, I8042_IRQ)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq, exit.clone())));

        let sleep = AcpiSleep::new(acpi::SLEEP_TYPE_S5, exit.clone());
        let devices: [(SharedDevice, u16, u64); 5] = [
            (serial.clone(), COM1_PORT, 8),
            (i8042.clone(), I8042_PORT, 5),
            (
                Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
                EXIT_PORT,
                1,
            ),
            (Arc::new(Mutex::new(sleep)), ACPI_SLEEP_CONTROL_PORT, 2),
            (
                Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
                PVPANIC_PORT,
                1,
            ),
        ];
        let mut pio = Bus::new();
        for (device, port, len) in devices {
            pio.insert(device, port.into(), len)?;
        }
        Ok(Self {
            pio: Arc::new(pio),
            serial,
            i8042,
            fifo_free,
        })
    }

    /// The serial console's input from stdin, unless ember must leave stdin alone (a
    /// background job's terminal). Typed input gets the escape keys, whose Ctrl-A x writes
    /// `quit`.
    fn console_input(
        &self,
        stdin: StdinKind,
        quit: EventFd,
    ) -> Result<Option<ConsoleInput>, BuildError> {
        let quit = match stdin {
            StdinKind::Background => return Ok(None),
            StdinKind::Terminal => Some(quit),
            StdinKind::Stream => None,
        };
        let fifo_free = self.fifo_free.try_clone();
        let fifo_free = fifo_free.map_err(host("console input event"))?;
        let serial = self.serial.clone();
        Ok(Some(ConsoleInput::new(
            serial,
            libc::STDIN_FILENO,
            fifo_free,
            quit,
        )))
    }
}

/// The MMIO bus. Built just before the vCPUs start, so the boot timer counts from then.
fn mmio_bus(opts: &RunOptions) -> Result<Bus, BuildError> {
    let mut mmio = Bus::new();
    if opts.boot_timer {
        let timer = BootTimer::new(std::time::Instant::now());
        mmio.insert(
            Arc::new(Mutex::new(timer)),
            BOOT_TIMER_START,
            BOOT_TIMER_LEN,
        )?;
    }
    Ok(mmio)
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

//! The device manager: every device the VM has, and all of their wiring. It places the legacy
//! PC devices on the port bus (addresses and lengths from the layout) and the boot timer on
//! the MMIO bus, wires each virtio device on the transport the spec chose ([`mmio`]: a window,
//! an irqfd and one ioeventfd per queue; [`pci`]: a PCI function with its BAR, MSI-X irqfds and
//! ioeventfds), and starts each one's I/O worker ([`io_worker`]); it hands back what the vCPUs
//! (the buses), the lifecycle (keyboard, pause gate, drives) and metrics (counters) need. When
//! it is dropped, the I/O workers are stopped and joined.
//!
//! Adding a virtio device (docs/design.md, "Where to add things", has the whole recipe): its
//! model in a folder under `devices/src/virtio/`, its configuration section, its section in
//! [`crate::spec::VmSpec`], and one `add_*` method here that calls [`DeviceManager::attach`]
//! (which wires it on either transport).
//!
//! I/O workers: a block device's (`ember_blk_<id>`) is woken by its queue's ioeventfd (and,
//! with the Async engine, by its io_uring's completions), so disk I/O, however slow, never
//! holds up the event loop or a vCPU; one thread per queue keeps flushes after the requests
//! before them. A network device's
//! (`ember_net_<id>`) waits on its queues and on the TAP for exactly the readiness the device
//! can use, so an idle or back-pressured NIC sleeps. The entropy device's (`ember_rng`) is
//! woken by its queue's ioeventfd and hands out a bounded amount of randomness per round.
//! The vsock device's (`ember_vsock`) waits on its receive and transmit queues, its listening
//! socket and each connection's socket for exactly the readiness the connection can use.
//! A shared directory's (`ember_fs_<id>`) only watches its vhost-user backend's socket: the
//! guest and the backend exchange requests without ember, and only when the backend dies does
//! the thread answer the queues itself (with EIO). A vhost-user-blk drive's (`ember_blk_<id>`)
//! likewise only watches its backend. Both connect again to a backend restarted on their socket
//! path. The virtiofsd processes ember started are owned here and stopped when the device
//! manager is dropped.
//!
//! It must not decide anything about the configuration ([`crate::spec`] did) nor about the
//! VM's life ([`crate::lifecycle`], [`crate::controller`]).

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::bus::{Bus, BusError, SharedDevice};
use devices::legacy::{
    AcpiSleep, BootTimer, ExitPort, I8042, InputReadyEvent, PvPanic, SerialDevice,
};
use devices::mmds::{MmdsStack, SharedMmds};
use devices::rate_limiter::{LimiterConfig, RateLimiter};
use devices::sync::lock;
use devices::virtio::block::vhost::VhostBlockError;
use devices::virtio::block::{Block, Disk, DiskError, Uring, VhostBlock};
use devices::virtio::fs::{Fs, FsError, QUEUES as FS_QUEUES};
use devices::virtio::mmio::MMIO_WINDOW;
use devices::virtio::net::{Net, Tap, TapError};
use devices::virtio::rng::Rng;
use devices::virtio::vhost_user::Backend;
use devices::virtio::vsock::Vsock;
use devices::virtio::worker::IoHandler;
use devices::virtio::{Transport, VirtioDevice, VirtioInterrupt};
use devices::{ExitNotifier, IrqTrigger};
use log::warn;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi;
use crate::arch::x86_64::layout::{
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_LEN, BOOT_TIMER_LEN, BOOT_TIMER_START, COM1_IRQ, COM1_LEN,
    COM1_PORT, EXIT_PORT, I8042_IRQ, I8042_LEN, I8042_PORT, PVPANIC_PORT, VIRTIO_IRQ_BASE,
    VIRTIO_IRQ_MAX, VIRTIO_MMIO_START,
};
use crate::console::{ConsoleInput, ConsoleOutput, SharedSerial, StdinKind};
use crate::io_worker;
use crate::metrics::Source;
use crate::pause::PauseGate;
use crate::seccomp::ThreadKind;
use crate::share::{FsBackend, FsSpec};
use crate::spec::{
    CacheType, DriveBacking, DriveSpec, EntropySpec, IoEngine, NetSpec, VirtioTransport, VmSpec,
    VsockSpec,
};
use crate::virtiofsd::{self, OpenShare, ShareError, Virtiofsd};
use crate::vm::{Vm, VmError};

mod mmio;
pub mod pci;

/// Most virtio devices a VM can have: one IRQ each, from the first free legacy line up to the
/// last IOAPIC pin.
pub const MAX_DEVICES: usize = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// Errors building devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A drive's image cannot be used.
    #[error("drive '{id}'")]
    Drive {
        /// The drive id.
        id: String,
        /// What is wrong with its image.
        #[source]
        source: DiskError,
    },
    /// A drive's io_uring (the Async engine) cannot be set up.
    #[error("drive '{id}': cannot set up an io_uring for io_engine \"Async\"")]
    Uring {
        /// The drive id.
        id: String,
        /// The host's error.
        #[source]
        source: io::Error,
    },
    /// A network interface's TAP cannot be used.
    #[error("network interface '{id}'")]
    Tap {
        /// The interface id.
        id: String,
        /// What is wrong with its TAP.
        #[source]
        source: TapError,
    },
    /// The vsock device's socket cannot be created.
    #[error(
        "cannot listen on the vsock socket '{}': {source} (the path must not exist yet; \
         remove a stale socket)",
        path.display()
    )]
    Vsock {
        /// Its `uds_path`.
        path: PathBuf,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user-blk drive's backend cannot be reached or set up.
    #[error("drive '{id}'")]
    VhostDrive {
        /// The drive id.
        id: String,
        /// Why.
        #[source]
        source: VhostBlockError,
    },
    /// A shared directory's backend cannot be started or reached.
    #[error("shared directory '{id}'")]
    Share {
        /// The fs id.
        id: String,
        /// Why.
        #[source]
        source: ShareError,
    },
    /// A shared directory's device cannot be set up on its backend.
    #[error("shared directory '{id}'")]
    Fs {
        /// The fs id.
        id: String,
        /// Why.
        #[source]
        source: FsError,
    },
    /// KVM refused an eventfd or irqfd.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A device could not be wired on PCI.
    #[error("cannot wire a PCI device")]
    Pci(#[from] pci::PciError),
    /// Devices could not be placed on a bus.
    #[error("cannot place the devices on the bus")]
    Bus(#[from] BusError),
    /// The host refused an event fd or a thread.
    #[error("cannot set up the devices' {what}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(io::Error) -> DeviceError {
    move |source| DeviceError::Host { what, source }
}

fn event() -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(host("events"))
}

/// Where one virtio device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its place in guest order (on PCI, its slot is the one after).
    pub index: usize,
    /// Base of its MMIO window (virtio-mmio).
    pub base: u64,
    /// Its interrupt line (virtio-mmio; INTx on PCI).
    pub irq: u32,
}

impl Slot {
    /// The slot of the `index`th virtio device, in guest order.
    pub fn nth(index: usize) -> Self {
        Self {
            index,
            base: VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW,
            irq: VIRTIO_IRQ_BASE + index as u32,
        }
    }

    /// The kernel parameter that announces the device.
    pub fn cmdline_param(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }

    /// The device as the ACPI tables describe it.
    pub fn acpi(&self) -> acpi::VirtioMmio {
        acpi::VirtioMmio {
            base: self.base,
            irq: self.irq,
        }
    }
}

/// The host side of the devices: images and TAPs, opened before KVM is touched so that a bad
/// image or a busy TAP is the error a user sees first.
pub struct Backends {
    /// Each drive's image and its io_uring for the Async engine, or its vhost-user backend.
    disks: Vec<OpenDrive>,
    taps: Vec<Tap>,
    /// The vsock device's listening socket, bound at its `uds_path`.
    vsock: Option<UnixListener>,
    /// Each shared directory's negotiated backend (and the virtiofsd ember started for it).
    shares: Vec<OpenShare>,
}

impl Backends {
    /// Opens every drive's image and attaches to every interface's TAP, in guest order.
    pub fn open(spec: &VmSpec) -> Result<Self, DeviceError> {
        let disks = spec
            .drives
            .iter()
            .map(open_drive)
            .collect::<Result<_, DeviceError>>()?;
        let taps = spec
            .nets
            .iter()
            .map(|n| {
                Tap::open(&n.tap).map_err(|source| DeviceError::Tap {
                    id: n.id.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let vsock = spec.vsock.as_ref().map(listen_vsock).transpose()?;
        let shares = spec
            .shares
            .iter()
            .map(|s| {
                virtiofsd::open(s).map_err(|source| DeviceError::Share {
                    id: s.id.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            disks,
            taps,
            vsock,
            shares,
        })
    }
}

/// Binds the vsock device's listening socket, non-blocking. As in Firecracker, an existing
/// file at the path is an error rather than something ember removes.
fn listen_vsock(spec: &VsockSpec) -> Result<UnixListener, DeviceError> {
    let err = |source| DeviceError::Vsock {
        path: spec.uds_path.clone(),
        source,
    };
    let listener = UnixListener::bind(&spec.uds_path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// A drive's host side: its image, or the connection to its vhost-user-blk backend.
#[expect(
    clippy::large_enum_variant,
    reason = "one per drive, made once and moved into its device; a box would buy nothing"
)]
enum OpenDrive {
    Image(Disk, Option<Uring>),
    VhostUser(Backend),
}

fn open_drive(drive: &DriveSpec) -> Result<OpenDrive, DeviceError> {
    match &drive.backing {
        DriveBacking::Image(path) => Ok(OpenDrive::Image(
            open_disk(drive, path)?,
            open_engine(drive)?,
        )),
        DriveBacking::VhostUser(path) => Backend::connect(path, 1)
            .map(OpenDrive::VhostUser)
            .map_err(|source| DeviceError::VhostDrive {
                id: drive.id.clone(),
                source: source.into(),
            }),
    }
}

/// Opens the image at `path` as `drive`'s spec says (also a running VM's new image,
/// `PATCH /drives`).
pub fn open_disk(drive: &DriveSpec, path: &Path) -> Result<Disk, DeviceError> {
    let writeback = drive.cache == CacheType::Writeback;
    Disk::open(path, drive.read_only, writeback).map_err(|source| DeviceError::Drive {
        id: drive.id.clone(),
        source,
    })
}

/// The io_uring of a drive with the Async engine (none for Sync). A swapped image
/// (`PATCH /drives`) keeps the drive's ring.
fn open_engine(drive: &DriveSpec) -> Result<Option<Uring>, DeviceError> {
    match drive.engine {
        IoEngine::Sync => Ok(None),
        IoEngine::Async => Uring::new().map(Some).map_err(|source| DeviceError::Uring {
            id: drive.id.clone(),
            source,
        }),
    }
}

/// A block device as the VMM holds it, on either transport.
pub type SharedBlock = Arc<Mutex<dyn Transport<Block>>>;

/// A virtio device's interrupt and queue notifications, registered with KVM by its
/// transport's wiring.
struct Wired {
    interrupt: Arc<VirtioInterrupt>,
    notify: Vec<EventFd>,
}

/// The device I/O threads, stopped and joined when this is dropped, on every exit path.
struct IoThreads {
    stop: EventFd,
    threads: Vec<JoinHandle<()>>,
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

/// All of the VM's devices.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    serial: SharedSerial,
    i8042: Arc<Mutex<I8042>>,
    /// Written by the serial device when its input FIFO has room again.
    fifo_free: EventFd,
    gate: Arc<PauseGate>,
    io: IoThreads,
    blocks: Vec<(String, SharedBlock)>,
    drive_limiters: Vec<(String, Arc<RateLimiter>)>,
    net_limiters: Vec<(String, NetLimiters)>,
    sources: Vec<(String, Source)>,
    /// The PCI bus while virtio devices are added on it (`--enable-pci`).
    pci: Option<pci::PciDevices>,
    /// The virtiofsd processes ember started; dropped (stopped) after the I/O threads.
    daemons: Vec<Virtiofsd>,
}

impl DeviceManager {
    /// The legacy devices: COM1 writing to `console`, the i8042, the exit port, ACPI sleep and
    /// pvpanic, the last four reporting to `exit`.
    pub fn new(vm: &Vm, console: ConsoleOutput, exit: &ExitNotifier) -> Result<Self, DeviceError> {
        let com1_irq = IrqTrigger(event()?);
        vm.register_irqfd(&com1_irq.0, COM1_IRQ)?;
        let fifo_free = event()?;
        let input_ready = InputReadyEvent(fifo_free.try_clone().map_err(host("events"))?);
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            com1_irq,
            input_ready,
            console,
        )));
        let kbd_irq = IrqTrigger(event()?);
        vm.register_irqfd(&kbd_irq.0, I8042_IRQ)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq, exit.clone())));
        let sleep = AcpiSleep::new(acpi::SLEEP_TYPE_S5, exit.clone());
        let legacy: [(SharedDevice, u16, u16); 5] = [
            (serial.clone(), COM1_PORT, COM1_LEN),
            (i8042.clone(), I8042_PORT, I8042_LEN),
            (
                Arc::new(Mutex::new(ExitPort::new(exit.clone()))),
                EXIT_PORT,
                1,
            ),
            (
                Arc::new(Mutex::new(sleep)),
                ACPI_SLEEP_CONTROL_PORT,
                ACPI_SLEEP_LEN,
            ),
            (
                Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
                PVPANIC_PORT,
                1,
            ),
        ];
        let mut pio = Bus::new();
        for (device, port, len) in legacy {
            pio.insert(device, port.into(), len.into())?;
        }
        Ok(Self {
            pio,
            mmio: Bus::new(),
            serial,
            i8042,
            fifo_free,
            gate: Arc::new(PauseGate::new().map_err(host("pause event"))?),
            io: IoThreads {
                stop: event()?,
                threads: Vec::new(),
            },
            blocks: Vec::new(),
            drive_limiters: Vec::new(),
            net_limiters: Vec::new(),
            sources: Vec::new(),
            pci: None,
            daemons: Vec::new(),
        })
    }

    /// Adds every virtio device `spec` lists, on the `backends` opened for it, on the
    /// transport it chose; the interfaces `mmds-config` names answer the guest's metadata
    /// requests from `mmds`.
    pub fn add_virtio_devices(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        spec: &VmSpec,
        backends: Backends,
        mmds: &SharedMmds,
    ) -> Result<(), DeviceError> {
        if spec.transport == VirtioTransport::Pci {
            let mem_bytes = (spec.mem_mib as u64) << 20;
            self.pci = Some(pci::PciDevices::new(vm, mem_bytes));
        }
        for (drive, open) in spec.drives.iter().zip(backends.disks) {
            match open {
                OpenDrive::Image(disk, ring) => self.add_block(vm, mem, drive, disk, ring)?,
                OpenDrive::VhostUser(backend) => self.add_vhost_block(vm, mem, drive, backend)?,
            }
        }
        if let Some(m) = &spec.mmds {
            lock(mmds).configure(m.version, m.imds_compat);
        }
        // Reported whether or not an interface reaches it, as Firecracker always reports it.
        self.sources
            .push(("mmds".into(), Source::Mmds(mmds.clone())));
        for (net, tap) in spec.nets.iter().zip(backends.taps) {
            // Each interface that reaches the MMDS has a stack of its own on the one store.
            let stack = spec.mmds.as_ref().filter(|_| net.mmds);
            let stack = stack.map(|m| MmdsStack::new(m.ipv4, mmds.clone()));
            self.add_net(vm, mem, net, tap, stack)?;
        }
        if let Some(entropy) = &spec.entropy {
            self.add_rng(vm, mem, entropy)?;
        }
        if let (Some(vsock), Some(listener)) = (&spec.vsock, backends.vsock) {
            self.add_vsock(vm, mem, vsock, listener)?;
        }
        for (share, open) in spec.shares.iter().zip(backends.shares) {
            self.add_fs(vm, mem, share, open)?;
        }
        if let Some(pci) = self.pci.take() {
            pci.finish(&mut self.pio, &mut self.mmio)?;
        }
        Ok(())
    }

    fn add_block(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        drive: &DriveSpec,
        disk: Disk,
        ring: Option<Uring>,
    ) -> Result<(), DeviceError> {
        let id = drive.id.clone();
        let name = (format!("ember_blk_{id}"), ThreadKind::Block);
        let limiter = rate_limiter(drive.rate_limiter)?;
        self.drive_limiters.push((id.clone(), limiter.clone()));
        let block = self.attach(vm, mem, drive.slot, name, 1, |interrupt, queues| {
            // The worker is woken by the queue's notification, and by a drive swap (and by
            // the ring's completions).
            let wake = queues[0].try_clone().map_err(host("events"))?;
            let block = Block::new(disk, ring, &id, mem.clone(), interrupt, wake)
                .with_rate_limiter(limiter);
            let handler = block.queue_server();
            Ok((block, handler))
        })?;
        let server = lock(&block).device().queue_server();
        self.sources.push((id.clone(), Source::Block(server)));
        self.blocks.push((id, block));
        Ok(())
    }

    /// A vhost-user-blk drive: its queue goes to the backend on activation; its worker only
    /// watches the backend and reconnects to a restarted one.
    fn add_vhost_block(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        drive: &DriveSpec,
        backend: Backend,
    ) -> Result<(), DeviceError> {
        let name = (format!("ember_blk_{}", drive.id), ThreadKind::VhostUser);
        let path = match &drive.backing {
            DriveBacking::VhostUser(path) => Some(path.clone()),
            DriveBacking::Image(_) => None,
        };
        self.attach(vm, mem, drive.slot, name, 1, |interrupt, queues| {
            let kick = queues[0].try_clone().map_err(host("events"))?;
            let err = |source| DeviceError::VhostDrive {
                id: drive.id.clone(),
                source,
            };
            let flush = drive.cache == CacheType::Writeback;
            let block = VhostBlock::new(
                &drive.id,
                flush,
                backend,
                path,
                mem.clone(),
                interrupt,
                kick,
            )
            .map_err(err)?;
            let monitor = block.monitor().map_err(host("events"))?;
            Ok((block, monitor))
        })?;
        Ok(())
    }

    fn add_net(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        spec: &NetSpec,
        tap: Tap,
        mmds: Option<MmdsStack>,
    ) -> Result<(), DeviceError> {
        let name = (format!("ember_net_{}", spec.id), ThreadKind::Net);
        let limiters = NetLimiters {
            rx: rate_limiter(spec.rx_rate_limiter)?,
            tx: rate_limiter(spec.tx_rate_limiter)?,
        };
        self.net_limiters.push((spec.id.clone(), limiters.clone()));
        let net = self.attach(vm, mem, spec.slot, name, 2, |interrupt, queues| {
            let clone = |e: &EventFd| e.try_clone().map_err(host("events"));
            let net = Net::new(
                &spec.id,
                tap,
                spec.mac,
                spec.mtu,
                mem.clone(),
                interrupt,
                event()?,
            )
            .with_rate_limiters(limiters.rx, limiters.tx);
            let net = match mmds {
                Some(stack) => net.with_mmds(stack).map_err(host("MMDS timer"))?,
                None => net,
            };
            let handler = net.handler([clone(&queues[0])?, clone(&queues[1])?]);
            Ok((net, handler))
        })?;
        let server = lock(&net).device().server();
        self.sources.push((spec.id.clone(), Source::Net(server)));
        Ok(())
    }

    /// The entropy device; it draws from the host's `getrandom`, so it has no backend to open.
    fn add_rng(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        spec: &EntropySpec,
    ) -> Result<(), DeviceError> {
        let name = ("ember_rng".to_owned(), ThreadKind::Rng);
        let limiter = rate_limiter(spec.rate_limiter)?;
        let rng = self.attach(vm, mem, spec.slot, name, 1, |interrupt, queues| {
            // The worker is woken by the queue's notification, and by activation.
            let wake = queues[0].try_clone().map_err(host("events"))?;
            let rng = Rng::new(mem.clone(), interrupt, wake).with_rate_limiter(limiter);
            let handler = rng.server();
            Ok((rng, handler))
        })?;
        let server = lock(&rng).device().server();
        self.sources
            .push(("entropy".into(), Source::Entropy(server)));
        Ok(())
    }

    /// The vsock device, listening on `listener`; its worker waits on the receive and transmit
    /// queues and the host sockets.
    fn add_vsock(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        spec: &VsockSpec,
        listener: UnixListener,
    ) -> Result<(), DeviceError> {
        let name = ("ember_vsock".to_owned(), ThreadKind::Vsock);
        let vsock = self.attach(vm, mem, spec.slot, name, 3, |interrupt, queues| {
            let clone = |e: &EventFd| e.try_clone().map_err(host("events"));
            let wake = [clone(&queues[0])?, clone(&queues[1])?];
            let path = spec.uds_path.clone();
            let vsock = Vsock::new(mem.clone(), interrupt, wake, spec.guest_cid, listener, path)
                .map_err(host("vsock timer"))?;
            let handler = vsock.server();
            Ok((vsock, handler))
        })?;
        let server = lock(&vsock).device().server();
        self.sources.push(("vsock".into(), Source::Vsock(server)));
        Ok(())
    }

    /// A shared directory: its queues go to the backend on activation; its worker only
    /// watches the backend (see `devices::virtio::fs`).
    fn add_fs(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        spec: &FsSpec,
        open: OpenShare,
    ) -> Result<(), DeviceError> {
        let OpenShare { backend, daemon } = open;
        // Only a backend someone else runs can come back; ember's own virtiofsd does not.
        let path = match &spec.backend {
            FsBackend::Socket(path) => Some(path.clone()),
            FsBackend::Virtiofsd { .. } => None,
        };
        // Kept before anything can fail, so that it is stopped on every path.
        self.daemons.extend(daemon);
        let name = (format!("ember_fs_{}", spec.id), ThreadKind::VhostUser);
        let queues = FS_QUEUES as u32;
        self.attach(vm, mem, spec.slot, name, queues, |interrupt, queues| {
            let kicks = queues
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<_, _>>()
                .map_err(host("events"))?;
            let fs = Fs::new(&spec.tag, backend, path, mem.clone(), interrupt, kicks).map_err(
                |source| DeviceError::Fs {
                    id: spec.id.clone(),
                    source,
                },
            )?;
            let monitor = fs.monitor().map_err(host("events"))?;
            Ok((fs, monitor))
        })?;
        Ok(())
    }

    /// Wires a virtio device at `slot` with `queues` queues on the VM's transport (its
    /// interrupt, one ioeventfd per queue, its registers on the MMIO bus), and starts an I/O
    /// worker with `thread`'s name and seccomp filter running the handler. `build` makes the device and its handler
    /// from the interrupt and the queues' notification events.
    fn attach<D, H>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        slot: Slot,
        thread: (String, ThreadKind),
        queues: u32,
        build: impl FnOnce(Arc<VirtioInterrupt>, &[EventFd]) -> Result<(D, H), DeviceError>,
    ) -> Result<Arc<Mutex<dyn Transport<D>>>, DeviceError>
    where
        D: VirtioDevice + 'static,
        H: IoHandler + 'static,
    {
        let wired = match &mut self.pci {
            Some(pci) => pci.wire(vm, slot, queues)?,
            None => mmio::wire(vm, slot, queues)?,
        };
        let (device, handler) = build(wired.interrupt.clone(), &wired.notify)?;
        let transport = match &mut self.pci {
            Some(pci) => pci.place(&mut self.mmio, slot, device, mem, wired)?,
            None => mmio::place(&mut self.mmio, slot, device, mem, wired)?,
        };
        let stop = self.io.stop.try_clone().map_err(host("events"))?;
        let worker = io_worker::spawn(thread.0, thread.1, handler, stop, self.gate.clone());
        self.io.threads.push(worker.map_err(host("I/O threads"))?);
        Ok(transport)
    }

    /// The serial console's input from stdin, unless ember must leave stdin alone (a
    /// background job's terminal). Typed input gets the escape keys, whose Ctrl-A x writes
    /// `quit`.
    pub fn console_input(
        &self,
        stdin: StdinKind,
        quit: EventFd,
    ) -> Result<Option<ConsoleInput>, DeviceError> {
        let quit = match stdin {
            StdinKind::Background => return Ok(None),
            StdinKind::Terminal => Some(quit),
            StdinKind::Stream => None,
        };
        let fifo_free = self.fifo_free.try_clone().map_err(host("events"))?;
        let serial = self.serial.clone();
        Ok(Some(ConsoleInput::new(
            serial,
            libc::STDIN_FILENO,
            fifo_free,
            quit,
        )))
    }

    /// The port and MMIO buses, for the vCPUs; no device can be added afterwards. Called just
    /// before the vCPUs start, so that the boot timer (if `boot_timer`) counts from then.
    pub fn buses(&mut self, boot_timer: bool) -> Result<(Arc<Bus>, Arc<Bus>), DeviceError> {
        if boot_timer {
            let timer = BootTimer::new(std::time::Instant::now());
            let timer = Arc::new(Mutex::new(timer));
            self.mmio.insert(timer, BOOT_TIMER_START, BOOT_TIMER_LEN)?;
        }
        let pio = std::mem::take(&mut self.pio);
        Ok((Arc::new(pio), Arc::new(std::mem::take(&mut self.mmio))))
    }

    /// The devices whose counters metrics report, by configuration id.
    pub fn take_metrics_sources(&mut self) -> Vec<(String, Source)> {
        std::mem::take(&mut self.sources)
    }

    /// What the lifecycle acts on: the keyboard (Ctrl-Alt-Del), the pause gate, how many I/O
    /// workers park on it, and the drives by id (`PATCH /drives`).
    pub fn controls(&self) -> DeviceControls {
        DeviceControls {
            i8042: self.i8042.clone(),
            gate: self.gate.clone(),
            io_workers: self.io.threads.len(),
            blocks: self.blocks.clone(),
            drive_limiters: self.drive_limiters.clone(),
            net_limiters: self.net_limiters.clone(),
        }
    }

    /// Where vCPUs and I/O workers park while the VM is paused.
    pub fn gate(&self) -> &Arc<PauseGate> {
        &self.gate
    }
}

/// The devices the VM's lifecycle acts on while it runs.
#[derive(Clone)]
pub struct DeviceControls {
    /// The keyboard controller, for Ctrl-Alt-Del.
    pub i8042: Arc<Mutex<I8042>>,
    /// Where vCPUs and device threads park while paused.
    pub gate: Arc<PauseGate>,
    /// How many device I/O threads park on the gate when pausing.
    pub io_workers: usize,
    /// The drives by id.
    pub blocks: Vec<(String, SharedBlock)>,
    /// The drives' rate limiters by id (`PATCH /drives`).
    pub drive_limiters: Vec<(String, Arc<RateLimiter>)>,
    /// The network interfaces' rate limiters by id (`PATCH /network-interfaces`).
    pub net_limiters: Vec<(String, NetLimiters)>,
}

/// A network interface's rate limiters.
#[derive(Clone)]
pub struct NetLimiters {
    /// Frames the guest receives.
    pub rx: Arc<RateLimiter>,
    /// Frames the guest sends.
    pub tx: Arc<RateLimiter>,
}

/// A device's rate limiter: every drive and interface has one, unlimited unless configured,
/// so that `PATCH` can set limits on a running VM.
fn rate_limiter(config: LimiterConfig) -> Result<Arc<RateLimiter>, DeviceError> {
    Ok(Arc::new(
        RateLimiter::new(config).map_err(host("rate limiter timers"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{IOAPIC_PINS, IOAPIC_START};

    #[test]
    fn slots_stay_in_the_mmio_hole_and_on_ioapic_pins() {
        let last = Slot::nth(MAX_DEVICES - 1);
        assert!(last.base + MMIO_WINDOW <= IOAPIC_START);
        assert!(last.irq < u32::from(IOAPIC_PINS));
        assert_eq!(Slot::nth(2).base, VIRTIO_MMIO_START + 0x2000);
        assert_eq!(Slot::nth(2).irq, VIRTIO_IRQ_BASE + 2);
    }
}

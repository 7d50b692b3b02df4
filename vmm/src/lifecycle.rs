//! The VM's life as the API sees it, from process start to exit: one state ([`VmState`]) and
//! one exhaustive `match` over every [`VmmAction`], answered here and nowhere else. Before boot
//! the main thread calls [`Lifecycle::serve`] whenever the API has requests, and boots the
//! [`VmSpec`] an InstanceStart hands back; the boot then reports [`Lifecycle::started`] (or
//! the main thread [`Lifecycle::start_failed`]), which answers that InstanceStart. While the
//! VM runs, the event loop's [`ApiSubscriber`] calls `serve`.
//!
//! The MMDS data store is the one thing answered the same before and after boot: it is the
//! process's store ([`crate::mmds`]), which the booted VM's interfaces serve the guest from.
//!
//! Errors are [`ActionError`]s, rendered as Firecracker's `fault_message` (with its 413 for
//! metadata beyond the store's limit); an action in the wrong state gets Firecracker's own
//! messages. This module must not build devices or touch KVM: it acts on the handles the boot
//! gives it.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::model::{
    BootSource, Drive, LoggerConfig, MachineConfig, RateLimiterConfig, VmConfig,
};
use api_server::request::{
    Fault, MachineConfigPatch, PartialDrive, PartialNetworkInterface, VmmAction, VmmData,
};
use devices::host_file::{self, HostFileError, Use};
use devices::mmds::{MmdsError, SharedMmds};
use devices::rate_limiter::{LimiterConfig, RateLimiter};
use devices::sync::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use serde_json::{Value, json};

use crate::api::Api;
use crate::builder::BuildError;
use crate::config::ConfigError;
use crate::device_manager::{self, DeviceControls, DeviceError};
use crate::logger::{self, LoggerError};
use crate::metrics::{self, Metrics, MetricsError};
use crate::spec::{self, DriveBacking, RunOptions, VmSpec};
use crate::vcpu::VcpuHandle;

/// How long a pause may take for every vCPU to leave the guest and every device thread to
/// finish its batch.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Being configured; InstanceStart boots it.
    NotStarted,
    /// Its vCPUs run.
    Running,
    /// Its vCPUs and device threads are parked.
    Paused,
}

impl VmState {
    /// The state as Firecracker's `GET /` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// Why an action was refused: the `fault_message` of a 400.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A pre-boot action after boot.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotAfterStart,
    /// A runtime action before boot.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotBeforeStart,
    /// The configuration would not be valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No drive has this id.
    #[error("There is no drive '{0}'.")]
    NoDrive(String),
    /// A vhost-user-blk drive's socket is not there.
    #[error(
        "drive '{id}': cannot use the vhost-user-blk socket '{path}' (start its backend first, \
         listening there)"
    )]
    DriveSocket {
        /// The drive.
        id: String,
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `PATCH /drives` cannot change a vhost-user-blk drive.
    #[error(
        "drive '{0}' is served by a vhost-user-blk backend; its backend, not ember, decides its \
         disk and rate"
    )]
    PatchVhostDrive(String),
    /// The kernel cannot be read (Firecracker's message).
    #[error("The kernel file cannot be opened: {0}")]
    KernelFile(#[source] HostFileError),
    /// The initrd cannot be read (Firecracker's message).
    #[error("The initrd file cannot be opened: {0}")]
    InitrdFile(#[source] HostFileError),
    /// A drive's image cannot be opened.
    #[error("drive '{id}': the image cannot be opened: {source}")]
    DriveFile {
        /// The drive.
        id: String,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// No network interface has this id.
    #[error("There is no network interface '{0}'.")]
    NoInterface(String),
    /// The logger settings cannot be applied.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// The metrics file cannot be opened or written.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A drive's new image cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The VM could not be built or started.
    #[error(transparent)]
    Start(#[from] BuildError),
    /// The pause gate could not be closed.
    #[error("cannot pause the microVM")]
    Pause(#[source] std::io::Error),
    /// vCPUs or device threads did not park in time.
    #[error("The vCPUs and device threads did not stop in time; the microVM keeps running.")]
    PauseTimeout,
    /// The MMDS data store refused the metadata.
    #[error(transparent)]
    Mmds(#[from] MmdsError),
    /// The i8042's buffer is full.
    #[error("The guest's keyboard buffer is full; try again.")]
    KeyboardFull,
    /// An answer could not be encoded.
    #[error("cannot encode the answer")]
    Encode(#[from] serde_json::Error),
}

impl ActionError {
    /// The refusal as the API answers it: Firecracker's 413 for metadata beyond the store's
    /// limit, a 400 for everything else.
    fn fault(&self) -> Fault {
        let message = crate::error_chain(self);
        match self {
            Self::Mmds(MmdsError::TooLarge { .. }) => Fault::PayloadTooLarge(message),
            _ => Fault::BadRequest(message),
        }
    }
}

/// What the running VM's handles are, for the actions that act on it.
pub struct RunningVm {
    /// The spec it was built from.
    pub spec: VmSpec,
    /// The devices the actions reach.
    pub devices: DeviceControls,
    /// The vCPU threads, to kick out of the guest when pausing.
    pub vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
    /// The metrics, when configured, for FlushMetrics.
    pub metrics: Option<Arc<Mutex<Metrics>>>,
}

/// The VM's configuration and state, and the API it answers.
pub struct Lifecycle {
    api: Arc<Api>,
    cfg: VmConfig,
    opts: RunOptions,
    /// The metadata store, the same before boot and, once booted, the network interfaces'.
    mmds: SharedMmds,
    vm: Option<RunningVm>,
    /// An InstanceStart waits for the boot to succeed or fail.
    start_pending: bool,
}

/// What handling an action led to.
enum Handled {
    /// Answered.
    Done(VmmData),
    /// InstanceStart: boot this (answered once the boot succeeds or fails).
    Start(Box<VmSpec>),
}

impl Lifecycle {
    /// A VM configured as `cfg` says, run with `opts`, answering `api`, its metadata in
    /// `mmds`; not started.
    pub fn new(api: Arc<Api>, cfg: VmConfig, opts: RunOptions, mmds: SharedMmds) -> Self {
        Self {
            api,
            cfg,
            opts,
            mmds,
            vm: None,
            start_pending: false,
        }
    }

    /// Where the VM is in its life.
    pub fn state(&self) -> VmState {
        match &self.vm {
            None => VmState::NotStarted,
            Some(vm) if vm.devices.gate.is_paused() => VmState::Paused,
            Some(_) => VmState::Running,
        }
    }

    /// Answers every waiting request, in order. Returns the VM to boot when one was
    /// InstanceStart (later requests wait until its answer is given).
    pub fn serve(&mut self) -> Option<VmSpec> {
        while let Some(action) = self.api.next() {
            match self.handle(action) {
                Ok(Handled::Done(data)) => self.api.reply(Ok(data)),
                Ok(Handled::Start(spec)) => {
                    self.start_pending = true;
                    return Some(*spec);
                }
                Err(err) => self.api.reply(Err(err.fault())),
            }
        }
        None
    }

    /// The VM runs: actions now act on `vm`, and a waiting InstanceStart succeeds.
    pub fn started(&mut self, vm: RunningVm) {
        self.vm = Some(vm);
        if std::mem::take(&mut self.start_pending) {
            self.api.reply(Ok(VmmData::Empty));
        }
    }

    /// The boot InstanceStart asked for failed: say why, and keep the configuration.
    pub fn start_failed(&mut self, err: BuildError) {
        if std::mem::take(&mut self.start_pending) {
            self.api.reply(Err(ActionError::Start(err).fault()));
        }
    }

    /// The one place an action is answered, by what it is and the state the VM is in.
    fn handle(&mut self, action: VmmAction) -> Result<Handled, ActionError> {
        let done = |()| Handled::Done(VmmData::Empty);
        match action {
            VmmAction::GetInstanceInfo => Ok(Handled::Done(VmmData::Json(json!({
                "app_name": "ember",
                "id": self.api.id(),
                "state": self.state().name(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
            })))),
            VmmAction::GetVersion => Ok(Handled::Done(VmmData::Json(
                json!({ "firecracker_version": env!("CARGO_PKG_VERSION") }),
            ))),
            VmmAction::GetVmConfig => to_json(&self.cfg),
            VmmAction::GetMachineConfig => to_json(&self.cfg.machine_config),
            VmmAction::PutMachineConfig(mc) => self.configure(|c| c.machine_config = mc),
            VmmAction::PatchMachineConfig(patch) => {
                self.configure(|c| patch_machine(&mut c.machine_config, patch))
            }
            VmmAction::PutBootSource(boot) => {
                self.not_started()?;
                check_boot_files(&boot)?;
                self.configure(|c| c.boot_source = Some(boot))
            }
            VmmAction::PutDrive(drive) => {
                self.not_started()?;
                check_drive(&drive)?;
                self.configure(|c| {
                    let id = drive.drive_id.clone();
                    upsert(&mut c.drives, drive, |d| d.drive_id == id);
                })
            }
            VmmAction::PutNetworkInterface(iface) => self.configure(|c| {
                let id = iface.iface_id.clone();
                upsert(&mut c.network_interfaces, iface, |n| n.iface_id == id);
            }),
            VmmAction::PutSerial(serial) => self.configure(|c| c.serial = Some(serial)),
            VmmAction::PutEntropy(entropy) => self.configure(|c| c.entropy = Some(entropy)),
            VmmAction::PutVsock(vsock) => self.configure(|c| c.vsock = Some(vsock)),
            VmmAction::PutFs(fs) => self.configure(|c| {
                let id = fs.fs_id.clone();
                upsert(&mut c.fs, fs, |f| f.fs_id == id);
            }),
            VmmAction::PutMmdsConfig(mmds) => self.configure(|c| c.mmds_config = Some(mmds)),
            // The store is live from process start: what changes here, a running guest reads.
            VmmAction::GetMmds => {
                let data = match lock(&self.mmds).data() {
                    // Firecracker's answer while the store holds nothing.
                    Value::Null => json!({}),
                    data => data.clone(),
                };
                Ok(Handled::Done(VmmData::Json(data)))
            }
            VmmAction::PutMmds(data) => Ok(lock(&self.mmds).put(data).map(done)?),
            VmmAction::PatchMmds(patch) => Ok(lock(&self.mmds).patch(patch).map(done)?),
            VmmAction::PutLogger(section) => self.put_logger(section).map(done),
            VmmAction::PutMetrics(section) => {
                self.not_started()?;
                // Opened now so that a bad path is this request's error, not InstanceStart's.
                metrics::open(Path::new(&section.metrics_path))?;
                self.configure(|c| c.metrics = Some(section))
            }
            VmmAction::InstanceStart => {
                self.not_started()?;
                Ok(Handled::Start(Box::new(VmSpec::new(
                    &self.cfg, &self.opts,
                )?)))
            }
            VmmAction::PatchDrive(patch) => self.patch_drive(patch).map(done),
            VmmAction::PatchNetworkInterface(patch) => self.patch_interface(&patch).map(done),
            VmmAction::SendCtrlAltDel => self.running()?.ctrl_alt_del().map(done),
            VmmAction::FlushMetrics => self.running()?.flush_metrics().map(done),
            VmmAction::Pause => self.running()?.pause().map(done),
            VmmAction::Resume => {
                self.running()?.devices.gate.resume();
                Ok(done(()))
            }
        }
    }

    fn not_started(&self) -> Result<(), ActionError> {
        match self.vm {
            None => Ok(()),
            Some(_) => Err(ActionError::NotAfterStart),
        }
    }

    fn running(&mut self) -> Result<&mut RunningVm, ActionError> {
        self.vm.as_mut().ok_or(ActionError::NotBeforeStart)
    }

    /// Applies a pre-boot change, if the configuration stays valid.
    fn configure(&mut self, change: impl FnOnce(&mut VmConfig)) -> Result<Handled, ActionError> {
        self.not_started()?;
        let mut next = self.cfg.clone();
        change(&mut next);
        spec::check(&next)?;
        self.cfg = next;
        Ok(Handled::Done(VmmData::Empty))
    }

    fn put_logger(&mut self, section: LoggerConfig) -> Result<(), ActionError> {
        self.not_started()?;
        logger::configure(&section)?;
        self.cfg.logger = Some(merge_logger(self.cfg.logger.take(), section));
        Ok(())
    }

    /// Swaps a drive's backing file (the guest is told its size may have changed), then
    /// updates its rate limiter; a new file that cannot be opened changes nothing.
    fn patch_drive(&mut self, patch: PartialDrive) -> Result<(), ActionError> {
        let id = patch.drive_id;
        let vm = self.vm.as_mut().ok_or(ActionError::NotBeforeStart)?;
        let drive = vm.spec.drives.iter_mut().find(|d| d.id == id);
        if drive
            .as_ref()
            .is_some_and(|d| matches!(d.backing, DriveBacking::VhostUser(_)))
        {
            return Err(ActionError::PatchVhostDrive(id));
        }
        let limiter = vm.devices.drive_limiters.iter().find(|(d, _)| *d == id);
        let config = self.cfg.drives.iter_mut().find(|d| d.drive_id == id);
        let (Some(drive), Some((_, limiter)), Some(config)) = (drive, limiter, config) else {
            return Err(ActionError::NoDrive(id));
        };
        if let Some(path) = patch.path_on_host {
            let Some((_, block)) = vm.devices.blocks.iter().find(|(b, _)| *b == id) else {
                return Err(ActionError::NoDrive(id));
            };
            let mut next = drive.clone();
            next.backing = DriveBacking::Image(path.clone().into());
            let disk = device_manager::open_disk(&next, Path::new(&path))?;
            let mut transport = lock(block);
            transport.device_mut().swap_disk(disk);
            transport.config_changed();
            *drive = next;
            config.path_on_host = path;
        }
        patch_limiter(
            patch.rate_limiter,
            &mut config.rate_limiter,
            &mut drive.rate_limiter,
            limiter,
        );
        Ok(())
    }

    /// Updates an interface's receive and transmit rate limiters (all Firecracker's PATCH
    /// changes).
    fn patch_interface(&mut self, patch: &PartialNetworkInterface) -> Result<(), ActionError> {
        let id = &patch.iface_id;
        let vm = self.vm.as_mut().ok_or(ActionError::NotBeforeStart)?;
        let net = vm.spec.nets.iter_mut().find(|n| n.id == *id);
        let limiters = vm.devices.net_limiters.iter().find(|(n, _)| n == id);
        let config = self
            .cfg
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == *id);
        let (Some(net), Some((_, limiters)), Some(config)) = (net, limiters, config) else {
            return Err(ActionError::NoInterface(id.clone()));
        };
        patch_limiter(
            patch.rx_rate_limiter,
            &mut config.rx_rate_limiter,
            &mut net.rx_rate_limiter,
            &limiters.rx,
        );
        patch_limiter(
            patch.tx_rate_limiter,
            &mut config.tx_rate_limiter,
            &mut net.tx_rate_limiter,
            &limiters.tx,
        );
        Ok(())
    }
}

/// Applies a PATCH's rate limiter `update` (Firecracker's rule: the buckets it gives replace
/// the current ones, those it leaves out stay) to the running device's `limiter`, the spec
/// and the configuration GET /vm/config shows.
fn patch_limiter(
    update: Option<RateLimiterConfig>,
    config: &mut Option<RateLimiterConfig>,
    spec: &mut LimiterConfig,
    limiter: &RateLimiter,
) {
    let Some(update) = update else {
        return;
    };
    let merged = config.unwrap_or_default().patched(update);
    *spec = spec::rate_limiter(Some(&merged));
    limiter.update(*spec);
    *config = Some(merged);
}

impl RunningVm {
    fn ctrl_alt_del(&self) -> Result<(), ActionError> {
        match lock(&self.devices.i8042).send_ctrl_alt_del() {
            true => Ok(()),
            false => Err(ActionError::KeyboardFull),
        }
    }

    /// Firecracker answers success when no metrics were configured; so does ember.
    fn flush_metrics(&self) -> Result<(), ActionError> {
        match &self.metrics {
            Some(metrics) => Ok(lock(metrics).write()?),
            None => Ok(()),
        }
    }

    fn pause(&self) -> Result<(), ActionError> {
        let gate = &self.devices.gate;
        if gate.is_paused() {
            return Ok(());
        }
        gate.pause().map_err(ActionError::Pause)?;
        let vcpus = lock(&self.vcpus);
        for vcpu in vcpus.iter() {
            vcpu.kick();
        }
        if !gate.wait_parked(vcpus.len(), self.devices.io_workers, PAUSE_LIMIT) {
            drop(vcpus);
            gate.resume();
            return Err(ActionError::PauseTimeout);
        }
        Ok(())
    }
}

/// Firecracker opens a drive's image at `PUT /drives`, so a wrong path fails there; likewise a
/// vhost-user-blk drive's socket must exist (ember connects to it at InstanceStart). A drive
/// with both or neither is left to the spec, which names the problem.
fn check_drive(drive: &Drive) -> Result<(), ActionError> {
    let socket = drive.socket.as_deref().filter(|s| !s.is_empty());
    match (socket, drive.path_on_host.is_empty()) {
        (Some(socket), true) => {
            let is_socket = std::fs::metadata(socket).and_then(|m| {
                use std::os::unix::fs::FileTypeExt;
                if m.file_type().is_socket() {
                    Ok(())
                } else {
                    Err(io::Error::other("not a socket"))
                }
            });
            is_socket.map_err(|source| ActionError::DriveSocket {
                id: drive.drive_id.clone(),
                path: socket.into(),
                source,
            })
        }
        (None, false) => {
            let image = Use::Disk {
                read_only: drive.is_read_only,
            };
            host_file::open(Path::new(&drive.path_on_host), image)
                .map(drop)
                .map_err(|source| ActionError::DriveFile {
                    id: drive.drive_id.clone(),
                    source,
                })
        }
        _ => Ok(()),
    }
}

/// Firecracker opens the kernel and initrd at `PUT /boot-source`, so a wrong path fails there
/// rather than at InstanceStart.
fn check_boot_files(boot: &BootSource) -> Result<(), ActionError> {
    host_file::open(Path::new(&boot.kernel_image_path), Use::Read)
        .map_err(ActionError::KernelFile)?;
    if let Some(initrd) = &boot.initrd_path {
        host_file::open(Path::new(initrd), Use::Read).map_err(ActionError::InitrdFile)?;
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Handled, ActionError> {
    Ok(Handled::Done(VmmData::Json(serde_json::to_value(value)?)))
}

fn patch_machine(mc: &mut MachineConfig, patch: MachineConfigPatch) {
    mc.vcpu_count = patch.vcpu_count.unwrap_or(mc.vcpu_count);
    mc.mem_size_mib = patch.mem_size_mib.unwrap_or(mc.mem_size_mib);
    mc.smt = patch.smt.unwrap_or(mc.smt);
    mc.track_dirty_pages = patch.track_dirty_pages.unwrap_or(mc.track_dirty_pages);
    if patch.cpu_template.is_some() {
        mc.cpu_template = patch.cpu_template;
    }
    if patch.huge_pages.is_some() {
        mc.huge_pages = patch.huge_pages;
    }
}

/// Replaces the item `same` finds (Firecracker's PUT of an existing id), or appends `item`.
fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match items.iter_mut().find(|i| same(i)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

/// The logger settings after `update`, as GET /vm/config reports them: fields absent from
/// `update` keep their value, except the level (see [`logger::configure`]).
fn merge_logger(current: Option<LoggerConfig>, update: LoggerConfig) -> LoggerConfig {
    let mut merged = current.unwrap_or_default();
    merged.log_path = update.log_path.or(merged.log_path);
    merged.level = Some(update.level.unwrap_or_else(|| "Info".into()));
    merged.show_level = update.show_level.or(merged.show_level);
    merged.show_log_origin = update.show_log_origin.or(merged.show_log_origin);
    merged.module = update.module.or(merged.module);
    merged
}

/// The event-loop subscriber that serves the API while the VM runs.
pub struct ApiSubscriber(pub Arc<Mutex<Lifecycle>>);

impl MutEventSubscriber for ApiSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // A running VM refuses InstanceStart, so nothing comes back to boot.
        let _ = lock(&self.0).serve();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = lock(&self.0).api.notify_fd();
        if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            warn!("the API cannot be served while the VM runs: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use api_server::model::{
        BootSource, Drive, EntropyConfig, FsConfig, MmdsConfig, NetworkInterface, SerialConfig,
        VsockConfig,
    };
    use devices::legacy::I8042;
    use devices::{ExitNotifier, IrqTrigger};
    use vmm_sys_util::eventfd::EventFd;

    use crate::pause::PauseGate;

    fn lifecycle(name: &str) -> Lifecycle {
        let sock = std::env::temp_dir().join(format!("ember-lc-{}-{name}", std::process::id()));
        let api = crate::api::start(&sock, 4096, "vm_1").unwrap();
        let mmds = crate::mmds::store(4096, None).unwrap();
        Lifecycle::new(api, VmConfig::default(), RunOptions::default(), mmds)
    }

    fn running_vm(spec: VmSpec) -> RunningVm {
        let irq = IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        RunningVm {
            spec,
            devices: DeviceControls {
                i8042: Arc::new(Mutex::new(I8042::new(irq, ExitNotifier::new().unwrap()))),
                gate: Arc::new(PauseGate::new().unwrap()),
                io_workers: 0,
                blocks: Vec::new(),
                drive_limiters: Vec::new(),
                net_limiters: Vec::new(),
            },
            vcpus: Arc::new(Mutex::new(Vec::new())),
            metrics: None,
        }
    }

    fn answer(lc: &mut Lifecycle, action: VmmAction) -> Result<VmmData, String> {
        match lc.handle(action) {
            Ok(Handled::Done(data)) => Ok(data),
            Ok(Handled::Start(_)) => Err("start".into()),
            Err(err) => Err(crate::error_chain(&err)),
        }
    }

    fn state_of(lc: &mut Lifecycle) -> String {
        match answer(lc, VmmAction::GetInstanceInfo).unwrap() {
            VmmData::Json(info) => info["state"].as_str().unwrap().to_owned(),
            VmmData::Empty => panic!("GET / answered nothing"),
        }
    }

    const NOT_BEFORE: &str = "not supported before starting";
    const NOT_AFTER: &str = "not supported after starting";

    #[test]
    fn before_boot_the_configuration_changes_and_runtime_actions_are_refused() {
        let mut lc = lifecycle("before");
        assert_eq!(state_of(&mut lc), "Not started");
        for action in [
            VmmAction::Pause,
            VmmAction::Resume,
            VmmAction::SendCtrlAltDel,
            VmmAction::FlushMetrics,
            VmmAction::PatchDrive(PartialDrive::default()),
            VmmAction::PatchNetworkInterface(PartialNetworkInterface::default()),
        ] {
            let err = answer(&mut lc, action.clone()).unwrap_err();
            assert!(err.contains(NOT_BEFORE), "{action:?}: {err}");
        }
        // An invalid change is refused and leaves the configuration as it was.
        let bad = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        let err = answer(&mut lc, VmmAction::PutMachineConfig(bad)).unwrap_err();
        assert!(err.contains("vcpu_count"), "{err}");
        assert_eq!(lc.cfg.machine_config, MachineConfig::default());
        // InstanceStart without a kernel says what is missing.
        let err = answer(&mut lc, VmmAction::InstanceStart).unwrap_err();
        assert!(err.contains("--kernel"), "{err}");
        let serial = SerialConfig {
            serial_out_path: Some("console.log".into()),
            rate_limiter: None,
        };
        answer(&mut lc, VmmAction::PutSerial(serial.clone())).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(cfg["serial"]["serial_out_path"], "console.log"),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
    }

    #[test]
    fn put_entropy_adds_the_device_with_its_rate_limiter_before_boot_only() {
        let mut lc = lifecycle("entropy");
        let limited: RateLimiterConfig =
            serde_json::from_value(json!({"bandwidth": {"size": 1000, "refill_time": 100}}))
                .unwrap();
        let entropy = EntropyConfig {
            rate_limiter: Some(limited),
        };
        answer(&mut lc, VmmAction::PutEntropy(entropy)).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(
                cfg["entropy"],
                json!({"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}})
            ),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
        lc.cfg.boot_source = Some(BootSource::default());
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        let limiter = spec.entropy.as_ref().map(|e| e.rate_limiter);
        assert!(
            limiter.is_some_and(|l| l.bandwidth.is_some()),
            "{limiter:?}"
        );
        lc.started(running_vm(*spec));
        let err = answer(&mut lc, VmmAction::PutEntropy(EntropyConfig::default())).unwrap_err();
        assert!(err.contains(NOT_AFTER), "{err}");
    }

    #[test]
    fn put_vsock_adds_the_device_before_boot_only_and_refuses_a_reserved_cid() {
        let mut lc = lifecycle("vsock");
        let vsock = |guest_cid| VsockConfig {
            vsock_id: Some("vsock0".into()),
            guest_cid,
            uds_path: "/tmp/ember-v.sock".into(),
        };
        let err = answer(&mut lc, VmmAction::PutVsock(vsock(2))).unwrap_err();
        assert!(err.contains("guest_cid must be 3 or more"), "{err}");
        assert_eq!(lc.cfg.vsock, None);
        answer(&mut lc, VmmAction::PutVsock(vsock(3))).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(
                cfg["vsock"],
                json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/ember-v.sock"})
            ),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
        lc.cfg.boot_source = Some(BootSource::default());
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        assert_eq!(spec.vsock.as_ref().map(|v| v.guest_cid), Some(3));
        lc.started(running_vm(*spec));
        let err = answer(&mut lc, VmmAction::PutVsock(vsock(4))).unwrap_err();
        assert!(err.contains(NOT_AFTER), "{err}");
    }

    #[test]
    fn put_fs_adds_or_replaces_a_share_before_boot_and_refuses_a_missing_directory() {
        let mut lc = lifecycle("fs");
        let fs = |dir: &str, read_only| FsConfig {
            fs_id: "docs".into(),
            tag: "docs".into(),
            shared_dir: Some(dir.into()),
            socket: None,
            read_only,
        };
        let err = answer(&mut lc, VmmAction::PutFs(fs("/no/such/dir", false))).unwrap_err();
        assert!(err.contains("'/no/such/dir' cannot be used"), "{err}");
        assert!(lc.cfg.fs.is_empty());
        let tmp = std::env::temp_dir();
        let dir = tmp.to_str().unwrap();
        answer(&mut lc, VmmAction::PutFs(fs(dir, false))).unwrap();
        answer(&mut lc, VmmAction::PutFs(fs(dir, true))).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(
                cfg["fs"],
                json!([{"fs_id": "docs", "tag": "docs", "shared_dir": dir, "read_only": true}])
            ),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
        lc.cfg.boot_source = Some(BootSource::default());
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        assert!(spec.has_vhost_user());
        assert_eq!(spec.shares[0].slot, crate::device_manager::Slot::nth(0));
        lc.started(running_vm(*spec));
        let err = answer(&mut lc, VmmAction::PutFs(fs(dir, false))).unwrap_err();
        assert!(err.contains(NOT_AFTER), "{err}");
    }

    #[test]
    fn the_mmds_store_answers_before_and_after_boot_and_its_config_only_before() {
        let mut lc = lifecycle("mmds");
        // The store the lifecycle was given, as the net devices are given it at boot.
        let store = lc.mmds.clone();
        let got = |lc: &mut Lifecycle| answer(lc, VmmAction::GetMmds).unwrap();
        assert_eq!(got(&mut lc), VmmData::Json(json!({})));
        let err = answer(&mut lc, VmmAction::PatchMmds(json!({"a": 1}))).unwrap_err();
        assert!(err.contains("not initialized"), "{err}");
        answer(&mut lc, VmmAction::PutMmds(json!({"a": {"b": 1}}))).unwrap();
        answer(&mut lc, VmmAction::PatchMmds(json!({"a": {"c": 2}}))).unwrap();
        assert_eq!(lock(&store).data(), &json!({"a": {"b": 1, "c": 2}}));
        // Beyond the limit: Firecracker's 413, naming the limit; other refusals are 400s.
        let Err(refusal) = lc.handle(VmmAction::PutMmds(json!("x".repeat(5000)))) else {
            panic!("a store over its limit was accepted");
        };
        match refusal.fault() {
            Fault::PayloadTooLarge(message) => assert!(message.contains("4096"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(lock(&store).data(), &json!({"a": {"b": 1, "c": 2}}));
        assert!(matches!(
            ActionError::NotAfterStart.fault(),
            Fault::BadRequest(_)
        ));

        let config = MmdsConfig {
            network_interfaces: vec!["eth0".into()],
            ..Default::default()
        };
        let err = answer(&mut lc, VmmAction::PutMmdsConfig(config.clone())).unwrap_err();
        assert!(err.contains("existing network interface: 'eth0'"), "{err}");
        let nic = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            ..Default::default()
        };
        answer(&mut lc, VmmAction::PutNetworkInterface(nic)).unwrap();
        answer(&mut lc, VmmAction::PutMmdsConfig(config.clone())).unwrap();
        let VmmData::Json(shown) = answer(&mut lc, VmmAction::GetVmConfig).unwrap() else {
            panic!("GET /vm/config answered nothing");
        };
        assert_eq!(shown["mmds-config"]["ipv4_address"], "169.254.169.254");
        lc.cfg.boot_source = Some(BootSource::default());
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        assert!(spec.mmds.is_some() && spec.nets[0].mmds);
        lc.started(running_vm(*spec));
        let err = answer(&mut lc, VmmAction::PutMmdsConfig(config)).unwrap_err();
        assert!(err.contains(NOT_AFTER), "{err}");
        answer(&mut lc, VmmAction::PutMmds(json!({"after": "boot"}))).unwrap();
        assert_eq!(lock(&store).data(), &json!({"after": "boot"}));
        assert_eq!(got(&mut lc), VmmData::Json(json!({"after": "boot"})));
    }

    #[test]
    fn instance_start_hands_back_the_spec_and_the_vm_then_runs_pauses_and_resumes() {
        let mut lc = lifecycle("life");
        // PUT opens the files, as Firecracker's does: any readable file will do here.
        let image = std::env::temp_dir().join(format!("ember-lc-{}.img", std::process::id()));
        std::fs::write(&image, [0u8; 512]).unwrap();
        let boot = BootSource {
            kernel_image_path: image.display().to_string(),
            ..Default::default()
        };
        let err = answer(
            &mut lc,
            VmmAction::PutBootSource(BootSource {
                kernel_image_path: "/no/such/vmlinux".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(
            err.starts_with("The kernel file cannot be opened: "),
            "{err}"
        );
        answer(&mut lc, VmmAction::PutBootSource(boot)).unwrap();
        let drive = Drive {
            drive_id: "rootfs".into(),
            path_on_host: image.display().to_string(),
            is_root_device: true,
            ..Default::default()
        };
        answer(&mut lc, VmmAction::PutDrive(drive)).unwrap();
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        assert!(
            spec.cmdline.ends_with("root=/dev/vda rw"),
            "{}",
            spec.cmdline
        );
        lc.started(running_vm(*spec));
        assert_eq!(state_of(&mut lc), "Running");
        for action in [
            VmmAction::InstanceStart,
            VmmAction::PutMachineConfig(MachineConfig::default()),
            VmmAction::PutBootSource(BootSource::default()),
            VmmAction::PutSerial(SerialConfig::default()),
            VmmAction::PutLogger(LoggerConfig::default()),
        ] {
            let err = answer(&mut lc, action.clone()).unwrap_err();
            assert!(err.contains(NOT_AFTER), "{action:?}: {err}");
        }
        answer(&mut lc, VmmAction::Pause).unwrap();
        assert_eq!(state_of(&mut lc), "Paused");
        answer(&mut lc, VmmAction::Pause).unwrap();
        answer(&mut lc, VmmAction::Resume).unwrap();
        assert_eq!(state_of(&mut lc), "Running");
        answer(&mut lc, VmmAction::FlushMetrics).unwrap();
        answer(&mut lc, VmmAction::SendCtrlAltDel).unwrap();
    }

    #[test]
    fn runtime_patches_update_rate_limiters_and_name_what_is_missing() {
        let mut lc = lifecycle("patch");
        let cfg = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "drives": [{"drive_id": "data", "path_on_host": "x", "is_root_device": false}],
                "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                    "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}]}"#,
        )
        .unwrap();
        let spec = VmSpec::new(&cfg, &RunOptions::default()).unwrap();
        let limiter = |c: LimiterConfig| Arc::new(RateLimiter::new(c).unwrap());
        let drive = limiter(spec.drives[0].rate_limiter);
        let (rx, tx) = (
            limiter(spec.nets[0].rx_rate_limiter),
            limiter(spec.nets[0].tx_rate_limiter),
        );
        let mut vm = running_vm(spec);
        vm.devices.drive_limiters = vec![("data".into(), drive.clone())];
        vm.devices.net_limiters = vec![(
            "eth0".into(),
            device_manager::NetLimiters {
                rx: rx.clone(),
                tx: tx.clone(),
            },
        )];
        lc.cfg = cfg;
        lc.started(vm);
        let patch = |body: &str| {
            let drive: PartialDrive = serde_json::from_str(body).unwrap();
            VmmAction::PatchDrive(drive)
        };
        assert_eq!(
            answer(&mut lc, patch(r#"{"drive_id": "nope"}"#)).unwrap_err(),
            "There is no drive 'nope'."
        );
        // Buckets given replace, buckets left out stay (Firecracker's PATCH).
        answer(
            &mut lc,
            patch(
                r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1, "refill_time": 10}}}"#,
            ),
        )
        .unwrap();
        answer(
            &mut lc,
            patch(r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 100}}}"#),
        )
        .unwrap();
        let config = drive.config();
        assert_eq!(config.ops.map(|b| b.size), Some(1));
        assert_eq!(config.bandwidth.map(|b| b.size), Some(4096));
        let iface: PartialNetworkInterface = serde_json::from_str(
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}},
                "tx_rate_limiter": {"ops": {}}}"#,
        )
        .unwrap();
        answer(&mut lc, VmmAction::PatchNetworkInterface(iface)).unwrap();
        assert_eq!(rx.config().bandwidth.map(|b| b.size), Some(1));
        assert_eq!(
            tx.config(),
            LimiterConfig::default(),
            "an empty bucket lifts the limit"
        );
        // GET /vm/config shows the limits in force.
        let VmmData::Json(shown) = answer(&mut lc, VmmAction::GetVmConfig).unwrap() else {
            panic!("GET /vm/config answered nothing");
        };
        assert_eq!(shown["drives"][0]["rate_limiter"]["ops"]["size"], 1);
        assert_eq!(
            shown["drives"][0]["rate_limiter"]["bandwidth"]["size"],
            4096
        );
        assert_eq!(
            shown["network-interfaces"][0]["rx_rate_limiter"]["bandwidth"]["refill_time"],
            1
        );
        let iface = PartialNetworkInterface {
            iface_id: "eth1".into(),
            ..Default::default()
        };
        assert_eq!(
            answer(&mut lc, VmmAction::PatchNetworkInterface(iface)).unwrap_err(),
            "There is no network interface 'eth1'."
        );
    }
}

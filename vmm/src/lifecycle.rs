//! The VM's life as the API sees it, from process start to exit: one state ([`VmState`]) and
//! one exhaustive `match` over every [`VmmAction`], answered here and nowhere else. Before boot
//! the main thread calls [`Lifecycle::serve`] whenever the API has requests, and boots the
//! [`VmSpec`] an InstanceStart hands back; the boot then reports [`Lifecycle::started`] (or
//! the main thread [`Lifecycle::start_failed`]), which answers that InstanceStart. While the
//! VM runs, the event loop's [`ApiSubscriber`] calls `serve`.
//!
//! Errors are [`ActionError`]s, rendered as Firecracker's `fault_message`; an action in the
//! wrong state gets Firecracker's own messages. This module must not build devices or touch
//! KVM: it acts on the handles the boot gives it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::model::{BootSource, LoggerConfig, MachineConfig, VmConfig};
use api_server::request::{
    MachineConfigPatch, PartialDrive, PartialNetworkInterface, VmmAction, VmmData,
};
use devices::host_file::{self, HostFileError, Use};
use devices::sync::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use serde_json::json;

use crate::api::Api;
use crate::builder::BuildError;
use crate::config::ConfigError;
use crate::device_manager::{self, DeviceControls, DeviceError};
use crate::logger::{self, LoggerError};
use crate::metrics::{self, Metrics, MetricsError};
use crate::spec::{self, RunOptions, VmSpec};
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
    /// The i8042's buffer is full.
    #[error("The guest's keyboard buffer is full; try again.")]
    KeyboardFull,
    /// An answer could not be encoded.
    #[error("cannot encode the answer")]
    Encode(#[from] serde_json::Error),
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
    /// A VM configured as `cfg` says, run with `opts`, answering `api`; not started.
    pub fn new(api: Arc<Api>, cfg: VmConfig, opts: RunOptions) -> Self {
        Self {
            api,
            cfg,
            opts,
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
                Err(err) => self.api.reply(Err(crate::error_chain(&err))),
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
            let err = ActionError::Start(err);
            self.api.reply(Err(crate::error_chain(&err)));
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
                // Firecracker opens the image at PUT time, so a wrong path fails here.
                let image = Use::Disk {
                    read_only: drive.is_read_only,
                };
                host_file::open(Path::new(&drive.path_on_host), image).map_err(|source| {
                    ActionError::DriveFile {
                        id: drive.drive_id.clone(),
                        source,
                    }
                })?;
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

    /// Swaps a drive's backing file; the guest is told its size may have changed.
    fn patch_drive(&mut self, patch: PartialDrive) -> Result<(), ActionError> {
        let id = patch.drive_id;
        let vm = self.vm.as_mut().ok_or(ActionError::NotBeforeStart)?;
        let owner = format!("drive '{id}'");
        if let Some(refusal) = spec::limiters(&owner, [&patch.rate_limiter]) {
            return Err(ConfigError::from(refusal).into());
        }
        let drive = vm.spec.drives.iter_mut().find(|d| d.id == id);
        let block = vm.devices.blocks.iter().find(|(b, _)| *b == id);
        let config = self.cfg.drives.iter_mut().find(|d| d.drive_id == id);
        let (Some(drive), Some((_, block)), Some(config)) = (drive, block, config) else {
            return Err(ActionError::NoDrive(id));
        };
        let Some(path) = patch.path_on_host else {
            return Ok(());
        };
        let mut next = drive.clone();
        next.path = path.clone().into();
        let disk = device_manager::open_disk(&next)?;
        let mut transport = lock(block);
        transport.device_mut().swap_disk(disk);
        transport.config_changed();
        *drive = next;
        config.path_on_host = path;
        Ok(())
    }

    /// Firecracker's PATCH updates only rate limiters, which ember does not implement: an
    /// interface that exists and no limiter is a successful no-op, a limiter a clear refusal.
    fn patch_interface(&mut self, patch: &PartialNetworkInterface) -> Result<(), ActionError> {
        let vm = self.running()?;
        if !vm.spec.nets.iter().any(|n| n.id == patch.iface_id) {
            return Err(ActionError::NoInterface(patch.iface_id.clone()));
        }
        let owner = format!("network interface '{}'", patch.iface_id);
        match spec::limiters(&owner, [&patch.rx_rate_limiter, &patch.tx_rate_limiter]) {
            Some(refusal) => Err(ConfigError::from(refusal).into()),
            None => Ok(()),
        }
    }
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
    use api_server::model::{BootSource, Drive, EntropyConfig, SerialConfig};
    use devices::legacy::I8042;
    use devices::{ExitNotifier, IrqTrigger};
    use vmm_sys_util::eventfd::EventFd;

    use crate::pause::PauseGate;

    fn lifecycle(name: &str) -> Lifecycle {
        let sock = std::env::temp_dir().join(format!("ember-lc-{}-{name}", std::process::id()));
        let api = crate::api::start(&sock, 4096, "vm_1").unwrap();
        Lifecycle::new(api, VmConfig::default(), RunOptions::default())
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
        };
        answer(&mut lc, VmmAction::PutSerial(serial.clone())).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(cfg["serial"]["serial_out_path"], "console.log"),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
    }

    #[test]
    fn put_entropy_adds_the_device_before_boot_and_refuses_a_rate_limiter() {
        let mut lc = lifecycle("entropy");
        let limited = EntropyConfig {
            rate_limiter: Some(json!({"bandwidth": {"size": 1000, "refill_time": 100}})),
        };
        let err = answer(&mut lc, VmmAction::PutEntropy(limited)).unwrap_err();
        assert_eq!(
            err,
            "the entropy device: rate limiters are not supported by ember; remove them"
        );
        assert_eq!(lc.cfg.entropy, None);
        let unlimited = EntropyConfig {
            rate_limiter: Some(json!({})),
        };
        answer(&mut lc, VmmAction::PutEntropy(unlimited)).unwrap();
        match answer(&mut lc, VmmAction::GetVmConfig).unwrap() {
            VmmData::Json(cfg) => assert_eq!(cfg["entropy"], json!({"rate_limiter": {}})),
            VmmData::Empty => panic!("GET /vm/config answered nothing"),
        }
        lc.cfg.boot_source = Some(BootSource::default());
        let Ok(Handled::Start(spec)) = lc.handle(VmmAction::InstanceStart) else {
            panic!("InstanceStart did not ask for a boot");
        };
        assert!(spec.entropy.is_some());
        lc.started(running_vm(*spec));
        let err = answer(&mut lc, VmmAction::PutEntropy(EntropyConfig::default())).unwrap_err();
        assert!(err.contains(NOT_AFTER), "{err}");
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
    fn runtime_patches_name_what_is_missing_or_unsupported() {
        let mut lc = lifecycle("patch");
        let cfg = VmConfig {
            boot_source: Some(BootSource::default()),
            ..Default::default()
        };
        lc.started(running_vm(
            VmSpec::new(&cfg, &RunOptions::default()).unwrap(),
        ));
        let patch = PartialDrive {
            drive_id: "data".into(),
            ..Default::default()
        };
        assert_eq!(
            answer(&mut lc, VmmAction::PatchDrive(patch)).unwrap_err(),
            "There is no drive 'data'."
        );
        let limited = PartialDrive {
            drive_id: "data".into(),
            rate_limiter: Some(json!({"ops": {"size": 1, "refill_time": 10}})),
            ..Default::default()
        };
        let err = answer(&mut lc, VmmAction::PatchDrive(limited)).unwrap_err();
        assert!(err.contains("rate limiters are not supported"), "{err}");
        let iface = PartialNetworkInterface {
            iface_id: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(
            answer(&mut lc, VmmAction::PatchNetworkInterface(iface)).unwrap_err(),
            "There is no network interface 'eth0'."
        );
    }
}

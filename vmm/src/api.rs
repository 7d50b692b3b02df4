//! The VMM's side of the REST API. The API thread (`api_server::server`) sends each request as
//! a [`VmmAction`] over a channel and writes an eventfd; the VMM thread answers every action,
//! in order, on the reply channel. Before boot the main thread waits on that eventfd and edits
//! the configuration ([`preboot`]); after InstanceStart a [`RuntimeApi`] subscriber in the event
//! loop answers with the running VM's state. Whether an action is legal depends on that
//! state, and the wrong state gets Firecracker's own messages.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::model::{LoggerConfig, MachineConfig, VmConfig};
use api_server::request::{PartialDrive, PartialNetworkInterface, VmmAction, VmmData, VmmResponse};
use api_server::server::{self, Limits, ServerError, SocketFile, VmmLink};
use devices::legacy::I8042;
use devices::sync::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use serde_json::json;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::RunOptions;
use crate::config;
use crate::logger;
use crate::metrics::{self, Metrics};
use crate::pause::PauseGate;
use crate::vcpu::VcpuHandle;
use crate::virtio_devices::{self, SharedBlock};

/// Firecracker's answer to a pre-boot-only action after boot.
pub const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's answer to a runtime-only action before boot.
pub const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket cannot be served.
    #[error(transparent)]
    Socket(#[from] ServerError),
    /// The thread or an event could not be created.
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// The VMM's ends of the API channels.
pub struct Api {
    actions: Mutex<Receiver<VmmAction>>,
    notify: EventFd,
    responses: Sender<VmmResponse>,
    id: String,
    started: AtomicBool,
    /// Removes the socket file when the last handle goes, as ember exits.
    _socket_file: SocketFile,
}

/// Binds `path` and starts the API thread.
pub fn start(path: &Path, max_payload: usize, id: &str) -> Result<Arc<Api>, ApiError> {
    let (listener, socket_file) = server::bind(path)?;
    let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(ApiError::Thread)?;
    let (action_tx, action_rx) = mpsc::channel();
    let (response_tx, response_rx) = mpsc::channel();
    let link = VmmLink {
        actions: action_tx,
        notify: notify.try_clone().map_err(ApiError::Thread)?,
        responses: response_rx,
    };
    std::thread::Builder::new()
        .name("ember_api".into())
        .spawn(move || server::serve(listener, link, Limits::new(max_payload)))
        .map_err(ApiError::Thread)?;
    Ok(Arc::new(Api {
        actions: Mutex::new(action_rx),
        notify,
        responses: response_tx,
        id: id.into(),
        started: AtomicBool::new(false),
        _socket_file: socket_file,
    }))
}

impl Api {
    /// The eventfd written with every request.
    pub fn notify_fd(&self) -> std::os::fd::RawFd {
        self.notify.as_raw_fd()
    }

    /// The next waiting action, if any.
    pub fn next(&self) -> Option<VmmAction> {
        let _ = self.notify.read();
        lock(&self.actions).try_recv().ok()
    }

    /// Answers the oldest unanswered action.
    pub fn reply(&self, response: VmmResponse) {
        if self.responses.send(response).is_err() {
            warn!("the API thread is gone; a response was dropped");
        }
    }

    /// The VM is running: InstanceStart succeeded.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Whether the VM was started.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn instance_info(&self, state: &str) -> VmmData {
        VmmData::Json(json!({
            "app_name": "ember",
            "id": self.id,
            "state": state,
            "vmm_version": env!("CARGO_PKG_VERSION"),
        }))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> VmmResponse {
    serde_json::to_value(value)
        .map(VmmData::Json)
        .map_err(|e| format!("cannot encode the answer: {e}"))
}

/// Answers to actions that mean the same in every state; `None` for the others.
fn common(api: &Api, cfg: &VmConfig, state: &str, action: &VmmAction) -> Option<VmmResponse> {
    Some(match action {
        VmmAction::GetInstanceInfo => Ok(api.instance_info(state)),
        VmmAction::GetVersion => Ok(VmmData::Json(
            json!({ "firecracker_version": env!("CARGO_PKG_VERSION") }),
        )),
        VmmAction::GetVmConfig => to_json(cfg),
        VmmAction::GetMachineConfig => to_json(&cfg.machine_config),
        _ => return None,
    })
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

/// Applies a pre-boot action to the configuration being built. `InstanceStart` is not handled
/// here: the caller boots.
pub fn preboot(
    api: &Api,
    cfg: &mut VmConfig,
    opts: &mut RunOptions,
    action: VmmAction,
) -> VmmResponse {
    if let Some(answer) = common(api, cfg, "Not started", &action) {
        return answer;
    }
    let mut next = cfg.clone();
    match action {
        VmmAction::PutMachineConfig(mc) => next.machine_config = mc,
        VmmAction::PatchMachineConfig(patch) => {
            let mc: &mut MachineConfig = &mut next.machine_config;
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
        VmmAction::PutBootSource(boot) => next.boot_source = Some(boot),
        VmmAction::PutDrive(drive) => {
            let id = drive.drive_id.clone();
            upsert(&mut next.drives, drive, |d| d.drive_id == id);
        }
        VmmAction::PutNetworkInterface(iface) => {
            let id = iface.iface_id.clone();
            upsert(&mut next.network_interfaces, iface, |n| n.iface_id == id);
        }
        VmmAction::PutSerial(serial) => {
            // Firecracker's PUT replaces the output, whatever the command line said.
            if let Some(path) = serial.serial_out_path {
                opts.serial_out = vec![path.into()];
            }
            return Ok(VmmData::Empty);
        }
        VmmAction::PutLogger(section) => {
            logger::configure(&section).map_err(|e| crate::error_chain(&e))?;
            next.logger = Some(merge_logger(next.logger.take(), section));
        }
        VmmAction::PutMetrics(section) => {
            // Opened now so that a bad path is this request's error, not InstanceStart's.
            metrics::open(Path::new(&section.metrics_path)).map_err(|e| crate::error_chain(&e))?;
            next.metrics = Some(section);
        }
        VmmAction::InstanceStart => return Err("internal: InstanceStart reached preboot".into()),
        VmmAction::PatchDrive(_)
        | VmmAction::PatchNetworkInterface(_)
        | VmmAction::SendCtrlAltDel
        | VmmAction::FlushMetrics
        | VmmAction::Pause
        | VmmAction::Resume => return Err(NOT_BEFORE_START.into()),
        VmmAction::GetInstanceInfo
        | VmmAction::GetVersion
        | VmmAction::GetVmConfig
        | VmmAction::GetMachineConfig => {}
    }
    config::validate_parts(&next).map_err(|e| crate::error_chain(&e))?;
    *cfg = next;
    Ok(VmmData::Empty)
}

/// How long a pause may take for every vCPU to leave the guest and every device thread to
/// finish its batch.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);

/// The parts of a running VM the API acts on.
pub struct VmHandles {
    /// The keyboard controller, for Ctrl-Alt-Del.
    pub i8042: Arc<Mutex<I8042>>,
    /// Where vCPUs and device threads park while paused.
    pub gate: Arc<PauseGate>,
    /// The vCPU threads, to kick out of the guest when pausing.
    pub vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
    /// How many device I/O threads park on the gate when pausing.
    pub io_workers: usize,
    /// The drives by id, for PATCH.
    pub blocks: Vec<(String, SharedBlock)>,
    /// The metrics, when configured, for FlushMetrics.
    pub metrics: Option<Arc<Mutex<Metrics>>>,
}

/// The event-loop subscriber that answers the API while the VM runs.
pub struct RuntimeApi {
    api: Arc<Api>,
    cfg: VmConfig,
    vm: VmHandles,
}

impl RuntimeApi {
    /// Answers for the running VM `cfg` describes.
    pub fn new(api: Arc<Api>, cfg: VmConfig, vm: VmHandles) -> Self {
        Self { api, cfg, vm }
    }

    /// Swaps a drive's backing file; the guest is told its size may have changed.
    fn patch_drive(&mut self, patch: PartialDrive) -> VmmResponse {
        if patch.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(format!(
                "drive '{}': rate_limiter is not supported by ember.",
                patch.drive_id
            ));
        }
        let Some(drive) = self
            .cfg
            .drives
            .iter_mut()
            .find(|d| d.drive_id == patch.drive_id)
        else {
            return Err(format!("There is no drive '{}'.", patch.drive_id));
        };
        let Some(path) = patch.path_on_host else {
            return Ok(VmmData::Empty);
        };
        let mut next = drive.clone();
        next.path_on_host = path;
        let disk = virtio_devices::open_disk(&next).map_err(|e| crate::error_chain(&e))?;
        let Some((_, block)) = self.vm.blocks.iter().find(|(id, _)| *id == patch.drive_id) else {
            return Err(format!("There is no drive '{}'.", patch.drive_id));
        };
        let mut transport = lock(block);
        transport.device_mut().swap_disk(disk);
        transport.config_changed();
        *drive = next;
        Ok(VmmData::Empty)
    }

    /// Firecracker's PATCH updates only rate limiters, which ember does not implement: an
    /// interface that exists and no limiter is a successful no-op, a limiter a clear refusal.
    fn patch_interface(&self, patch: &PartialNetworkInterface) -> VmmResponse {
        if !self
            .cfg
            .network_interfaces
            .iter()
            .any(|n| n.iface_id == patch.iface_id)
        {
            return Err(format!(
                "There is no network interface '{}'.",
                patch.iface_id
            ));
        }
        let set = |l: &Option<serde_json::Value>| l.as_ref().is_some_and(|v| !v.is_null());
        if set(&patch.rx_rate_limiter) || set(&patch.tx_rate_limiter) {
            return Err(format!(
                "network interface '{}': rate limiters are not supported by ember.",
                patch.iface_id
            ));
        }
        Ok(VmmData::Empty)
    }

    fn pause(&self) -> VmmResponse {
        if self.vm.gate.is_paused() {
            return Ok(VmmData::Empty);
        }
        self.vm
            .gate
            .pause()
            .map_err(|e| format!("cannot pause the microVM: {e}"))?;
        let vcpus = lock(&self.vm.vcpus);
        for vcpu in vcpus.iter() {
            vcpu.kick();
        }
        if !self
            .vm
            .gate
            .wait_parked(vcpus.len(), self.vm.io_workers, PAUSE_LIMIT)
        {
            drop(vcpus);
            self.vm.gate.resume();
            return Err(
                "The vCPUs and device threads did not stop in time; the microVM keeps running."
                    .into(),
            );
        }
        Ok(VmmData::Empty)
    }

    fn handle(&mut self, action: VmmAction) -> VmmResponse {
        let state = if self.vm.gate.is_paused() {
            "Paused"
        } else {
            "Running"
        };
        if let Some(answer) = common(&self.api, &self.cfg, state, &action) {
            return answer;
        }
        match action {
            VmmAction::Pause => self.pause(),
            VmmAction::Resume => {
                self.vm.gate.resume();
                Ok(VmmData::Empty)
            }
            VmmAction::SendCtrlAltDel => {
                if lock(&self.vm.i8042).send_ctrl_alt_del() {
                    Ok(VmmData::Empty)
                } else {
                    Err("The guest's keyboard buffer is full; try again.".into())
                }
            }
            VmmAction::PatchDrive(patch) => self.patch_drive(patch),
            VmmAction::PatchNetworkInterface(patch) => self.patch_interface(&patch),
            // Firecracker answers success when no metrics were configured; so does ember.
            VmmAction::FlushMetrics => match &self.vm.metrics {
                Some(metrics) => lock(metrics)
                    .write()
                    .map(|()| VmmData::Empty)
                    .map_err(|e| crate::error_chain(&e)),
                None => Ok(VmmData::Empty),
            },
            _ => Err(NOT_AFTER_START.into()),
        }
    }
}

impl MutEventSubscriber for RuntimeApi {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(action) = self.api.next() {
            let answer = self.handle(action);
            self.api.reply(answer);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.api.notify_fd(), EventSet::IN)) {
            warn!("the API cannot be served while the VM runs: {err}");
        }
    }
}

//! Parse, don't validate: a VM configuration (Firecracker's JSON shapes, from flags, a config
//! file or API requests) becomes a typed [`VmSpec`] here, once, or is refused with an error
//! naming the field. Every check of a configuration lives in this module; everything that
//! builds or runs the VM takes the spec and never reads the configuration's strings again.
//!
//! Settings Firecracker has and ember does not implement are refused by one mechanism,
//! [`unsupported`], which lists them all.
//!
//! This module must not touch KVM or the host: opening images and TAPs is the device
//! manager's job, so a spec can be checked after every API request. The exceptions are
//! whether the host has io_uring, asked once per process for the first "Async" drive, as
//! Firecracker refuses such a drive when it is configured, and whether a shared directory
//! ([`crate::share`]) is a directory, so that `PUT /fs` refuses a wrong path at once.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use api_server::model::{
    self, DEFAULT_MMDS_IPV4, Drive, MachineConfig, MmdsConfig, NetworkInterface, RateLimiterConfig,
    TokenBucketConfig, VmConfig, VsockConfig,
};
use devices::mmds::MmdsVersion;
use devices::rate_limiter::{BucketConfig, LimiterConfig};
use devices::virtio::block::uring;
use devices::virtio::net::MacAddr;

use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::config::{ConfigError, DEFAULT_CMDLINE, Unsupported};
use crate::device_manager::{MAX_DEVICES, Slot};
use crate::memory::PageSize;
use crate::metrics::ProcessStartup;
use crate::share::{self, FsSpec};

/// Options of one run that are not part of Firecracker's configuration model.
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
    /// How the virtio devices reach the guest (`--enable-pci`).
    pub transport: VirtioTransport,
    /// How long ember took to serve its API, for the metrics.
    pub startup: ProcessStartup,
}

/// How the virtio devices reach the guest. Firecracker chooses with its `--enable-pci` flag
/// only (its configuration file and API have no such field), so ember does too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtioTransport {
    /// virtio-mmio devices announced on the kernel command line (and in the DSDT).
    #[default]
    Mmio,
    /// virtio-pci functions on PCI bus 0, which a kernel finds by itself.
    Pci,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            serial_out: Vec::new(),
            serial_out_max_bytes: crate::console::DEFAULT_SERIAL_FILE_LIMIT,
            boot_timer: false,
            transport: VirtioTransport::Mmio,
            startup: ProcessStartup::default(),
        }
    }
}

/// Everything needed to build and run one VM, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// Host path of the kernel.
    pub kernel: PathBuf,
    /// Host path of the initrd.
    pub initrd: Option<PathBuf>,
    /// The final kernel command line, with the virtio-mmio devices and the root device
    /// announced.
    pub cmdline: String,
    /// How the virtio devices reach the guest.
    pub transport: VirtioTransport,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: usize,
    /// The pages that back guest memory.
    pub pages: PageSize,
    /// The drives in guest order (the root drive first), each with its slot.
    pub drives: Vec<DriveSpec>,
    /// The network interfaces in guest order, after the drives.
    pub nets: Vec<NetSpec>,
    /// The entropy device, after the network interfaces.
    pub entropy: Option<EntropySpec>,
    /// The vsock device, after the entropy device.
    pub vsock: Option<VsockSpec>,
    /// The shared directories (virtio-fs), after the vsock device.
    pub shares: Vec<FsSpec>,
    /// The metadata service, when some interfaces reach it (their `mmds` says which).
    pub mmds: Option<MmdsSpec>,
    /// Where the console's output goes: files, `-` for stdout; never empty.
    pub serial_out: Vec<PathBuf>,
    /// Most bytes written to each console file.
    pub serial_out_max_bytes: u64,
    /// Limits on the console's output (bandwidth only): bytes beyond it are dropped.
    pub serial_rate_limiter: LimiterConfig,
    /// The metrics file.
    pub metrics: Option<PathBuf>,
    /// Provide Firecracker's boot-timer device.
    pub boot_timer: bool,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// How long ember took to serve its API, for the metrics.
    pub startup: ProcessStartup,
}

/// How a drive's flushes are honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// Firecracker's "Unsafe": flushes are acknowledged without syncing the host file.
    Unsafe,
    /// Firecracker's "Writeback" (ember's default): flushes reach the host's disk.
    Writeback,
}

/// How a drive's requests reach its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// Firecracker's "Sync" (the default): the drive's I/O thread executes one request at a
    /// time.
    #[default]
    Sync,
    /// Firecracker's "Async": reads, writes and flushes go through an io_uring, many in
    /// flight at once.
    Async,
}

/// What serves a drive's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum DriveBacking {
    /// ember, on this raw image file.
    Image(PathBuf),
    /// A vhost-user-blk backend listening on this socket (Firecracker's `socket`); the
    /// backend decides everything an image drive's other settings would.
    VhostUser(PathBuf),
}

/// One virtio-blk drive.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveSpec {
    /// Its id, also its serial number.
    pub id: String,
    /// The image or backend.
    pub backing: DriveBacking,
    /// The guest may not write.
    pub read_only: bool,
    /// Flush semantics.
    pub cache: CacheType,
    /// The I/O engine.
    pub engine: IoEngine,
    /// Limits on the guest's requests.
    pub rate_limiter: LimiterConfig,
    /// Where it lives.
    pub slot: Slot,
}

/// One virtio-net interface.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    /// Its id.
    pub id: String,
    /// The host TAP's name.
    pub tap: String,
    /// The guest's MAC address (configured, or derived from id and TAP).
    pub mac: MacAddr,
    /// The MTU offered to the guest.
    pub mtu: Option<u16>,
    /// Limits on the frames the guest receives.
    pub rx_rate_limiter: LimiterConfig,
    /// Limits on the frames the guest sends.
    pub tx_rate_limiter: LimiterConfig,
    /// Its frames to the MMDS address are answered by ember (`mmds-config` lists it).
    pub mmds: bool,
    /// Where it lives.
    pub slot: Slot,
}

/// The virtio-rng device (Firecracker's entropy device).
#[derive(Debug, Clone, PartialEq)]
pub struct EntropySpec {
    /// Limits on the bytes and requests the guest takes.
    pub rate_limiter: LimiterConfig,
    /// Where it lives.
    pub slot: Slot,
}

/// The virtio-vsock device with Firecracker's Unix-socket backend.
#[derive(Debug, Clone, PartialEq)]
pub struct VsockSpec {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The Unix socket ember listens on; guest connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
    /// Where it lives.
    pub slot: Slot,
}

/// The microVM metadata service (MMDS) as the guest reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct MmdsSpec {
    /// V1 (plain GETs) or V2 (session tokens).
    pub version: MmdsVersion,
    /// Plain-text answers whatever the guest's `Accept` header says.
    pub imds_compat: bool,
    /// Its address: link-local, 169.254.1.0 to 169.254.254.255.
    pub ipv4: Ipv4Addr,
}

/// The devices and machine of a configuration, parsed: what [`check`] accepts after each API
/// request, before the configuration has a boot source.
struct Parts {
    drives: Vec<DriveSpec>,
    nets: Vec<NetSpec>,
    entropy: Option<EntropySpec>,
    vsock: Option<VsockSpec>,
    shares: Vec<FsSpec>,
    mmds: Option<MmdsSpec>,
    root: Option<String>,
}

impl VmSpec {
    /// Parses `cfg` with `opts`; a `serial` section (`PUT /serial`) replaces `--serial-out`.
    pub fn new(cfg: &VmConfig, opts: &RunOptions) -> Result<Self, ConfigError> {
        let boot = cfg.boot_source.as_ref().ok_or(ConfigError::NoBootSource)?;
        let Parts {
            drives,
            nets,
            entropy,
            vsock,
            shares,
            mmds,
            root,
        } = Parts::parse(cfg)?;
        let serial = cfg.serial.as_ref();
        let serial_out = match serial.and_then(|s| s.serial_out_path.as_ref()) {
            Some(path) => vec![path.into()],
            None if opts.serial_out.is_empty() => vec!["-".into()],
            None => opts.serial_out.clone(),
        };
        let mut spec = Self {
            kernel: boot.kernel_image_path.clone().into(),
            initrd: boot.initrd_path.as_ref().map(Into::into),
            cmdline: String::new(),
            transport: opts.transport,
            vcpus: cfg.machine_config.vcpu_count,
            mem_mib: cfg.machine_config.mem_size_mib,
            pages: page_size(&cfg.machine_config),
            drives,
            nets,
            entropy,
            vsock,
            shares,
            mmds,
            serial_out,
            serial_out_max_bytes: opts.serial_out_max_bytes,
            serial_rate_limiter: LimiterConfig {
                bandwidth: bucket(serial.and_then(|s| s.rate_limiter)),
                ops: None,
            },
            metrics: cfg.metrics.as_ref().map(|m| m.metrics_path.clone().into()),
            boot_timer: opts.boot_timer,
            timeout: opts.timeout,
            startup: opts.startup,
        };
        // Every virtio-mmio device is announced, then the root device. PCI devices are found
        // by the kernel, unless `pci=off` tells it not to look.
        let user = boot.boot_args.as_deref().unwrap_or(DEFAULT_CMDLINE);
        let (user, mut announced) = match spec.transport {
            VirtioTransport::Mmio => {
                let slots = spec.virtio_slots().map(|s| s.cmdline_param());
                (user.to_owned(), slots.collect::<Vec<_>>())
            }
            VirtioTransport::Pci => (without_pci_off(user), Vec::new()),
        };
        announced.extend(root);
        spec.cmdline = with_kernel_params(&user, &announced.join(" "));
        Ok(spec)
    }

    /// Every virtio device's slot, in guest order: what the command line and the ACPI tables
    /// announce.
    pub fn virtio_slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let drives = self.drives.iter().map(|d| d.slot);
        let nets = self.nets.iter().map(|n| n.slot);
        drives
            .chain(nets)
            .chain(self.entropy.iter().map(|e| e.slot))
            .chain(self.vsock.iter().map(|v| v.slot))
            .chain(self.shares.iter().map(|s| s.slot))
    }

    /// Whether a device's queues are served by another process (vhost-user), which must be
    /// able to map guest memory.
    pub fn has_vhost_user(&self) -> bool {
        let vhost_drive = |d: &DriveSpec| matches!(d.backing, DriveBacking::VhostUser(_));
        !self.shares.is_empty() || self.drives.iter().any(vhost_drive)
    }
}

/// Checks the parts `cfg` has, without asking for a boot source: a configuration being built
/// through the API must stay valid after each request.
pub fn check(cfg: &VmConfig) -> Result<(), ConfigError> {
    Parts::parse(cfg).map(drop)
}

impl Parts {
    fn parse(cfg: &VmConfig) -> Result<Self, ConfigError> {
        if let Some(refusal) = unsupported(cfg).into_iter().next() {
            return Err(ConfigError::Unsupported(refusal));
        }
        let mc = &cfg.machine_config;
        if mc.vcpu_count == 0 || mc.vcpu_count > MAX_CPUS {
            return Err(ConfigError::VcpuCount(mc.vcpu_count));
        }
        if mc.mem_size_mib == 0 {
            return Err(ConfigError::MemSize(
                "guest memory must be at least 1 MiB (mem_size_mib / --memory is 0)",
            ));
        }
        // Firecracker refuses it the same way.
        if page_size(mc) == PageSize::Huge2M && mc.mem_size_mib % 2 != 0 {
            return Err(ConfigError::MemSize(
                "2 MiB huge pages need an even number of MiB",
            ));
        }
        let count = cfg.drives.len()
            + cfg.network_interfaces.len()
            + usize::from(cfg.entropy.is_some())
            + usize::from(cfg.vsock.is_some())
            + cfg.fs.len();
        if count > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices { count });
        }
        let (drives, root) = drives(&cfg.drives, uring::probe)?;
        let mut nets = network_interfaces(&cfg.network_interfaces, drives.len())?;
        let mmds = cfg
            .mmds_config
            .as_ref()
            .map(|m| mmds(m, &mut nets))
            .transpose()?;
        let entropy = cfg.entropy.as_ref().map(|e| EntropySpec {
            rate_limiter: rate_limiter(e.rate_limiter.as_ref()),
            slot: Slot::nth(drives.len() + nets.len()),
        });
        let before = drives.len() + nets.len() + usize::from(entropy.is_some());
        let vsock = cfg.vsock.as_ref().map(|v| vsock(v, before)).transpose()?;
        let shares = share::parse(&cfg.fs, before + usize::from(vsock.is_some()))?;
        Ok(Self {
            drives,
            nets,
            entropy,
            vsock,
            shares,
            mmds,
            root,
        })
    }
}

/// The vsock device in the slot after the `before` devices.
fn vsock(v: &VsockConfig, before: usize) -> Result<VsockSpec, ConfigError> {
    if v.guest_cid < 3 {
        return Err(ConfigError::GuestCid(v.guest_cid));
    }
    if v.uds_path.is_empty() {
        return Err(ConfigError::UdsPath);
    }
    Ok(VsockSpec {
        guest_cid: v.guest_cid,
        uds_path: PathBuf::from(&v.uds_path),
        slot: Slot::nth(before),
    })
}

/// The metadata service, checked in Firecracker's order (address, then interfaces); marks the
/// interfaces that reach it in `nets`.
fn mmds(m: &MmdsConfig, nets: &mut [NetSpec]) -> Result<MmdsSpec, ConfigError> {
    let ipv4 = m.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4);
    // Firecracker's rule: link-local, but not the first and last /24 (RFC 3927 reserves them).
    let [a, b, c, _] = ipv4.octets();
    if (a, b) != (169, 254) || c == 0 || c == 255 {
        return Err(ConfigError::MmdsAddress(ipv4));
    }
    if m.network_interfaces.is_empty() {
        return Err(ConfigError::MmdsNoInterface);
    }
    for id in &m.network_interfaces {
        let net = nets.iter_mut().find(|n| &n.id == id);
        net.ok_or_else(|| ConfigError::MmdsInterface(id.clone()))?
            .mmds = true;
    }
    Ok(MmdsSpec {
        version: match m.version {
            model::MmdsVersion::V1 => MmdsVersion::V1,
            model::MmdsVersion::V2 => MmdsVersion::V2,
        },
        imds_compat: m.imds_compat,
        ipv4,
    })
}

/// `cmdline` without the kernel's `pci=off` (the default command line has it, as do many
/// Firecracker command lines), which would hide every PCI device. Words for init (after `--`)
/// are left alone.
fn without_pci_off(cmdline: &str) -> String {
    let (kernel, init) = match cmdline.split_once(" -- ") {
        Some((kernel, init)) => (kernel, Some(init)),
        None => (cmdline, None),
    };
    let kept: Vec<&str> = kernel.split(' ').filter(|w| *w != "pci=off").collect();
    let kernel = kept.join(" ");
    match init {
        Some(init) => format!("{kernel} -- {init}"),
        None => kernel,
    }
}

/// The user's command line with `params` added. Kernel parameters must come before `--`,
/// after which words belong to init.
fn with_kernel_params(user: &str, params: &str) -> String {
    if params.is_empty() {
        return user.to_owned();
    }
    match user.split_once(" -- ") {
        Some((kernel, init)) => format!("{kernel} {params} -- {init}"),
        None => format!("{user} {params}"),
    }
}

/// Every Firecracker setting in `cfg` that ember does not implement, in the order a user
/// reads the configuration. The one list of what ember refuses: a setting ember learns is
/// deleted here.
pub fn unsupported(cfg: &VmConfig) -> Vec<Unsupported> {
    let mut found: Vec<Unsupported> = cfg
        .unsupported_sections()
        .into_iter()
        .map(Unsupported::Section)
        .collect();
    found.extend(machine_unsupported(&cfg.machine_config));
    for d in &cfg.drives {
        let owner = format!("drive '{}'", d.drive_id);
        let cache = d.cache_type.as_deref();
        let checks = [(
            "cache_type",
            cache.filter(|c| !["Unsafe", "Writeback"].contains(c)),
            "\"Unsafe\" or \"Writeback\"",
        )];
        found.extend(checks.into_iter().filter_map(|(field, value, only)| {
            value.map(|value| Unsupported::Value {
                owner: owner.clone(),
                field,
                value: value.into(),
                only,
            })
        }));
    }
    found
}

/// A rate limiter as the devices take it: only the buckets that limit (Firecracker's rule: a
/// size or refill time of 0, as an empty `{}` bucket has, limits nothing). Any size and refill
/// time is valid; the devices' arithmetic does not overflow.
pub fn rate_limiter(cfg: Option<&RateLimiterConfig>) -> LimiterConfig {
    cfg.map_or_else(LimiterConfig::default, |c| LimiterConfig {
        bandwidth: bucket(c.bandwidth),
        ops: bucket(c.ops),
    })
}

/// One token bucket as the devices take it, if it limits.
fn bucket(b: Option<TokenBucketConfig>) -> Option<BucketConfig> {
    b.map(|b| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    })
    .filter(BucketConfig::limits)
}

/// Firecracker's `huge_pages`: "None" (or absent) or "2M".
fn page_size(mc: &MachineConfig) -> PageSize {
    match mc.huge_pages.as_deref() {
        Some("2M") => PageSize::Huge2M,
        _ => PageSize::Small,
    }
}

fn machine_unsupported(mc: &MachineConfig) -> Vec<Unsupported> {
    let owner = "machine-config";
    let not_none = |v: &Option<String>| v.clone().filter(|v| v != "None");
    let huge = mc.huge_pages.clone().filter(|h| h != "None" && h != "2M");
    let checks = [
        ("smt", mc.smt.then(|| "true".to_owned()), "false"),
        (
            "track_dirty_pages",
            mc.track_dirty_pages.then(|| "true".to_owned()),
            "false",
        ),
        ("cpu_template", not_none(&mc.cpu_template), "\"None\""),
        ("huge_pages", huge, "\"None\" or \"2M\""),
    ];
    checks
        .into_iter()
        .filter_map(|(field, value, only)| {
            value.map(|value| Unsupported::Value {
                owner: owner.into(),
                field,
                value,
                only,
            })
        })
        .collect()
}

/// Firecracker's resource id rule: non-empty, ASCII letters, digits and '_'.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A drive's I/O engine. "Async" needs io_uring, which `probe` checks on this host (once:
/// the answer is kept), so that a host without it is reported when the drive is configured,
/// as Firecracker does, rather than when the VM starts.
fn io_engine(d: &Drive, probe: fn() -> io::Result<()>) -> Result<IoEngine, ConfigError> {
    match d.io_engine.as_deref() {
        None | Some("Sync") => Ok(IoEngine::Sync),
        Some("Async") => match probe() {
            Ok(()) => Ok(IoEngine::Async),
            Err(source) => Err(ConfigError::NoIoUring {
                id: d.drive_id.clone(),
                source,
            }),
        },
        Some(other) => Err(ConfigError::IoEngine {
            id: d.drive_id.clone(),
            value: other.into(),
        }),
    }
}

/// What serves drive `d`: an image or a vhost-user-blk backend, never both; the image drive's
/// own settings are refused with a socket.
fn backing(d: &Drive) -> Result<DriveBacking, ConfigError> {
    let socket = d.socket.as_deref().filter(|s| !s.is_empty());
    let Some(socket) = socket else {
        if d.path_on_host.is_empty() {
            return Err(ConfigError::NoDriveBacking(d.drive_id.clone()));
        }
        return Ok(DriveBacking::Image(d.path_on_host.clone().into()));
    };
    let image_only = [
        ("path_on_host", !d.path_on_host.is_empty()),
        ("is_read_only", d.is_read_only),
        ("io_engine", d.io_engine.is_some()),
        ("rate_limiter", d.rate_limiter.is_some()),
    ];
    if let Some((field, _)) = image_only.into_iter().find(|(_, set)| *set) {
        return Err(ConfigError::SocketWith {
            id: d.drive_id.clone(),
            field,
        });
    }
    Ok(DriveBacking::VhostUser(socket.into()))
}

/// The drives in guest order (the root drive first, as Firecracker does, so it is /dev/vda),
/// with their slots; and the `root=` parameter when one is the root device. `probe` tells
/// whether the host can run the Async engine.
fn drives(
    drives: &[Drive],
    probe: fn() -> io::Result<()>,
) -> Result<(Vec<DriveSpec>, Option<String>), ConfigError> {
    let mut root: Option<&Drive> = None;
    for (i, d) in drives.iter().enumerate() {
        let id = &d.drive_id;
        if !valid_id(id) {
            return Err(ConfigError::DriveId(id.clone()));
        }

        if drives[..i].iter().any(|other| &other.drive_id == id) {
            return Err(ConfigError::DuplicateDrive(id.clone()));
        }
        if d.is_root_device {
            if let Some(first) = root {
                return Err(ConfigError::TwoRoots(first.drive_id.clone(), id.clone()));
            }
            root = Some(d);
        }
    }
    let ordered = root
        .into_iter()
        .chain(drives.iter().filter(|d| !d.is_root_device));
    let specs = ordered
        .enumerate()
        .map(|(i, d)| {
            Ok(DriveSpec {
                id: d.drive_id.clone(),
                backing: backing(d)?,
                read_only: d.is_read_only,
                cache: match d.cache_type.as_deref() {
                    Some("Unsafe") => CacheType::Unsafe,
                    _ => CacheType::Writeback,
                },
                engine: io_engine(d, probe)?,
                rate_limiter: rate_limiter(d.rate_limiter.as_ref()),
                slot: Slot::nth(i),
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    let root = root.map(|d| {
        let device = match &d.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".into(),
        };
        let mode = if d.is_read_only { "ro" } else { "rw" };
        format!("root={device} {mode}")
    });
    Ok((specs, root))
}

/// Smallest MTU an IPv4 host must support (RFC 791).
pub const MIN_MTU: u16 = 68;

/// The network interfaces in the order given, with slots after the `first` drives'.
fn network_interfaces(
    ifaces: &[NetworkInterface],
    first: usize,
) -> Result<Vec<NetSpec>, ConfigError> {
    let mut specs: Vec<NetSpec> = Vec::with_capacity(ifaces.len());
    for (i, n) in ifaces.iter().enumerate() {
        let id = &n.iface_id;
        if !valid_id(id) {
            return Err(ConfigError::IfaceId(id.clone()));
        }
        if let Some(other) = specs.iter().find(|o| &o.id == id) {
            return Err(ConfigError::DuplicateIface(other.id.clone()));
        }
        if let Some(other) = specs.iter().find(|o| o.tap == n.host_dev_name) {
            return Err(ConfigError::SharedTap {
                tap: n.host_dev_name.clone(),
                first: other.id.clone(),
                second: id.clone(),
            });
        }
        let mac = match &n.guest_mac {
            Some(mac) => mac.parse().map_err(|reason| ConfigError::GuestMac {
                id: id.clone(),
                reason,
            })?,
            // The same address every time the VM starts.
            None => MacAddr::stable(&format!("{id}/{}", n.host_dev_name)),
        };
        if let Some(other) = specs.iter().find(|o| o.mac == mac) {
            return Err(ConfigError::SharedMac {
                mac: mac.to_string(),
                first: other.id.clone(),
                second: id.clone(),
            });
        }
        if let Some(mtu) = n.mtu.filter(|m| *m < MIN_MTU) {
            return Err(ConfigError::Mtu {
                id: id.clone(),
                mtu,
            });
        }
        specs.push(NetSpec {
            id: id.clone(),
            tap: n.host_dev_name.clone(),
            mac,
            mtu: n.mtu,
            rx_rate_limiter: rate_limiter(n.rx_rate_limiter.as_ref()),
            tx_rate_limiter: rate_limiter(n.tx_rate_limiter.as_ref()),
            mmds: false,
            slot: Slot::nth(first + i),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_START};
    use api_server::model::{BootSource, EntropyConfig, SerialConfig, VsockConfig};

    fn valid() -> VmConfig {
        VmConfig {
            boot_source: Some(BootSource {
                kernel_image_path: "vmlinux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec(cfg: &VmConfig) -> Result<VmSpec, ConfigError> {
        VmSpec::new(cfg, &RunOptions::default())
    }

    fn err(cfg: &VmConfig) -> String {
        spec(cfg).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_boot_the_default_command_line_on_stdout() {
        let s = spec(&valid()).unwrap();
        assert_eq!(s.cmdline, DEFAULT_CMDLINE);
        assert_eq!(s.serial_out, [PathBuf::from("-")]);
        assert_eq!((s.vcpus, s.mem_mib), (1, 128));
    }

    #[test]
    fn each_problem_is_named() {
        let mut c = valid();
        c.boot_source = None;
        assert!(err(&c).contains("--kernel"));
        check(&c).unwrap();

        for (count, ok) in [(0, false), (1, true), (32, true), (33, false)] {
            let mut c = valid();
            c.machine_config.vcpu_count = count;
            assert_eq!(spec(&c).is_ok(), ok, "{count}");
        }

        let mut c = valid();
        c.machine_config.huge_pages = Some("1G".into());
        assert!(err(&c).contains("huge_pages = 1G"), "{}", err(&c));
        c.machine_config.huge_pages = Some("None".into());
        assert_eq!(spec(&c).unwrap().pages, PageSize::Small);
        c.machine_config.huge_pages = Some("2M".into());
        assert_eq!(spec(&c).unwrap().pages, PageSize::Huge2M);
        c.machine_config.mem_size_mib = 129;
        assert!(err(&c).ends_with("invalid: 2 MiB huge pages need an even number of MiB"));
        c.machine_config.mem_size_mib = 0;
        c.machine_config.huge_pages = None;
        assert!(err(&c).starts_with("The memory size (MiB) is invalid: guest memory must be"));

        let c =
            VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {}}"#)
                .unwrap();
        assert!(err(&c).contains("'balloon'"));
    }

    #[test]
    fn every_unsupported_setting_is_listed_in_reading_order() {
        let c = VmConfig::from_json(
            r#"{"balloon": {}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 8,
                "smt": true, "cpu_template": "T2"},
                "drives": [{"drive_id": "a", "path_on_host": "x", "is_root_device": false,
                            "cache_type": "Writethrough"}]}"#,
        )
        .unwrap();
        let found: Vec<String> = unsupported(&c).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "the config file's 'balloon' section is not supported by ember; remove it",
                "machine-config: smt = true is not supported by ember (only false)",
                "machine-config: cpu_template = T2 is not supported by ember (only \"None\")",
                "drive 'a': cache_type = Writethrough is not supported by ember (only \"Unsafe\" \
                 or \"Writeback\")",
            ]
        );
    }

    #[test]
    fn rate_limiters_keep_only_the_buckets_that_limit() {
        let c = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "drives": [{"drive_id": "a", "path_on_host": "x", "is_root_device": false,
                            "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000,
                                                           "one_time_burst": 65536},
                                             "ops": {"size": 0, "refill_time": 100}}}],
                "network-interfaces": [{"iface_id": "n", "host_dev_name": "t",
                                        "rx_rate_limiter": {"ops": {}},
                                        "tx_rate_limiter": {"ops": {"size": 10,
                                                                    "refill_time": 18446744073709551615}}}]}"#,
        )
        .unwrap();
        let s = spec(&c).unwrap();
        let bucket = |size, one_time_burst, refill_time_ms| {
            Some(BucketConfig {
                size,
                one_time_burst,
                refill_time_ms,
            })
        };
        assert_eq!(
            s.drives[0].rate_limiter,
            LimiterConfig {
                bandwidth: bucket(1 << 20, 1 << 16, 1000),
                ops: None,
            }
        );
        assert_eq!(s.nets[0].rx_rate_limiter, LimiterConfig::default());
        assert_eq!(s.nets[0].tx_rate_limiter.ops, bucket(10, 0, u64::MAX));
        assert_eq!(rate_limiter(None), LimiterConfig::default());
    }

    fn with_drives(ids: &[(&str, bool)]) -> VmConfig {
        let mut c = valid();
        c.drives = ids
            .iter()
            .map(|(id, root)| Drive {
                drive_id: (*id).into(),
                path_on_host: format!("{id}.img"),
                is_root_device: *root,
                ..Default::default()
            })
            .collect();
        c
    }

    #[test]
    fn drive_problems_are_named() {
        spec(&with_drives(&[("rootfs", true), ("data_1", false)])).unwrap();
        let e = |ids: &[(&str, bool)]| err(&with_drives(ids));
        assert!(e(&[("a", false), ("a", false)]).contains("two drives have the id 'a'"));
        assert!(e(&[("a", true), ("b", true)]).contains("'a' and 'b' are both root"));
        assert!(e(&[("", false)]).contains("invalid drive id ''"));
        assert!(e(&[("my-disk", false)]).contains("invalid drive id 'my-disk'"));
        let many: Vec<(String, bool)> = (0..20).map(|i| (format!("d{i}"), false)).collect();
        let many: Vec<(&str, bool)> = many.iter().map(|(s, r)| (s.as_str(), *r)).collect();
        assert!(e(&many).contains("at most 19"));
        let mut c = with_drives(&[("a", false)]);
        c.drives[0].cache_type = Some("Writethrough".into());
        assert!(err(&c).contains("cache_type"));
    }

    #[test]
    fn io_engines_are_typed_and_async_needs_io_uring_on_the_host() {
        let mut c = with_drives(&[("a", false), ("b", false), ("c", false)]);
        c.drives[1].io_engine = Some("Sync".into());
        c.drives[2].io_engine = Some("Async".into());
        let engines: Vec<_> = spec(&c).unwrap().drives.iter().map(|d| d.engine).collect();
        assert_eq!(engines, [IoEngine::Sync, IoEngine::Sync, IoEngine::Async]);

        c.drives[0].io_engine = Some("async".into());
        assert_eq!(
            err(&c),
            "drive 'a': io_engine must be \"Sync\" or \"Async\", not 'async'"
        );

        // A host without io_uring (an old kernel, the sysctl, a seccomp filter).
        fn no_uring() -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        }
        let refused = drives(&c.drives[1..], no_uring).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("drive 'c': io_engine \"Async\" needs io_uring"),
            "{refused}"
        );
        let sync_only = drives(&c.drives[1..2], no_uring).unwrap();
        assert_eq!(sync_only.0[0].engine, IoEngine::Sync);
    }

    #[test]
    fn drives_are_typed_and_the_root_drive_comes_first_with_distinct_slots() {
        let mut c = with_drives(&[("data", false), ("rootfs", true), ("logs", false)]);
        c.drives[2].cache_type = Some("Unsafe".into());
        let s = spec(&c).unwrap();
        let order: Vec<_> = s.drives.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(order, ["rootfs", "data", "logs"]);
        assert_eq!(
            s.drives[0].slot,
            Slot {
                index: 0,
                base: VIRTIO_MMIO_START,
                irq: VIRTIO_IRQ_BASE
            }
        );
        assert_eq!(s.drives[2].slot, Slot::nth(2));
        assert_eq!(
            (s.drives[0].cache, s.drives[2].cache),
            (CacheType::Writeback, CacheType::Unsafe)
        );
        assert_eq!(
            s.drives[0].backing,
            DriveBacking::Image(PathBuf::from("rootfs.img"))
        );
    }

    #[test]
    fn a_socket_drive_is_vhost_user_and_may_be_the_root_but_takes_no_image_setting() {
        let mut c = with_drives(&[("data", false), ("rootfs", true)]);
        c.drives[1].path_on_host = String::new();
        c.drives[1].socket = Some("/run/blk.sock".into());
        c.drives[1].partuuid = None;
        c.drives[1].cache_type = Some("Unsafe".into());
        let s = spec(&c).unwrap();
        assert_eq!(
            s.drives[0].backing,
            DriveBacking::VhostUser(PathBuf::from("/run/blk.sock"))
        );
        assert!(s.cmdline.contains("root=/dev/vda rw"), "{}", s.cmdline);
        assert!(s.has_vhost_user(), "guest memory must be shared");
        assert!(!spec(&with_drives(&[("a", true)])).unwrap().has_vhost_user());

        let refused = |change: fn(&mut Drive)| {
            let mut c = c.clone();
            change(&mut c.drives[1]);
            err(&c)
        };
        for (change, field) in [
            (
                (|d| d.path_on_host = "x.img".into()) as fn(&mut Drive),
                "path_on_host",
            ),
            (|d| d.is_read_only = true, "is_read_only"),
            (|d| d.io_engine = Some("Sync".into()), "io_engine"),
            (
                |d| d.rate_limiter = Some(RateLimiterConfig::default()),
                "rate_limiter",
            ),
        ] {
            assert_eq!(
                refused(change),
                format!(
                    "drive 'rootfs': {field} cannot be used with socket (the vhost-user-blk \
                     backend serves the disk); remove one of them"
                )
            );
        }
        assert_eq!(
            refused(|d| d.socket = None),
            "drive 'rootfs': set path_on_host (a disk image) or socket (a vhost-user-blk \
             backend's socket)"
        );
        // Firecracker's JSON shape: no path_on_host at all.
        let json = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "drives": [{"drive_id": "v", "is_root_device": true, "socket": "/s"}]}"#,
        )
        .unwrap();
        assert!(unsupported(&json).is_empty());
        assert_eq!(
            spec(&json).unwrap().drives[0].backing,
            DriveBacking::VhostUser("/s".into())
        );
    }

    #[test]
    fn the_command_line_announces_devices_and_root_before_the_init_words() {
        let mut c = with_drives(&[("rootfs", true)]);
        c.boot_source.as_mut().unwrap().boot_args = Some("console=ttyS0".into());
        assert_eq!(
            spec(&c).unwrap().cmdline,
            format!(
                "console=ttyS0 virtio_mmio.device=4K@{VIRTIO_MMIO_START:#x}:{VIRTIO_IRQ_BASE} \
                 root=/dev/vda rw"
            )
        );
        c.drives[0].is_read_only = true;
        c.drives[0].partuuid = Some("abcd-01".into());
        c.boot_source.as_mut().unwrap().boot_args = Some("quiet -- echo hi".into());
        let cmdline = spec(&c).unwrap().cmdline;
        assert!(
            cmdline.starts_with("quiet virtio_mmio") && cmdline.ends_with("ro -- echo hi"),
            "{cmdline}"
        );
        assert!(cmdline.contains("root=PARTUUID=abcd-01 ro"), "{cmdline}");
        let data = with_drives(&[("data", false)]);
        assert_eq!(
            spec(&data).unwrap().cmdline.matches("virtio_mmio").count(),
            1
        );
        assert!(!spec(&data).unwrap().cmdline.contains("root="));
    }

    fn with_nics(nics: &[(&str, &str, Option<&str>)]) -> VmConfig {
        let mut c = valid();
        c.network_interfaces = nics
            .iter()
            .map(|(id, tap, mac)| NetworkInterface {
                iface_id: (*id).into(),
                host_dev_name: (*tap).into(),
                guest_mac: mac.map(Into::into),
                ..Default::default()
            })
            .collect();
        c
    }

    #[test]
    fn network_interface_problems_are_named() {
        spec(&with_nics(&[
            ("eth0", "tap0", Some("06:00:00:00:00:01")),
            ("eth1", "tap1", None),
        ]))
        .unwrap();
        let e = |nics: &[(&str, &str, Option<&str>)]| err(&with_nics(nics));
        assert!(e(&[("eth-0", "tap0", None)]).contains("invalid network interface id 'eth-0'"));
        assert!(
            e(&[("a", "tap0", None), ("a", "tap1", None)])
                .contains("two network interfaces have the id 'a'")
        );
        assert!(e(&[("a", "tap0", None), ("b", "tap0", None)]).contains("both use TAP 'tap0'"));
        let mac = Some("06:00:00:00:00:01");
        assert!(
            e(&[("a", "tap0", mac), ("b", "tap1", mac)])
                .contains("both have MAC address 06:00:00:00:00:01")
        );
        let bad = e(&[("a", "tap0", Some("06:00:00:00:00"))]);
        assert!(
            bad.contains("network interface 'a': guest_mac '06:00:00:00:00' is not a MAC address"),
            "{bad}"
        );
        let mut c = with_nics(&[("a", "tap0", None)]);
        c.network_interfaces[0].mtu = Some(40);
        assert!(err(&c).contains("mtu 40 is too small"));
        c.network_interfaces[0].mtu = Some(9000);
        spec(&c).unwrap();
        // Drives and NICs share the device slots.
        let mut c = with_nics(&[("a", "tap0", None)]);
        let ids: Vec<String> = (0..19).map(|i| format!("d{i}")).collect();
        let ids: Vec<(&str, bool)> = ids.iter().map(|s| (s.as_str(), false)).collect();
        c.drives = with_drives(&ids).drives;
        assert!(err(&c).contains("20 virtio devices"));
    }

    #[test]
    fn interfaces_follow_the_drives_with_stable_generated_macs() {
        let mut c = with_nics(&[("eth0", "tap0", None), ("eth1", "tap1", None)]);
        c.drives = with_drives(&[("data", false), ("rootfs", true)]).drives;
        let s = spec(&c).unwrap();
        assert_eq!(
            (s.nets[0].slot, s.nets[1].slot),
            (Slot::nth(2), Slot::nth(3))
        );
        assert_eq!(s.nets[0].tap, "tap0");
        assert_eq!(s.cmdline.matches("virtio_mmio.device=").count(), 4);
        assert!(s.cmdline.contains(&Slot::nth(3).cmdline_param()));
        assert_eq!(s.virtio_slots().count(), 4);
        let again = spec(&c).unwrap();
        assert_eq!(s.nets[0].mac, again.nets[0].mac);
        assert_ne!(s.nets[0].mac, s.nets[1].mac);
    }

    #[test]
    fn the_vsock_device_follows_the_entropy_device_and_its_cid_and_path_are_checked() {
        let mut c = with_nics(&[("eth0", "tap0", None)]);
        c.entropy = Some(EntropyConfig::default());
        c.vsock = Some(VsockConfig {
            vsock_id: Some("v".into()),
            guest_cid: 3,
            uds_path: "/tmp/v.sock".into(),
        });
        let s = spec(&c).unwrap();
        let v = s.vsock.clone().unwrap();
        assert_eq!((v.guest_cid, v.slot), (3, Slot::nth(2)));
        assert_eq!(v.uds_path, PathBuf::from("/tmp/v.sock"));
        assert_eq!(s.virtio_slots().last(), Some(Slot::nth(2)));
        assert!(s.cmdline.contains(&Slot::nth(2).cmdline_param()));
        for cid in [0, 1, 2] {
            c.vsock.as_mut().unwrap().guest_cid = cid;
            assert!(err(&c).contains("guest_cid must be 3 or more"), "{cid}");
        }
        c.vsock.as_mut().unwrap().guest_cid = 3;
        c.vsock.as_mut().unwrap().uds_path.clear();
        assert!(err(&c).contains("uds_path is empty"));
    }

    #[test]
    fn mmds_config_marks_its_interfaces_and_checks_the_address_and_ids_as_firecracker_does() {
        let mut c = with_nics(&[("eth0", "tap0", None), ("eth1", "tap1", None)]);
        let s = spec(&c).unwrap();
        assert_eq!(s.mmds, None);
        assert!(s.nets.iter().all(|n| !n.mmds));
        c.mmds_config = Some(MmdsConfig {
            version: model::MmdsVersion::V2,
            network_interfaces: vec!["eth1".into()],
            ..Default::default()
        });
        let s = spec(&c).unwrap();
        assert_eq!(
            s.mmds,
            Some(MmdsSpec {
                version: MmdsVersion::V2,
                imds_compat: false,
                ipv4: Ipv4Addr::new(169, 254, 169, 254),
            })
        );
        let marked: Vec<bool> = s.nets.iter().map(|n| n.mmds).collect();
        assert_eq!(marked, [false, true]);
        // MMDS is no device: the slots are the interfaces'.
        assert_eq!(s.virtio_slots().count(), 2);
        let with_address = |addr: &str| {
            let mut c = c.clone();
            c.mmds_config.as_mut().unwrap().ipv4_address = Some(addr.parse().unwrap());
            spec(&c).map(|s| s.mmds.unwrap().ipv4.to_string())
        };
        for ok in ["169.254.1.0", "169.254.170.2", "169.254.254.255"] {
            assert_eq!(with_address(ok).unwrap(), ok);
        }
        for bad in ["169.254.0.1", "169.254.255.1", "10.0.2.15", "169.253.1.1"] {
            let err = with_address(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("The MMDS IPv4 address is not link local: {bad} (")),
                "{err}"
            );
        }
        c.mmds_config.as_mut().unwrap().network_interfaces = vec!["eth0".into(), "eth9".into()];
        let message = err(&c);
        assert!(
            message
                .starts_with("The list of network interface IDs provided contains at least one ID")
                && message.contains(": 'eth9' ("),
            "{message}"
        );
        // Checked while a configuration is built through the API, too.
        let mut building = c.clone();
        building.boot_source = None;
        assert!(check(&building).is_err());
        c.mmds_config.as_mut().unwrap().network_interfaces.clear();
        assert!(
            err(&c).starts_with(
                "The list of network interface IDs that allow forwarding MMDS requests is empty"
            ),
            "{}",
            err(&c)
        );
    }

    #[test]
    fn the_entropy_device_follows_the_drives_and_interfaces_and_is_announced() {
        let mut c = with_nics(&[("eth0", "tap0", None)]);
        c.drives = with_drives(&[("data", false), ("rootfs", true)]).drives;
        c.entropy = Some(EntropyConfig {
            rate_limiter: Some(RateLimiterConfig::default()),
        });
        let s = spec(&c).unwrap();
        assert_eq!(
            s.entropy,
            Some(EntropySpec {
                rate_limiter: LimiterConfig::default(),
                slot: Slot::nth(3)
            })
        );
        assert_eq!(s.virtio_slots().last(), Some(Slot::nth(3)));
        assert!(
            s.cmdline.contains(&Slot::nth(3).cmdline_param()),
            "{}",
            s.cmdline
        );
        assert!(s.cmdline.ends_with("root=/dev/vda rw"), "{}", s.cmdline);
        // Alone, it takes the first slot; it counts toward the device limit.
        let mut c = valid();
        c.entropy = Some(EntropyConfig::default());
        assert_eq!(spec(&c).unwrap().entropy.unwrap().slot, Slot::nth(0));
        let ids: Vec<String> = (0..19).map(|i| format!("d{i}")).collect();
        let ids: Vec<(&str, bool)> = ids.iter().map(|s| (s.as_str(), false)).collect();
        c.drives = with_drives(&ids).drives;
        assert!(err(&c).contains("20 virtio devices"));
    }

    #[test]
    fn with_pci_the_command_line_announces_no_mmio_device_and_drops_pci_off() {
        let pci = RunOptions {
            transport: VirtioTransport::Pci,
            ..Default::default()
        };
        let mut c = with_drives(&[("rootfs", true), ("data", false)]);
        let s = VmSpec::new(&c, &pci).unwrap();
        assert_eq!(s.transport, VirtioTransport::Pci);
        assert_eq!(
            s.cmdline,
            format!(
                "{} root=/dev/vda rw",
                DEFAULT_CMDLINE.replace(" pci=off", "")
            )
        );
        c.boot_source.as_mut().unwrap().boot_args =
            Some("console=ttyS0 pci=off quiet -- echo pci=off".into());
        assert_eq!(
            VmSpec::new(&c, &pci).unwrap().cmdline,
            "console=ttyS0 quiet root=/dev/vda rw -- echo pci=off"
        );
        // Without the flag nothing changes.
        let mmio = VmSpec::new(&c, &RunOptions::default()).unwrap();
        assert_eq!(mmio.transport, VirtioTransport::Mmio);
        assert_eq!(mmio.cmdline.matches("virtio_mmio.device=").count(), 2);
        assert!(mmio.cmdline.starts_with("console=ttyS0 pci=off quiet"));
    }

    #[test]
    fn a_serial_section_replaces_the_serial_out_flags() {
        let opts = RunOptions {
            serial_out: vec!["a.log".into(), "-".into()],
            ..Default::default()
        };
        let mut c = valid();
        assert_eq!(VmSpec::new(&c, &opts).unwrap().serial_out, opts.serial_out);
        c.serial = Some(SerialConfig {
            serial_out_path: Some("b.log".into()),
            rate_limiter: None,
        });
        assert_eq!(
            VmSpec::new(&c, &opts).unwrap().serial_out,
            [PathBuf::from("b.log")]
        );
    }

    #[test]
    fn a_serial_rate_limiter_becomes_a_bandwidth_bucket_and_an_empty_one_limits_nothing() {
        let with = |limiter: &str| {
            let mut c = valid();
            c.serial =
                Some(serde_json::from_str(&format!(r#"{{"rate_limiter": {limiter}}}"#)).unwrap());
            VmSpec::new(&c, &RunOptions::default())
                .unwrap()
                .serial_rate_limiter
        };
        let limited = with(r#"{"size": 1024, "one_time_burst": 10, "refill_time": 100}"#);
        assert_eq!(
            limited,
            LimiterConfig {
                bandwidth: Some(BucketConfig {
                    size: 1024,
                    one_time_burst: 10,
                    refill_time_ms: 100
                }),
                ops: None
            }
        );
        for unlimited in ["{}", "null", r#"{"size": 0, "refill_time": 100}"#] {
            assert_eq!(with(unlimited), LimiterConfig::default(), "{unlimited}");
        }
    }
}

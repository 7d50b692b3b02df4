//! Reading a Firecracker config file, and the errors of a VM configuration ember cannot run
//! (raised by [`crate::spec`], which parses configurations), each naming the offending field.
//! It must not touch KVM or the host beyond reading the files it is pointed at.

use std::io::Read;
use std::path::{Path, PathBuf};

use api_server::model::VmConfig;
use devices::host_file::{self, HostFileError, Use};

use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::device_manager::MAX_DEVICES;
use crate::spec::MIN_MTU;

/// The kernel command line when none is given: a serial console, reboot through the i8042
/// (`reboot=k`, which ember turns into its exit), reboot one second after a panic, no PCI bus to
/// probe, and the i8042 driver told not to probe the mouse port and multiplexer, which ember
/// does not emulate.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Errors in the VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No kernel was given.
    #[error("no kernel to boot: pass --kernel PATH, or a config file with a boot-source")]
    NoBootSource,
    /// The config file cannot be read, or is not a regular file.
    #[error("cannot read the config file '{}'", path.display())]
    ReadFile {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// The config file is larger than any real configuration.
    #[error("the config file '{}' is larger than {} KiB; a microVM's configuration is a few KiB", path.display(), MAX_CONFIG_FILE_SIZE >> 10)]
    TooLarge {
        /// The path given.
        path: PathBuf,
    },
    /// The config file is not valid.
    #[error("invalid config file '{}': {source}", path.display())]
    Parse {
        /// The path given.
        path: PathBuf,
        /// What serde found, with line and column.
        source: serde_json::Error,
    },
    /// A memory size ember cannot back (Firecracker's message, then why).
    #[error("The memory size (MiB) is invalid: {0}")]
    MemSize(&'static str),
    /// vCPU count out of range.
    #[error("vcpu_count must be between 1 and {MAX_CPUS}, not {0}")]
    VcpuCount(u8),
    /// A Firecracker setting ember does not implement.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// Too many devices.
    #[error("{count} virtio devices asked for; ember provides at most {MAX_DEVICES}")]
    TooManyDevices {
        /// How many were asked for.
        count: usize,
    },
    /// A shared directory (virtio-fs) that cannot be used.
    #[error(transparent)]
    Fs(#[from] crate::share::FsConfigError),
    /// A vsock guest CID that is reserved (0 to 2).
    #[error("vsock guest_cid must be 3 or more (0, 1 and 2 are reserved), not {0}")]
    GuestCid(u64),
    /// A vsock socket path that is empty.
    #[error("vsock uds_path is empty; name the Unix socket ember should listen on")]
    UdsPath,
    /// A drive's `io_engine` is neither "Sync" nor "Async".
    #[error("drive '{id}': io_engine must be \"Sync\" or \"Async\", not '{value}'")]
    IoEngine {
        /// The drive id.
        id: String,
        /// The value given.
        value: String,
    },
    /// A drive asks for the Async engine on a host without io_uring.
    #[error(
        "drive '{id}': io_engine \"Async\" needs io_uring, which this host does not allow \
         (Linux 5.10 or later, not disabled by the kernel.io_uring_disabled sysctl or a seccomp \
         filter); use \"Sync\""
    )]
    NoIoUring {
        /// The drive id.
        id: String,
        /// Why a ring cannot be created.
        #[source]
        source: std::io::Error,
    },
    /// A drive id is empty or has characters other than letters, digits and '_'.
    #[error("invalid drive id '{0}': use letters, digits and '_' only")]
    DriveId(String),
    /// Two drives share an id.
    #[error("two drives have the id '{0}'; drive ids must be unique")]
    DuplicateDrive(String),
    /// A drive with neither an image nor a backend.
    #[error(
        "drive '{0}': set path_on_host (a disk image) or socket (a vhost-user-blk backend's \
         socket)"
    )]
    NoDriveBacking(String),
    /// A vhost-user-blk drive with a setting only an image drive has.
    #[error(
        "drive '{id}': {field} cannot be used with socket (the vhost-user-blk backend serves \
         the disk); remove one of them"
    )]
    SocketWith {
        /// The drive id.
        id: String,
        /// The image drive's setting.
        field: &'static str,
    },
    /// More than one root drive.
    #[error("drives '{0}' and '{1}' are both root devices; only one can be")]
    TwoRoots(String, String),
    /// A network interface id is empty or has characters other than letters, digits and '_'.
    #[error("invalid network interface id '{0}': use letters, digits and '_' only")]
    IfaceId(String),
    /// Two network interfaces share an id.
    #[error("two network interfaces have the id '{0}'; interface ids must be unique")]
    DuplicateIface(String),
    /// Two network interfaces name the same TAP.
    #[error(
        "network interfaces '{first}' and '{second}' both use TAP '{tap}'; give each its own TAP"
    )]
    SharedTap {
        /// The TAP.
        tap: String,
        /// The first interface.
        first: String,
        /// The second interface.
        second: String,
    },
    /// Two network interfaces have the same MAC address.
    #[error("network interfaces '{first}' and '{second}' both have MAC address {mac}")]
    SharedMac {
        /// The address.
        mac: String,
        /// The first interface.
        first: String,
        /// The second interface.
        second: String,
    },
    /// A guest MAC address cannot be used.
    #[error("network interface '{id}': guest_mac {reason}")]
    GuestMac {
        /// The interface.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An MMDS address outside Firecracker's link-local range (Firecracker's message, then
    /// what to use).
    #[error(
        "The MMDS IPv4 address is not link local: {0} (mmds-config ipv4_address must be from \
         169.254.1.0 to 169.254.254.255; 169.254.169.254 when absent)"
    )]
    MmdsAddress(std::net::Ipv4Addr),
    /// An MMDS configuration without interfaces (Firecracker's message).
    #[error(
        "The list of network interface IDs that allow forwarding MMDS requests is empty \
         (mmds-config network_interfaces must name at least one network interface)"
    )]
    MmdsNoInterface,
    /// An MMDS configuration naming an interface the VM does not have (Firecracker's message,
    /// then the id).
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not \
         correspond to any existing network interface: '{0}' (add the network interface \
         before the MMDS configuration)"
    )]
    MmdsInterface(String),
    /// An MTU below what IPv4 needs.
    #[error("network interface '{id}': mtu {mtu} is too small (at least {MIN_MTU})")]
    Mtu {
        /// The interface.
        id: String,
        /// The MTU given.
        mtu: u16,
    },
}

/// A Firecracker setting ember does not implement; [`crate::spec::unsupported`] lists them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A config-file section.
    #[error("the config file's '{0}' section is not supported by ember; remove it")]
    Section(&'static str),
    /// A field with a value ember does not take.
    #[error("{owner}: {field} = {value} is not supported by ember (only {only})")]
    Value {
        /// What the field belongs to: `machine-config`, `drive 'rootfs'`.
        owner: String,
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What ember takes instead.
        only: &'static str,
    },
}

/// Largest `--config-file` read. Firecracker's own configurations are a few KiB; the bound
/// keeps a wrong path (a huge file) from exhausting memory.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1 << 20;

/// Reads a Firecracker-style config file.
pub fn load_config_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = read_bounded(path, MAX_CONFIG_FILE_SIZE)
        .map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| ConfigError::TooLarge {
            path: path.to_owned(),
        })?;
    VmConfig::from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The UTF-8 text of the file at `path`, opened as ember opens what it reads; `None` when it is
/// larger than `max` bytes, so that a wrong path to a huge file cannot exhaust memory.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<String>, HostFileError> {
    let (file, _) = host_file::open(path, Use::Read)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a larger one, whatever the
    // size it reported when opened (it may grow).
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(None);
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_errors_name_the_file_and_the_field() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("ember-config-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "memory": 2}}"#,
        )
        .unwrap();
        let err = load_config_file(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("memory"),
            "{err}"
        );
        let err = load_config_file(&dir.join("no-such-ember-config.json")).unwrap_err();
        assert!(err.to_string().contains("no-such-ember-config.json"));
    }
}

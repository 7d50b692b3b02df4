//! Turning user input (a Firecracker config file, or the model the CLI built) into a VM
//! configuration ember can run, with an error that names the offending field for everything
//! it cannot. It must not touch KVM or the host beyond reading the files it is pointed at.

use std::io::Read;
use std::path::{Path, PathBuf};

use api_server::model::{Drive, NetworkInterface, VmConfig};
use devices::host_file::{self, HostFileError, Use};
use devices::virtio::net::MacAddr;

use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::virtio_devices::MAX_DEVICES;

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
    /// vCPU count out of range.
    #[error("vcpu_count must be between 1 and {MAX_CPUS}, not {0}")]
    VcpuCount(u8),
    /// A field has a value ember does not implement.
    #[error("{field} = {value} is not supported by ember (only {supported})")]
    Unsupported {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What ember accepts.
        supported: &'static str,
    },
    /// A config-file section ember does not implement.
    #[error("the config file's '{0}' section is not supported by ember; remove it")]
    UnsupportedSection(&'static str),
    /// Too many devices.
    #[error("{count} virtio devices asked for; ember provides at most {MAX_DEVICES}")]
    TooManyDevices {
        /// How many were asked for.
        count: usize,
    },
    /// A drive id is empty or has characters other than letters, digits and '_'.
    #[error("invalid drive id '{0}': use letters, digits and '_' only")]
    DriveId(String),
    /// Two drives share an id.
    #[error("two drives have the id '{0}'; drive ids must be unique")]
    DuplicateDrive(String),
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
    /// An MTU below what IPv4 needs.
    #[error("network interface '{id}': mtu {mtu} is too small (at least {MIN_MTU})")]
    Mtu {
        /// The interface.
        id: String,
        /// The MTU given.
        mtu: u16,
    },
    /// A network interface field ember does not implement.
    #[error("network interface '{id}': {field} is not supported by ember; remove it")]
    IfaceUnsupported {
        /// The interface.
        id: String,
        /// The field.
        field: &'static str,
    },
    /// A drive field has a value ember does not implement.
    #[error("drive '{id}': {field} = {value} is not supported (only {supported})")]
    DriveUnsupported {
        /// The drive.
        id: String,
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What ember accepts.
        supported: &'static str,
    },
}

/// Largest `--config-file` read. Firecracker's own configurations are a few KiB; the bound
/// keeps a wrong path (a huge file) from exhausting memory.
pub const MAX_CONFIG_FILE_SIZE: u64 = 1 << 20;

/// Reads a Firecracker-style config file.
pub fn load_config_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let read_err = |source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let (file, _) = host_file::open(path, Use::Read).map_err(read_err)?;
    let mut bytes = Vec::new();
    // One byte more than the limit tells a file at the limit from a larger one, whatever the
    // size it reported when opened (it may grow).
    file.take(MAX_CONFIG_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.into()))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_SIZE {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into()))?;
    VmConfig::from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Checks everything about `cfg` that does not need the host.
pub fn validate(cfg: &VmConfig) -> Result<(), ConfigError> {
    if cfg.boot_source.is_none() {
        return Err(ConfigError::NoBootSource);
    }
    validate_parts(cfg)
}

/// Checks the parts `cfg` has, without asking for a boot source: a configuration being built
/// through the API must stay valid after each request.
pub fn validate_parts(cfg: &VmConfig) -> Result<(), ConfigError> {
    if let Some(section) = cfg.unsupported_sections().first() {
        return Err(ConfigError::UnsupportedSection(section));
    }
    let mc = &cfg.machine_config;
    if mc.vcpu_count == 0 || mc.vcpu_count > MAX_CPUS {
        return Err(ConfigError::VcpuCount(mc.vcpu_count));
    }
    let unsupported = |field, value: String, supported| ConfigError::Unsupported {
        field,
        value,
        supported,
    };
    if mc.smt {
        return Err(unsupported("machine-config.smt", "true".into(), "false"));
    }
    if mc.track_dirty_pages {
        return Err(unsupported(
            "machine-config.track_dirty_pages",
            "true".into(),
            "false",
        ));
    }
    if let Some(t) = mc.cpu_template.as_deref().filter(|t| *t != "None") {
        return Err(unsupported(
            "machine-config.cpu_template",
            t.into(),
            "\"None\"",
        ));
    }
    if let Some(h) = mc.huge_pages.as_deref().filter(|h| *h != "None") {
        return Err(unsupported(
            "machine-config.huge_pages",
            h.into(),
            "\"None\"",
        ));
    }
    let count = cfg.drives.len() + cfg.network_interfaces.len();
    if count > MAX_DEVICES {
        return Err(ConfigError::TooManyDevices { count });
    }
    validate_drives(&cfg.drives)?;
    validate_network_interfaces(&cfg.network_interfaces)?;
    Ok(())
}

/// Smallest MTU an IPv4 host must support (RFC 791).
const MIN_MTU: u16 = 68;

/// The guest MAC of `iface`: the configured one, or one derived from its id and TAP so that it
/// is the same every time the VM starts.
pub fn guest_mac(iface: &NetworkInterface) -> Result<MacAddr, ConfigError> {
    match &iface.guest_mac {
        Some(mac) => mac.parse().map_err(|reason| ConfigError::GuestMac {
            id: iface.iface_id.clone(),
            reason,
        }),
        None => Ok(MacAddr::stable(&format!(
            "{}/{}",
            iface.iface_id, iface.host_dev_name
        ))),
    }
}

fn validate_network_interfaces(ifaces: &[NetworkInterface]) -> Result<(), ConfigError> {
    for (i, n) in ifaces.iter().enumerate() {
        let id = &n.iface_id;
        if !valid_id(id) {
            return Err(ConfigError::IfaceId(id.clone()));
        }
        if ifaces[..i].iter().any(|other| &other.iface_id == id) {
            return Err(ConfigError::DuplicateIface(id.clone()));
        }
        if let Some(other) = ifaces[..i]
            .iter()
            .find(|other| other.host_dev_name == n.host_dev_name)
        {
            return Err(ConfigError::SharedTap {
                tap: n.host_dev_name.clone(),
                first: other.iface_id.clone(),
                second: id.clone(),
            });
        }
        let mac = guest_mac(n)?;
        if let Some(other) = ifaces[..i]
            .iter()
            .find(|other| guest_mac(other).is_ok_and(|m| m == mac))
        {
            return Err(ConfigError::SharedMac {
                mac: mac.to_string(),
                first: other.iface_id.clone(),
                second: id.clone(),
            });
        }
        if let Some(mtu) = n.mtu.filter(|m| *m < MIN_MTU) {
            return Err(ConfigError::Mtu {
                id: id.clone(),
                mtu,
            });
        }
        let limited = |r: &Option<serde_json::Value>| r.as_ref().is_some_and(|r| !r.is_null());
        if limited(&n.rx_rate_limiter) || limited(&n.tx_rate_limiter) {
            return Err(ConfigError::IfaceUnsupported {
                id: id.clone(),
                field: "rx_rate_limiter/tx_rate_limiter",
            });
        }
    }
    Ok(())
}

/// Firecracker's resource id rule: non-empty, ASCII letters, digits and '_'.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_drives(drives: &[Drive]) -> Result<(), ConfigError> {
    let mut root: Option<&str> = None;
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
                return Err(ConfigError::TwoRoots(first.into(), id.clone()));
            }
            root = Some(id);
        }
        let unsupported = |field, value: String, supported| ConfigError::DriveUnsupported {
            id: id.clone(),
            field,
            value,
            supported,
        };
        if let Some(c) = d
            .cache_type
            .as_deref()
            .filter(|c| !["Unsafe", "Writeback"].contains(c))
        {
            return Err(unsupported(
                "cache_type",
                c.into(),
                "\"Unsafe\" or \"Writeback\"",
            ));
        }
        if let Some(e) = d.io_engine.as_deref().filter(|e| *e != "Sync") {
            return Err(unsupported("io_engine", e.into(), "\"Sync\""));
        }
        if d.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(unsupported("rate_limiter", "set".into(), "none"));
        }
        if let Some(s) = &d.socket {
            return Err(unsupported(
                "socket",
                s.clone(),
                "none: vhost-user is not implemented",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_server::model::BootSource;

    fn valid() -> VmConfig {
        VmConfig {
            boot_source: Some(BootSource {
                kernel_image_path: "vmlinux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        validate(&valid()).unwrap();
    }

    #[test]
    fn each_problem_is_named() {
        let mut c = valid();
        c.boot_source = None;
        assert!(validate(&c).unwrap_err().to_string().contains("--kernel"));

        for (count, ok) in [(0, false), (1, true), (32, true), (33, false)] {
            let mut c = valid();
            c.machine_config.vcpu_count = count;
            assert_eq!(validate(&c).is_ok(), ok, "{count}");
        }

        let mut c = valid();
        c.machine_config.huge_pages = Some("2M".into());
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("huge_pages = 2M")
        );
        c.machine_config.huge_pages = Some("None".into());
        validate(&c).unwrap();

        let c = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {}}"#)
            .unwrap();
        assert!(validate(&c).unwrap_err().to_string().contains("'vsock'"));
    }

    fn with_drives(ids: &[(&str, bool)]) -> VmConfig {
        let mut c = valid();
        c.drives = ids
            .iter()
            .map(|(id, root)| Drive {
                drive_id: (*id).into(),
                path_on_host: "disk.img".into(),
                is_root_device: *root,
                ..Default::default()
            })
            .collect();
        c
    }

    #[test]
    fn drive_problems_are_named() {
        validate(&with_drives(&[("rootfs", true), ("data_1", false)])).unwrap();
        let err = |ids: &[(&str, bool)]| validate(&with_drives(ids)).unwrap_err().to_string();
        assert!(err(&[("a", false), ("a", false)]).contains("two drives have the id 'a'"));
        assert!(err(&[("a", true), ("b", true)]).contains("'a' and 'b' are both root"));
        assert!(err(&[("", false)]).contains("invalid drive id ''"));
        assert!(err(&[("my-disk", false)]).contains("invalid drive id 'my-disk'"));
        let many: Vec<(String, bool)> = (0..20).map(|i| (format!("d{i}"), false)).collect();
        let many: Vec<(&str, bool)> = many.iter().map(|(s, r)| (s.as_str(), *r)).collect();
        assert!(err(&many).contains("at most 19"));
        let mut c = with_drives(&[("a", false)]);
        c.drives[0].io_engine = Some("Async".into());
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("io_engine = Async")
        );
        c.drives[0].io_engine = None;
        c.drives[0].cache_type = Some("Writethrough".into());
        assert!(validate(&c).unwrap_err().to_string().contains("cache_type"));
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
        validate(&with_nics(&[
            ("eth0", "tap0", Some("06:00:00:00:00:01")),
            ("eth1", "tap1", None),
        ]))
        .unwrap();
        let err = |nics: &[(&str, &str, Option<&str>)]| {
            validate(&with_nics(nics)).unwrap_err().to_string()
        };
        assert!(err(&[("eth-0", "tap0", None)]).contains("invalid network interface id 'eth-0'"));
        assert!(
            err(&[("a", "tap0", None), ("a", "tap1", None)])
                .contains("two network interfaces have the id 'a'")
        );
        assert!(err(&[("a", "tap0", None), ("b", "tap0", None)]).contains("both use TAP 'tap0'"));
        let mac = Some("06:00:00:00:00:01");
        assert!(
            err(&[("a", "tap0", mac), ("b", "tap1", mac)])
                .contains("both have MAC address 06:00:00:00:00:01")
        );
        let bad = err(&[("a", "tap0", Some("06:00:00:00:00"))]);
        assert!(
            bad.contains("network interface 'a': guest_mac '06:00:00:00:00' is not a MAC address"),
            "{bad}"
        );
        let mut c = with_nics(&[("a", "tap0", None)]);
        c.network_interfaces[0].mtu = Some(40);
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("mtu 40 is too small")
        );
        c.network_interfaces[0].mtu = Some(9000);
        c.network_interfaces[0].rx_rate_limiter = Some(serde_json::json!({"bandwidth": {}}));
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("rate_limiter")
        );
        // Drives and NICs share the device slots.
        let mut c = with_nics(&[("a", "tap0", None)]);
        c.drives = with_drives(&[("d0", false); 1]).drives;
        for i in 1..19 {
            c.drives.push(Drive {
                drive_id: format!("d{i}"),
                path_on_host: "x".into(),
                ..Default::default()
            });
        }
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("20 virtio devices")
        );
    }

    #[test]
    fn generated_macs_depend_on_the_interface_and_tap() {
        let c = with_nics(&[("eth0", "tap0", None), ("eth0", "tap1", None)]);
        let a = guest_mac(&c.network_interfaces[0]).unwrap();
        assert_eq!(a, guest_mac(&c.network_interfaces[0]).unwrap());
        assert_ne!(a, guest_mac(&c.network_interfaces[1]).unwrap());
    }

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

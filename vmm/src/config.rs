//! Turning user input (a Firecracker config file, or the model the CLI built) into a VM
//! configuration ember can run, with an error that names the offending field for everything
//! it cannot. It must not touch KVM or the host beyond reading the files it is pointed at.

use std::path::{Path, PathBuf};

use api_server::model::{Drive, VmConfig};

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
    /// The config file cannot be read.
    #[error("cannot read the config file '{}'", path.display())]
    ReadFile {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
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
    /// A device type that this build of ember cannot provide yet.
    #[error("{0} are not supported by ember yet; remove them from the configuration")]
    UnsupportedDevice(&'static str),
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

/// Reads a Firecracker-style config file.
pub fn load_config_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    VmConfig::from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Checks everything about `cfg` that does not need the host.
pub fn validate(cfg: &VmConfig) -> Result<(), ConfigError> {
    if let Some(section) = cfg.unsupported_sections().first() {
        return Err(ConfigError::UnsupportedSection(section));
    }
    if cfg.boot_source.is_none() {
        return Err(ConfigError::NoBootSource);
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
    validate_drives(&cfg.drives)?;
    if !cfg.network_interfaces.is_empty() {
        return Err(ConfigError::UnsupportedDevice(
            "network interfaces (virtio-net)",
        ));
    }
    Ok(())
}

/// Firecracker's resource id rule: non-empty, ASCII letters, digits and '_'.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_drives(drives: &[Drive]) -> Result<(), ConfigError> {
    if drives.len() > MAX_DEVICES {
        return Err(ConfigError::TooManyDevices {
            count: drives.len(),
        });
    }
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

//! Serde types for a microVM's configuration, field for field as Firecracker names them.
//!
//! Parsing is strict, as Firecracker's is: an unknown field is an error, never ignored. Sections
//! of Firecracker's config file that ember knows but does not implement parse, and are refused
//! with a named error by [`VmConfig::unsupported_sections`] rather than silently dropped.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Guest memory when a configuration does not say (Firecracker's default).
pub const DEFAULT_MEM_SIZE_MIB: usize = 128;
/// vCPUs when a configuration does not say (Firecracker's default).
pub const DEFAULT_VCPU_COUNT: u8 = 1;

/// A whole microVM, as in Firecracker's `--config-file` JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel, initrd and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// ember's own log.
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    /// Where counters are written.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Where the guest's console output goes (`PUT /serial`); absent: the command line says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    /// A virtio-rng device fed from the host's entropy (`PUT /entropy`); absent: none.
    #[serde(default)]
    pub entropy: Option<EntropyConfig>,
    /// A virtio-vsock device whose host side is Unix sockets (`PUT /vsock`); absent: none.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Host directories shared with the guest over virtio-fs (`PUT /fs/{fs_id}`); an ember
    /// extension, absent from Firecracker's configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// The microVM metadata service on some network interfaces (`PUT /mmds/config`); absent:
    /// no interface reaches it.
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<MmdsConfig>,
    /// Firecracker sections ember does not implement; kept so they can be refused by name,
    /// and shown as `null` in `GET /vm/config` (every key Firecracker returns is there).
    #[serde(flatten)]
    pub unsupported: UnsupportedSections,
}

/// Firecracker config-file sections that ember recognises but does not provide.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsupportedSections {
    #[serde(default)]
    balloon: Option<Value>,
    #[serde(rename = "cpu-config", default)]
    cpu_config: Option<Value>,
}

impl VmConfig {
    /// Parses Firecracker's config-file JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Names of the sections present (and not `null`) that ember does not implement.
    pub fn unsupported_sections(&self) -> Vec<&'static str> {
        let u = &self.unsupported;
        [("balloon", &u.balloon), ("cpu-config", &u.cpu_config)]
            .into_iter()
            .filter(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()))
            .map(|(name, _)| name)
            .collect()
    }
}

/// `boot-source`: what the guest boots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel: an ELF vmlinux or a bzImage.
    pub kernel_image_path: String,
    /// Host path of an initrd / initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// The kernel command line; ember's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `machine-config`: the virtual hardware.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading (two threads per core); ember supports only `false`.
    #[serde(default)]
    pub smt: bool,
    /// Firecracker's static CPU templates; ember supports only none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Dirty-page tracking for snapshots; ember supports only `false`.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge-page backing: "None" (the default, shown as such) or "2M".
    #[serde(default, serialize_with = "none_when_absent")]
    pub huge_pages: Option<String>,
}

/// Firecracker shows an absent `huge_pages` as "None".
fn none_when_absent<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or("None"))
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPU_COUNT,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: None,
        }
    }
}

/// One entry of `drives`: a virtio-blk disk backed by a host file (`path_on_host`) or served by
/// a vhost-user-blk backend (`socket`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Unique id; also the disk's serial number (GET_ID).
    pub drive_id: String,
    /// Host path of the raw disk image; empty (absent) for a `socket` drive.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_on_host: String,
    /// The guest mounts this disk as its root filesystem.
    pub is_root_device: bool,
    /// The guest may not write to the disk.
    #[serde(default)]
    pub is_read_only: bool,
    /// Partition UUID of the root partition, instead of the whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// "Unsafe" (flushes are no-ops) or "Writeback" (flushes reach the disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// Firecracker's I/O engine selection ("Sync" or "Async").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Limits on the guest's requests to this drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// The socket of a vhost-user-blk backend that serves the disk, instead of an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// One entry of `network-interfaces`: a virtio-net device backed by a host TAP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Unique id.
    pub iface_id: String,
    /// Name of an existing TAP device on the host.
    pub host_dev_name: String,
    /// The guest's MAC address, as `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// The MTU offered to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on the frames the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on the frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Firecracker's rate limiter: a bandwidth (bytes) bucket and an ops bucket. A missing or
/// `null` bucket, and an empty `{}` limiter, limit nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests, frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// This limiter changed by `update`, as Firecracker's PATCH does: a bucket `update`
    /// gives replaces this one's, a bucket it leaves out stays.
    pub fn patched(self, update: RateLimiterConfig) -> Self {
        Self {
            bandwidth: update.bandwidth.or(self.bandwidth),
            ops: update.ops.or(self.ops),
        }
    }
}

/// One token bucket: `size` tokens, refilled in `refill_time` ms, and `one_time_burst` extra
/// tokens once. A size or refill time of 0 limits nothing (Firecracker's rule), and so does an
/// empty `{}`; giving only one of `size` and `refill_time` is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TokenBucketFields")]
pub struct TokenBucketConfig {
    /// Most tokens the bucket holds.
    pub size: u64,
    /// Extra tokens available once, before the bucket limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds for an empty bucket to refill.
    pub refill_time: u64,
}

/// A token bucket as written, before the rule that `size` and `refill_time` come together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketFields {
    size: Option<u64>,
    #[serde(default)]
    one_time_burst: Option<u64>,
    refill_time: Option<u64>,
}

impl TryFrom<TokenBucketFields> for TokenBucketConfig {
    type Error = &'static str;

    fn try_from(f: TokenBucketFields) -> Result<Self, Self::Error> {
        let (size, refill_time) = match (f.size, f.refill_time) {
            (Some(size), Some(refill_time)) => (size, refill_time),
            (None, None) if f.one_time_burst.is_none() => (0, 0),
            _ => {
                return Err(
                    "a token bucket needs both size and refill_time (an empty {} \
                            bucket limits nothing)",
                );
            }
        };
        Ok(Self {
            size,
            one_time_burst: f.one_time_burst,
            refill_time,
        })
    }
}

/// `logger` (`PUT /logger`): ember's own log. Absent fields keep their current value, except
/// `level`, which is Info when absent (Firecracker's rule).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// Where log lines go (a file or a named pipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Error, Warning, Info, Debug, Trace or Off (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `serial` (`PUT /serial`): where the guest's console output goes, and how fast.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A file or named pipe; absent: unchanged.
    pub serial_out_path: Option<String>,
    /// Bytes of console output (one token bucket, as Firecracker's serial takes it, not the
    /// bandwidth/ops pair of a drive); output beyond it is dropped. Absent or `{}`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucketConfig>,
}

/// `entropy` (`PUT /entropy`): a virtio-rng device, as Firecracker's entropy device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Limits on the bytes (bandwidth) and requests (ops) the guest takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `vsock` (`PUT /vsock`): a virtio-vsock device with Firecracker's Unix-socket backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Firecracker's (deprecated) identifier; kept and shown, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id: 3 or more (0-2 are reserved).
    pub guest_cid: u64,
    /// The Unix socket ember listens on for host-initiated connections; guest-initiated ones
    /// go to `<uds_path>_<port>`.
    pub uds_path: String,
}

/// One `fs` entry (`PUT /fs/{fs_id}`): a virtio-fs device, served either by a virtiofsd that
/// ember starts for `shared_dir` or by a vhost-user backend already listening on `socket`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The device's id (letters, digits and '_').
    pub fs_id: String,
    /// The name the guest mounts it by (`mount -t virtiofs TAG /mnt`), 1 to 36 bytes.
    pub tag: String,
    /// The host directory ember shares, starting virtiofsd for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<String>,
    /// The socket of a vhost-user backend someone else runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Share `shared_dir` read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// The MMDS address when `mmds-config` names none (Firecracker's, and EC2's).
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How the guest talks to the metadata service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// GETs without a session token (Firecracker's default, deprecated there).
    #[default]
    V1,
    /// A session token from `PUT /latest/api/token` first, then GETs that carry it.
    V2,
}

/// `mmds-config` (`PUT /mmds/config`): which network interfaces reach the metadata service,
/// at which address, and how it answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// V1 or V2; V1 when absent.
    #[serde(default)]
    pub version: MmdsVersion,
    /// Ids of existing network interfaces whose frames to the MMDS address are answered by
    /// ember instead of reaching the TAP.
    pub network_interfaces: Vec<String>,
    /// A link-local address (169.254.1.0 to 169.254.254.255); shown as the default,
    /// [`DEFAULT_MMDS_IPV4`], when absent, as Firecracker shows it.
    #[serde(default, serialize_with = "default_mmds_ipv4_when_absent")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer in EC2 IMDS's plain-text form whatever the guest's `Accept` header says.
    #[serde(default)]
    pub imds_compat: bool,
}

fn default_mmds_ipv4_when_absent<S: serde::Serializer>(
    v: &Option<Ipv4Addr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.unwrap_or(DEFAULT_MMDS_IPV4).serialize(s)
}

/// `metrics` (`PUT /metrics`): where counters are written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where metrics lines go (a file or a named pipe).
    pub metrics_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_firecracker_config_file() {
        let cfg = VmConfig::from_json(
            r#"{
              "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0",
                              "initrd_path": null},
              "drives": [{"drive_id": "rootfs", "path_on_host": "rootfs.ext4",
                          "is_root_device": true, "is_read_only": false}],
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
              "logger": {"level": "Debug", "log_path": "ember.log"},
              "metrics": {"metrics_path": "metrics.json"}
            }"#,
        )
        .unwrap();
        let boot = cfg.boot_source.as_ref().unwrap();
        assert_eq!(boot.kernel_image_path, "vmlinux");
        assert_eq!(boot.initrd_path, None);
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        assert_eq!(cfg.machine_config.mem_size_mib, 256);
        assert_eq!(cfg.drives[0].drive_id, "rootfs");
        let logger = cfg.logger.as_ref().unwrap();
        assert_eq!(logger.level.as_deref(), Some("Debug"));
        assert_eq!(logger.show_level, None);
        assert_eq!(cfg.metrics.as_ref().unwrap().metrics_path, "metrics.json");
        assert!(cfg.unsupported_sections().is_empty());
    }

    #[test]
    fn absent_machine_config_takes_firecracker_defaults() {
        let cfg = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        assert_eq!(cfg.machine_config, MachineConfig::default());
        assert_eq!(cfg.machine_config.mem_size_mib, 128);
    }

    #[test]
    fn unknown_fields_are_errors_that_name_the_field() {
        for (json, field) in [
            (r#"{"boot-sauce": {}}"#, "boot-sauce"),
            (
                r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "vcpus": 2}}"#,
                "vcpus",
            ),
            (
                r#"{"boot-source": {"kernel_image_path": "k", "cmdline": ""}}"#,
                "cmdline",
            ),
        ] {
            let err = VmConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn known_but_unsupported_sections_are_named() {
        let cfg = VmConfig::from_json(r#"{"balloon": {"amount_mib": 1}, "vsock": null}"#).unwrap();
        assert_eq!(cfg.unsupported_sections(), vec!["balloon"]);
    }

    #[test]
    fn the_exported_configuration_has_every_key_firecracker_returns() {
        let cfg = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        let out = serde_json::to_value(&cfg).unwrap();
        for key in [
            "balloon",
            "drives",
            "boot-source",
            "cpu-config",
            "logger",
            "machine-config",
            "metrics",
            "mmds-config",
            "network-interfaces",
            "vsock",
            "entropy",
        ] {
            assert!(out.get(key).is_some(), "{key} missing from {out}");
        }
        assert_eq!(out["machine-config"]["huge_pages"], "None");
        // What GET /vm/config returns is a valid config file that describes the same VM.
        let back: VmConfig = serde_json::from_value(out.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), out);
    }

    #[test]
    fn an_fs_list_is_parsed_strictly_and_left_out_of_the_config_when_empty() {
        let cfg = VmConfig::from_json(
            r#"{"fs": [{"fs_id": "d", "tag": "docs", "shared_dir": "/srv/d", "read_only": true},
                       {"fs_id": "e", "tag": "ext", "socket": "/run/e.sock"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.fs.len(), 2);
        assert!(cfg.fs[0].read_only && !cfg.fs[1].read_only);
        assert_eq!(cfg.fs[1].socket.as_deref(), Some("/run/e.sock"));
        let err = VmConfig::from_json(r#"{"fs": [{"fs_id": "d", "tag": "t", "dir": "/x"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `dir`"), "{err}");
        let shown = serde_json::to_value(VmConfig::default()).unwrap();
        assert!(shown.get("fs").is_none(), "{shown}");
    }

    #[test]
    fn a_vsock_section_is_a_device_and_is_parsed_strictly() {
        let cfg =
            VmConfig::from_json(r#"{"vsock": {"guest_cid": 3, "uds_path": "/v.sock"}}"#).unwrap();
        let want = VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        };
        assert_eq!(cfg.vsock, Some(want));
        assert!(cfg.unsupported_sections().is_empty());
        let err = VmConfig::from_json(r#"{"vsock": {"guest_cid": 3}}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `uds_path`"),
            "{err}"
        );
        let err = VmConfig::from_json(r#"{"vsock": {"guest_cid": 3, "uds_path": "x", "p": 1}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `p`"), "{err}");
    }

    #[test]
    fn an_mmds_config_section_is_parsed_strictly_and_shown_with_its_defaults() {
        let cfg =
            VmConfig::from_json(r#"{"mmds-config": {"network_interfaces": ["eth0"]}}"#).unwrap();
        let mmds = cfg.mmds_config.clone().unwrap();
        assert_eq!(
            (mmds.version, mmds.ipv4_address, mmds.imds_compat),
            (MmdsVersion::V1, None, false)
        );
        assert!(cfg.unsupported_sections().is_empty());
        // Shown as Firecracker's GET /vm/config shows it: every field, the address filled in.
        assert_eq!(
            serde_json::to_value(&cfg).unwrap()["mmds-config"],
            serde_json::json!({"version": "V1", "network_interfaces": ["eth0"],
                               "ipv4_address": "169.254.169.254", "imds_compat": false})
        );
        let full = r#"{"mmds-config": {"version": "V2", "network_interfaces": ["a", "b"],
                                       "ipv4_address": "169.254.170.2", "imds_compat": true}}"#;
        let mmds = VmConfig::from_json(full).unwrap().mmds_config.unwrap();
        assert_eq!(mmds.version, MmdsVersion::V2);
        assert_eq!(mmds.ipv4_address, Some(Ipv4Addr::new(169, 254, 170, 2)));
        for (bad, why) in [
            (r#"{"version": "V2"}"#, "missing field `network_interfaces`"),
            (
                r#"{"network_interfaces": [], "version": "V3"}"#,
                "unknown variant `V3`, expected `V1` or `V2`",
            ),
            (
                r#"{"network_interfaces": [], "ipv4_address": ""}"#,
                "invalid IPv4 address syntax",
            ),
            (
                r#"{"network_interfaces": [], "ip": 1}"#,
                "unknown field `ip`",
            ),
        ] {
            let json = format!(r#"{{"mmds-config": {bad}}}"#);
            let err = VmConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn an_entropy_section_is_a_device_and_is_parsed_strictly() {
        let cfg = VmConfig::from_json(r#"{"entropy": {}}"#).unwrap();
        assert_eq!(cfg.entropy, Some(EntropyConfig::default()));
        assert!(cfg.unsupported_sections().is_empty());
        let cfg = VmConfig::from_json(r#"{"entropy": null}"#).unwrap();
        assert_eq!(cfg.entropy, None);
        let err = VmConfig::from_json(r#"{"entropy": {"rate": 1}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `rate`"), "{err}");
    }

    #[test]
    fn rate_limiters_parse_strictly_and_empty_ones_limit_nothing() {
        let drive = |limiter: &str| {
            let json = format!(
                r#"{{"drive_id": "a", "path_on_host": "x", "is_root_device": false,
                     "rate_limiter": {limiter}}}"#
            );
            serde_json::from_str::<Drive>(&json).map(|d| d.rate_limiter)
        };
        let bucket = |size, one_time_burst, refill_time| TokenBucketConfig {
            size,
            one_time_burst,
            refill_time,
        };
        assert_eq!(drive("null").unwrap(), None);
        assert_eq!(drive("{}").unwrap(), Some(RateLimiterConfig::default()));
        let both = drive(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 1000},
                "ops": {"size": 100, "refill_time": 10}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.bandwidth, Some(bucket(1 << 20, Some(4096), 1000)));
        assert_eq!(both.ops, Some(bucket(100, None, 10)));
        let empty = drive(r#"{"bandwidth": {}, "ops": null}"#).unwrap().unwrap();
        assert_eq!(empty.bandwidth, Some(bucket(0, None, 0)));
        assert_eq!(empty.ops, None);
        for (bad, why) in [
            (r#"{"bandwith": {}}"#, "unknown field `bandwith`"),
            (
                r#"{"ops": {"size": 1, "refill_time": 1, "rate": 2}}"#,
                "unknown field `rate`",
            ),
            (r#"{"ops": {"size": 1}}"#, "both size and refill_time"),
            (
                r#"{"ops": {"one_time_burst": 1}}"#,
                "both size and refill_time",
            ),
            (
                r#"{"ops": {"size": -1, "refill_time": 1}}"#,
                "invalid value",
            ),
            (r#"{"ops": 5}"#, "invalid type"),
        ] {
            let err = drive(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        // GET /vm/config shows what was set, without the buckets left out.
        assert_eq!(
            serde_json::to_string(&both.patched(RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(5, None, 50)),
            }))
            .unwrap(),
            r#"{"bandwidth":{"size":1048576,"one_time_burst":4096,"refill_time":1000},"ops":{"size":5,"refill_time":50}}"#
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(
            VmConfig::from_json(r#"{"machine-config": {"vcpu_count": "2", "mem_size_mib": 1}}"#)
                .is_err()
        );
        assert!(
            VmConfig::from_json(r#"{"machine-config": {"vcpu_count": 256, "mem_size_mib": 1}}"#)
                .is_err()
        );
    }
}

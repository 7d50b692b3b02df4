//! From an HTTP request to a [`VmmAction`]: all of Firecracker's routes on one screen, each
//! body parsed strictly into the configuration model, path ids checked against body ids. The
//! VMM decides whether an action is legal in the VM's current state; this module only decides
//! whether the request is well-formed.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::{Method, Request};
use crate::model::{
    BootSource, Drive, EntropyConfig, FsConfig, LoggerConfig, MachineConfig, MetricsConfig,
    MmdsConfig, NetworkInterface, RateLimiterConfig, SerialConfig, VsockConfig,
};

/// What the API asks of the VMM. Each variant says when it is legal.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// Any time: `GET /`.
    GetInstanceInfo,
    /// Any time: `GET /version`.
    GetVersion,
    /// Any time: `GET /vm/config`.
    GetVmConfig,
    /// Any time: `GET /machine-config`.
    GetMachineConfig,
    /// Before boot: `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// Before boot: `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// Before boot: `PUT /boot-source`.
    PutBootSource(BootSource),
    /// Before boot: `PUT /drives/{id}` (adds or replaces).
    PutDrive(Drive),
    /// Before boot: `PUT /network-interfaces/{id}` (adds or replaces).
    PutNetworkInterface(NetworkInterface),
    /// Before boot: `PUT /logger`.
    PutLogger(LoggerConfig),
    /// Before boot: `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// Before boot: `PUT /serial`.
    PutSerial(SerialConfig),
    /// Before boot: `PUT /entropy`.
    PutEntropy(EntropyConfig),
    /// Before boot: `PUT /vsock`.
    PutVsock(VsockConfig),
    /// Before boot: `PUT /fs/{fs_id}`.
    PutFs(FsConfig),
    /// Before boot: `PUT /mmds/config`.
    PutMmdsConfig(MmdsConfig),
    /// Any time: `GET /mmds`.
    GetMmds,
    /// Any time: `PUT /mmds` (replaces the metadata).
    PutMmds(Value),
    /// Any time: `PATCH /mmds` (a JSON merge patch, RFC 7396).
    PatchMmds(Value),
    /// Before boot: `PUT /actions` InstanceStart.
    InstanceStart,
    /// After boot: `PATCH /drives/{id}`.
    PatchDrive(PartialDrive),
    /// After boot: `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// After boot: `PUT /actions` SendCtrlAltDel.
    SendCtrlAltDel,
    /// After boot: `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// After boot: `PATCH /vm` Paused.
    Pause,
    /// After boot: `PATCH /vm` Resumed.
    Resume,
}

/// What the VMM answers an action with.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done, nothing to say (204).
    Empty,
    /// A JSON document (200).
    Json(Value),
}

/// Why the VMM refused an action: Firecracker's `fault_message`, under the status Firecracker
/// gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 400: everything but what follows.
    BadRequest(String),
    /// 413: metadata beyond the MMDS data store's size limit.
    PayloadTooLarge(String),
}

impl Fault {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::PayloadTooLarge(_) => 413,
        }
    }

    /// The fault message.
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m) | Self::PayloadTooLarge(m) => m,
        }
    }
}

/// The VMM's answer: data, or why not.
pub type VmmResponse = Result<VmmData, Fault>;

/// `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Memory in MiB.
    pub mem_size_mib: Option<usize>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// CPU template.
    pub cpu_template: Option<String>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<String>,
}

/// `PATCH /drives/{id}`: a new backing file (or rate limiter) for a running VM's drive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive.
    pub drive_id: String,
    /// The new backing file.
    pub path_on_host: Option<String>,
    /// Buckets to replace in the drive's rate limiter.
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{id}`: Firecracker's rate limiter updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface.
    pub iface_id: String,
    /// Buckets to replace in the receive rate limiter.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Buckets to replace in the transmit rate limiter.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: String,
}

/// Firecracker paths ember does not serve yet: answered with a message naming them.
const NOT_YET: [&str; 6] = [
    "/balloon",
    "/cpu-config",
    "/snapshot",
    "/hotplug",
    "/pmem",
    "/memory-hotplug",
];

fn body<T: DeserializeOwned>(req: &Request) -> Result<T, String> {
    if req.body.is_empty() {
        return Err("the request needs a JSON body".into());
    }
    serde_json::from_slice(&req.body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// The id in a resource path, which Firecracker requires before looking at the body.
fn path_id<'a>(kind: &str, id: Option<&'a str>) -> Result<&'a str, String> {
    id.filter(|id| !id.is_empty())
        .ok_or_else(|| format!("Required path parameter '{kind}' is missing."))
}

/// Firecracker's resource id rule: letters, digits and '_'; the body names the path's id.
fn check_id(kind: &str, path_id: &str, body_id: &str) -> Result<(), String> {
    if !path_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "Invalid {kind} '{path_id}': only letters, digits and '_' are allowed."
        ));
    }
    if path_id != body_id {
        return Err(format!(
            "The {kind} in the path ('{path_id}') does not match the one in the body ('{body_id}')."
        ));
    }
    Ok(())
}

/// The action `req` asks for, or the fault message to answer with.
pub fn route(req: &Request) -> Result<VmmAction, String> {
    use Method::{Get, Patch, Put};
    if req.method == Get && !req.body.is_empty() {
        return Err("GET requests must not have a body.".into());
    }
    let path = req.path.trim_end_matches('/');
    let mut parts = path.splitn(3, '/').skip(1);
    let (first, rest) = (parts.next().unwrap_or(""), parts.next());
    let action = match (req.method, first, rest) {
        (Get, "", None) => VmmAction::GetInstanceInfo,
        (Get, "version", None) => VmmAction::GetVersion,
        (Get, "vm", Some("config")) => VmmAction::GetVmConfig,
        (Get, "machine-config", None) => VmmAction::GetMachineConfig,
        (Put, "machine-config", None) => VmmAction::PutMachineConfig(body(req)?),
        (Patch, "machine-config", None) => VmmAction::PatchMachineConfig(body(req)?),
        (Put, "boot-source", None) => VmmAction::PutBootSource(body(req)?),
        (Put | Patch, "drives", id) => {
            let id = path_id("drive_id", id)?;
            if req.method == Put {
                let drive: Drive = body(req)?;
                check_id("drive_id", id, &drive.drive_id)?;
                VmmAction::PutDrive(drive)
            } else {
                let drive: PartialDrive = body(req)?;
                check_id("drive_id", id, &drive.drive_id)?;
                VmmAction::PatchDrive(drive)
            }
        }
        (Put | Patch, "network-interfaces", id) => {
            let id = path_id("iface_id", id)?;
            if req.method == Put {
                let iface: NetworkInterface = body(req)?;
                check_id("iface_id", id, &iface.iface_id)?;
                VmmAction::PutNetworkInterface(iface)
            } else {
                let iface: PartialNetworkInterface = body(req)?;
                check_id("iface_id", id, &iface.iface_id)?;
                VmmAction::PatchNetworkInterface(iface)
            }
        }
        (Put, "actions", None) => {
            let action: ActionBody = body(req)?;
            match action.action_type.as_str() {
                "InstanceStart" => VmmAction::InstanceStart,
                "SendCtrlAltDel" => VmmAction::SendCtrlAltDel,
                "FlushMetrics" => VmmAction::FlushMetrics,
                other => {
                    return Err(format!(
                        "Unknown action_type '{other}': expected InstanceStart, SendCtrlAltDel or FlushMetrics."
                    ));
                }
            }
        }
        (Patch, "vm", None) => {
            let state: VmStateBody = body(req)?;
            match state.state.as_str() {
                "Paused" => VmmAction::Pause,
                "Resumed" => VmmAction::Resume,
                other => {
                    return Err(format!(
                        "Unknown vm state '{other}': expected Paused or Resumed."
                    ));
                }
            }
        }
        (Put, "logger", None) => VmmAction::PutLogger(body(req)?),
        (Put, "metrics", None) => VmmAction::PutMetrics(body(req)?),
        (Put, "serial", None) => VmmAction::PutSerial(body(req)?),
        (Put, "entropy", None) => VmmAction::PutEntropy(body(req)?),
        (Put, "vsock", None) => VmmAction::PutVsock(body(req)?),
        (Put, "fs", id) => {
            let id = path_id("fs_id", id)?;
            let fs: FsConfig = body(req)?;
            check_id("fs_id", id, &fs.fs_id)?;
            VmmAction::PutFs(fs)
        }
        (Get, "mmds", None) => VmmAction::GetMmds,
        (Put, "mmds", None) => VmmAction::PutMmds(body(req)?),
        (Patch, "mmds", None) => VmmAction::PatchMmds(body(req)?),
        (Put, "mmds", Some("config")) => VmmAction::PutMmdsConfig(body(req)?),
        _ => {
            let top = format!("/{first}");
            if NOT_YET.contains(&top.as_str()) {
                return Err(format!(
                    "'{}' is a Firecracker API ember does not support yet.",
                    req.path
                ));
            }
            return Err(format!(
                "Invalid request method and/or path: {} {}.",
                req.method_name, req.path
            ));
        }
    };
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        let m = match method {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        };
        Request {
            method: m,
            method_name: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn ok(method: &str, path: &str, body: &str) -> VmmAction {
        route(&req(method, path, body)).unwrap()
    }

    fn err(method: &str, path: &str, body: &str) -> String {
        route(&req(method, path, body)).unwrap_err()
    }

    #[test]
    fn every_route_parses() {
        assert_eq!(ok("GET", "/", ""), VmmAction::GetInstanceInfo);
        assert_eq!(ok("GET", "/version", ""), VmmAction::GetVersion);
        assert_eq!(ok("GET", "/vm/config", ""), VmmAction::GetVmConfig);
        assert_eq!(
            ok("GET", "/machine-config", ""),
            VmmAction::GetMachineConfig
        );
        assert!(
            matches!(ok("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#), VmmAction::PutMachineConfig(m) if m.vcpu_count == 2)
        );
        assert!(
            matches!(ok("PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#), VmmAction::PatchMachineConfig(m) if m.mem_size_mib == Some(64) && m.vcpu_count.is_none())
        );
        assert!(matches!(
            ok("PUT", "/boot-source", r#"{"kernel_image_path": "k"}"#),
            VmmAction::PutBootSource(_)
        ));
        assert!(matches!(
            ok(
                "PUT",
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true}"#
            ),
            VmmAction::PutDrive(_)
        ));
        assert!(matches!(
            ok(
                "PATCH",
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "s.ext4"}"#
            ),
            VmmAction::PatchDrive(_)
        ));
        assert!(matches!(
            ok(
                "PUT",
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#
            ),
            VmmAction::PutNetworkInterface(_)
        ));
        assert!(matches!(
            ok(
                "PATCH",
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0"}"#
            ),
            VmmAction::PatchNetworkInterface(_)
        ));
        for (t, a) in [
            ("InstanceStart", VmmAction::InstanceStart),
            ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
            ("FlushMetrics", VmmAction::FlushMetrics),
        ] {
            assert_eq!(
                ok("PUT", "/actions", &format!(r#"{{"action_type": "{t}"}}"#)),
                a
            );
        }
        assert_eq!(
            ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
            VmmAction::Pause
        );
        assert_eq!(
            ok("PATCH", "/vm", r#"{"state": "Resumed"}"#),
            VmmAction::Resume
        );
        assert!(matches!(
            ok("PUT", "/logger", r#"{"log_path": "l", "level": "Info"}"#),
            VmmAction::PutLogger(_)
        ));
        assert!(matches!(
            ok("PUT", "/metrics", r#"{"metrics_path": "m"}"#),
            VmmAction::PutMetrics(_)
        ));
        assert!(matches!(
            ok("PUT", "/serial", r#"{"serial_out_path": "s"}"#),
            VmmAction::PutSerial(_)
        ));
        assert_eq!(
            ok("PUT", "/entropy", "{}"),
            VmmAction::PutEntropy(EntropyConfig::default())
        );
        assert!(err("PUT", "/entropy", r#"{"ratelimiter": {}}"#).contains("unknown field"));
        assert!(matches!(
            ok(
                "PUT",
                "/fs/docs",
                r#"{"fs_id": "docs", "tag": "docs", "shared_dir": "/srv/docs", "read_only": true}"#
            ),
            VmmAction::PutFs(FsConfig {
                read_only: true,
                ..
            })
        ));
        assert!(
            err(
                "PUT",
                "/fs/a",
                r#"{"fs_id": "b", "tag": "t", "socket": "/s"}"#
            )
            .contains("fs_id")
        );
        assert!(
            err("PUT", "/fs/a", r#"{"fs_id": "a", "tag": "t", "dir": "/s"}"#)
                .contains("unknown field")
        );
        assert!(matches!(
            ok(
                "PUT",
                "/vsock",
                r#"{"vsock_id": "v", "guest_cid": 3, "uds_path": "/v"}"#
            ),
            VmmAction::PutVsock(VsockConfig { guest_cid: 3, .. })
        ));
        assert!(err("PUT", "/vsock", r#"{"guest_cid": 3}"#).contains("uds_path"));
        assert_eq!(ok("GET", "/mmds", ""), VmmAction::GetMmds);
        // Any JSON is metadata, a bare string too (Firecracker's rule).
        assert_eq!(
            ok("PUT", "/mmds", r#"{"latest": {"id": "i-1"}}"#),
            VmmAction::PutMmds(serde_json::json!({"latest": {"id": "i-1"}}))
        );
        assert_eq!(
            ok("PUT", "/mmds", r#""text""#),
            VmmAction::PutMmds(serde_json::json!("text"))
        );
        assert_eq!(
            ok("PATCH", "/mmds", r#"{"latest": null}"#),
            VmmAction::PatchMmds(serde_json::json!({"latest": null}))
        );
        assert!(matches!(
            ok(
                "PUT",
                "/mmds/config",
                r#"{"version": "V2", "network_interfaces": ["eth0"]}"#
            ),
            VmmAction::PutMmdsConfig(MmdsConfig { network_interfaces, .. })
                if network_interfaces == ["eth0"]
        ));
    }

    #[test]
    fn bad_requests_get_helpful_messages() {
        assert_eq!(
            err("GET", "/nope", ""),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(
            err("DELETE", "/", ""),
            "Invalid request method and/or path: DELETE /."
        );
        assert_eq!(
            err("PUT", "/version", "{}"),
            "Invalid request method and/or path: PUT /version."
        );
        assert!(err("PUT", "/balloon", "{}").contains("does not support yet"));
        assert!(err("PUT", "/snapshot/create", "{}").contains("does not support yet"));
        assert!(err("PUT", "/mmds", "{").contains("invalid JSON body"));
        assert!(err("PATCH", "/mmds", "").contains("needs a JSON body"));
        assert_eq!(
            err("PUT", "/mmds/other", "{}"),
            "Invalid request method and/or path: PUT /mmds/other."
        );
        assert_eq!(
            err("PATCH", "/mmds/config", "{}"),
            "Invalid request method and/or path: PATCH /mmds/config."
        );
        assert!(
            err("PUT", "/mmds/config", r#"{"version": "V2"}"#)
                .contains("missing field `network_interfaces`")
        );
        assert!(err("PUT", "/boot-source", "{").contains("invalid JSON body"));
        assert!(
            err(
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "k", "x": 1}"#
            )
            .contains("unknown field `x`")
        );
        assert!(
            err(
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": "two", "mem_size_mib": 1}"#
            )
            .contains("invalid type")
        );
        assert!(err("PUT", "/boot-source", "").contains("needs a JSON body"));
        assert!(
            err(
                "PUT",
                "/drives/a",
                r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#
            )
            .contains("does not match")
        );
        assert!(
            err(
                "PUT",
                "/drives/",
                r#"{"drive_id": "", "path_on_host": "x", "is_root_device": false}"#
            )
            .contains("Required path parameter 'drive_id'")
        );
        assert!(
            err(
                "PUT",
                "/drives/a-b",
                r#"{"drive_id": "a-b", "path_on_host": "x", "is_root_device": false}"#
            )
            .contains("only letters")
        );
        assert!(
            err(
                "PUT",
                "/network-interfaces/e",
                r#"{"iface_id": "f", "host_dev_name": "t"}"#
            )
            .contains("does not match")
        );
        assert!(
            err("PUT", "/actions", r#"{"action_type": "Reboot"}"#)
                .contains("Unknown action_type 'Reboot'")
        );
        assert!(err("PATCH", "/vm", r#"{"state": "Stopped"}"#).contains("Unknown vm state"));
        assert_eq!(err("GET", "/", "{}"), "GET requests must not have a body.");
    }

    /// The routes and `openapi.json` list the same operations: each documented one is
    /// recognised, and each method and path the router recognises is documented.
    #[test]
    fn routes_and_the_openapi_document_agree() {
        let doc: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let concrete = |template: &str| {
            template
                .replace("{drive_id}", "x")
                .replace("{iface_id}", "x")
        };
        let mut candidates: Vec<String> = paths.keys().map(|t| concrete(t)).collect();
        candidates.extend(NOT_YET.iter().map(|p| p.to_string()));
        candidates.extend(["/drives".into(), "/vm/state".into(), "/actions/x".into()]);
        for path in &candidates {
            for method in ["GET", "PUT", "PATCH", "POST", "DELETE"] {
                let body = if method == "GET" { "" } else { "{}" };
                let recognised = match route(&req(method, path, body)) {
                    Ok(_) => true,
                    Err(e) => {
                        !e.starts_with("Invalid request method")
                            && !e.contains("does not support")
                            && !e.starts_with("Required path parameter")
                    }
                };
                let documented = paths.iter().any(|(t, item)| {
                    concrete(t) == *path && item.get(method.to_ascii_lowercase()).is_some()
                });
                assert_eq!(recognised, documented, "{method} {path}");
            }
        }
    }
}

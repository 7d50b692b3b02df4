//! The microVM metadata service's control plane, as Firecracker's clients drive it: the store
//! through `PUT|PATCH|GET /mmds` before and after boot, `PUT /mmds/config` before boot on
//! existing interfaces, `--metadata`, `--mmds-size-limit` (by default the API's largest body),
//! a config file's `mmds-config`, and each refusal with its status and message. What the guest
//! reads is checked by the Linux boot in `virtio_net.rs`. Tiny guests keep each boot to
//! milliseconds.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// `GET /mmds`, which must answer 200.
fn metadata(c: &mut ApiClient) -> Value {
    let (status, body) = c.request("GET", "/mmds", None);
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// A request the store refuses as too large: 413 with a fault message, returned.
fn too_large(c: &mut ApiClient, method: &str, body: &Value) -> String {
    let (status, answer) = c.request(method, "/mmds", Some(&body.to_string()));
    assert_eq!(status, 413, "{method} /mmds: {answer}");
    fault(&answer)
}

#[test]
fn the_store_works_before_and_after_boot_and_its_config_only_before() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("api-mmds", &[("tap0", "10.0.7.1/24")]);
    let ember = ns.command(env!("CARGO_BIN_EXE_ember"));
    let vm = Ember::start_with("api-mmds", ember, &["--mmds-size-limit", "321"]);
    let mut c = vm.client();
    // An empty store answers as Firecracker's does; it cannot be patched yet.
    assert_eq!(metadata(&mut c), json!({}));
    let message = refused(&mut c, "PATCH", "/mmds", r#"{"a": 1}"#);
    assert!(message.contains("not initialized"), "{message}");

    // The configuration names existing interfaces, at a link-local address.
    let config = json!({"version": "V2", "network_interfaces": ["eth0"]}).to_string();
    let message = refused(&mut c, "PUT", "/mmds/config", &config);
    assert!(
        message.starts_with("The list of network interface IDs provided contains at least one")
            && message.contains("'eth0'"),
        "{message}"
    );
    let nic = json!({"iface_id": "eth0", "host_dev_name": "tap0"}).to_string();
    done(&mut c, "PUT", "/network-interfaces/eth0", &nic);
    for (body, want) in [
        (
            json!({"network_interfaces": []}),
            "The list of network interface IDs that allow forwarding MMDS requests is empty",
        ),
        (
            json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.7.2"}),
            "The MMDS IPv4 address is not link local: 10.0.7.2",
        ),
        (
            json!({"network_interfaces": ["eth0"], "version": "V3"}),
            "unknown variant `V3`, expected `V1` or `V2`",
        ),
    ] {
        let message = refused(&mut c, "PUT", "/mmds/config", &body.to_string());
        assert!(message.contains(want), "{body}: {message}");
    }
    done(&mut c, "PUT", "/mmds/config", &config);
    let shown = json!({"version": "V2", "network_interfaces": ["eth0"],
                       "ipv4_address": "169.254.169.254", "imds_compat": false});
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["mmds-config"], shown);

    // PUT replaces, PATCH merges (RFC 7396: null removes).
    let put = json!({"latest": {"meta-data": {"ami-id": "ami-1", "host": "a"}}});
    done(&mut c, "PUT", "/mmds", &put.to_string());
    let patch = json!({"latest": {"meta-data": {"ami-id": "ami-2", "host": null}}});
    done(&mut c, "PATCH", "/mmds", &patch.to_string());
    let merged = json!({"latest": {"meta-data": {"ami-id": "ami-2"}}});
    assert_eq!(metadata(&mut c), merged);
    // Beyond --mmds-size-limit: Firecracker's 413, the limit named, the store unchanged.
    let big = json!({"blob": "x".repeat(400)});
    for method in ["PUT", "PATCH"] {
        let message = too_large(&mut c, method, &big);
        assert!(message.contains("321"), "{method}: {message}");
        assert_eq!(metadata(&mut c), merged);
    }

    let boot = json!({"kernel_image_path": guest("spin")}).to_string();
    done(&mut c, "PUT", "/boot-source", &boot);
    done(&mut c, "PUT", "/actions", START);
    vm.wait_running(&mut c);
    // After boot: the configuration is fixed, the store is not.
    assert_eq!(
        refused(&mut c, "PUT", "/mmds/config", &config),
        NOT_AFTER_START
    );
    assert_eq!(metadata(&mut c), merged);
    done(
        &mut c,
        "PATCH",
        "/mmds",
        r#"{"latest": {"user-data": "hi"}}"#,
    );
    let (_, body) = c.request("GET", "/mmds", None);
    assert_eq!(json(&body)["latest"]["user-data"], "hi");
    done(&mut c, "PUT", "/mmds", r#"{"replaced": true}"#);
    assert_eq!(metadata(&mut c), json!({"replaced": true}));
    too_large(&mut c, "PUT", &big);
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["mmds-config"], shown);
    assert_eq!(vm.terminate(), 128 + libc::SIGTERM);
}

#[test]
fn metadata_seeds_the_store_whose_limit_is_by_default_the_largest_api_body() {
    let dir = tempdir("api-mmds-metadata");
    let metadata_file = dir.join("metadata.json");
    // Pretty-printed: only the compact JSON counts against the limit.
    let seed = json!({"latest": {"meta-data": {"instance-id": "i-0123"}}});
    std::fs::write(&metadata_file, serde_json::to_vec_pretty(&seed).unwrap()).unwrap();
    let path = metadata_file.to_str().unwrap();
    let flags = ["--metadata", path, "--http-api-max-payload-size", "300"];
    let vm = Ember::start("api-mmds-metadata", &flags);
    let mut c = vm.client();
    assert_eq!(metadata(&mut c), seed);
    // Each body fits the API's 300 bytes; together they pass the store's limit, also 300.
    let part = |key: &str| json!({ key: "y".repeat(150) });
    done(&mut c, "PATCH", "/mmds", &part("a").to_string());
    let message = too_large(&mut c, "PATCH", &part("b"));
    assert!(message.contains("300"), "{message}");
    drop(vm);

    // Files that cannot be loaded stop ember at once, naming the file and the problem.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"latest\": ").unwrap();
    let missing = dir.join("missing.json");
    for (file, extra, want) in [
        (&bad, None, "is not valid JSON: EOF while parsing"),
        (&missing, None, "No such file or directory"),
        (
            &metadata_file,
            Some("10"),
            "cannot be put in the MMDS data store",
        ),
    ] {
        let sock = dir.join("refused.sock");
        let mut cmd = ember();
        cmd.arg("--api-sock").arg(&sock).arg("--metadata").arg(file);
        if let Some(limit) = extra {
            cmd.args(["--mmds-size-limit", limit]);
        }
        let out = run(&mut cmd, LIMIT);
        let stderr = text(&out.stderr);
        assert_eq!(code(&out.status), EXIT_CONFIG, "{stderr}");
        assert_contains(&stderr, &format!("'{}'", file.display()));
        assert_contains(&stderr, want);
    }
}

#[test]
fn a_config_file_mmds_config_is_checked_booted_and_shown() {
    let dir = tempdir("config-mmds");
    let cfg = dir.join("vm.json");
    let mut config = json!({
        "boot-source": {"kernel_image_path": guest("spin")},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"network_interfaces": ["eth1"], "ipv4_address": "169.254.170.2",
                        "imds_compat": true},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    // Checked before anything is opened: no TAP needed to be refused.
    let out = run(
        ember().arg("--no-api").arg("--config-file").arg(&cfg),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{stderr}");
    assert_contains(
        &stderr,
        "does not correspond to any existing network interface: 'eth1'",
    );

    if !kvm_available() || !net_available() {
        return;
    }
    config["mmds-config"]["network_interfaces"] = json!(["eth0"]);
    std::fs::write(&cfg, config.to_string()).unwrap();
    let ns = NetNs::new("config-mmds", &[("tap0", "10.0.8.1/24")]);
    let ember = ns.command(env!("CARGO_BIN_EXE_ember"));
    let vm = Ember::start_with(
        "config-mmds",
        ember,
        &["--config-file", cfg.to_str().unwrap()],
    );
    let mut c = vm.client();
    vm.wait_running(&mut c);
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(
        json(&body)["mmds-config"],
        json!({"version": "V1", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.170.2", "imds_compat": true})
    );
    assert_eq!(metadata(&mut c), json!({}));
    assert_eq!(vm.terminate(), 128 + libc::SIGTERM);
}

//! Firecracker's clients, replayed: each test is the exact sequence of process arguments and
//! requests one kind of real Firecracker client sends (a fixture written from what those
//! clients do, not a copy of their code), and checks that ember answers as Firecracker does and
//! that the VM then runs. Tiny guests keep every boot to milliseconds.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::api::json;
use common::*;
use serde_json::{Value, json};

/// A request that must succeed with an empty 204, as Firecracker answers a PUT or PATCH.
fn done(c: &mut ApiClient, method: &str, path: &str, body: &Value) {
    let (status, answer) = c.request(method, path, Some(&body.to_string()));
    assert_eq!(
        (status, answer.as_str()),
        (204, ""),
        "{method} {path} {body}"
    );
}

/// `PUT /actions` InstanceStart, then `GET /` polled until Running, as the clients do.
fn instance_start(vmm: &Ember, c: &mut ApiClient) {
    done(
        c,
        "PUT",
        "/actions",
        &json!({"action_type": "InstanceStart"}),
    );
    vmm.wait_running(c);
}

/// A named pipe the client creates and reads (Kata's `logs.fifo`, `metrics.fifo`): opened for
/// reading before ember starts, its lines handed to the returned channel.
fn listen_to_fifo(path: &Path) -> mpsc::Receiver<String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // Non-blocking, as Kata opens it, so the open does not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(file);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                // No writer yet, or nothing written yet.
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx
}

/// Waits for a line with `needle` on a FIFO.
fn line_with(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} on the FIFO")
}

/// Kata Containers' Firecracker driver: reads the version, writes a config file with the
/// root image as a read-only drive, a pool of empty placeholder drives, `smt: false`, empty
/// rate limiters, and a logger and metrics on FIFOs it reads; starts the VMM with
/// `--api-sock` and `--config-file`; polls `GET /` until Running; finds the vCPU threads by
/// name to pin them; swaps placeholders for real images with `PATCH /drives`; and stops the
/// VM with SIGTERM.
#[test]
fn kata_containers_sequence() {
    if !kvm_available() {
        return;
    }
    // Kata takes the second word of the first line, without its "v", as a semver.
    let out = run(ember().arg("--version"), Duration::from_secs(10));
    let first = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let version = first
        .split(' ')
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches('v');
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "{first}");
    assert_eq!(
        version
            .split('.')
            .filter_map(|n| n.parse::<u64>().ok())
            .count(),
        3
    );

    let dir = tempdir("fc-kata-files");
    let (log_fifo, metrics_fifo) = (dir.join("logs.fifo"), dir.join("metrics.fifo"));
    let (logs, metrics) = (listen_to_fifo(&log_fifo), listen_to_fifo(&metrics_fifo));
    let rootfs = dir.join("rootfs");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let mut drives = vec![json!({"drive_id": "rootfs", "path_on_host": rootfs,
                                 "is_root_device": false, "is_read_only": true})];
    for i in 0..8 {
        // os.Create: an empty file stands in until the container's image arrives.
        let placeholder = dir.join(format!("drive_{i}"));
        std::fs::File::create(&placeholder).unwrap();
        drives.push(
            json!({"drive_id": format!("drive_{i}"), "path_on_host": placeholder,
                           "is_root_device": false, "is_read_only": false,
                           "rate_limiter": {}}),
        );
    }
    let config = json!({
        "boot-source": {"kernel_image_path": guest("spin"),
                        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off iommu=off net.ifnames=0 random.trust_cpu=on acpi=off"},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
        "logger": {"level": "Debug", "log_path": log_fifo},
        "metrics": {"metrics_path": metrics_fifo},
    });
    let config_path = dir.join("fcConfig.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let vmm = Ember::start("fc-kata", &["--config-file", config_path.to_str().unwrap()]);
    let mut c = vmm.client();
    vmm.wait_running(&mut c);

    // The vCPU thread is found by its name; every thread runs under its seccomp filter.
    assert_seccomp_on_every_thread(vmm.pid(), &["fc_vcpu 0", "ember_blk_"]);
    line_with(&logs, "started 1 vCPUs");

    let image = dir.join("container.img");
    std::fs::write(&image, vec![0u8; 2 << 20]).unwrap();
    done(
        &mut c,
        "PATCH",
        "/drives/drive_0",
        &json!({"drive_id": "drive_0", "path_on_host": image}),
    );
    let (_, body) = c.request("GET", "/vm/config", None);
    let cfg = json(&body);
    assert_eq!(cfg["drives"][1]["path_on_host"], json!(image));
    assert_eq!(cfg["drives"][1]["rate_limiter"], json!({}));
    assert_eq!(cfg["machine-config"]["smt"], false);
    done(
        &mut c,
        "PUT",
        "/actions",
        &json!({"action_type": "FlushMetrics"}),
    );
    let line = json(&line_with(&metrics, "block_drive_0"));
    assert!(line["block_drive_7"].is_object(), "{line}");
    assert_eq!(vmm.terminate(), 128 + libc::SIGTERM);
}

/// A client whose every drive runs on `io_engine: "Async"` with bandwidth and ops limits, and
/// which adds an entropy device with its own limiter, all through the API before
/// InstanceStart; then the VM runs.
#[test]
fn async_drives_with_rate_limiters_and_a_limited_entropy_device() {
    if !kvm_available() {
        return;
    }
    let vmm = Ember::start("fc-async-limited", &["--id", "limited_1"]);
    let mut c = vmm.client();
    let limiter = json!({
        "bandwidth": {"size": 52_428_800, "one_time_burst": 0, "refill_time": 1000},
        "ops": {"size": 10_000, "refill_time": 1000}
    });
    done(
        &mut c,
        "PUT",
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false}),
    );
    done(
        &mut c,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest("spin"), "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
    );
    for id in ["rootfs", "scratch"] {
        let image = vmm.dir.join(format!("{id}.ext4"));
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        done(
            &mut c,
            "PUT",
            &format!("/drives/{id}"),
            &json!({"drive_id": id, "path_on_host": image, "is_root_device": id == "rootfs",
                    "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Async",
                    "rate_limiter": limiter}),
        );
    }
    done(
        &mut c,
        "PUT",
        "/entropy",
        &json!({"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}),
    );
    instance_start(&vmm, &mut c);
    let (_, body) = c.request("GET", "/vm/config", None);
    let cfg = json(&body);
    assert_eq!(cfg["drives"][0]["io_engine"], "Async");
    assert_eq!(cfg["drives"][1]["rate_limiter"], limiter);
    // Limits change at run time.
    done(
        &mut c,
        "PATCH",
        "/drives/scratch",
        &json!({"drive_id": "scratch", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}),
    );
    assert_eq!(vmm.terminate(), 128 + libc::SIGTERM);
}

/// A client that always sets up vsock (for its in-guest agent) and an entropy device before
/// InstanceStart; then the VM runs and its configuration shows both.
#[test]
fn a_client_that_sets_up_vsock_and_entropy_boots() {
    if !kvm_available() {
        return;
    }
    let vmm = Ember::start("fc-vsock-entropy", &["--id", "agent_1"]);
    let mut c = vmm.client();
    let uds = vmm.dir.join("v.sock");
    let vsock = json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": uds});
    done(&mut c, "PUT", "/vsock", &vsock);
    done(&mut c, "PUT", "/entropy", &json!({"rate_limiter": {}}));
    done(
        &mut c,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest("spin")}),
    );
    instance_start(&vmm, &mut c);
    let (_, body) = c.request("GET", "/vm/config", None);
    let cfg = json(&body);
    assert_eq!(cfg["vsock"], vsock);
    assert_eq!(cfg["entropy"], json!({"rate_limiter": {}}));
    // The host side of vsock is listening.
    std::os::unix::net::UnixStream::connect(&uds).unwrap();
    assert_eq!(vmm.terminate(), 128 + libc::SIGTERM);
}

/// Firecracker's Go SDK with metadata (as firectl and firecracker-containerd use it): machine,
/// boot source, root drive, a network interface, `PUT /mmds/config` naming it right after,
/// `PUT /mmds` with the metadata, InstanceStart; then `GET /mmds` reads it back.
#[test]
fn the_go_sdk_sequence_with_metadata_boots() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("fc-go-sdk", &[("tap0", "10.0.6.1/24")]);
    let ember = ns.command(env!("CARGO_BIN_EXE_ember"));
    let vmm = Ember::start_with("fc-go-sdk", ember, &["--id", "sdk_1"]);
    let mut c = vmm.client();
    let rootfs = vmm.dir.join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let metadata = json!({"latest": {"meta-data": {"instance-id": "sdk_1",
                                                   "local-ipv4": "10.0.6.2"}}});
    let steps = [
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": guest("spin"), "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
        ),
        (
            "/drives/1",
            json!({"drive_id": "1", "path_on_host": rootfs, "is_root_device": true,
                   "is_read_only": false}),
        ),
        (
            "/network-interfaces/1",
            json!({"iface_id": "1", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01"}),
        ),
        (
            "/mmds/config",
            json!({"network_interfaces": ["1"], "version": "V2",
                   "ipv4_address": "169.254.169.254"}),
        ),
        ("/mmds", metadata.clone()),
    ];
    for (path, body) in steps {
        done(&mut c, "PUT", path, &body);
    }
    instance_start(&vmm, &mut c);
    let (status, body) = c.request("GET", "/mmds", None);
    assert_eq!((status, json(&body)), (200, metadata));
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["mmds-config"]["version"], "V2");
    assert_eq!(vmm.terminate(), 128 + libc::SIGTERM);
}

/// A client that always adds an entropy device with an empty body and says `smt: false`.
#[test]
fn an_empty_entropy_device_and_smt_false() {
    if !kvm_available() {
        return;
    }
    let vmm = Ember::start("fc-entropy-smt", &[]);
    let mut c = vmm.client();
    done(
        &mut c,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest("spin")}),
    );
    done(
        &mut c,
        "PUT",
        "/machine-config",
        &json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false}),
    );
    done(&mut c, "PUT", "/entropy", &json!({}));
    instance_start(&vmm, &mut c);
    let (_, body) = c.request("GET", "/machine-config", None);
    assert_eq!(
        json(&body),
        json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
               "track_dirty_pages": false, "huge_pages": "None"})
    );
    // Found by their names, and each under its seccomp filter.
    assert_seccomp_on_every_thread(vmm.pid(), &["fc_vcpu 0", "fc_vcpu 1", "ember_api"]);
    assert_eq!(vmm.terminate(), 128 + libc::SIGTERM);
}

/// Every flag Firecracker's launchers pass starts ember serving its API.
#[test]
fn every_firecracker_flag_starts_ember_serving_its_api() {
    if !kvm_available() {
        return;
    }
    let now_us = (vmm::vcpu::monotonic_ns() / 1000).to_string();
    let dir = tempdir("fc-flags-files");
    let (log, metrics, filter, metadata) = (
        dir.join("ember.log"),
        dir.join("metrics.json"),
        dir.join("filter.json"),
        dir.join("metadata.json"),
    );
    // ember reads seccompiler's JSON description (one filter per ember thread kind), not
    // Firecracker's compiled bincode: here, everything but getppid.
    let filters: serde_json::Map<String, serde_json::Value> = vmm::seccomp::ThreadKind::ALL
        .iter()
        .map(|kind| {
            let filter = json!({"default_action": "allow", "filter_action": "trap",
                            "filter": [{"syscall": "getppid"}]});
            (kind.name().to_string(), filter)
        })
        .collect();
    std::fs::write(&filter, serde_json::Value::Object(filters).to_string()).unwrap();
    std::fs::write(&metadata, br#"{"latest": {}}"#).unwrap();
    let (log, metrics, filter, metadata) = (
        log.to_str().unwrap(),
        metrics.to_str().unwrap(),
        filter.to_str().unwrap(),
        metadata.to_str().unwrap(),
    );
    let cases: [&[&str]; 14] = [
        &["--id", "fc_flags"],
        &["--start-time-us", &now_us],
        &["--start-time-cpu-us", "0", "--parent-cpu-time-us", "10"],
        &["--seccomp-filter", filter],
        &["--no-seccomp"],
        &["--log-path", log, "--level", "Debug", "--show-level"],
        &["--show-log-origin", "--module", "vmm"],
        &["--metrics-path", metrics],
        &["--boot-timer"],
        &["--enable-pci"],
        &["--http-api-max-payload-size", "51200"],
        &["--metadata", metadata, "--mmds-size-limit", "102400"],
        &["--level", "Warning"],
        &["--level", "Trace"],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let vm = Ember::start(&format!("fc-flags-{i}"), flags);
        let mut c = vm.client();
        let (status, body) = c.request("GET", "/", None);
        assert_eq!(
            (status, json(&body)["state"].as_str()),
            (200, Some("Not started")),
            "{flags:?}"
        );
    }
    // The start-up time is measured against the launcher's stamp once the API is served.
    let log = tempdir("fc-flags-start-time-log").join("ember.log");
    let log = log.to_str().unwrap();
    let vm = Ember::start(
        "fc-flags-start-time",
        &[
            "--start-time-us",
            &now_us,
            "--level",
            "Info",
            "--log-path",
            log,
        ],
    );
    vm.client().request("GET", "/", None);
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(logged.contains("us after --start-time-us"), "{logged}");
    // Launchers read the version's first line as `<Name> v<X.Y.Z>`.
    let out = ember().arg("--version").output().unwrap();
    let first = text(&out.stdout);
    assert_eq!(
        first.lines().next(),
        Some(concat!("ember v", env!("CARGO_PKG_VERSION")))
    );
    // Snapshot flags say ember has none, and fail.
    for flags in [
        &["--snapshot-version"][..],
        &["--describe-snapshot", "state.snap"],
    ] {
        let out = ember().args(flags).output().unwrap();
        assert_eq!(code(&out.status), 64, "{flags:?}");
        assert_contains(&text(&out.stderr), "ember has no snapshots yet");
    }
}

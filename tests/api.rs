//! The REST API over its Unix socket, driven the way an orchestrator drives Firecracker: the
//! configuration sequence and InstanceStart, runtime requests, every error path with its exact
//! status and message, concurrent clients. Tiny test guests keep each boot to milliseconds.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn orchestrator_sequence_configures_boots_and_reports() {
    if !kvm_available() {
        return;
    }
    let vm = Ember::start("api-sequence", &["--id", "vm_1"]);
    let mut c = vm.client();
    let (status, body) = c.request("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["state"], "Not started");
    assert_eq!(json(&body)["id"], "vm_1");
    let (kernel, log_file, metrics_file) = configure_the_tiny_vm(&mut c, &vm);
    done(&mut c, "PUT", "/actions", START);
    done(
        &mut c,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    let flushed = metric_lines(&metrics_file);
    assert_eq!(flushed.len(), 1, "{flushed:?}");
    assert_eq!(flushed[0]["block_data"]["read_count"], 0, "{flushed:?}");
    let (_, body) = c.request("GET", "/", None);
    assert_eq!(json(&body)["state"], "Running");
    let (_, body) = c.request("GET", "/vm/config", None);
    let cfg = json(&body);
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 96);
    assert_eq!(cfg["boot-source"]["kernel_image_path"], json!(kernel));
    assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(1));
    assert_eq!(cfg["drives"][0]["drive_id"], "data");
    assert_eq!(cfg["drives"][0]["is_read_only"], true);
    let logger = json!({"log_path": log_file, "level": "Info", "show_level": true,
                        "show_log_origin": true, "module": "vmm"});
    assert_eq!(cfg["logger"], logger);
    assert_eq!(cfg["metrics"], json!({"metrics_path": metrics_file}));
    let (_, body) = c.request("GET", "/machine-config", None);
    assert_eq!(json(&body)["mem_size_mib"], 96);
    // Pre-boot operations are over.
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    assert_eq!(
        refused(&mut c, "PUT", "/machine-config", mc),
        NOT_AFTER_START
    );
    assert_eq!(refused(&mut c, "PUT", "/actions", START), NOT_AFTER_START);
    // Ctrl-Alt-Del reaches the guest through the i8042; it resets, and ember exits 0.
    wait_for_text(&vm.dir.join("console.log"), "READY", LIMIT);
    done(
        &mut c,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    let dir = vm.dir.clone();
    let (code, _, stderr) = vm.finish();
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert_eq!(code, EXIT_OK, "console:\n{console}\nstderr:\n{stderr}");
    assert_contains(&console, "CTRL-ALT-DEL");
    // The log went to the file, with the origin and level shown, only from the vmm module.
    let log = std::fs::read_to_string(&log_file).unwrap();
    let started = log.lines().find(|l| l.ends_with("] started 2 vCPUs"));
    let started = started.unwrap_or_else(|| panic!("no vCPU start line in:\n{log}"));
    assert!(
        started.contains(" [vm_1:main:INFO:vmm/src/builder.rs:"),
        "{started}"
    );
    assert!(
        !log.contains("ember exiting"),
        "module filter ignored:\n{log}"
    );
    assert!(!stderr.contains("started 2 vCPUs"), "{stderr}");
    // One more metrics line at exit.
    assert_eq!(metric_lines(&metrics_file).len(), 2);
}

/// The orchestrator's configuration of a tiny VM, request by request: a drive PUT twice (the
/// second replaces the first), machine config PUT then PATCHed, serial, logger twice, metrics.
/// Returns the kernel, log file and metrics file.
fn configure_the_tiny_vm(c: &mut ApiClient, vm: &Ember) -> (PathBuf, PathBuf, PathBuf) {
    let disk = vm.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let kernel = guest("ctrl_alt_del");
    let (log_file, metrics_file) = (vm.dir.join("ember.log"), vm.dir.join("metrics.json"));
    // A second PUT of the same drive id replaces the first.
    let elsewhere = vm.dir.join("elsewhere.img");
    std::fs::write(&elsewhere, vec![0u8; 4096]).unwrap();
    let first = json!({"drive_id": "data", "path_on_host": elsewhere, "is_root_device": false});
    done(c, "PUT", "/drives/data", &first.to_string());
    let steps = [
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 64}),
        ),
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}),
        ),
        (
            "PUT",
            "/drives/data",
            json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true}),
        ),
        ("PATCH", "/machine-config", json!({"mem_size_mib": 96})),
        (
            "PUT",
            "/serial",
            json!({"serial_out_path": vm.dir.join("console.log")}),
        ),
        (
            "PUT",
            "/logger",
            json!({"log_path": log_file, "level": "Info", "show_level": true, "module": "vmm"}),
        ),
        ("PUT", "/logger", json!({"show_log_origin": true})),
        ("PUT", "/metrics", json!({"metrics_path": metrics_file})),
    ];
    for (method, path, body) in &steps {
        done(c, method, path, &body.to_string());
    }
    (kernel, log_file, metrics_file)
}

/// PUTs the Linux VM's configuration section by section, as an orchestrator does; returns the
/// sections as `GET /vm/config` must show them.
fn configure_linux(c: &mut ApiClient, vm: &Ember) -> Value {
    let disk = vm.dir.join("scratch.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let boot_args =
        format!("console=ttyS0 reboot=k panic=1 pci=off root=/dev/vdz rootwait {SLOW_HOST_PARAMS}");
    let sections = [
        (
            "/logger",
            "logger",
            json!({"log_path": vm.dir.join("ember.log"), "level": "Info", "show_level": true}),
        ),
        (
            "/metrics",
            "metrics",
            json!({"metrics_path": vm.dir.join("metrics.json")}),
        ),
        (
            "/machine-config",
            "machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                   "track_dirty_pages": false, "huge_pages": "None"}),
        ),
        (
            "/boot-source",
            "boot-source",
            json!({"kernel_image_path": linux_vmlinux(), "boot_args": boot_args}),
        ),
        (
            "/drives/scratch",
            "drives",
            json!({"drive_id": "scratch", "path_on_host": disk, "is_root_device": false,
                   "is_read_only": false}),
        ),
        (
            "/network-interfaces/eth0",
            "network-interfaces",
            json!({"iface_id": "eth0", "host_dev_name": "tap0",
                   "guest_mac": "06:00:0a:00:09:02"}),
        ),
        (
            "/serial",
            "serial",
            json!({"serial_out_path": vm.dir.join("console.log")}),
        ),
    ];
    let mut expected = serde_json::Map::new();
    for (path, key, body) in sections {
        done(c, "PUT", path, &body.to_string());
        // Drives and interfaces are lists, one PUT per item.
        let shown = if path.matches('/').count() == 2 {
            json!([body])
        } else {
            body
        };
        expected.insert(key.into(), shown);
    }
    Value::Object(expected)
}

#[test]
fn orchestrator_sequence_boots_linux_with_a_drive_and_an_interface() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("api-linux", &[("tap0", "10.0.9.1/24")]);
    let vm = Ember::start_with(
        "api-linux",
        ns.command(env!("CARGO_BIN_EXE_ember")),
        &["--id", "linux_1"],
    );
    let mut c = vm.client();
    let (log, metrics, console) = (
        vm.dir.join("ember.log"),
        vm.dir.join("metrics.json"),
        vm.dir.join("console.log"),
    );
    let expected = configure_linux(&mut c, &vm);
    done(&mut c, "PUT", "/actions", START);
    let (_, body) = c.request("GET", "/", None);
    let info = json(&body);
    assert_eq!(
        (info["state"].as_str(), info["id"].as_str()),
        (Some("Running"), Some("linux_1"))
    );
    // GET /vm/config shows every section as it was PUT, and every other key Firecracker
    // returns as null.
    let (_, body) = c.request("GET", "/vm/config", None);
    let cfg = json(&body);
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&cfg[key], value, "{key}");
    }
    for key in ["balloon", "vsock", "mmds-config", "entropy", "cpu-config"] {
        assert_eq!(cfg[key], Value::Null, "{key} in {cfg}");
    }

    let text = wait_for_text(&console, WAITING_FOR_ROOT, Duration::from_secs(600));
    assert_contains(&text, WAITING_FOR_ROOT);
    assert_contains(&text, "smp: Brought up 1 node, 2 CPUs");
    assert_contains(&text, "[vda] 2048 512-byte logical blocks");
    // Firecracker's PATCH updates rate limiters at run time; GET /vm/config shows them.
    done(
        &mut c,
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0"}"#,
    );
    let limiter = json!({"ops": {"size": 10, "refill_time": 100}});
    let patch = json!({"iface_id": "eth0", "rx_rate_limiter": limiter});
    done(
        &mut c,
        "PATCH",
        "/network-interfaces/eth0",
        &patch.to_string(),
    );
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(
        json(&body)["network-interfaces"][0]["rx_rate_limiter"],
        limiter
    );
    let message = refused(
        &mut c,
        "PATCH",
        "/network-interfaces/eth9",
        r#"{"iface_id": "eth9"}"#,
    );
    assert_eq!(message, "There is no network interface 'eth9'.");
    // The guest probed its disk (the partition scan reads it) and both devices are counted.
    done(
        &mut c,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    // Each line holds the changes since the one before (a boot slower than the 60 s flush
    // period has its reads in an earlier line): a reader sums them.
    let lines = metric_lines(&metrics);
    let last = lines.last().unwrap_or_else(|| panic!("no metrics line"));
    let total = |key: &str, counter: &str| -> u64 {
        lines.iter().filter_map(|l| l[key][counter].as_u64()).sum()
    };
    assert!(total("block_scratch", "read_count") > 0, "{lines:?}");
    assert_eq!(
        total("block", "read_bytes"),
        total("block_scratch", "read_bytes")
    );
    assert!(last["net_eth0"]["tx_packets_count"].is_u64(), "{last}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(" [linux_1:main:INFO] started 2 vCPUs"),
        "{log_text}"
    );

    let Ember { child, .. } = &vm;
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.as_ref().unwrap().id() as libc::pid_t, libc::SIGTERM) };
    let (code, _, stderr) = vm.finish();
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
    drop(ns);
}

/// A request that must get a 400 whose fault message contains the last field.
type BadRequest = (&'static str, &'static str, Option<String>, &'static str);

/// Requests the API server refuses for their form: path, method, body.
fn malformed_requests() -> [BadRequest; 8] {
    [
        (
            "GET",
            "/no/such/path",
            None,
            "Invalid request method and/or path: GET /no/such/path.",
        ),
        (
            "DELETE",
            "/machine-config",
            None,
            "Invalid request method and/or path: DELETE /machine-config.",
        ),
        (
            "PUT",
            "/boot-source",
            Some("{\"kernel_image_path\": ".to_owned()),
            "invalid JSON body",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "k", "kernel": 1}"#.to_owned()),
            "unknown field `kernel`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "2", "mem_size_mib": 64}"#.to_owned()),
            "invalid type",
        ),
        (
            "PUT",
            "/drives/a",
            Some(r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#.to_owned()),
            "does not match",
        ),
        (
            "PUT",
            "/drives/",
            Some(r#"{"drive_id": "", "path_on_host": "x", "is_root_device": false}"#.to_owned()),
            "Required path parameter 'drive_id' is missing.",
        ),
        (
            "GET",
            "/",
            Some("{}".to_owned()),
            "GET requests must not have a body.",
        ),
    ]
}

/// Well-formed requests the VM refuses: invalid values, the wrong state, files that cannot be
/// opened, paths ember does not serve, bodies over the limit.
fn refused_requests() -> [BadRequest; 10] {
    [
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#.to_owned()),
            "vcpu_count must be between 1 and 32",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#.to_owned()),
            NOT_BEFORE_START,
        ),
        ("PUT", "/actions", Some(START.to_owned()), "--kernel"),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Paused"}"#.to_owned()),
            "not supported before starting",
        ),
        (
            "PUT",
            "/logger",
            Some(r#"{"level": "Chatty"}"#.to_owned()),
            "unknown log level 'Chatty'",
        ),
        (
            "PUT",
            "/metrics",
            Some(r#"{"metrics_path": "/no/such/dir/metrics"}"#.to_owned()),
            "cannot open the metrics file '/no/such/dir/metrics'",
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0"}"#.to_owned()),
            NOT_BEFORE_START,
        ),
        (
            "PUT",
            "/balloon",
            Some("{}".to_owned()),
            "'/balloon' is a Firecracker API ember does not support yet.",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 2, "uds_path": "/tmp/ember-v.sock"}"#.to_owned()),
            "vsock guest_cid must be 3 or more (0, 1 and 2 are reserved), not 2",
        ),
        (
            "PUT",
            "/boot-source",
            Some("x".repeat(1001)),
            "larger than the limit of 1000",
        ),
    ]
}

#[test]
fn bad_requests_get_400_with_a_fault_message_and_the_server_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let vm = Ember::start("api-errors", &["--http-api-max-payload-size", "1000"]);
    let mut c = vm.client();
    let cases = malformed_requests().into_iter().chain(refused_requests());
    for (method, path, body, want) in cases {
        let mut c2 = vm.client();
        let (status, answer) = c2.request(method, path, body.as_deref());
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert!(fault(&answer).contains(want), "{method} {path}: {answer}");
    }
    // Missing files are refused at PUT time, with Firecracker's messages; the VM can still be
    // configured, and an InstanceStart without a kernel says what is missing.
    let boot = r#"{"kernel_image_path": "/no/such/vmlinux"}"#;
    assert_eq!(
        refused(&mut c, "PUT", "/boot-source", boot),
        "The kernel file cannot be opened: No such file or directory (os error 2)"
    );
    let kernel = guest("spin");
    let boot = json!({"kernel_image_path": kernel, "initrd_path": "/no/such/initrd"});
    assert_eq!(
        refused(&mut c, "PUT", "/boot-source", &boot.to_string()),
        "The initrd file cannot be opened: No such file or directory (os error 2)"
    );
    let drive = r#"{"drive_id": "data", "path_on_host": "/no/such.img", "is_root_device": false}"#;
    let message = refused(&mut c, "PUT", "/drives/data", drive);
    assert!(
        message.starts_with("drive 'data': the image cannot be opened"),
        "{message}"
    );
    // A vhost-user-blk drive: its socket must be there, and it takes no image.
    let drive = r#"{"drive_id": "v", "socket": "/no/such.sock", "is_root_device": false}"#;
    let message = refused(&mut c, "PUT", "/drives/v", drive);
    assert!(
        message.starts_with("drive 'v': cannot use the vhost-user-blk socket '/no/such.sock'"),
        "{message}"
    );
    let drive = r#"{"drive_id": "v", "socket": "/s", "path_on_host": "/x.img",
                    "is_root_device": false}"#;
    let message = refused(&mut c, "PUT", "/drives/v", drive);
    assert!(
        message.contains("drive 'v': path_on_host cannot be used with socket"),
        "{message}"
    );
    let message = refused(&mut c, "PUT", "/actions", START);
    assert!(message.contains("--kernel"), "{message}");
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["drives"], json!([]));
    let mem = r#"{"vcpu_count": 1, "mem_size_mib": 0}"#;
    let message = refused(&mut c, "PUT", "/machine-config", mem);
    assert!(
        message.starts_with("The memory size (MiB) is invalid"),
        "{message}"
    );
    // Chunked bodies, garbage and a client that leaves mid-request.
    let mut g = vm.client();
    g.send_raw(
        b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let (status, body) = g.response();
    assert!(status == 400 && fault(&body).contains("chunked"), "{body}");
    let mut g = vm.client();
    g.send_raw(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert_eq!(g.response().0, 400);
    let mut half = vm.client();
    half.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"kernel_");
    drop(half);
    let (status, body) = c.request("GET", "/", None);
    assert_eq!(
        (status, json(&body)["state"].as_str()),
        (200, Some("Not started"))
    );
}

#[test]
fn config_file_with_api_boots_at_once_and_serves_the_running_vm() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("api-config");
    let cfg = dir.join("vm.json");
    let (log, metrics) = (dir.join("ember.log"), dir.join("metrics.json"));
    let sections = json!({
        "boot-source": {"kernel_image_path": guest("spin")},
        "logger": {"log_path": log, "level": "Info", "show_level": true},
        "metrics": {"metrics_path": metrics},
    });
    std::fs::write(&cfg, sections.to_string()).unwrap();
    let vm = Ember::start("api-config-vm", &["--config-file", cfg.to_str().unwrap()]);
    let mut c = vm.client();
    let (_, body) = c.request("GET", "/", None);
    assert_eq!(json(&body)["state"], "Running");
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["metrics"], sections["metrics"]);
    // The config file's logger and metrics sections are in force.
    done(
        &mut c,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    assert_eq!(metric_lines(&metrics).len(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(":main:INFO] started 1 vCPUs"), "{text}");
    drop(vm);
}

#[test]
fn eight_clients_times_a_thousand_requests_all_answered_and_memory_stays_flat() {
    if !kvm_available() {
        return;
    }
    let vm = Ember::start("api-load", &[]);
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let pid = vm.child.as_ref().unwrap().id();
    let mut warm = vm.client();
    for _ in 0..200 {
        assert_eq!(warm.request("GET", "/", None).0, 200);
    }
    let before = rss(pid);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = vm.client();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    let (status, body) = c.request("GET", "/", None);
                    assert_eq!(status, 200, "request {i}: {body}");
                    assert_eq!(json(&body)["state"], "Not started");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let after = rss(pid);
    assert!(
        after <= before + 512,
        "RSS grew from {before} KiB to {after} KiB over 8000 requests"
    );
}

#[test]
fn pause_stops_a_counting_guest_and_resume_continues_it() {
    if !kvm_available() {
        return;
    }
    let vm = Ember::start("api-pause", &[]);
    let mut c = vm.client();
    let log = vm.dir.join("console.log");
    let boot = json!({"kernel_image_path": guest("counter")}).to_string();
    done(&mut c, "PUT", "/boot-source", &boot);
    let serial = json!({"serial_out_path": log}).to_string();
    done(&mut c, "PUT", "/serial", &serial);
    done(&mut c, "PUT", "/actions", START);
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    // Generous to a starved guest (other tests boot Linux on this host at the same time), but
    // growth stops within the pause window or the test fails.
    let grows_within = |limit: Duration| {
        let (before, deadline) = (size(), std::time::Instant::now() + limit);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if size() > before {
                return true;
            }
        }
        false
    };
    let grows = || grows_within(Duration::from_secs(20));
    assert!(grows(), "the guest does not count");
    let (paused, resumed) = (r#"{"state": "Paused"}"#, r#"{"state": "Resumed"}"#);
    done(&mut c, "PATCH", "/vm", paused);
    let (_, body) = c.request("GET", "/", None);
    assert_eq!(json(&body)["state"], "Paused");
    // Output already buffered may still drain; then nothing more comes.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !grows_within(Duration::from_millis(500)),
        "the guest kept counting while paused"
    );
    // Pausing twice is fine.
    done(&mut c, "PATCH", "/vm", paused);
    done(&mut c, "PATCH", "/vm", resumed);
    let (_, body) = c.request("GET", "/", None);
    assert_eq!(json(&body)["state"], "Running");
    assert!(grows(), "the guest did not resume counting");
    // A paused VM still stops cleanly.
    done(&mut c, "PATCH", "/vm", paused);
    let Ember { child, .. } = &vm;
    let pid = child.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (code, _, stderr) = vm.finish();
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
}

#[test]
fn the_contract_check_catches_every_kind_of_breach() {
    let spec = openapi::spec();
    let info = r#"{"app_name": "ember", "id": "a", "state": "Running", "vmm_version": "1"}"#;
    let mc = r#"{"vcpu_count": 2, "mem_size_mib": 64}"#;
    let fault = r#"{"fault_message": "no"}"#;
    let good = [
        ("GET", "/", None, 200, info),
        ("PUT", "/machine-config", Some(mc), 204, ""),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0}"#),
            400,
            fault,
        ),
        ("GET", "/nope", None, 400, fault),
        ("PUT", "/drives/a", Some("{}"), 400, fault),
    ];
    for (method, path, body, status, answer) in good {
        let result = spec.check(method, path, body, status, answer);
        assert_eq!(result, Ok(()), "{method} {path}");
    }
    let drive = r#"{"drive_id": "a-b", "path_on_host": "x", "is_root_device": false}"#;
    let breaches = [
        ("GET", "/nope", None, 200, info, "undocumented"),
        ("GET", "/", None, 201, info, "is not documented"),
        (
            "GET",
            "/",
            None,
            200,
            r#"{"app_name": "ember"}"#,
            "is a required property",
        ),
        ("GET", "/", None, 400, r#"{"error": "x"}"#, "fault_message"),
        (
            "PUT",
            "/machine-config",
            Some(mc),
            204,
            "{}",
            "must have no body",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 1}"#),
            204,
            "",
            "a body the document forbids",
        ),
        ("PUT", "/machine-config", None, 204, "", "without its body"),
        (
            "PUT",
            "/drives/a-b",
            Some(drive),
            204,
            "",
            "accepted an invalid drive_id",
        ),
        (
            "GET",
            "/version",
            Some("{}"),
            200,
            r#"{"firecracker_version": "1"}"#,
            "does not take",
        ),
    ];
    for (method, path, body, status, answer, why) in breaches {
        let err = spec.check(method, path, body, status, answer).unwrap_err();
        assert!(err.contains(why), "{method} {path} ({why}): {err}");
    }
}

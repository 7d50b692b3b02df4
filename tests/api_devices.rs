//! Devices configured and changed through the REST API, each with a tiny guest that uses them:
//! a drive swapped at run time, the entropy device with a rate limiter, a rate-limited serial
//! console. Each boot takes milliseconds.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn patching_a_drive_swaps_its_file_and_the_guest_sees_the_new_size() {
    if !kvm_available() {
        return;
    }
    let metrics = tempdir("api-patch-drive-metrics").join("metrics.json");
    let vm = Ember::start(
        "api-patch-drive",
        &["--metrics-path", metrics.to_str().unwrap()],
    );
    let mut c = vm.client();
    let (small, big) = (vm.dir.join("small.img"), vm.dir.join("big.img"));
    std::fs::write(&small, vec![1u8; 1 << 20]).unwrap();
    std::fs::write(&big, vec![2u8; 2 << 20]).unwrap();
    let log = vm.dir.join("console.log");
    let steps = [
        (
            "/boot-source",
            json!({"kernel_image_path": guest("virtio_blk"), "boot_args": "resize"}),
        ),
        (
            // The Async engine: a swap waits for the old image's requests in flight.
            "/drives/data",
            // An empty limiter, as Kata Containers sends, limits nothing.
            json!({"drive_id": "data", "path_on_host": small, "is_root_device": false,
                   "io_engine": "Async", "rate_limiter": {}}),
        ),
        ("/serial", json!({"serial_out_path": log})),
    ];
    for (path, body) in steps {
        done(&mut c, "PUT", path, &body.to_string());
    }
    // Not before boot.
    let patch = json!({"drive_id": "data", "path_on_host": big}).to_string();
    assert_eq!(
        refused(&mut c, "PATCH", "/drives/data", &patch),
        NOT_BEFORE_START
    );
    done(&mut c, "PUT", "/actions", START);
    wait_for_text(&log, "CAPACITY", LIMIT);
    let missing = json!({"drive_id": "data", "path_on_host": vm.dir.join("nope.img")}).to_string();
    assert!(refused(&mut c, "PATCH", "/drives/data", &missing).contains("nope.img"));
    let other = json!({"drive_id": "other", "path_on_host": big}).to_string();
    let message = refused(&mut c, "PATCH", "/drives/other", &other);
    assert_eq!(message, "There is no drive 'other'.");
    done(&mut c, "PATCH", "/drives/data", &patch);
    // The swap ran on the main thread under its filter, which every thread still has.
    assert_seccomp_on_every_thread(vm.pid(), &["ember_blk_data", "ember_api", "fc_vcpu 0"]);
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["drives"][0]["path_on_host"], json!(big));
    // Its rate limiter changes at run time too.
    let ops = json!({"size": 1000, "refill_time": 100});
    let limit = json!({"drive_id": "data", "rate_limiter": {"ops": ops}}).to_string();
    done(&mut c, "PATCH", "/drives/data", &limit);
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["drives"][0]["rate_limiter"]["ops"], ops);
    // Swapping back ends the guest, once it has read the new file.
    wait_for_text(&log, "FIRST BYTE", LIMIT);
    let back = json!({"drive_id": "data", "path_on_host": small}).to_string();
    done(&mut c, "PATCH", "/drives/data", &back);
    let (code, _, stderr) = vm.finish();
    let console = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, EXIT_OK, "console:\n{console}\nstderr:\n{stderr}");
    assert_eq!(
        console,
        "CAPACITY 2048\nCAPACITY 4096\nFIRST BYTE 2\nCAPACITY 2048\n"
    );
    // --metrics-path: written at exit, counting the guest's one read of the drive.
    let lines = metric_lines(&metrics);
    let reads: u64 = lines
        .iter()
        .map(|l| l["block_data"]["read_count"].as_u64().unwrap())
        .sum();
    assert_eq!(reads, 1, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(
        last["block"]["read_bytes"],
        last["block_data"]["read_bytes"]
    );
    assert_eq!(last["net"]["tx_packets_count"], 0);
}

#[test]
fn put_entropy_gives_the_guest_random_bytes_and_counts_them() {
    if !kvm_available() {
        return;
    }
    // The tiny guest reads 64 bytes twice (not all zero, different), offers a device-readable
    // buffer (refused), and reads once more.
    let want = "RANDOM OK\nREADABLE REFUSED\n";
    let metrics = tempdir("api-entropy-metrics").join("metrics.json");
    let vm = Ember::start(
        "api-entropy",
        &["--metrics-path", metrics.to_str().unwrap()],
    );
    let mut c = vm.client();
    // One request per 300 ms: the guest's three valid requests take at least 600 ms.
    let limited = json!({"rate_limiter": {"ops": {"size": 1, "refill_time": 300}}});
    done(&mut c, "PUT", "/entropy", &limited.to_string());
    let boot = json!({"kernel_image_path": guest("virtio_rng")});
    done(&mut c, "PUT", "/boot-source", &boot.to_string());
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["entropy"], limited);
    let started = std::time::Instant::now();
    done(&mut c, "PUT", "/actions", START);
    let (status, console, stderr) = vm.finish();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(580), "took {took:?}");
    assert_eq!(status, EXIT_OK, "console:\n{console}\nstderr:\n{stderr}");
    assert_eq!(console, want);
    assert!(stderr.contains("device-readable"), "logged: {stderr}");
    let lines = metric_lines(&metrics);
    let sum = |name: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["entropy"][name].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        [
            sum("entropy_event_count"),
            sum("entropy_bytes"),
            sum("entropy_event_fails")
        ],
        [3, 192, 1],
        "{lines:?}"
    );

    // The same device from a config file's `entropy` section.
    let dir = tempdir("config-entropy");
    let cfg = dir.join("vm.json");
    // Firecracker's clients send an empty limiter for none.
    let config = json!({
        "boot-source": {"kernel_image_path": guest("virtio_rng")},
        "entropy": {"rate_limiter": {}}
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = run(ember().arg("--config-file").arg(&cfg), LIMIT);
    assert_eq!(text(&out.stdout), want, "{}", text(&out.stderr));
    assert_eq!(code(&out.status), EXIT_OK);
}

#[test]
fn a_serial_rate_limiter_bounds_the_console_and_counts_what_it_drops() {
    if !kvm_available() {
        return;
    }
    let vm = Ember::start("api-serial-limit", &[]);
    let mut c = vm.client();
    let log = vm.dir.join("console.log");
    let boot = json!({"kernel_image_path": guest("counter"), "boot_args": "fast"}).to_string();
    done(&mut c, "PUT", "/boot-source", &boot);
    // Firecracker's shape: one token bucket of bytes, here 100 bytes a second.
    let serial = json!({"serial_out_path": log,
                        "rate_limiter": {"size": 100, "refill_time": 1000}});
    done(&mut c, "PUT", "/serial", &serial.to_string());
    let (_, body) = c.request("GET", "/vm/config", None);
    assert_eq!(json(&body)["serial"], serial);
    let started = std::time::Instant::now();
    done(&mut c, "PUT", "/actions", START);
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let deadline = started + Duration::from_secs(20);
    while size() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let Ember { child, .. } = &vm;
    let pid = child.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (code, _, stderr) = vm.finish();
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(code, 128 + libc::SIGTERM, "{stderr}");
    // The counter prints far more than 100 bytes a second; the file keeps the bucket's first
    // 100 bytes and what refilled while ember ran.
    let written = size();
    assert!(
        (100..=100 + 100 * seconds).contains(&written),
        "{written} bytes in {seconds} s"
    );
    assert!(
        stderr.contains("bytes of guest console output were dropped by the serial rate limiter"),
        "{stderr}"
    );
}

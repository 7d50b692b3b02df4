//! ember end to end with tiny ring-0 guests (tests/guests/*.c) booted through the ELF path:
//! console output and input, reset, timeout, SMP start-up, crash reporting, config files and
//! the errors users see for bad input. Each guest runs in milliseconds, even emulated.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn console_output_and_i8042_reset_exit_zero() {
    if !kvm_available() {
        return;
    }
    let out = run(ember().arg("--kernel").arg(guest("hello")), LIMIT);
    assert_eq!(text(&out.stdout), "hello from the tiny guest\n");
    assert_eq!(code(&out.status), EXIT_OK, "stderr: {}", text(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "a clean reboot prints nothing: {}",
        text(&out.stderr)
    );
}

#[test]
fn serial_out_writes_files_and_tees_to_stdout() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("serial-out");
    let log = dir.join("console.log");
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("hello"))
            .arg("--serial-out")
            .arg(&log),
        LIMIT,
    );
    assert_eq!(code(&out.status), EXIT_OK);
    assert!(out.stdout.is_empty(), "output went to the file only");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from the tiny guest\n"
    );

    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("hello"))
            .args(["--serial-out", "-", "--serial-out"])
            .arg(&log),
        LIMIT,
    );
    assert_eq!(code(&out.status), EXIT_OK);
    assert_eq!(text(&out.stdout), "hello from the tiny guest\n");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from the tiny guest\n"
    );
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let mut child = ember()
        .arg("--kernel")
        .arg(guest("echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // More than the UART's 64-byte FIFO, so input must wait for the guest to drain it.
    // Letters a-p only: 'q' ends the guest.
    let input: String = (0..300).map(|i| (b'a' + (i % 16) as u8) as char).collect();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.write_all(b"q").unwrap();
    drop(stdin);
    let out = wait_with_deadline(child, LIMIT);
    let expected = format!("echo ready\n{}\necho done\n", input.to_uppercase());
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(code(&out.status), EXIT_OK);
}

#[test]
fn timeout_stops_a_spinning_guest_on_time() {
    if !kvm_available() {
        return;
    }
    let log = tempdir("timeout").join("console.log");
    let start = Instant::now();
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("spin"))
            .args(["--timeout", "2", "--serial-out", "-", "--serial-out"])
            .arg(&log),
        LIMIT,
    );
    let took = start.elapsed();
    assert_eq!(code(&out.status), EXIT_TIMEOUT);
    assert_eq!(text(&out.stdout), "spinning\n");
    // Everything the guest printed is in the log file when ember has exited.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "spinning\n");
    assert!(
        text(&out.stderr).contains("timeout"),
        "{}",
        text(&out.stderr)
    );
    // Not before the deadline; the upper bound only catches a timeout that did not fire (a
    // loaded CI host may add seconds, so it is loose).
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "the deadline was 2 s, ember took {took:?}"
    );
}

#[test]
fn both_vcpus_start_and_report_their_apic_ids() {
    if !kvm_available() {
        return;
    }
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("smp"))
            .args(["--vcpus", "2"]),
        LIMIT,
    );
    assert_eq!(
        text(&out.stdout),
        "cpu apic=0\ncpu apic=1\nall cpus reported\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(code(&out.status), EXIT_OK);
}

#[test]
fn a_triple_fault_is_a_guest_crash() {
    if !kvm_available() {
        return;
    }
    let out = run(ember().arg("--kernel").arg(guest("triple_fault")), LIMIT);
    assert_eq!(text(&out.stdout), "about to triple fault\n");
    assert_eq!(
        code(&out.status),
        EXIT_CRASH,
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("vCPU 0"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_file_and_no_api_boot_the_same_vm() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("config");
    let cfg = dir.join("vm.json");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": guest("smp"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64, "smt": false},
        "drives": [],
        "logger": null
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = run(
        ember().arg("--no-api").arg("--config-file").arg(&cfg),
        LIMIT,
    );
    assert_eq!(
        text(&out.stdout),
        "cpu apic=0\ncpu apic=1\nall cpus reported\n"
    );
    assert_eq!(code(&out.status), EXIT_OK);
}

#[test]
fn a_guest_above_four_gib_boots() {
    if !kvm_available() {
        return;
    }
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("hello"))
            .args(["--memory", "4608"]),
        LIMIT,
    );
    assert_eq!(code(&out.status), EXIT_OK, "stderr: {}", text(&out.stderr));
}

/// Runs ember with `args` and expects a configuration error whose message has `needle`.
fn config_error(args: &[&std::ffi::OsStr], needle: &str) {
    let out = run(ember().args(args), LIMIT);
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn bad_input_gets_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("bad-input");
    let hello = guest("hello");
    let k = hello.as_os_str();

    config_error(
        &[os("--kernel"), os("/nonexistent/vmlinux")],
        "/nonexistent/vmlinux",
    );

    let noise = dir.join("noise.bin");
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&noise, bytes).unwrap();
    config_error(
        &[os("--kernel"), noise.as_os_str()],
        "neither an ELF vmlinux nor a bzImage",
    );

    config_error(
        &[os("--kernel"), k, os("--vcpus"), os("0")],
        "vcpu_count must be between 1",
    );
    config_error(
        &[os("--kernel"), k, os("--vcpus"), os("33")],
        "vcpu_count must be between 1",
    );
    config_error(
        &[os("--kernel"), k, os("--memory"), os("0")],
        "at least 1 MiB",
    );
    config_error(
        &[os("--kernel"), k, os("--memory"), os("1000000000")],
        "exceeds this host's",
    );
    config_error(
        &[os("--kernel"), k, os("--vcpus"), os("two")],
        "invalid value 'two'",
    );
    config_error(&[os("--frobnicate")], "--frobnicate");
    config_error(&[], "no kernel to boot");

    let cfg = dir.join("unknown.json");
    std::fs::write(
        &cfg,
        r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpus": 2}}"#,
    )
    .unwrap();
    config_error(
        &[os("--config-file"), cfg.as_os_str()],
        "unknown field `cpus`",
    );
    std::fs::write(&cfg, "{not json").unwrap();
    config_error(
        &[os("--config-file"), cfg.as_os_str()],
        "invalid config file",
    );

    let initrd = dir.join("unreadable.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    std::fs::set_permissions(&initrd, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // root ignores file permissions, so a directory stands in for an unreadable file there.
    let unreadable = if is_root() {
        dir.as_os_str()
    } else {
        initrd.as_os_str()
    };
    config_error(
        &[os("--kernel"), k, os("--initrd"), unreadable],
        "cannot read the initrd",
    );
    config_error(
        &[os("--kernel"), k, os("--initrd"), os("/nonexistent/initrd")],
        "/nonexistent/initrd",
    );
    config_error(
        &[
            os("--kernel"),
            k,
            os("--serial-out"),
            os("/nonexistent/dir/log"),
        ],
        "cannot create the serial output file",
    );
}

#[test]
fn no_permission_on_dev_kvm_is_explained() {
    if !kvm_available() {
        return;
    }
    assert!(
        is_root(),
        "this test drops from root to an unprivileged user to lose access to /dev/kvm; run the \
         suite as root (as CI does)"
    );
    // setpriv (util-linux) runs ember as nobody, who may not open the root-only /dev/kvm.
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ember"))
        .arg("--kernel")
        .arg(guest("hello"));
    let out = run(&mut cmd, LIMIT);
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{err}");
    assert!(err.contains("permission denied opening /dev/kvm"), "{err}");
}

#[test]
fn the_exit_port_code_is_ember_s_status() {
    if !kvm_available() {
        return;
    }
    for expected in [0, 1, 42, 255] {
        let out = run(
            ember()
                .arg("run")
                .arg("--kernel")
                .arg(guest("exit_code"))
                .args(["--cmdline", &expected.to_string()]),
            LIMIT,
        );
        assert_eq!(text(&out.stdout), format!("exit code {expected}\n"));
        assert_eq!(code(&out.status), expected, "stderr: {}", text(&out.stderr));
    }
    // A 32-bit write reports its low byte.
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("exit_code"))
            .args(["--cmdline", "7w"]),
        LIMIT,
    );
    assert_eq!(code(&out.status), 7);
}

#[test]
fn boot_timer_logs_the_guest_boot_time() {
    if !kvm_available() {
        return;
    }
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("boot_timer"))
            .arg("--boot-timer"),
        LIMIT,
    );
    assert_eq!(code(&out.status), 0);
    let err = text(&out.stderr);
    assert!(err.contains("Guest-boot-time = "), "{err}");
    // Without the flag there is no device at that address and nothing is logged.
    let out = run(ember().arg("--kernel").arg(guest("boot_timer")), LIMIT);
    assert_eq!(code(&out.status), 0);
    assert!(!text(&out.stderr).contains("Guest-boot-time"));
}

#[test]
fn acpi_power_off_exits_0() {
    if !kvm_available() {
        return;
    }
    let out = run(ember().arg("--kernel").arg(guest("poweroff")), LIMIT);
    assert_eq!(text(&out.stdout), "powering off\n");
    assert_eq!(code(&out.status), EXIT_OK, "stderr: {}", text(&out.stderr));
}

#[test]
fn pvpanic_ends_the_vm_with_the_panic_status() {
    if !kvm_available() {
        return;
    }
    let out = run(ember().arg("--kernel").arg(guest("pvpanic")), LIMIT);
    assert_eq!(text(&out.stdout), "panicking\n");
    assert_eq!(
        code(&out.status),
        EXIT_PANIC,
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

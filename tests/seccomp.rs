//! ember's seccomp filters, with a tiny guest that spins while ember runs every kind of thread:
//! the VMM (main), the API, a vCPU, the serial output, and the I/O threads of a disk, a NIC
//! (on a TAP in a network namespace), vsock, the entropy device and a virtio-fs share (ember's
//! own virtiofsd). Every thread runs under a filter; a forbidden syscall in any of them stops
//! ember with status 148 and a line naming the thread and the syscall (a debug build's
//! $EMBER_SECCOMP_TEST_TRIGGER makes the thread of that kind call getppid, which no filter
//! allows); `--no-seccomp` installs none; `--seccomp-filter` installs the file's. Each run
//! takes milliseconds.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// Every filter's name, with the name of the thread of that kind in [`vm_config`]'s VM.
const KINDS: [(&str, &str); 9] = [
    ("vmm", "main"),
    ("api", "ember_api"),
    ("vcpu", "fc_vcpu 0"),
    ("block", "ember_blk_data"),
    ("net", "ember_net_eth0"),
    ("vsock", "ember_vsock"),
    ("rng", "ember_rng"),
    ("vhost_user", "ember_fs_share"),
    ("serial_out", "ember_serial_out"),
];

/// A VM with one device of each kind, its files in `dir`.
fn vm_config(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let _ = std::fs::remove_file(dir.join("v.sock"));
    let config = json!({
        "boot-source": {"kernel_image_path": guest("spin")},
        "drives": [{"drive_id": "data", "path_on_host": disk, "is_root_device": false}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "vsock": {"guest_cid": 3, "uds_path": dir.join("v.sock")},
        "entropy": {},
        "fs": [{"fs_id": "share", "tag": "share", "shared_dir": share}],
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// ember in namespace `ns` serving its API and running [`vm_config`]'s VM, with `extra` flags
/// and environment.
fn ember_in(ns: &NetNs, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Ember {
    let dir = tempdir(name);
    let config = vm_config(&dir);
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_ember"));
    cmd.envs(env.iter().copied());
    let config = config.to_str().unwrap();
    let flags = [&["--config-file", config, "--timeout", "30"], extra].concat();
    Ember::start_with(name, cmd, &flags)
}

/// The names the kernel shows (15 bytes) of the threads of [`KINDS`].
fn shown_names() -> Vec<String> {
    KINDS
        .iter()
        .map(|(_, thread)| match *thread {
            "main" => "ember".to_owned(),
            t => t.chars().take(15).collect(),
        })
        .collect()
}

/// Runs the VM, checks every thread of ember's once the guest runs, then stops it; returns
/// the threads' names, or why the check failed.
fn threads_of_running_vm(ns: &NetNs, name: &str, extra: &[&str]) -> Result<Vec<String>, String> {
    let vm = ember_in(ns, name, extra, &[]);
    vm.wait_running(&mut vm.client());
    let pid = vm.pid();
    let names = shown_names();
    let expected: Vec<&str> = names.iter().map(String::as_str).collect();
    let checked = std::panic::catch_unwind(|| assert_seccomp_on_every_thread(pid, &expected))
        .map_err(|e| format!("{:?}", e.downcast_ref::<String>()));
    assert_eq!(vm.terminate(), 128 + libc::SIGTERM);
    checked
}

fn setup(name: &str) -> Option<NetNs> {
    if !kvm_available() || !net_available() {
        return None;
    }
    Some(NetNs::new(name, &[("tap0", "10.0.11.1/24")]))
}

#[test]
fn every_thread_of_a_vm_with_every_device_runs_under_its_filter() {
    let Some(ns) = setup("seccomp-on") else {
        return;
    };
    let names = threads_of_running_vm(&ns, "seccomp-on", &[]).unwrap();
    assert_eq!(names.len(), KINDS.len(), "{names:?}");
}

#[test]
fn no_seccomp_runs_every_thread_unfiltered() {
    let Some(ns) = setup("seccomp-off") else {
        return;
    };
    let err = threads_of_running_vm(&ns, "seccomp-off", &["--no-seccomp"]).unwrap_err();
    assert!(err.contains("runs without its seccomp filter"), "{err}");
}

#[test]
fn a_forbidden_syscall_in_any_thread_stops_ember_with_a_line_naming_thread_and_syscall() {
    let Some(ns) = setup("seccomp-trap") else {
        return;
    };
    for (kind, thread) in KINDS {
        let vm = ember_in(
            &ns,
            "seccomp-trap",
            &[],
            &[("EMBER_SECCOMP_TEST_TRIGGER", kind)],
        );
        let (status, _, stderr) = vm.finish();
        if cfg!(debug_assertions) {
            assert_eq!(status, 148, "{kind}: {stderr}");
            assert_line(
                &stderr,
                &format!(
                    "ember: seccomp: thread '{thread}' ({kind} filter) made a forbidden syscall \
                     {} (getppid); ember stops. Run with --no-seccomp to go on without filters.",
                    libc::SYS_getppid
                ),
            );
        } else {
            // A release build has no trigger: the guest spins until the timeout.
            assert_eq!(status, 124, "{kind}: {stderr}");
        }
    }
}

/// A seccompiler JSON description that lets each thread do anything but call getppid.
fn permissive_filters(dir: &Path) -> PathBuf {
    let one = json!({
        "default_action": "allow",
        "filter_action": "trap",
        "filter": [{"syscall": "getppid"}],
    });
    let all: serde_json::Map<String, serde_json::Value> = KINDS
        .iter()
        .map(|(kind, _)| (kind.to_string(), one.clone()))
        .collect();
    let path = dir.join("filters.json");
    std::fs::write(&path, serde_json::Value::Object(all).to_string()).unwrap();
    path
}

#[test]
fn a_seccomp_filter_file_replaces_the_built_in_filters() {
    let Some(ns) = setup("seccomp-file") else {
        return;
    };
    let file = permissive_filters(&tempdir("seccomp-file-filters"));
    let file = file.to_str().unwrap();
    let names = threads_of_running_vm(&ns, "seccomp-file", &["--seccomp-filter", file]).unwrap();
    assert_eq!(names.len(), KINDS.len(), "{names:?}");
    if cfg!(debug_assertions) {
        let trigger = [("EMBER_SECCOMP_TEST_TRIGGER", "block")];
        let vm = ember_in(&ns, "seccomp-file", &["--seccomp-filter", file], &trigger);
        let (status, _, stderr) = vm.finish();
        assert_eq!(status, 148, "{stderr}");
        assert_contains(&stderr, "thread 'ember_blk_data' (block filter)");
    }
    // Firecracker's compiled filters are not read: the error says what to give instead.
    let bincode = tempdir("seccomp-file-filters").join("filters.bpf");
    std::fs::write(&bincode, [1u8, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let out = ember()
        .args(["--no-api", "--kernel", "k", "--seccomp-filter"])
        .arg(&bincode)
        .output()
        .unwrap();
    assert_eq!(code(&out.status), 64);
    assert_contains(
        &text(&out.stderr),
        "is not a seccompiler JSON filter description",
    );
}

//! The installed Debian package, run by `resources/test-deb.sh` after `dpkg -i` (these tests
//! are `#[ignore]`d in the ordinary suite, which has no package installed): the installed
//! `/usr/bin/ember` boots a tiny guest and exits with its code, and the command line of the
//! installed `ember@.service` runs the VM of `/etc/ember/NAME.json` with its API socket under
//! `/run/ember/`, and ends with statuses the unit's restart settings treat as intended; the
//! installed `/usr/bin/ember-jailer` runs the installed (dynamically linked) ember in a jail.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);
const INSTALLED: &str = "/usr/bin/ember";
const UNIT: &str = "/usr/lib/systemd/system/ember@.service";

/// `/usr/bin/ember`, failing clearly when the package is not installed.
fn installed() -> Command {
    assert!(
        Path::new(INSTALLED).exists(),
        "{INSTALLED} is missing: install the package first (resources/test-deb.sh does)"
    );
    Command::new(INSTALLED)
}

#[test]
#[ignore = "needs the installed package: resources/test-deb.sh runs it"]
fn installed_ember_boots_a_tiny_guest_and_exits_with_its_code() {
    let mut cmd = installed();
    if !kvm_available() {
        return;
    }
    let out = run(
        cmd.arg("--kernel")
            .arg(guest("exit_code"))
            .args(["--cmdline", "42"]),
        LIMIT,
    );
    assert_eq!(text(&out.stdout), "exit code 42\n");
    assert_eq!(code(&out.status), 42, "stderr: {}", text(&out.stderr));
}

#[test]
#[ignore = "needs the installed package: resources/test-deb.sh runs it"]
fn installed_jailer_runs_the_installed_ember_in_a_jail_with_its_libraries() {
    let _ = installed();
    if !kvm_available() {
        return;
    }
    let base = tempdir("deb-jailer");
    let root = base.join("ember/deb/root");
    fs::create_dir_all(&root).unwrap();
    fs::copy(guest("exit_code"), root.join("guest.elf")).unwrap();
    let out = run(
        Command::new("/usr/bin/ember-jailer")
            .args(["--id", "deb", "--exec-file", INSTALLED])
            .args(["--uid", "123", "--gid", "123", "--chroot-base-dir"])
            .arg(&base)
            .args(["--", "--kernel", "/guest.elf", "--cmdline", "42"]),
        LIMIT,
    );
    assert_eq!(text(&out.stdout), "exit code 42\n", "{}", text(&out.stderr));
    assert_eq!(code(&out.status), 42);
    fs::remove_dir_all(&base).unwrap();
}

/// One instance of the installed unit: its config file and runtime directory, made as systemd
/// would and removed afterwards, so that `dpkg -P` finds nothing of the test's left behind.
struct Instance {
    name: &'static str,
    unit: String,
}

impl Instance {
    /// Writes `/etc/ember/NAME.json` booting `kernel` with `boot_args`, and makes the
    /// unit's RuntimeDirectory.
    fn new(name: &'static str, kernel: &Path, boot_args: &str) -> Self {
        let unit = fs::read_to_string(UNIT)
            .unwrap_or_else(|e| panic!("{UNIT}: {e}: install the package first"));
        let instance = Self { name, unit };
        fs::create_dir_all("/etc/ember").unwrap();
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": boot_args},
        });
        fs::write(instance.config(), config.to_string()).unwrap();
        fs::create_dir_all(instance.run_dir()).unwrap();
        instance
    }

    fn config(&self) -> PathBuf {
        PathBuf::from(format!("/etc/ember/{}.json", self.name))
    }

    fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/ember/{}", self.name))
    }

    /// The values of every `KEY=` line of the unit, split into words.
    fn setting(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.unit
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .flat_map(|value| value.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// The unit's ExecStart for this instance (it has no quoting, so words split on spaces).
    fn command(&self) -> Command {
        let words: Vec<String> = self
            .setting("ExecStart")
            .iter()
            .map(|word| word.replace("%i", self.name))
            .collect();
        assert_eq!(words.first().map(String::as_str), Some(INSTALLED));
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        cmd
    }

    /// True if the unit's setting `key` lists `status`.
    fn lists(&self, key: &str, status: i32) -> bool {
        self.setting(key).contains(&status.to_string())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.config());
        let _ = fs::remove_dir_all(self.run_dir());
        // Only if empty: the directories may predate the test.
        let _ = fs::remove_dir("/run/ember");
        let _ = fs::remove_dir("/etc/ember");
    }
}

#[test]
#[ignore = "needs the installed package: resources/test-deb.sh runs it"]
fn the_units_command_runs_its_config_file_and_ends_as_its_restart_settings_expect() {
    installed();
    if !kvm_available() {
        return;
    }
    // A power-off: status 0, which Restart=on-failure does not restart.
    let vm = Instance::new("deb-test-poweroff", &guest("poweroff"), "");
    let out = run(&mut vm.command(), LIMIT);
    assert_eq!(code(&out.status), 0, "stderr: {}", text(&out.stderr));
    drop(vm);

    // systemctl stop sends SIGTERM: the status ember exits with must count as a success.
    let vm = Instance::new("deb-test-stop", &guest("spin"), "");
    let sock = vm.run_dir().join("api.sock");
    let served = Cell::new(false);
    let (console, status, stderr) = run_until(&mut vm.command(), LIMIT, |line| {
        served.set(sock.exists());
        line.contains("spinning")
    });
    assert!(console.contains("spinning"), "{console}\n{stderr}");
    assert!(served.get(), "no API socket at {sock:?} while the VM ran");
    let status = code(&status);
    assert!(
        vm.lists("SuccessExitStatus", status),
        "SIGTERM ended ember with {status}, which SuccessExitStatus does not list: the unit \
         would call a stop a failure"
    );
    assert!(!sock.exists(), "ember left its API socket {sock:?} behind");
    drop(vm);

    // A configuration error would fail again: the unit must not restart it.
    let vm = Instance::new("deb-test-broken", Path::new("/nonexistent/vmlinux"), "");
    let out = run(&mut vm.command(), LIMIT);
    let status = code(&out.status);
    assert_eq!(status, EXIT_CONFIG, "stderr: {}", text(&out.stderr));
    assert!(
        vm.lists("RestartPreventExitStatus", status),
        "a configuration error ({status}) would be restarted in a loop"
    );
}

//! What a local user who can reach ember's API socket or name its files, or a guest that
//! writes without end, cannot do to the host: hang ember, spin it, exhaust its descriptors,
//! fill the disk, or leave files behind with the wrong mode.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// An ember child, killed when dropped, also when the test fails: a stray ember would keep
/// running (and keep the descriptors it inherited).
struct Running(Option<Child>);

impl Running {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Waits for ember to exit (failing after a deadline) and returns its output.
    fn finish(mut self) -> std::process::Output {
        wait_with_deadline(self.0.take().unwrap(), LIMIT)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts ember serving the API at `sock` with no VM yet; `nofile` caps its descriptors.
fn api_only(sock: &Path, nofile: Option<u64>) -> Running {
    let mut cmd = ember();
    cmd.arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = nofile {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit is async-signal-safe and only changes the child about to exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Running(Some(cmd.spawn().unwrap()))
}

/// CPU time (user + system) `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn get_root(c: &mut ApiClient) -> u16 {
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    c.response().0
}

#[test]
fn idle_connections_under_a_low_descriptor_limit_neither_spin_ember_nor_lock_clients_out() {
    let dir = tempdir("hardening-emfile");
    let sock = dir.join("api.sock");
    // Fewer descriptors than the idle clients below and the connection cap need.
    let ember = api_only(&sock, Some(16));
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(ember.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(ember.pid()) - before;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < per_second / 5,
        "ember used {used} of {per_second} ticks in a second with idle clients"
    );
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    drop(idle);
}

#[test]
fn the_api_socket_file_is_removed_when_ember_is_stopped() {
    let dir = tempdir("hardening-sock-gone");
    let sock = dir.join("api.sock");
    let ember = api_only(&sock, None);
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    ember.signal(libc::SIGTERM);
    let out = ember.finish();
    assert_eq!(
        code(&out.status),
        128 + libc::SIGTERM,
        "{}",
        text(&out.stderr)
    );
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs ember with `args`; it must refuse at once (a configuration error) with `needles` in its
/// message. A named pipe used to hang ember in `open`, deaf to SIGINT and SIGTERM.
fn refused(args: &[&std::ffi::OsStr], needles: &[&str]) {
    let out = run(ember().args(args), Duration::from_secs(20));
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_CONFIG, "{args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in: {err}"
        );
    }
}

#[test]
fn a_named_pipe_or_device_given_as_a_file_is_refused_at_once_by_name() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("hardening-fifo");
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let (f, hello) = (fifo.as_os_str(), guest("hello"));
    let k = hello.as_os_str();
    let pipe = [
        fifo.to_str().unwrap(),
        "it is a named pipe, not a regular file",
    ];
    refused(&["--kernel".as_ref(), f], &pipe);
    refused(&["--kernel".as_ref(), k, "--initrd".as_ref(), f], &pipe);
    refused(&["--kernel".as_ref(), k, "--serial-out".as_ref(), f], &pipe);
    refused(&["--config-file".as_ref(), f], &pipe);
    refused(
        &["--kernel".as_ref(), k, "--disk".as_ref(), f],
        &[
            pipe[0],
            "it is a named pipe, not a regular file or block device",
        ],
    );
    refused(
        &["--config-file".as_ref(), "/dev/zero".as_ref()],
        &["/dev/zero", "it is a character device, not a regular file"],
    );
}

#[test]
fn a_config_file_over_one_mib_is_refused_by_its_size() {
    let dir = tempdir("hardening-big-config");
    let big = dir.join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((1 << 20) + 1)
        .unwrap();
    refused(
        &["--config-file".as_ref(), big.as_os_str()],
        &[big.to_str().unwrap(), "larger than 1024 KiB"],
    );
}

#[test]
fn patching_a_drive_with_a_named_pipe_is_refused_and_the_vm_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("hardening-patch-fifo");
    let sock = dir.join("api.sock");
    let (image, fifo) = (dir.join("data.img"), dir.join("fifo"));
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    mkfifo(&fifo);
    let ember = api_only(&sock, None);
    let mut c = ApiClient::connect(&sock);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest("spin").display());
    // Read-only, because opening a pipe for reading is what waits for a writer.
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        image.display()
    );
    for (path, body) in [
        ("/boot-source", boot.as_str()),
        ("/drives/data", drive.as_str()),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        assert_eq!(c.request("PUT", path, Some(body)).0, 204, "PUT {path}");
    }
    let patch = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
        fifo.display()
    );
    let (status, body) = c.request("PATCH", "/drives/data", Some(&patch));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("it is a named pipe"), "{body}");
    assert_eq!(get_root(&mut c), 200);
    ember.signal(libc::SIGTERM);
    assert_eq!(code(&ember.finish().status), 128 + libc::SIGTERM);
}

#[test]
fn console_files_stop_at_their_size_limit_with_a_warning() {
    if !kvm_available() {
        return;
    }
    let log = tempdir("hardening-serial-cap").join("console.log");
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("hello"))
            .arg("--serial-out")
            .arg(&log)
            .args(["--serial-out-max-bytes", "10"]),
        LIMIT,
    );
    let err = text(&out.stderr);
    assert_eq!(code(&out.status), EXIT_OK, "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello from");
    assert!(err.contains("reached its limit of 10 bytes"), "{err}");
    assert!(
        err.contains("16 bytes of guest console output were not written"),
        "{err}"
    );
}

#[test]
fn console_and_log_files_are_owner_only_and_never_written_through_a_link() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("hardening-modes");
    let (console, log) = (dir.join("console.log"), dir.join("ember.log"));
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&log);
    let mut cmd = ember();
    cmd.arg("--kernel")
        .arg(guest("hello"))
        .arg("--serial-out")
        .arg(&console)
        .arg("--log-path")
        .arg(&log);
    // SAFETY: umask is async-signal-safe and only changes the child about to exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = run(&mut cmd, LIMIT);
    assert_eq!(code(&out.status), EXIT_OK, "{}", text(&out.stderr));
    for path in [&console, &log] {
        let mode = std::fs::metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
    }
    let precious = dir.join("precious");
    std::fs::write(&precious, b"keep").unwrap();
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let symlink = "it is a symbolic link, which ember does not write through";
    let hello = guest("hello");
    refused(
        &[
            "--kernel".as_ref(),
            hello.as_os_str(),
            "--serial-out".as_ref(),
            link.as_os_str(),
        ],
        &[link.to_str().unwrap(), symlink],
    );
    refused(
        &[
            "--kernel".as_ref(),
            hello.as_os_str(),
            "--log-path".as_ref(),
            link.as_os_str(),
        ],
        &[link.to_str().unwrap(), symlink],
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
}

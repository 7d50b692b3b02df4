//! What a local user who can reach ember's API socket or name its files, or a guest that
//! writes without end, cannot do to the host: hang ember, spin it, exhaust its descriptors,
//! fill the disk, or leave files behind with the wrong mode.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Starts ember serving the API at `sock` with no VM yet; `nofile` caps its descriptors.
fn api_only(sock: &Path, nofile: Option<u64>) -> Child {
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
    cmd.spawn().unwrap()
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
    let mut child = api_only(&sock, Some(16));
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(child.id()) - before;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < per_second / 5,
        "ember used {used} of {per_second} ticks in a second with idle clients"
    );
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_api_socket_file_is_removed_when_ember_is_stopped() {
    let dir = tempdir("hardening-sock-gone");
    let sock = dir.join("api.sock");
    let child = api_only(&sock, None);
    assert_eq!(get_root(&mut ApiClient::connect(&sock)), 200);
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = wait_with_deadline(child, LIMIT);
    assert_eq!(
        code(&out.status),
        128 + libc::SIGTERM,
        "{}",
        text(&out.stderr)
    );
    assert!(!sock.exists(), "{} is left behind", sock.display());
}

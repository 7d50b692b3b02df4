//! The vsock device end to end with a tiny ring-0 driver (tests/guests/virtio_vsock.c): a host
//! process connects through Firecracker's `CONNECT <port>` handshake and exchanges a line with
//! the guest. Linux guests are not booted here.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_host_connect_reaches_a_tiny_guest_and_exchanges_a_line() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir("vsock");
    let uds = dir.join("v.sock");
    let metrics = dir.join("metrics.json");
    let child = ember()
        .arg("--metrics-path")
        .arg(&metrics)
        .arg("--kernel")
        .arg(guest("virtio_vsock"))
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut host = loop {
        match UnixStream::connect(&uds) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < LIMIT => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("ember never listened on {}: {err}", uds.display()),
        }
    };
    host.set_read_timeout(Some(LIMIT)).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8];
    while host.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port: u32 = line.strip_prefix("OK ").unwrap().parse().unwrap();
    assert!(port >= 1 << 30, "{line}");
    // Now, while the guest waits for the ping: after the pong it ends, and its vCPU with it.
    assert_seccomp_on_every_thread(child.id(), &["ember_vsock", "fc_vcpu 0"]);
    host.write_all(b"ping\n").unwrap();
    let mut pong = [0u8; 5];
    host.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong\n");
    let out = wait_with_deadline(child, LIMIT);
    assert_eq!(
        text(&out.stdout),
        "ACCEPTED\nPONG SENT\nRESET OK\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(code(&out.status), EXIT_OK, "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |name: &str| -> u64 {
        lines
            .iter()
            .map(|l| l["vsock"][name].as_u64().unwrap())
            .sum()
    };
    let got = [
        "conns_added",
        "rx_bytes_count",
        "tx_bytes_count",
        "rx_packets_count",
    ]
    .map(sum);
    // REQUEST, "ping\n" and the reset went to the guest.
    assert_eq!(got, [1, 5, 5, 3], "{lines:?}");
    // As in Firecracker, the socket file stays; a second VM on the same path is refused.
    let out = run(
        ember()
            .arg("--kernel")
            .arg(guest("virtio_vsock"))
            .arg("--vsock")
            .arg(format!("3,{}", uds.display())),
        LIMIT,
    );
    assert_ne!(code(&out.status), EXIT_OK);
    let err = text(&out.stderr);
    assert!(err.contains("cannot listen on the vsock socket"), "{err}");
}

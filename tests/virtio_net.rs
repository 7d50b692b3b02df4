//! virtio-net over a TAP: every test makes its own network namespace with its TAPs (removed
//! when the test ends, even on failure) and runs ember inside it. A tiny guest with a minimal
//! driver checks exact frames both ways and hostile chains; one Linux boot checks what users
//! rely on (ping both ways with fragmentation, 1 MiB TCP each way, two NICs, the metadata
//! service on one of them). A transmit rate limiter is timed against the same frames
//! unlimited.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const TINY_LIMIT: Duration = Duration::from_secs(60);
const LINUX_LIMIT: Duration = Duration::from_secs(900);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

fn tap_mac(ns: &NetNs, tap: &str) -> String {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{tap}/address"))
        .output()
        .unwrap();
    text(&out.stdout).trim().to_owned()
}

/// Runs the tiny virtio-net guest in `mode` against a TAP whose host side answers its UDP
/// datagram; returns (console, exit code, stderr, datagrams the host received, with the host's
/// neighbour entry for the guest after the first).
fn tiny_exchange(
    tag: &str,
    mode: &str,
    expected: usize,
) -> (NetNs, String, i32, String, Vec<String>) {
    let ns = NetNs::new(tag, &[("tap0", "10.0.2.1/24")]);
    let host = ns.spawn(move || {
        let sock = UdpSocket::bind((HOST, 7777)).unwrap();
        sock.set_read_timeout(Some(TINY_LIMIT)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < expected + 1 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            assert_eq!(from.to_string(), "10.0.2.2:7778");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.len() == 1 {
                // What the host learned from the guest's ARP request, while the TAP is up.
                let neigh = std::process::Command::new("ip")
                    .args(["neigh", "show", "10.0.2.2"])
                    .output()
                    .unwrap();
                got.push(text(&neigh.stdout));
                sock.send_to(b"hello-guest", from).unwrap();
            }
        }
        got
    });
    let mut ember = ns.command(env!("CARGO_BIN_EXE_ember"));
    if mode == "config-file" {
        // The same VM from Firecracker's config-file fields.
        let path = tempdir(tag).join("vm.json");
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": guest("virtio_net"), "boot_args": "net"},
            "network-interfaces": [{
                "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:00:02:02"
            }]
        });
        std::fs::write(&path, config.to_string()).unwrap();
        ember.arg("--no-api").arg("--config-file").arg(path);
    } else {
        ember.arg("--kernel").arg(guest("virtio_net")).args([
            "--cmdline",
            mode,
            "--net",
            "tap=tap0,mac=06:00:0a:00:02:02",
        ]);
    }
    let out = run(&mut ember, TINY_LIMIT);
    let received = host.join().unwrap();
    (
        ns,
        text(&out.stdout),
        code(&out.status),
        text(&out.stderr),
        received,
    )
}

/// Once configured with `--net`, once with the config file's `network-interfaces`.
#[test]
fn a_tiny_driver_exchanges_exact_frames_with_the_host() {
    if !kvm_available() || !net_available() {
        return;
    }
    for (tag, mode) in [("tiny", "net"), ("config", "config-file")] {
        let (ns, log, status, stderr, received) = tiny_exchange(tag, mode, 1);
        assert_eq!(
            status, EXIT_OK,
            "{mode}: console:\n{log}\nstderr:\n{stderr}"
        );
        // The host kernel read the ARP request and answered with the TAP's address.
        assert_contains(&log, &format!("ARP REPLY {}", tap_mac(&ns, "tap0")));
        assert_eq!(received[0], "ember-tiny-net");
        assert_contains(&log, "UDP hello-guest");
        // The host learned the guest's configured MAC from its frame.
        assert!(
            received[1].contains("lladdr 06:00:0a:00:02:02"),
            "{mode}: {}",
            received[1]
        );
    }
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted_and_the_nic_keeps_working() {
    if !kvm_available() || !net_available() {
        return;
    }
    let (_ns, log, status, stderr, received) = tiny_exchange("hostile", "hostile", 2);
    assert_eq!(status, EXIT_OK, "console:\n{log}\nstderr:\n{stderr}");
    assert_contains(&log, "HOSTILE SENT 7");
    assert_contains(&log, "STILL SENDING");
    assert_eq!(
        (received[0].as_str(), received[2].as_str()),
        ("ember-tiny-net", "still-alive")
    );
    assert!(
        !received.iter().any(|d| d == "dropped"),
        "a malformed frame reached the host"
    );
    let drops = stderr.matches("transmitted frame dropped").count();
    assert_eq!(drops, 7, "stderr:\n{stderr}");
    for why in [
        "device-writable",
        "outside guest memory",
        "shorter than an Ethernet header",
        "exceeds the 65550-byte limit",
        "checksum offload was not negotiated",
        "segmentation type 0x1 was not negotiated",
    ] {
        assert!(stderr.contains(why), "no drop for '{why}' in:\n{stderr}");
    }
}

#[test]
fn missing_busy_and_misaddressed_taps_are_clear_errors() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("errors", &[("tap0", "10.0.2.1/24")]);
    let ember_with = |net: &str| {
        let out = run(
            ns.command(env!("CARGO_BIN_EXE_ember"))
                .arg("--kernel")
                .arg(guest("spin"))
                .args(["--net", net, "--timeout", "30"]),
            TINY_LIMIT,
        );
        (code(&out.status), text(&out.stderr))
    };
    let (status, err) = ember_with("tap=tap9");
    assert_eq!(status, EXIT_CONFIG);
    assert!(
        err.contains("network interface 'eth0': there is no network interface 'tap9'"),
        "{err}"
    );
    let (status, err) = ember_with("tap=lo");
    assert_eq!(status, EXIT_CONFIG);
    assert!(err.contains("'lo' is not a TAP device"), "{err}");
    let (status, err) = ember_with("tap=tap0,mac=06:00:0a:00:02");
    assert_eq!(status, EXIT_CONFIG);
    assert!(
        err.contains("guest_mac '06:00:0a:00:02' is not a MAC address"),
        "{err}"
    );

    // A first ember holds the TAP; a second one is refused while the first runs.
    let first = ns
        .command(env!("CARGO_BIN_EXE_ember"))
        .arg("--kernel")
        .arg(guest("spin"))
        .args(["--net", "tap=tap0", "--timeout", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let holder = Child(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    let busy = loop {
        let (status, err) = ember_with("tap=tap0");
        if err.contains("in use by another process") || Instant::now() > deadline {
            break (status, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(busy.0, EXIT_CONFIG);
    assert!(
        busy.1.contains("TAP 'tap0' is in use by another process"),
        "{}",
        busy.1
    );
    drop(holder);
}

/// Runs the tiny guest's "stream" (64 KiB in 64 frames, header included) through an interface
/// with `tx_rate_limiter`; returns how long ember ran.
fn stream_with(tag: &str, tx_rate_limiter: serde_json::Value) -> Duration {
    let ns = NetNs::new(tag, &[("tap0", "10.0.2.1/24")]);
    let path = tempdir(tag).join("vm.json");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": guest("virtio_net"), "boot_args": "stream"},
        "network-interfaces": [{
            "iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": tx_rate_limiter
        }]
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let started = Instant::now();
    let out = run(
        ns.command(env!("CARGO_BIN_EXE_ember"))
            .arg("--no-api")
            .arg("--config-file")
            .arg(path),
        TINY_LIMIT,
    );
    let took = started.elapsed();
    assert_eq!(
        text(&out.stdout),
        "STREAMED 65536\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(code(&out.status), EXIT_OK);
    took
}

#[test]
fn a_rate_limited_nic_takes_as_long_as_its_limit_says_and_an_unlimited_one_does_not() {
    if !kvm_available() || !net_available() {
        return;
    }
    // 8 KiB per 100 ms (80 KiB/s), starting full: the other 56 KiB take 700 ms at least.
    let bandwidth = serde_json::json!({"bandwidth": {"size": 8192, "refill_time": 100}});
    let limited = stream_with("tx-limited", bandwidth);
    assert!(limited >= Duration::from_millis(700), "{limited:?}");
    // The same frames unlimited ({} as Kata Containers sends it) do not wait for a limiter.
    let unlimited = stream_with("tx-unlimited", serde_json::json!({}));
    assert!(unlimited < Duration::from_millis(700), "{unlimited:?}");
}

/// Kills and reaps a child when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256(data: &[u8]) -> String {
    let path = tempdir("net-sha").join("data");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// One Linux boot with two NICs, from a config file, with the API served. The guest's init
/// configures eth0 and eth1 from `ip=` words; its script pings the host (56, 1400 and 60000
/// bytes), sends 1 MiB over TCP, receives 1 MiB and prints checksums, while the host pings it
/// on both addresses. Then a guest program (on a read-only disk) reads the metadata service,
/// V2, on eth0: a token, a key with it (from `--metadata`), a 401 without one, and the key
/// again once the host has changed it with `PATCH /mmds`.
#[test]
fn linux_pings_moves_a_mebibyte_each_way_on_two_nics_and_reads_mmds() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("linux", &[("tap0", "10.0.2.1/24"), ("tap1", "10.0.3.1/24")]);
    // Guest to host: the host keeps what arrives on port 5000.
    let inbound = ns.spawn(|| {
        let listener = TcpListener::bind((HOST, 5000)).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(LINUX_LIMIT)).unwrap();
        let start = Instant::now();
        let mut data = vec![0u8; 1 << 20];
        conn.read_exact(&mut data).unwrap();
        // A figure for the record; on a host whose KVM emulates the guest kernel it measures
        // that emulator.
        eprintln!(
            "guest -> host 1 MiB over TCP: {:.2} s (emulated guest kernel on PVM hosts)",
            start.elapsed().as_secs_f64()
        );
        data
    });
    let outbound: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent_sum = sha256(&outbound);
    let mut host_side = Vec::new();
    let mut patched = None;
    let dir = tempdir("linux-net");
    let config = linux_net_config(&dir);
    let (cfg, metadata, sock, metrics) = (
        dir.join("vm.json"),
        dir.join("metadata.json"),
        dir.join("api.sock"),
        dir.join("metrics.json"),
    );
    std::fs::write(&cfg, config.to_string()).unwrap();
    let ami = serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-12345678"}}});
    std::fs::write(&metadata, ami.to_string()).unwrap();
    let (log, status, stderr) = run_watching(
        ns.command(env!("CARGO_BIN_EXE_ember"))
            .arg("--config-file")
            .arg(&cfg)
            .arg("--metadata")
            .arg(&metadata)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--metrics-path")
            .arg(&metrics),
        LINUX_LIMIT,
        |line, pid| {
            if line.starts_with("MMDS GOT:") {
                // The guest reads the store live: it waits for this change.
                let patch = r#"{"latest": {"meta-data": {"ami-id": "ami-87654321"}}}"#;
                let mut api = ApiClient::connect(&sock);
                patched = Some(api.request("PATCH", "/mmds", Some(patch)));
            }
            if line.trim() != "NET-UP" {
                return;
            }
            // Every thread, the two NICs' among them, runs under its seccomp filter.
            let nics = ["ember_net_eth0", "ember_net_eth1", "ember_api", "fc_vcpu 0"];
            assert_seccomp_on_every_thread(pid as u32, &nics);
            let data = outbound.clone();
            host_side.push(ns.spawn(move || send_to_the_guest(&data)));
            for (size, addr) in [
                ("1400", "10.0.2.2"),
                ("60000", "10.0.2.2"),
                ("56", "10.0.3.2"),
            ] {
                let mut ping = ns.command("ping");
                ping.args(["-c", "1", "-W", "60", "-s", size, addr]);
                host_side.push(std::thread::spawn(move || {
                    let out = ping.output().unwrap();
                    format!("host ping {size} {addr} {}", out.status.success())
                }));
            }
        },
    );
    let results: Vec<String> = host_side.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(code(&status), EXIT_OK, "console:\n{log}\nstderr:\n{stderr}");
    assert_eq!(patched, Some((204, String::new())));
    // The one GET without a token is counted, as Firecracker counts it.
    let no_token: u64 = common::api::metric_lines(&metrics)
        .iter()
        .map(|l| l["mmds"]["rx_no_token"].as_u64().unwrap())
        .sum();
    assert_eq!(no_token, 1);
    assert_linux_net_verdicts(&log);
    assert_eq!(
        results,
        [
            "sent",
            "host ping 1400 10.0.2.2 true",
            "host ping 60000 10.0.2.2 true",
            "host ping 56 10.0.3.2 true"
        ]
    );
    let received = inbound.join().unwrap();
    assert_contains(&log, &format!("OUT {} /tmp/out", sha256(&received)));
    assert_contains(&log, &format!("IN {sent_sum} /tmp/in"));
}

/// Connects to the guest's listener on 10.0.2.2:5001 (retrying while it starts) and sends
/// `data`.
fn send_to_the_guest(data: &[u8]) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut conn = loop {
        match TcpStream::connect((Ipv4Addr::new(10, 0, 2, 2), 5001)) {
            Ok(conn) => break conn,
            Err(err) if Instant::now() > deadline => panic!("cannot reach the guest: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    conn.write_all(data).unwrap();
    "sent".to_owned()
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: libc::pid_t) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_guest_flooding_empty_and_indirect_receive_chains_cannot_grow_embers_memory() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("rxflood", &[("tap0", "10.0.2.1/24")]);
    let dir = tempdir("rxflood");
    let sock = dir.join("api.sock");
    let mut samples = Vec::new();
    let mut answered = None;
    let (log, status, stderr) = run_watching(
        ns.command(env!("CARGO_BIN_EXE_ember"))
            .arg("--kernel")
            .arg(guest("virtio_net"))
            .args(["--cmdline", "flood", "--net", "tap=tap0", "--api-sock"])
            .arg(&sock),
        TINY_LIMIT,
        |line, pid| {
            if line.trim() != "FLOODING" {
                return;
            }
            // The guest republishes a ring of hostile chains and kicks, as fast as it can,
            // for the whole time; the TAP stays idle so nothing is ever delivered.
            for _ in 0..=8 {
                samples.push(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut api = ApiClient::connect(&sock);
            answered = Some(api.request("GET", "/", None));
            // SAFETY: `pid` is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        },
    );
    assert_eq!(
        code(&status),
        128 + libc::SIGTERM,
        "console:\n{log}\nstderr:\n{stderr}"
    );
    let (status, body) = answered.expect("the guest never started flooding");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"Running\""), "{body}");
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let peak = samples.iter().max().copied().unwrap_or(0);
    eprintln!("RSS under a receive-chain flood over 4 s: {samples:?} KiB");
    assert!(
        peak <= first + 4096,
        "RSS grew from {first} KiB to {peak} KiB (last {last}) under the flood"
    );
}

/// User plus system CPU ticks of `pid`'s thread named `name`.
fn thread_ticks(pid: libc::pid_t, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        if comm.ends_with(&format!("({name}")) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
            return Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?);
        }
    }
    None
}

#[test]
fn an_idle_nic_uses_no_cpu_even_with_traffic_it_cannot_take() {
    if !kvm_available() || !net_available() {
        return;
    }
    let ns = NetNs::new("idle", &[("tap0", "10.0.2.1/24")]);
    // Frames keep arriving for a guest whose receive buffers fill up and are never returned:
    // the TAP stays readable, and the device must stop watching it rather than spin.
    let flood = ns
        .command("ping")
        .args(["-i", "0.01", "-c", "500", "-b", "10.0.2.255"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _flood = Child(flood);
    let mut before = None;
    let mut figures = None;
    let (log, status, stderr) = run_watching(
        ns.command(env!("CARGO_BIN_EXE_ember"))
            .arg("--kernel")
            .arg(guest("virtio_net"))
            .args(["--cmdline", "idle", "--net", "tap=tap0", "--timeout", "4"]),
        TINY_LIMIT,
        |line, pid| {
            if line.trim() == "IDLE" {
                std::thread::sleep(Duration::from_millis(500));
                before = thread_ticks(pid, "ember_net_eth0");
                std::thread::sleep(Duration::from_secs(2));
                figures = before.zip(thread_ticks(pid, "ember_net_eth0"));
            }
        },
    );
    assert_eq!(
        code(&status),
        EXIT_TIMEOUT,
        "console:\n{log}\nstderr:\n{stderr}"
    );
    let (before, after) = figures.expect("the guest never went idle, or the net thread is missing");
    // A spinning thread would use about 200 ticks in those 2 s.
    assert!(
        after - before <= 2,
        "the idle NIC's thread used {} ticks in 2 s",
        after - before
    );
    eprintln!(
        "idle NIC thread: {} CPU ticks (10 ms each) in 2 s",
        after - before
    );
}

/// The two-NIC boot's configuration: the guest script (pings, 1 MiB each way, then the MMDS
/// client from a read-only disk made in `dir`), two interfaces, MMDS V2 on eth0.
fn linux_net_config(dir: &std::path::Path) -> serde_json::Value {
    let (client, client_len) = program_disk(dir, "mmds_client");
    let script = format!(
        "nc -l -p 5001 > /tmp/in & echo NET-UP; \
        p() {{ for i in 1 2 3; do ping $* >/dev/null && return; done; false; }}; \
        p -c 2 -W 20 10.0.2.1 && echo CHECK ping-ok; \
        p -c 1 -W 30 -s 1400 10.0.2.1 && echo CHECK ping1400-ok; \
        p -c 1 -W 60 -s 60000 10.0.2.1 && echo CHECK ping60000-ok; \
        p -c 1 -W 20 10.0.3.1 && echo CHECK ping-eth1-ok; \
        head -c 1048576 /bin/busybox > /tmp/out; echo OUT $(sha256sum /tmp/out); \
        nc 10.0.2.1 5000 < /tmp/out; wait; echo IN $(sha256sum /tmp/in); \
        head -c {client_len} /dev/vda > /tmp/mmds && chmod +x /tmp/mmds && \
        ip route add 169.254.169.254 dev eth0 && /tmp/mmds"
    );
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet \
        ip=10.0.2.2::10.0.2.1:255.255.255.0::eth0:off ip=10.0.3.2:::255.255.255.0::eth1:off \
        -- \"{script}\""
    );
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": linux_vmlinux(), "initrd_path": initramfs(),
                        "boot_args": cmdline},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{"drive_id": "tools", "path_on_host": client, "is_root_device": false,
                    "is_read_only": true}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"},
                               {"iface_id": "eth1", "host_dev_name": "tap1"}],
        "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
    });
    config
}

/// The guest's verdict lines of the two-NIC boot.
fn assert_linux_net_verdicts(log: &str) {
    // Verdicts are whole lines: the init echoes the script, which holds every CHECK word. A
    // guest ping is tried up to three times (p) because busybox ping has crashed on the
    // emulating test hosts; a lost reply on ember's side fails all three.
    for line in [
        "EMBER-NET: eth0 10.0.2.2",
        "EMBER-NET: eth1 10.0.3.2",
        "CHECK ping-ok",
        "CHECK ping1400-ok",
        "CHECK ping60000-ok",
        "CHECK ping-eth1-ok",
        "MMDS GOT: HTTP/1.1 200 OK ami-12345678",
        "MMDS NO TOKEN: HTTP/1.1 401 Unauthorized",
        "MMDS CHANGED: HTTP/1.1 200 OK ami-87654321",
    ] {
        assert_line(log, line);
    }
    let token = log.lines().find(|l| l.starts_with("MMDS TOKEN: "));
    assert!(
        token.is_some_and(|l| l.starts_with("MMDS TOKEN: HTTP/1.1 200 OK, ")),
        "{token:?}"
    );
}

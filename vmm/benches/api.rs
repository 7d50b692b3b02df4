//! The REST API's own costs: process start to a ready socket (the first `GET /machine-config`
//! answered), in wall time, in ember's CPU time and as ember's RSS at that moment, and the
//! round trip of `GET /` over a keep-alive connection (p50, p99 over 1000 requests). No guest
//! runs; nothing is emulated.
//!
//! The seccomp filters' cost: start to API ready and `InstanceStart` (the request's round trip:
//! ember's build steps up to running vCPUs, with $EMBER_TEST_KERNEL as the kernel; its boot
//! is not waited for) are measured with the filters (the default), with a filter file of one
//! rule per thread kind (what any filter costs) and with `--no-seccomp`, taking turns, in the
//! same run, and compared round by round (the median change, with its 95% confidence
//! interval).
//!
//! Run: `cargo bench -p ember --bench api`. With `EMBER_BENCH_BASELINE=/path/to/other/ember`,
//! the start-up figures are measured for both binaries in the same run, alternating, and shown
//! side by side.
#![allow(clippy::unwrap_used)] // benchmark code

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::paired_change;

mod common;

const RUNS: usize = 20;
/// Rounds of starts of each seccomp variant: the differences are a few percent of a few
/// milliseconds, and starts take turns with other processes on the machine.
const SECCOMP_RUNS: usize = 100;
const REQUESTS: usize = 1000;

/// Sends one GET and reads its response; returns the status.
fn get(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, path: &str) -> u16 {
    request(stream, reader, "GET", path, "")
}

/// Sends one request and reads its response; returns the status.
fn request(
    stream: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
    method: &str,
    path: &str,
    body: &str,
) -> u16 {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (mut status, mut len) = (0, 0);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if status == 0 {
            status = line.split(' ').nth(1).unwrap().parse().unwrap();
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    status
}

/// CPU time the process has used so far (scheduler statistics, nanoseconds).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("schedstat")).unwrap();
        total += stat
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// ember's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One start of `bin` to a ready API: (wall time, ember's CPU time, RSS in KiB), and the open
/// connection with the process, for more requests.
struct Started {
    wall: Duration,
    cpu: Duration,
    rss_kib: u64,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    child: std::process::Child,
}

fn start(bin: &str, sock: &std::path::Path, extra: &[&str]) -> Started {
    let _ = std::fs::remove_file(sock);
    let begin = Instant::now();
    let child = Command::new(bin)
        .arg("--api-sock")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = loop {
        if let Ok(s) = UnixStream::connect(sock) {
            break s;
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(get(&mut stream, &mut reader, "/machine-config"), 200);
    Started {
        wall: begin.elapsed(),
        cpu: Duration::from_nanos(cpu_ns(child.id())),
        rss_kib: rss_kib(child.id()),
        stream,
        reader,
        child,
    }
}

impl Started {
    /// Configures a VM with `kernel` and times `InstanceStart`'s round trip.
    fn instance_start(&mut self, kernel: &str) -> Duration {
        let boot = format!(r#"{{"kernel_image_path": "{kernel}"}}"#);
        let (stream, reader) = (&mut self.stream, &mut self.reader);
        assert_eq!(request(stream, reader, "PUT", "/boot-source", &boot), 204);
        let start = r#"{"action_type": "InstanceStart"}"#;
        let t = Instant::now();
        assert_eq!(request(stream, reader, "PUT", "/actions", start), 204);
        t.elapsed()
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Start-up figures of one binary over several runs.
#[derive(Default)]
struct Figures {
    walls: Vec<Duration>,
    cpus: Vec<Duration>,
    rss: Vec<u64>,
}

impl Figures {
    fn add(&mut self, s: &Started) {
        self.walls.push(s.wall);
        self.cpus.push(s.cpu);
        self.rss.push(s.rss_kib);
    }

    /// (wall p50 ms, CPU p50 ms, RSS p50 KiB)
    fn medians(&mut self) -> (f64, f64, u64) {
        self.walls.sort();
        self.cpus.sort();
        self.rss.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        (
            ms(percentile(&self.walls, 0.5)),
            ms(percentile(&self.cpus, 0.5)),
            self.rss[self.rss.len() / 2],
        )
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("ember-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let this = env!("CARGO_BIN_EXE_ember");
    let baseline = std::env::var("EMBER_BENCH_BASELINE").ok();
    let (mut new, mut old) = (Figures::default(), Figures::default());
    let mut latencies = Vec::new();
    for run in 0..RUNS {
        if let Some(bin) = &baseline {
            let s = start(bin, &sock, &[]);
            old.add(&s);
            s.stop();
        }
        let mut s = start(this, &sock, &[]);
        new.add(&s);
        if run == 0 {
            for _ in 0..REQUESTS {
                let t = Instant::now();
                assert_eq!(get(&mut s.stream, &mut s.reader, "/"), 200);
                latencies.push(t.elapsed());
            }
        }
        s.stop();
    }
    latencies.sort();
    let (wall, cpu, rss) = new.medians();
    let max_wall = new.walls.last().unwrap().as_secs_f64() * 1e3;
    println!(
        "start to API ready ({RUNS} runs): wall p50 {wall:.2} ms, max {max_wall:.2} ms; ember CPU p50 {cpu:.2} ms; RSS p50 {rss} KiB (target: under 10 ms wall)"
    );
    if let Some(bin) = &baseline {
        let (owall, ocpu, orss) = old.medians();
        let change = |o: f64, n: f64| (n - o) / o * 100.0;
        println!(
            "baseline {bin}: wall p50 {owall:.2} ms / this {wall:.2} ms ({:+.1}%); CPU p50 {ocpu:.2} / {cpu:.2} ms ({:+.1}%); RSS p50 {orss} / {rss} KiB ({:+.1}%)",
            change(owall, wall),
            change(ocpu, cpu),
            change(orss as f64, rss as f64)
        );
    }
    println!(
        "GET / round trip ({REQUESTS} requests, one keep-alive connection): p50 {:.1} us, p99 {:.1} us, max {:.1} us (target: p99 under 1 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.last().unwrap().as_secs_f64() * 1e6,
    );
    seccomp_cost(this, &sock);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Start to API ready and InstanceStart with ember's seccomp filters, with a filter file of one
/// rule per thread kind (what installing any filter costs: the kernel takes in a program per
/// thread and runs every syscall through seccomp) and with `--no-seccomp`: in turns, each
/// round starting with the next variant, and compared round by round.
fn seccomp_cost(this: &str, sock: &std::path::Path) {
    let kernel = std::env::var("EMBER_TEST_KERNEL").expect(
        "EMBER_TEST_KERNEL is not set: point it at a Linux vmlinux for the InstanceStart figures",
    );
    let one_rule = sock.with_file_name("one-rule-filters.json");
    let filters: serde_json::Map<String, serde_json::Value> = vmm::seccomp::ThreadKind::ALL
        .iter()
        .map(|kind| {
            let filter = serde_json::json!({
                "default_action": "allow", "filter_action": "trap",
                "filter": [{"syscall": "ptrace"}]
            });
            (kind.name().to_owned(), filter)
        })
        .collect();
    std::fs::write(&one_rule, serde_json::Value::Object(filters).to_string()).unwrap();
    let one_rule = one_rule.to_str().unwrap();
    let variants: [(&str, &[&str]); 3] = [
        ("ember's filters", &[]),
        ("one-rule filters", &["--seccomp-filter", one_rule]),
        ("--no-seccomp", &["--no-seccomp"]),
    ];
    // Per variant, per round: (start to API ready wall, its CPU, InstanceStart) in ms.
    let mut rounds = vec![Vec::new(); variants.len()];
    for round in 0..SECCOMP_RUNS {
        for turn in 0..variants.len() {
            let variant = (round + turn) % variants.len();
            let mut s = start(this, sock, variants[variant].1);
            let instance_start = s.instance_start(&kernel);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            rounds[variant].push([ms(s.wall), ms(s.cpu), ms(instance_start)]);
            s.stop();
        }
    }
    let figure =
        |variant: usize, i: usize| -> Vec<f64> { rounds[variant].iter().map(|r| r[i]).collect() };
    let median = |v: Vec<f64>| common::stats(&v).median;
    let off = 2;
    for (variant, (name, _)) in variants.iter().enumerate().take(2) {
        let [wall, cpu, instance_start] =
            [0, 1, 2].map(|i| paired_change(&figure(variant, i), &figure(off, i)));
        println!(
            "{name} / --no-seccomp ({SECCOMP_RUNS} rounds, p50 and the rounds' median change): start to API ready wall {:.2} / {:.2} ms, {wall}; CPU {:.2} / {:.2} ms, {cpu}; InstanceStart round trip {:.2} / {:.2} ms, {instance_start} (target: under 3%)",
            median(figure(variant, 0)),
            median(figure(off, 0)),
            median(figure(variant, 1)),
            median(figure(off, 1)),
            median(figure(variant, 2)),
            median(figure(off, 2)),
        );
    }
}

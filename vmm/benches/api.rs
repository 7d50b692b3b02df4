//! The REST API's own costs: process start to a ready socket (the first `GET /machine-config`
//! answered), in wall time and in ember's CPU time, and the round trip of `GET /` over a
//! keep-alive connection (p50, p99 over 1000 requests). No guest runs; nothing is emulated.
//!
//! Run: `cargo bench -p ember --bench api`
#![allow(clippy::unwrap_used)] // benchmark code

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const REQUESTS: usize = 1000;

/// Sends one request and reads its response; returns the status.
fn get(stream: &mut UnixStream, reader: &mut BufReader<UnixStream>, path: &str) -> u16 {
    write!(stream, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
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

fn main() {
    let dir = std::env::temp_dir().join(format!("ember-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for run in 0..RUNS {
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("--api-sock")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert_eq!(get(&mut stream, &mut reader, "/machine-config"), 200);
        walls.push(start.elapsed());
        cpus.push(Duration::from_nanos(cpu_ns(child.id())));
        if run == 0 {
            for _ in 0..REQUESTS {
                let t = Instant::now();
                assert_eq!(get(&mut stream, &mut reader, "/"), 200);
                latencies.push(t.elapsed());
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    walls.sort();
    cpus.sort();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "start to API ready ({RUNS} runs): wall p50 {:.2} ms, max {:.2} ms; ember CPU p50 {:.2} ms (target: under 10 ms wall)",
        ms(percentile(&walls, 0.5)),
        ms(*walls.last().unwrap()),
        ms(percentile(&cpus, 0.5)),
    );
    println!(
        "GET / round trip ({REQUESTS} requests, one keep-alive connection): p50 {:.1} us, p99 {:.1} us, max {:.1} us (target: p99 under 1 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.last().unwrap().as_secs_f64() * 1e6,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

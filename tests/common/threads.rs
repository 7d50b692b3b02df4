//! ember's threads as /proc shows them: their names, and that each runs under its seccomp
//! filter.

use std::time::{Duration, Instant};

/// The names of `pid`'s threads (none once it has ended).
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim_end().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that every thread of ember `pid` runs under a seccomp filter (`Seccomp: 2` in
/// /proc/PID/task/TID/status) and that a thread whose name starts with each of `expected`
/// exists; returns the threads' names. Kernel workers living in the process (KVM's
/// `kvm-nx-lpage-recovery`, io_uring's `iou-wrk-*`: PF_USER_WORKER or PF_IO_WORKER) run no
/// ember code and are left out. A thread installs its filter first thing in its body, so one
/// seen unfiltered is looked at again for up to two seconds (a loaded machine may not have run
/// it yet) before the assertion fails.
pub fn assert_seccomp_on_every_thread(pid: u32, expected: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let names = loop {
        match ember_threads(pid) {
            Ok(names) => break names,
            Err(unfiltered) if Instant::now() >= deadline => {
                panic!("ember thread '{unfiltered}' runs without its seccomp filter")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    for prefix in expected {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no ember thread named {prefix}*: {names:?}"
        );
    }
    names
}

/// The names of ember `pid`'s threads if each runs under a seccomp filter, else the name of
/// one that does not.
fn ember_threads(pid: u32) -> Result<Vec<String>, String> {
    const KERNEL_WORKER: u64 = 0x4000 | 0x10;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("ember is not running");
    let mut names = Vec::new();
    for task in tasks {
        let dir = task.unwrap().path();
        // A thread that ended meanwhile has nothing to check.
        let (Ok(comm), Ok(status), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        // The flags are the 9th field, counted after the parenthesised name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let flags: u64 = after_name.split(' ').nth(6).unwrap().parse().unwrap();
        if flags & KERNEL_WORKER != 0 {
            continue;
        }
        let name = comm.trim_end().to_owned();
        let mode = status.lines().find(|l| l.starts_with("Seccomp:"));
        if mode.and_then(|l| l.split_whitespace().nth(1)) != Some("2") {
            return Err(name);
        }
        names.push(name);
    }
    Ok(names)
}

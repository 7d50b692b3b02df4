//! Helpers shared by the device benchmarks.
#![allow(dead_code)] // each benchmark uses a different subset

use std::time::Duration;

/// This thread's CPU time so far: (user, system).
pub fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: rusage is plain data; all-zero is valid and getrusage overwrites it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write to.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// CPU time used since `start`: (user, system).
pub fn since(start: (Duration, Duration)) -> (Duration, Duration) {
    let now = thread_cpu();
    (now.0 - start.0, now.1 - start.1)
}

/// This thread's CPU time so far, user and system together, exact to the nanosecond (getrusage
/// may lag a running thread by up to a tick, too coarse to time one short round).
pub fn thread_cpu_exact() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

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

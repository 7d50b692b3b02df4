//! Reading the host's clocks.

/// Nanoseconds on `clock` (`libc::CLOCK_MONOTONIC`, `CLOCK_PROCESS_CPUTIME_ID`, ...).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to. For a clock the host lacks the call fails
    // and leaves it zero, which reads as 0 ns.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = clock_ns(libc::CLOCK_MONOTONIC);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(clock_ns(libc::CLOCK_MONOTONIC) >= a + 2_000_000);
    }
}

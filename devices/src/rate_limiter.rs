//! Token-bucket rate limiting with Firecracker's semantics, for any device that moves guest
//! data (block requests, network frames, entropy).
//!
//! A [`RateLimiter`] has up to two buckets, one counting bytes ([`TokenKind::Bytes`]) and one
//! counting operations ([`TokenKind::Ops`]); a missing bucket does not limit. Each bucket holds
//! at most `size` tokens, starts full, and refills in proportion to the time elapsed (the
//! monotonic clock), `size` tokens per `refill_time` ms; `one_time_burst` tokens more are spent
//! first and never refill. As in Firecracker, a request larger than the bucket is allowed: it
//! empties the bucket and blocks the limiter for as long as the excess takes to refill, so the
//! average rate holds.
//!
//! A refused request blocks the limiter (every request of either kind is refused) until the
//! bucket that refused it has enough tokens; the limiter then makes its timerfd
//! ([`RateLimiter::timer_fd`]) readable, which the device's I/O handler waits on to retry:
//! a throttled queue is resumed by that timer, never by polling. [`RateLimiter::update`]
//! changes the buckets at any time, from any thread; a blocked limiter is unblocked and its
//! timer fired at once, so the device retries under the new limits.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::warn;
use vmm_sys_util::timerfd::TimerFd;

use crate::sync::lock;

/// Nanoseconds per millisecond.
const NS_PER_MS: u128 = 1_000_000;
/// The longest the timer is armed for at once. A longer wait (a huge refill time) is served
/// by re-arming: a request retried early is refused again and sets the timer anew.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// One byte of data.
    Bytes,
    /// One operation (a request, a frame).
    Ops,
}

/// One bucket's parameters, as Firecracker's `TokenBucket` configures them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Most tokens the bucket holds; 0 means no limit.
    pub size: u64,
    /// Tokens available once, on top of `size`, before the bucket limits.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to refill; 0 means no limit.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// Whether the bucket limits anything (Firecracker: a size or refill time of 0 does not).
    pub fn limits(&self) -> bool {
        self.size > 0 && self.refill_time_ms > 0
    }
}

/// A limiter's buckets; `None` (or a bucket that does not [limit](BucketConfig::limits))
/// means that kind of token is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Operations.
    pub ops: Option<BucketConfig>,
}

/// How a bucket answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduction {
    /// Granted.
    Granted,
    /// Granted, but it was larger than the bucket: block for this long.
    Overdrawn(Duration),
    /// Refused: enough tokens are there after this long.
    Refused(Duration),
}

/// One token bucket's state.
#[derive(Debug, Clone)]
struct TokenBucket {
    config: BucketConfig,
    /// Tokens available, at most `size`.
    budget: u64,
    /// One-time burst tokens left.
    burst: u64,
    /// The time up to which refills have been counted (whole tokens only: the fraction of a
    /// token earned since then carries over to the next refill).
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` if `config` does not limit.
    fn new(config: BucketConfig, now: Instant) -> Option<Self> {
        config.limits().then_some(Self {
            config,
            budget: config.size,
            burst: config.one_time_burst,
            last_update: now,
        })
    }

    fn period_ns(&self) -> u128 {
        u128::from(self.config.refill_time_ms) * NS_PER_MS
    }

    /// How long `tokens` take to refill, rounded up.
    fn time_for(&self, tokens: u64) -> Duration {
        let size = u128::from(self.config.size);
        let ns = u128::from(tokens)
            .checked_mul(self.period_ns())
            .map_or(u128::MAX, |n| n.div_ceil(size));
        u64::try_from(ns).map_or(MAX_WAIT, Duration::from_nanos)
    }

    /// Adds the tokens earned since `last_update`.
    fn replenish(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        let (size, period) = (u128::from(self.config.size), self.period_ns());
        // A whole period refills the bucket; so does an elapsed time too long to multiply
        // (centuries), which keeps the arithmetic below within u128.
        let Some(earned) = elapsed.checked_mul(size).filter(|_| elapsed < period) else {
            self.budget = self.config.size;
            self.last_update = now;
            return;
        };
        let tokens = earned / period;
        // Count only the time the whole tokens took (rounded up, so no nanosecond is spent
        // twice); tokens * period <= earned, so this cannot overflow.
        let used = (tokens * period).div_ceil(size);
        self.last_update += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        // tokens < size, as elapsed < period.
        self.budget = self
            .budget
            .saturating_add(tokens as u64)
            .min(self.config.size);
    }

    /// Takes `tokens`: from the one-time burst first, then the budget.
    fn reduce(&mut self, mut tokens: u64, now: Instant) -> Reduction {
        if self.burst > 0 {
            if self.burst >= tokens {
                self.burst -= tokens;
                // The budget is full while bursting; no refill is due for this time.
                self.last_update = now;
                return Reduction::Granted;
            }
            tokens -= self.burst;
            self.burst = 0;
        }
        if tokens > self.budget {
            self.replenish(now);
            if tokens > self.config.size {
                // Firecracker's rule: allowed, paid for by blocking until the excess would
                // have refilled.
                let excess = tokens - self.budget;
                self.budget = 0;
                return Reduction::Overdrawn(self.time_for(excess));
            }
            if tokens > self.budget {
                return Reduction::Refused(self.time_for(tokens - self.budget));
            }
        }
        self.budget -= tokens;
        Reduction::Granted
    }

    /// Gives back `tokens` taken by a request that did not go ahead.
    fn refund(&mut self, tokens: u64) {
        if self.burst > 0 {
            self.burst = self
                .burst
                .saturating_add(tokens)
                .min(self.config.one_time_burst);
        } else {
            self.budget = self.budget.saturating_add(tokens).min(self.config.size);
        }
    }
}

#[derive(Debug)]
struct State {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    /// Every request is refused until then.
    blocked_until: Option<Instant>,
    timer: TimerFd,
}

impl State {
    fn bucket(&mut self, kind: TokenKind) -> Option<&mut TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_mut(),
            TokenKind::Ops => self.ops.as_mut(),
        }
    }

    fn blocked(&mut self, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.blocked_until = None;
                false
            }
            None => false,
        }
    }

    fn block_for(&mut self, wait: Duration, now: Instant) {
        let wait = wait.clamp(Duration::from_nanos(1), MAX_WAIT);
        self.blocked_until = Some(now + wait);
        self.arm(wait);
    }

    fn arm(&mut self, wait: Duration) {
        if let Err(err) = self.timer.reset(wait, None) {
            // Not expected for a valid timerfd; the device would wait for its next
            // notification instead of the timer.
            warn!("rate limiter: cannot arm the timer: {err}");
        }
    }

    fn consume(&mut self, tokens: u64, kind: TokenKind, now: Instant) -> bool {
        if self.blocked(now) {
            return false;
        }
        let Some(bucket) = self.bucket(kind) else {
            return true;
        };
        match bucket.reduce(tokens, now) {
            Reduction::Granted => true,
            Reduction::Overdrawn(wait) => {
                self.block_for(wait, now);
                true
            }
            Reduction::Refused(wait) => {
                self.block_for(wait, now);
                false
            }
        }
    }
}

/// A rate limiter: two token buckets and the timer that says when a refused request may be
/// retried. Shared between the device's serving thread (which consumes) and the VMM (which
/// updates); each call holds its lock only for a little arithmetic.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
    fd: RawFd,
}

impl RateLimiter {
    /// A limiter with `config`'s buckets, full; its timer is created even when nothing is
    /// limited, so that [`RateLimiter::update`] cannot fail later.
    pub fn new(config: LimiterConfig) -> io::Result<Self> {
        let timer = crate::virtio::worker::nonblocking_timer()?;
        let fd = timer.as_raw_fd();
        let now = Instant::now();
        let bucket = |c: Option<BucketConfig>| c.and_then(|c| TokenBucket::new(c, now));
        Ok(Self {
            state: Mutex::new(State {
                bandwidth: bucket(config.bandwidth),
                ops: bucket(config.ops),
                blocked_until: None,
                timer,
            }),
            fd,
        })
    }

    /// Takes `tokens` of `kind`; false if the request must wait (the timer then fires when
    /// it may be retried). An unlimited kind always succeeds, unless the limiter is blocked.
    pub fn consume(&self, tokens: u64, kind: TokenKind) -> bool {
        lock(&self.state).consume(tokens, kind, Instant::now())
    }

    /// Takes one operation moving `bytes` bytes, or neither (an operation the bandwidth
    /// refuses gives its op token back), as Firecracker charges a request or a frame.
    pub fn consume_op(&self, bytes: u64) -> bool {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if !state.consume(1, TokenKind::Ops, now) {
            return false;
        }
        if state.consume(bytes, TokenKind::Bytes, now) {
            return true;
        }
        if let Some(ops) = state.bucket(TokenKind::Ops) {
            ops.refund(1);
        }
        false
    }

    /// Gives back what [`RateLimiter::consume_op`] took for an operation that then could not
    /// go ahead (the host refused it for now).
    pub fn refund_op(&self, bytes: u64) {
        let mut state = lock(&self.state);
        for (kind, tokens) in [(TokenKind::Ops, 1), (TokenKind::Bytes, bytes)] {
            if let Some(bucket) = state.bucket(kind) {
                bucket.refund(tokens);
            }
        }
    }

    /// Whether requests are refused now (until the timer fires).
    pub fn is_blocked(&self) -> bool {
        lock(&self.state).blocked(Instant::now())
    }

    /// The timerfd to wait on (readable) while blocked.
    pub fn timer_fd(&self) -> RawFd {
        self.fd
    }

    /// The timerfd was readable: consumes its expiry, so that it is not readable again until
    /// the limiter next blocks. Never waits.
    pub fn timer_fired(&self) {
        let mut state = lock(&self.state);
        // EAGAIN: the timer was re-armed since it fired; it fires again.
        let _ = state.timer.wait();
    }

    /// Replaces the buckets whose parameters change (they start full, as Firecracker's do);
    /// a bucket left as it was keeps its tokens. If the limiter was blocked, it is unblocked
    /// and its timer fires now, so a device waiting on it retries under the new limits.
    pub fn update(&self, config: LimiterConfig) {
        let now = Instant::now();
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        for (slot, new) in [
            (&mut state.bandwidth, config.bandwidth),
            (&mut state.ops, config.ops),
        ] {
            let new = new.filter(BucketConfig::limits);
            if slot.as_ref().map(|b| b.config) != new {
                *slot = new.and_then(|c| TokenBucket::new(c, now));
            }
        }
        if state.blocked(now) {
            state.blocked_until = None;
            state.arm(Duration::from_nanos(1));
        }
    }

    /// The buckets in force (those that limit).
    pub fn config(&self) -> LimiterConfig {
        let state = lock(&self.state);
        LimiterConfig {
            bandwidth: state.bandwidth.as_ref().map(|b| b.config),
            ops: state.ops.as_ref().map(|b| b.config),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<BucketConfig> {
        Some(BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        })
    }

    fn full(size: u64, burst: u64, refill_ms: u64, now: Instant) -> TokenBucket {
        TokenBucket::new(bucket(size, burst, refill_ms).unwrap(), now).unwrap()
    }

    /// Whether `fd` becomes readable within `timeout_ms`.
    pub(crate) fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_bucket_refills_in_proportion_to_elapsed_time() {
        let t0 = Instant::now();
        let mut b = full(1000, 0, 100, t0);
        assert_eq!(b.reduce(1000, t0), Reduction::Granted);
        // 1000 tokens per 100 ms: 10 per ms. 25 ms later, 250 are back.
        let t1 = t0 + Duration::from_millis(25);
        assert_eq!(
            b.reduce(251, t1),
            Reduction::Refused(Duration::from_micros(100))
        );
        assert_eq!(b.budget, 250);
        assert_eq!(b.reduce(250, t1), Reduction::Granted);
        // A fraction of a token is not lost: 0.15 ms earns 1.5 tokens, then 0.05 ms more
        // makes 2.
        let t2 = t1 + Duration::from_micros(150);
        b.replenish(t2);
        assert_eq!(b.budget, 1);
        b.replenish(t2 + Duration::from_micros(50));
        assert_eq!(b.budget, 2);
        // Never more than the size, however long it rests.
        b.replenish(t2 + Duration::from_secs(3600));
        assert_eq!(b.budget, 1000);
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut b = full(100, 50, 1000, t0);
        assert_eq!(b.reduce(30, t0), Reduction::Granted);
        assert_eq!((b.burst, b.budget), (20, 100));
        // 20 from the burst, 100 from the budget.
        assert_eq!(b.reduce(120, t0), Reduction::Granted);
        assert_eq!((b.burst, b.budget), (0, 0));
        b.replenish(t0 + Duration::from_secs(5));
        assert_eq!((b.burst, b.budget), (0, 100));
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_allowed_and_paid_for_by_waiting() {
        let t0 = Instant::now();
        let mut b = full(100, 0, 1000, t0);
        // 350 tokens from a full bucket of 100: 250 too many, 2.5 refill periods.
        assert_eq!(
            b.reduce(350, t0),
            Reduction::Overdrawn(Duration::from_millis(2500))
        );
        assert_eq!(b.budget, 0);
        let limiter = RateLimiter::new(LimiterConfig {
            bandwidth: bucket(100, 0, 10),
            ops: None,
        })
        .unwrap();
        assert!(limiter.consume(350, TokenKind::Bytes), "granted");
        assert!(limiter.is_blocked());
        assert!(!limiter.consume(1, TokenKind::Bytes));
        assert!(
            !limiter.consume(1, TokenKind::Ops),
            "a blocked limiter refuses every kind"
        );
    }

    #[test]
    fn huge_sizes_and_refill_times_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = full(u64::MAX, u64::MAX, u64::MAX, t0);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Granted);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Granted);
        assert_eq!(b.burst, 0);
        b.replenish(t0 + Duration::from_secs(1_000_000));
        assert!(b.budget > 0 && b.budget < u64::MAX, "{}", b.budget);
        assert_eq!(b.reduce(u64::MAX, t0), Reduction::Refused(MAX_WAIT));
        let mut fast = full(u64::MAX, 0, 1, t0);
        fast.reduce(u64::MAX, t0);
        fast.replenish(t0 + Duration::from_micros(500));
        assert_eq!(fast.budget, u64::MAX / 2);
        // Elapsed time times size past u128, within one refill period (2000 years of a
        // 584-million-year period): the bucket is full.
        let mut slow = full(u64::MAX, 0, u64::MAX, t0);
        slow.reduce(u64::MAX, t0);
        slow.replenish(t0 + Duration::from_secs(1 << 36));
        assert_eq!(slow.budget, u64::MAX);
    }

    #[test]
    fn missing_empty_and_zero_buckets_do_not_limit() {
        for config in [
            LimiterConfig::default(),
            LimiterConfig {
                bandwidth: bucket(0, 0, 100),
                ops: bucket(100, 0, 0),
            },
        ] {
            let limiter = RateLimiter::new(config).unwrap();
            for _ in 0..1000 {
                assert!(limiter.consume_op(u64::MAX));
            }
            assert!(!limiter.is_blocked());
            assert_eq!(limiter.config(), LimiterConfig::default());
        }
    }

    #[test]
    fn a_refused_request_blocks_until_the_timer_fires_when_tokens_are_there() {
        let limiter = RateLimiter::new(LimiterConfig {
            bandwidth: None,
            ops: bucket(2, 0, 20),
        })
        .unwrap();
        let fd = limiter.timer_fd();
        assert!(limiter.consume_op(4096));
        assert!(limiter.consume_op(4096));
        assert!(!readable(fd, 0));
        let refused = Instant::now();
        assert!(!limiter.consume_op(4096));
        assert!(limiter.is_blocked());
        // One op takes 10 ms to come back; the timer says so, and not before.
        assert!(readable(fd, 1000));
        assert!(refused.elapsed() >= Duration::from_millis(10));
        limiter.timer_fired();
        assert!(!readable(fd, 0), "the expiry was consumed");
        limiter.timer_fired();
        assert!(limiter.consume_op(4096));
    }

    #[test]
    fn an_op_the_bandwidth_refuses_gives_its_op_token_back() {
        let limiter = RateLimiter::new(LimiterConfig {
            bandwidth: bucket(1000, 0, 1000),
            ops: bucket(1, 0, 1000),
        })
        .unwrap();
        assert!(limiter.consume(600, TokenKind::Bytes));
        assert!(!limiter.consume_op(500), "500 bytes of the 400 left");
        limiter.update(LimiterConfig {
            bandwidth: bucket(1000, 0, 1000),
            ops: bucket(1, 0, 1000),
        });
        assert!(!limiter.is_blocked(), "an update unblocks");
        assert!(limiter.consume_op(400), "the op token came back");
        assert!(!limiter.consume(1, TokenKind::Ops), "and was then spent");
    }

    #[test]
    fn an_update_while_throttled_fires_the_timer_and_applies_the_new_limits() {
        let limiter = RateLimiter::new(LimiterConfig {
            bandwidth: bucket(1000, 0, 100_000),
            ops: bucket(10, 0, 1000),
        })
        .unwrap();
        assert!(limiter.consume_op(1000));
        assert!(!limiter.consume_op(1000));
        assert!(limiter.is_blocked());
        // Throttled for 100 s; a PATCH lifts the bandwidth limit and keeps the ops bucket.
        limiter.update(LimiterConfig {
            bandwidth: None,
            ops: bucket(10, 0, 1000),
        });
        assert!(
            readable(limiter.timer_fd(), 1000),
            "the device is woken now"
        );
        limiter.timer_fired();
        assert!(!limiter.is_blocked());
        for _ in 0..9 {
            assert!(limiter.consume_op(1 << 30));
        }
        assert!(
            !limiter.consume_op(1),
            "the unchanged ops bucket kept its count (10, 1 used before)"
        );
        assert_eq!(limiter.config().bandwidth, None);
        // Changing a bucket's parameters gives a new, full bucket.
        limiter.update(LimiterConfig {
            bandwidth: None,
            ops: bucket(3, 0, 1000),
        });
        assert!((0..3).all(|_| limiter.consume_op(1)));
        assert!(!limiter.consume_op(1));
    }
}

//! MMDS V2 session tokens: random, opaque, and remembered with their expiry in a table of at
//! most [`MAX_TOKENS`] entries, so a guest asking for tokens in a loop cannot grow ember's
//! memory. (Firecracker makes tokens stateless by encrypting the expiry with AES-GCM; ember
//! has no cipher in its dependencies, and a bounded table gives the guest the same
//! behaviour: a token is valid until its TTL passes, and only the issuing VMM knows it.)
//!
//! Time is passed in (`now`), so expiry is tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest lifetime a guest may ask for, in seconds.
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// Longest lifetime a guest may ask for, in seconds (six hours, as EC2 and Firecracker).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;
/// Live tokens remembered at once; issuing one more first forgets the expired ones, then the
/// one closest to expiry.
pub const MAX_TOKENS: usize = 1024;
/// Random bytes in a token; it is sent as their hex digits.
const TOKEN_BYTES: usize = 32;

/// Why a token was not issued; messages as the guest receives them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// A lifetime outside the allowed range.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    /// The kernel gave no random bytes.
    #[error("Failed to generate a token: the kernel's random source failed (errno {0}).")]
    Random(i32),
}

/// The tokens issued and not yet forgotten, with their expiry.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    live: HashMap<[u8; TOKEN_BYTES], Instant>,
}

impl Tokens {
    /// Issues a token that expires `ttl_seconds` after `now`.
    pub(crate) fn issue(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let mut secret = [0u8; TOKEN_BYTES];
        fill_random(&mut secret)?;
        self.live.retain(|_, expiry| *expiry > now);
        if self.live.len() >= MAX_TOKENS {
            let soonest = self
                .live
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(key, _)| *key);
            if let Some(key) = soonest {
                self.live.remove(&key);
            }
        }
        self.live
            .insert(secret, now + Duration::from_secs(u64::from(ttl_seconds)));
        Ok(secret.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `token` is one issued here that has not expired at `now`.
    pub(crate) fn is_valid(&self, token: &str, now: Instant) -> bool {
        decode(token)
            .and_then(|secret| self.live.get(&secret))
            .is_some_and(|expiry| *expiry > now)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

/// The secret a token's hex digits spell, if they spell one.
fn decode(token: &str) -> Option<[u8; TOKEN_BYTES]> {
    let digits = token.as_bytes();
    if digits.len() != 2 * TOKEN_BYTES {
        return None;
    }
    let mut secret = [0u8; TOKEN_BYTES];
    for (byte, pair) in secret.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(secret)
}

/// Fills `buf` from the kernel's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), TokenError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid,
        // writable memory of that length for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TokenError::Random(err.raw_os_error().unwrap_or(0)));
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_outside_one_to_21600_seconds_are_refused() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        for ttl in [0, MAX_TOKEN_TTL_SECONDS + 1, u32::MAX] {
            let err = tokens.issue(ttl, now).unwrap_err();
            assert_eq!(err, TokenError::InvalidTtl(ttl));
            assert_eq!(
                err.to_string(),
                format!(
                    "Invalid time to live value provided for token: {ttl}. Please provide a \
                     value between 1 and 21600."
                )
            );
        }
        for ttl in [MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS] {
            assert!(tokens.issue(ttl, now).is_ok());
        }
    }

    #[test]
    fn a_token_is_valid_until_its_ttl_passes() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let token = tokens.issue(60, now).unwrap();
        assert_eq!(token.len(), 64);
        assert!(tokens.is_valid(&token, now));
        assert!(tokens.is_valid(&token, now + Duration::from_millis(59_999)));
        assert!(!tokens.is_valid(&token, now + Duration::from_secs(60)));
        let other = tokens.issue(60, now).unwrap();
        assert_ne!(token, other, "tokens are random");
    }

    #[test]
    fn unknown_malformed_or_oversized_tokens_are_not_valid() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let token = tokens.issue(60, now).unwrap();
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let upper = token.to_uppercase();
        let multibyte = format!("é{}", &token[2..]);
        for bad in [
            "",
            "x",
            &token[1..],
            &format!("{token}0"),
            &"z".repeat(64),
            &flipped,
            &multibyte,
            &"a".repeat(100_000),
        ] {
            assert!(!tokens.is_valid(bad, now), "{bad:.80}");
        }
        // Hex digits in either case spell the same secret.
        assert!(tokens.is_valid(&upper, now));
    }

    #[test]
    fn the_token_table_is_bounded_and_forgets_expired_then_soonest_to_expire() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let short = tokens.issue(1, now).unwrap();
        let long: Vec<String> = (0..MAX_TOKENS - 1)
            .map(|_| tokens.issue(100, now).unwrap())
            .collect();
        assert_eq!(tokens.len(), MAX_TOKENS);
        // Full: the one closest to expiry goes.
        let newest = tokens.issue(100, now).unwrap();
        assert_eq!(tokens.len(), MAX_TOKENS);
        assert!(!tokens.is_valid(&short, now));
        assert!(tokens.is_valid(&newest, now) && tokens.is_valid(&long[0], now));
        // Once they expire, a new token clears them all.
        for _ in 0..3 * MAX_TOKENS {
            tokens.issue(1, now + Duration::from_secs(200)).unwrap();
        }
        assert!(tokens.len() <= MAX_TOKENS);
    }
}

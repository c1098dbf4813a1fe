//! The per-user send rate: a token bucket per user, sans-IO (time passed in).

use std::collections::HashMap;
use std::time::Duration;

/// Users tracked at most; beyond, buckets that are full again are forgotten.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
pub(crate) struct SendRate {
    rate: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Duration)>,
}

impl SendRate {
    /// `rate` sends per second sustained, `burst` at once; rate 0 admits everything.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        SendRate {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token of `user`'s bucket at `now` (any monotonic origin).
    pub(crate) fn allow(&mut self, user: &str, now: Duration) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(user) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_sub(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self
            .buckets
            .entry(user.to_owned())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_sub(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = SendRate::new(10, 3);
        let t0 = Duration::from_secs(100);
        assert!((0..3).all(|_| r.allow("a", t0)));
        assert!(!r.allow("a", t0), "the burst is spent");
        assert!(r.allow("b", t0), "users have their own buckets");
        assert!(!r.allow("a", t0 + Duration::from_millis(50)));
        assert!(
            r.allow("a", t0 + Duration::from_millis(150)),
            "one token per 100 ms"
        );
        assert!(SendRate::new(0, 0).allow("a", t0), "rate 0: no limit");
    }
}

//! A token bucket: one connection's publish rate with a burst allowance.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens a second, holding at most `burst` (at least 1); starts full.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until a token is there: zero when one is there now. Takes nothing.
    pub(crate) fn time_to_token(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            // At most a second at a time: the caller looks again after each wait.
            Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate)
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        }
    }

    /// Takes a token if one is there.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        let there = self.tokens >= 1.0;
        if there {
            self.tokens -= 1.0;
        }
        there
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0);
        for _ in 0..3 {
            assert!(bucket.take(start));
        }
        assert!(!bucket.take(start), "the burst is spent");
        let wait = bucket.time_to_token(start);
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        let later = start + Duration::from_millis(100);
        assert!(bucket.time_to_token(later).is_zero());
        assert!(bucket.take(later));
        // A long pause refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(much_later));
        }
        assert!(!bucket.take(much_later));
    }
}

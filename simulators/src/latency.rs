//! Latency histogram: log-linear buckets from 1 µs up, within 0.8% of the true value, cheap
//! to record into and to merge (one per watcher, merged for the report).

/// Values below this are their own bucket; above, 128 buckets per power of two.
const LINEAR: u64 = 256;
const SUB_BUCKETS: u64 = 128;
const BUCKETS: usize = (LINEAR + 56 * SUB_BUCKETS) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = u64::from(63 - v.leading_zeros()); // >= 8
    let mantissa = (v >> (exp - 7)) & (SUB_BUCKETS - 1);
    (LINEAR + (exp - 8) * SUB_BUCKETS + mantissa) as usize
}

/// The lowest value of a bucket.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB_BUCKETS + 8;
    let mantissa = (i - LINEAR) % SUB_BUCKETS;
    (SUB_BUCKETS + mantissa) << (exp - 7)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v).min(BUCKETS - 1)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        self.nth(((q * self.total as f64).ceil() as u64).clamp(1, self.total))
    }

    /// The `rank`-th smallest value recorded (from 1), the maximum past the end.
    pub fn nth(&self, rank: u64) -> u64 {
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_one_percent() {
        for v in [0, 1, 255, 256, 257, 1000, 12_345, 999_999, 3_600_000_000] {
            let low = value(index(v));
            assert!(low <= v, "{v}");
            assert!(v - low <= v / 100, "{v} -> {low}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 500);
        assert!((985..=990).contains(&h.quantile(0.99)));
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.nth(1), 1);
        assert_eq!(h.nth(200), 200);
    }
}

//! A fixed-size log-linear histogram of microsecond values: exact below 64 µs, then 32
//! buckets per power of two (at most ~3 % relative error), up to about 2^40 µs. Recording is
//! an index computation and an increment: no allocation after construction, cheap to merge.

use serde::Serialize;

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are recorded exactly.
const LINEAR: u64 = 2 * SUB as u64;
const MAX_EXP: u32 = 40;
/// Values of 2^MAX_EXP µs and more share the last bucket.
const BUCKETS: usize = LINEAR as usize + (MAX_EXP - SUB_BITS - 1) as usize * SUB;

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR as usize + (exp - SUB_BITS - 1) as usize * SUB + sub
}

/// The largest value that lands in bucket `i` (percentiles report it: never optimistic).
fn upper(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let j = i - LINEAR as usize;
    let exp = (j / SUB) as u32 + SUB_BITS + 1;
    let sub = (j % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((SUB as u64 + sub) << (exp - SUB_BITS)) + width - 1
}

/// One non-empty bucket, for charts: values up to `le_us` (inclusive), `count` of them.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub le_us: u64,
    pub count: u64,
}

/// The usual summary of a latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The smallest bucket bound with at least `q` of the values at or below it (`q` in 0..=1);
    /// 0 when empty. Never above the true maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    pub fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: self.count,
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max),
            mean_ms: self.mean() / 1000.0,
        }
    }

    /// The non-empty buckets, smallest first.
    pub fn buckets(&self) -> Vec<Bucket> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| Bucket {
                le_us: upper(i),
                count: *c,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        for i in 1..BUCKETS {
            assert_eq!(index(upper(i - 1) + 1), i, "bucket {i}");
            assert_eq!(index(upper(i)), i);
        }
    }

    #[test]
    fn small_values_are_exact_and_large_ones_within_3_percent() {
        let mut h = Histogram::default();
        for v in 0..64 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 31);
        for v in [100u64, 1_000, 5_000, 123_456, 10_000_000] {
            let up = upper(index(v));
            assert!(
                up >= v && (up - v) as f64 <= v as f64 * 0.032,
                "{v} -> {up}"
            );
        }
    }

    #[test]
    fn percentiles_of_a_uniform_run() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert!((0.49..=0.52).contains(&p.p50_ms), "{p:?}");
        assert!((0.98..=1.0).contains(&p.p99_ms), "{p:?}");
        assert_eq!(p.max_ms, 1.0);
        let mut other = Histogram::default();
        other.record(5000);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert_eq!(h.max(), 5000);
        assert_eq!(h.quantile(1.0), 5000);
    }
}

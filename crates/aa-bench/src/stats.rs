//! Percentiles of recorded latencies.

use std::fmt;
use std::time::Duration;

/// Nearest-rank percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// How many were recorded.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Percentiles {
    /// `None` when nothing was recorded.
    pub fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all at or below it.
            let index = (q * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Some(Percentiles {
            count: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[samples.len() - 1],
        })
    }
}

/// Microseconds with one decimal, the unit every figure here is read in.
pub fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p999),
            micros(self.max),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nearest_rank_over_a_thousand_samples() {
        // 1..=1000 µs, shuffled: the q-th percentile is q × 1000 µs exactly.
        let samples: Vec<Duration> = (1..=1000u64).rev().map(us).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, us(500));
        assert_eq!(p.p90, us(900));
        assert_eq!(p.p99, us(990));
        assert_eq!(p.p999, us(999));
        assert_eq!(p.max, us(1000));
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_none() {
        let p = Percentiles::of(vec![us(7)]).unwrap();
        assert_eq!((p.p50, p.p999, p.max), (us(7), us(7), us(7)));
        assert_eq!(Percentiles::of(Vec::new()), None);
    }
}

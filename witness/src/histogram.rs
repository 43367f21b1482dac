//! [`Histogram`]: counts of observed values in fixed buckets, with their
//! sum, as a Prometheus histogram exposes them.
//!
//! The bucket bounds are fixed when it is made (a `'static` slice chosen for
//! what is measured), so recording is an index search and three additions:
//! cheap enough for every probe under a short mutex held by the caller.
//! It keeps no samples and no time: rates and quantiles are the query's job
//! (`rate(…_bucket[5m])`, `histogram_quantile`).

/// Upper bounds for probe durations, in seconds: from a loopback answer
/// (1 ms) to the longest sensible probe timeout (5 s); a probe that ran out
/// of a longer timeout lands in `+Inf`.
pub const PROBE_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds for the phases of a failover, in seconds: a lease wait is
/// a few seconds (lease_ttl × drift + margin), detection adds
/// `fail_after` probe intervals, and a failover stuck on a lost quorum can
/// last minutes.
pub const FAILOVER_SECONDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0,
];

/// Counts per bucket (not cumulative: each value is counted once, in the
/// first bucket whose bound is at least the value, or in `+Inf`), the sum
/// and the count of every value observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which must be sorted ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must ascend: {bounds:?}"
        );
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Count `value` (a negative or NaN value counts as 0: durations only).
    pub fn observe(&mut self, value: f64) {
        let value = if value.is_nan() { 0.0 } else { value.max(0.0) };
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// `(upper bound, values at or below it)` for every bound and then
    /// `+Inf` (whose count is [`Histogram::count`]): the `_bucket` samples.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            }))
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observed values.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.1, 1.0, 10.0];

    /// Each value lands in the first bucket whose bound is at least the
    /// value (bounds are inclusive, as `le` says), larger ones in `+Inf`;
    /// the buckets are cumulative and `+Inf` equals the count.
    #[test]
    fn values_land_in_inclusive_cumulative_buckets() {
        let cases: &[(&[f64], [u64; 4])] = &[
            (&[], [0, 0, 0, 0]),
            (&[0.1], [1, 1, 1, 1]),
            (&[0.05, 0.100_001], [1, 2, 2, 2]),
            (&[1.0, 10.0, 11.0], [0, 1, 2, 3]),
            (&[-1.0, f64::NAN], [2, 2, 2, 2]),
            (&[1e9], [0, 0, 0, 1]),
        ];
        for (values, want) in cases {
            let mut h = Histogram::new(BOUNDS);
            for v in *values {
                h.observe(*v);
            }
            let got: Vec<(f64, u64)> = h.cumulative().collect();
            let bounds = [0.1, 1.0, 10.0, f64::INFINITY];
            assert_eq!(
                got,
                bounds.into_iter().zip(*want).collect::<Vec<_>>(),
                "{values:?}"
            );
            assert_eq!(h.count(), want[3], "{values:?}");
        }
    }

    #[test]
    fn the_sum_adds_the_observed_values() {
        let mut h = Histogram::new(BOUNDS);
        h.observe(0.25);
        h.observe(2.0);
        assert_eq!(h.sum(), 2.25);
    }

    #[test]
    fn the_shipped_bounds_ascend() {
        Histogram::new(PROBE_SECONDS);
        Histogram::new(FAILOVER_SECONDS);
    }

    #[test]
    #[should_panic(expected = "must ascend")]
    fn unsorted_bounds_are_refused() {
        Histogram::new(&[1.0, 0.5]);
    }
}

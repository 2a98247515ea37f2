//! A fixed-bucket histogram (Prometheus' shape: upper bounds, a count per
//! bucket, a sum). Every update is a few relaxed atomic additions, so
//! recorders on many threads never wait for one another; a snapshot taken
//! while others record may be a few observations behind in one field, as
//! Prometheus clients allow.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// The most buckets a histogram may have (Prometheus' own clients advise
/// a dozen or so; this bounds what a caller can make us allocate).
pub const MAX_BUCKETS: usize = 1_000;

#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One per bound, then one above every bound (+Inf).
    counts: Vec<AtomicU64>,
    /// The sum of the observations, as f64 bits.
    sum: AtomicU64,
}

/// A copy of a histogram: counts per bucket (not cumulative; the last is
/// above every bound) and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    /// Upper bounds, finite and strictly increasing, 1 to `MAX_BUCKETS` of them.
    pub fn new(bounds: Vec<f64>) -> Result<Self, Error> {
        if bounds.is_empty() || bounds.len() > MAX_BUCKETS {
            return Err(Error::invalid(
                "bounds",
                format!("must hold 1 to {MAX_BUCKETS} bounds, got {}", bounds.len()),
            ));
        }
        if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
            return Err(Error::invalid(
                "bounds",
                format!("must be finite, got {bad}"),
            ));
        }
        if bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(Error::invalid("bounds", "must be strictly increasing"));
        }
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Ok(Histogram {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        })
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Counts `value` in the first bucket whose bound is at least it. NaN
    /// is not counted (it has no bucket, and would poison the sum).
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let slot = self.bounds.partition_point(|bound| *bound < value);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(vec![1.0, 2.0, 5.0]).unwrap();
        for v in [
            0.5,
            1.0,
            1.5,
            2.0,
            4.0,
            5.0,
            7.0,
            -3.0,
            f64::INFINITY,
            f64::NAN,
        ] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![3, 2, 2, 2]);
        assert!(s.sum.is_infinite());
    }

    #[test]
    fn bad_bounds_are_refused_by_name() {
        for bounds in [
            vec![],
            vec![1.0, 1.0],
            vec![2.0, 1.0],
            vec![f64::NAN],
            vec![0.0; 1001],
        ] {
            let error = Histogram::new(bounds).unwrap_err();
            assert!(error.to_string().starts_with("bounds: "), "{error}");
        }
    }

    #[test]
    fn threads_lose_no_observation() {
        let h = Arc::new(Histogram::new(vec![0.5]).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || (0..10_000).for_each(|_| h.observe(0.25)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let s = h.snapshot();
        assert_eq!(s.counts, vec![40_000, 0]);
        assert_eq!(s.sum, 10_000.0);
    }
}

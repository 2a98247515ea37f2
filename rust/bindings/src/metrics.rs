//! `Histogram`: the core's lock-free histogram; `CallTimer`: histograms of
//! call durations by outcome, which langcluster.metrics fills as calls end.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use langcluster_core::metrics::histogram::{Histogram as CoreHistogram, MAX_BUCKETS};
use langcluster_core::Error as CoreError;

use crate::convert;
use crate::errors::Result;

/// The items of `value`, converted, refused by `name` (with `limit` as
/// the reason) once there are more than `max`: never reads on, so an
/// endless iterable costs nothing.
fn bounded<T>(
    name: &'static str,
    expected: &str,
    value: &Bound<'_, PyAny>,
    max: usize,
    limit: &str,
    convert_one: impl Fn(&Bound<'_, PyAny>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in convert::iterate(name, expected, value)? {
        if out.len() == max {
            return Err(CoreError::invalid(name, limit).into());
        }
        out.push(convert_one(&item?)?);
    }
    Ok(out)
}

#[pyclass(frozen, module = "langcluster._core")]
pub struct Histogram {
    inner: CoreHistogram,
}

#[pymethods]
impl Histogram {
    /// `bounds`: finite, strictly increasing upper bounds (at most 1,000).
    #[new]
    fn new(bounds: &Bound<'_, PyAny>) -> Result<Self> {
        let limit = format!("must hold 1 to {MAX_BUCKETS} bounds");
        let values = bounded(
            "bounds",
            "an iterable of numbers",
            bounds,
            MAX_BUCKETS,
            &limit,
            |item| convert::number("bounds", item),
        )?;
        Ok(Histogram {
            inner: CoreHistogram::new(values)?,
        })
    }

    /// Counts `value`, a number (NaN is not counted).
    fn observe(&self, value: &Bound<'_, PyAny>) -> Result<()> {
        self.inner.observe(convert::number("value", value)?);
        Ok(())
    }

    /// `(counts, sum)`: a count per bucket, not cumulative, the last one
    /// above every bound; and the sum of the values.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let s = self.inner.snapshot();
        (s.counts, s.sum)
    }

    #[getter]
    fn bounds(&self) -> Vec<f64> {
        self.inner.bounds().to_vec()
    }
}

/// Times calls and counts their durations by outcome, on a monotonic clock
/// of its own: `began` returns a token (nanoseconds since the recorder was
/// made) and `ended(token, outcome, error)` files the elapsed seconds in
/// the outcome's histogram. Both are the hooks of a metrics observer,
/// called straight from the call path with no Python frame between.
#[pyclass(frozen, module = "langcluster._core")]
pub struct CallTimer {
    epoch: Instant,
    outcomes: Vec<String>,
    histograms: Vec<CoreHistogram>,
}

/// The most outcomes a `CallTimer` tells apart.
const MAX_OUTCOMES: usize = 64;

impl CallTimer {
    fn now_ns(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }
}

#[pymethods]
impl CallTimer {
    /// `bounds` as `Histogram`'s; `outcomes`: the outcome names, 1 to 64.
    #[new]
    fn new(bounds: &Bound<'_, PyAny>, outcomes: &Bound<'_, PyAny>) -> Result<Self> {
        let template = Histogram::new(bounds)?.inner;
        let limit = format!("must hold 1 to {MAX_OUTCOMES} names");
        let names = bounded(
            "outcomes",
            "an iterable of str",
            outcomes,
            MAX_OUTCOMES,
            &limit,
            |item| convert::string("outcomes", item),
        )?;
        if names.is_empty() {
            return Err(CoreError::invalid("outcomes", limit).into());
        }
        let mut histograms = Vec::with_capacity(names.len());
        for _ in &names {
            histograms.push(CoreHistogram::new(template.bounds().to_vec())?);
        }
        Ok(CallTimer {
            epoch: Instant::now(),
            outcomes: names,
            histograms,
        })
    }

    /// A token for `ended`: the time now. The argument (what began) is not
    /// needed to time it.
    #[pyo3(signature = (*_what))]
    fn began(&self, _what: &Bound<'_, PyTuple>) -> i64 {
        self.now_ns()
    }

    /// Files the time since `token` under `outcome` (an outcome not among
    /// the recorder's is not counted). `error` is not read.
    #[pyo3(signature = (token, outcome, error=None))]
    fn ended(
        &self,
        token: &Bound<'_, PyAny>,
        outcome: &Bound<'_, PyAny>,
        error: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let _ = error;
        let began = convert::integer("token", token)?;
        let outcome = convert::text("outcome", outcome)?;
        if let Some(slot) = self.outcomes.iter().position(|name| name == outcome) {
            let elapsed = self.now_ns().saturating_sub(began).max(0);
            self.histograms[slot].observe(elapsed as f64 / 1e9);
        }
        Ok(())
    }

    /// `{outcome: (counts, sum)}`, as `Histogram.snapshot`.
    fn snapshot(&self) -> Vec<(String, (Vec<u64>, f64))> {
        self.outcomes
            .iter()
            .zip(&self.histograms)
            .map(|(name, h)| {
                let s = h.snapshot();
                (name.clone(), (s.counts, s.sum))
            })
            .collect()
    }
}

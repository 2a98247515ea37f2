//! Per-node state shared by every snapshot the node appears in, so counters
//! survive `update` for nodes that stay.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::ewma::PeakEwma;

/// Live counters of one node. Every field is an atomic: picks never lock.
#[derive(Debug)]
pub struct NodeState {
    id: Box<str>,
    available: AtomicBool,
    in_flight: AtomicI64,
    picks: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    latency: PeakEwma,
    /// The balancer-wide in-flight total, kept beside the per-node count so
    /// bounded-load hashing reads one atomic instead of summing N.
    total_in_flight: Arc<AtomicI64>,
}

/// A copy of a node's counters at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStats {
    pub id: String,
    pub weight: f64,
    pub available: bool,
    pub picks: u64,
    pub in_flight: i64,
    pub successes: u64,
    pub failures: u64,
    /// Peak-EWMA latency in seconds, decayed to now; `None` before the first sample.
    pub ewma_latency_s: Option<f64>,
}

impl NodeState {
    pub(crate) fn new(id: &str, available: bool, decay_ns: f64, total: Arc<AtomicI64>) -> Self {
        Self {
            id: id.into(),
            available: AtomicBool::new(available),
            in_flight: AtomicI64::new(0),
            picks: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: PeakEwma::new(decay_ns),
            total_in_flight: total,
        }
    }

    #[inline]
    pub fn id(&self) -> &str {
        &self.id
    }

    #[inline]
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    pub(crate) fn set_available(&self, value: bool) -> bool {
        self.available.swap(value, Ordering::AcqRel) != value
    }

    #[inline]
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests in flight across the whole balancer this node belongs to.
    #[inline]
    pub fn balancer_in_flight(&self) -> i64 {
        self.total_in_flight.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn latency(&self) -> &PeakEwma {
        &self.latency
    }

    /// Counts a pick. A plain load and store, not an atomic increment: the
    /// counter is a statistic, and the locked increment cost 4 ns of a 10 ns
    /// pick. Exact whenever picks are serialised (under the GIL, `pick` holds
    /// it); concurrent picks of the same node from free threads may
    /// undercount. In-flight counts, which steer balancing, stay exact.
    #[inline]
    pub(crate) fn count_pick(&self) {
        let n = self.picks.load(Ordering::Relaxed);
        self.picks.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Counts one request in flight.
    #[inline]
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops one request from the in-flight count (never below zero) without
    /// recording an outcome: for requests cancelled by the caller.
    pub fn release(&self) -> bool {
        let dropped = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 0).then_some(n - 1)
            })
            .is_ok();
        if dropped {
            self.total_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        dropped
    }

    /// Ends one request: the in-flight count drops (never below zero, so an
    /// unmatched `end` cannot make a node look permanently idle), and the
    /// outcome and latency are recorded.
    ///
    /// A failure is recorded as a latency of at least twice the node's
    /// current cost: a node that fails fast must not look fast.
    pub fn end(&self, latency_s: f64, ok: bool) {
        self.release();
        let latency_ns = latency_s * 1e9;
        if ok {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.latency.observe(latency_ns, crate::clock::now_ns());
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let now = crate::clock::now_ns();
            let current = self.latency.cost_at(now).unwrap_or(0.0);
            self.latency.observe(latency_ns.max(2.0 * current), now);
        }
    }

    pub(crate) fn stats(&self, weight: f64, now: u64) -> NodeStats {
        NodeStats {
            id: self.id.to_string(),
            weight,
            available: self.is_available(),
            picks: self.picks.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            successes: self.successes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ewma_latency_s: self.latency.cost_at(now).map(|ns| ns / 1e9),
        }
    }
}

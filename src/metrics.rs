//! Per-destination counters and the publish latency histogram.
//!
//! Counters are plain atomics, written on the hot path without locks. They distinguish what
//! was accepted from what was delivered and what failed, so nothing claims a delivery that did
//! not happen. No label or value here ever holds a secret or a user id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters of one destination.
pub struct DestinationMetrics {
    /// Users accepted at the intake for this destination.
    pub accepted_users: AtomicU64,
    /// Users in requests the partner acknowledged.
    pub delivered_users: AtomicU64,
    /// Users in requests that finally failed (dead-lettered).
    pub failed_users: AtomicU64,
    /// Users moved to the dead letters.
    pub dead_lettered_users: AtomicU64,
    /// Publish attempts that will be retried.
    pub retries: AtomicU64,
    /// Users taken from the queue and not yet delivered or failed.
    pub in_flight_users: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Publish attempts answered 401 (token rejected by the partner).
    pub unauthorized: AtomicU64,
    /// Payload bytes before compression.
    pub bytes_raw: AtomicU64,
    /// Body bytes on the wire.
    pub bytes_sent: AtomicU64,
    /// Publish attempts by answer: index 0 = no answer (network, TLS, timeout), 1..=5 = 1xx..5xx.
    pub attempts_by_class: [AtomicU64; 6],
    token_fetches: Mutex<BTreeMap<String, u64>>,
    /// Publish request latency in microseconds (successful requests).
    latency_us: Mutex<Histogram<u64>>,
    /// Delivery lag: from acceptance at the intake to the partner's acknowledgement, per user,
    /// in microseconds (millisecond resolution: the spool keeps acceptance times in ms).
    lag_us: Mutex<Histogram<u64>>,
}

impl Default for DestinationMetrics {
    fn default() -> Self {
        Self {
            accepted_users: AtomicU64::new(0),
            delivered_users: AtomicU64::new(0),
            failed_users: AtomicU64::new(0),
            dead_lettered_users: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            in_flight_users: AtomicU64::new(0),
            requests_ok: AtomicU64::new(0),
            requests_failed: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            bytes_raw: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            attempts_by_class: Default::default(),
            token_fetches: Mutex::new(BTreeMap::new()),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"),
            ),
            lag_us: Mutex::new(
                Histogram::new_with_bounds(1, 7 * 86_400_000_000, 2).expect("valid bounds"),
            ),
        }
    }
}

/// A point-in-time copy of a destination's metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub accepted_users: u64,
    pub delivered_users: u64,
    pub failed_users: u64,
    pub dead_lettered_users: u64,
    pub retries: u64,
    pub in_flight_users: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub unauthorized: u64,
    pub bytes_raw: u64,
    pub bytes_sent: u64,
    /// Token fetches by outcome (`ok`, `invalid_client`, `transport`, ...).
    pub token_fetches: BTreeMap<String, u64>,
    /// Publish attempts by status class (see [`STATUS_CLASSES`]).
    pub attempts_by_class: [u64; 6],
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Intake → partner acknowledgement, per user.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
}

/// Labels of [`DestinationMetrics::attempts_by_class`].
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

impl DestinationMetrics {
    /// Counts one publish attempt by its answer's status class (`None`: no answer).
    pub fn record_attempt(&self, status: Option<u16>) {
        let i = match status {
            Some(s @ 100..=599) => (s / 100) as usize,
            _ => 0,
        };
        self.attempts_by_class[i].fetch_add(1, Relaxed);
    }

    /// Buckets (upper bound in seconds, count in that bucket, not cumulative), sum in seconds
    /// and count of the publish latency, for a Prometheus histogram.
    pub fn latency_buckets(&self, bounds: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
        buckets(
            &self.latency_us.lock().unwrap_or_else(|e| e.into_inner()),
            bounds,
        )
    }

    /// The same for the delivery lag (intake → partner acknowledgement, per user).
    pub fn lag_buckets(&self, bounds: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
        buckets(
            &self.lag_us.lock().unwrap_or_else(|e| e.into_inner()),
            bounds,
        )
    }

    /// Records the delivery lag of users accepted at `accepted_ms` (one lock per request).
    pub fn record_lag(&self, accepted_ms: impl Iterator<Item = i64>, now_ms: i64) {
        let mut h = self.lag_us.lock().unwrap_or_else(|e| e.into_inner());
        for a in accepted_ms {
            let us = ((now_ms - a).max(0) as u64 * 1000).clamp(1, 7 * 86_400_000_000);
            let _ = h.record(us);
        }
    }

    pub fn token_fetched(&self, outcome: &str) {
        *self
            .token_fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn record_latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self
            .latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(us);
    }

    pub fn snapshot(&self) -> Snapshot {
        let h = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let lag = self.lag_us.lock().unwrap_or_else(|e| e.into_inner());
        let quantile = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Snapshot {
            accepted_users: self.accepted_users.load(Relaxed),
            delivered_users: self.delivered_users.load(Relaxed),
            failed_users: self.failed_users.load(Relaxed),
            dead_lettered_users: self.dead_lettered_users.load(Relaxed),
            retries: self.retries.load(Relaxed),
            in_flight_users: self.in_flight_users.load(Relaxed),
            requests_ok: self.requests_ok.load(Relaxed),
            requests_failed: self.requests_failed.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            bytes_raw: self.bytes_raw.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            token_fetches: self
                .token_fetches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            attempts_by_class: std::array::from_fn(|i| self.attempts_by_class[i].load(Relaxed)),
            latency_p50_ms: quantile(&h, 0.5),
            latency_p99_ms: quantile(&h, 0.99),
            lag_p50_ms: quantile(&lag, 0.5),
            lag_p99_ms: quantile(&lag, 0.99),
        }
    }
}

fn buckets(h: &Histogram<u64>, bounds: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut below = 0u64;
    for &b in bounds {
        let upto = h.count_between(0, (b * 1e6) as u64);
        out.push((b, upto - below));
        below = upto;
    }
    out.push((f64::INFINITY, h.len() - below));
    (out, h.mean() * h.len() as f64 / 1e6, h.len())
}

impl Snapshot {
    /// Publish attempts of every kind (answered or not).
    pub fn attempts_by_class_total(&self) -> u64 {
        self.attempts_by_class.iter().sum()
    }

    /// Token fetches that returned a token.
    pub fn token_fetches_ok(&self) -> u64 {
        self.token_fetches.get("ok").copied().unwrap_or(0)
    }
}

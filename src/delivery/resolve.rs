//! Resolving one publish request: attempts, retries and the verdict, shared by real-time lanes
//! and batch runs so both follow exactly the same rules.
//!
//! A request is sent until the partner accepts it ([`Resolution::Delivered`]), or it must be
//! given up ([`Resolution::Dead`]: a permanent answer, attempts used up, or events older than
//! `max_age`), or the daemon stops during a backoff ([`Resolution::Abandoned`]: the source keeps
//! the events). Between attempts: exponential backoff with full jitter, never sooner than the
//! partner's `Retry-After`. The destination's [`Circuit`] opens after consecutive failures and
//! then lets one probe through at a time, spaced by a growing backoff.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::request::PreparedRequest;
use super::retry::{retry_delay, Class};
use super::sender::{Outcome, Sender};
use crate::clock::now_ms;
use crate::config::RetryPolicy;
use crate::metrics::DestinationMetrics;
use crate::shutdown::{wait_for, RunState};
use crate::spool::DeadLetterInfo;

/// How a request ended.
#[derive(Debug)]
pub enum Resolution {
    Delivered,
    /// Give up: store it as a dead letter with this information.
    Dead(DeadLetterInfo),
    /// The daemon is stopping; the request was not acknowledged.
    Abandoned,
}

/// Consecutive-failure circuit of one lane. Closed: attempts go out freely. Open (after
/// `threshold` consecutive failures): one attempt at a time passes the gate, and the next may
/// not start before a gap after the last failed probe: the partner's `Retry-After` when it
/// sent one (at least [`MIN_PROBE_GAP`]), else a growing backoff; the first success closes it
/// and every batch waiting at the gate goes at once.
/// The shortest gap between probes, whatever `Retry-After` says (`Retry-After: 0` must not
/// turn probing into a loop).
pub const MIN_PROBE_GAP: Duration = Duration::from_millis(250);

pub struct Circuit {
    failures: AtomicU32,
    threshold: u32,
    /// Held by the current probe; holds when the next probe may start.
    gate: tokio::sync::Mutex<Option<Instant>>,
    initial: Duration,
    max_delay: Duration,
}

impl Circuit {
    pub fn new(retry: &RetryPolicy) -> Self {
        Self {
            failures: AtomicU32::new(0),
            threshold: retry.circuit_threshold,
            gate: tokio::sync::Mutex::new(None),
            initial: retry.initial,
            max_delay: retry.max_delay,
        }
    }

    /// Waits for this attempt's turn: at once while closed, else for the gate and its time.
    async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, Option<Instant>>> {
        if self.failures.load(Relaxed) < self.threshold {
            return None;
        }
        let gate = self.gate.lock().await;
        // Closed while this attempt waited for the gate: no need to hold it.
        if self.failures.load(Relaxed) < self.threshold {
            return None;
        }
        if let Some(at) = *gate {
            tokio::time::sleep_until(at).await;
        }
        Some(gate)
    }

    fn success(
        &self,
        destination: &str,
        gate: Option<tokio::sync::MutexGuard<'_, Option<Instant>>>,
    ) {
        if let Some(mut g) = gate {
            *g = None;
        }
        if self.failures.swap(0, Relaxed) >= self.threshold {
            tracing::info!(destination, "partner answers again; circuit closed");
        }
    }

    fn failure(
        &self,
        destination: &str,
        gate: Option<tokio::sync::MutexGuard<'_, Option<Instant>>>,
        retry_after: Option<Duration>,
    ) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n == self.threshold {
            tracing::warn!(
                destination,
                failures = n,
                "partner keeps failing; circuit open, sending one probe at a time"
            );
        }
        if let Some(mut g) = gate {
            let gap = match retry_after {
                // The partner says when to come back: after a long outage that is often much
                // sooner than the backoff has grown to.
                Some(ra) => ra.max(MIN_PROBE_GAP),
                None => {
                    // Equal jitter: the gap between probes never collapses to zero. Another
                    // request's success may have closed the circuit while this probe was out:
                    // then `n` is below the threshold and the gap is the shortest one.
                    let delay = retry_delay(
                        n.saturating_sub(self.threshold) + 1,
                        self.initial,
                        self.max_delay,
                        None,
                        1.0,
                    );
                    delay / 2 + delay.mul_f64(fastrand::f64() / 2.0)
                }
            };
            *g = Some(Instant::now() + gap);
        }
    }
}

/// Everything needed to resolve requests of one destination.
pub struct Resolver<'a> {
    pub sender: &'a Sender,
    pub retry: &'a RetryPolicy,
    /// IRIS profile: every failure is retried (within `max_attempts`), none is final at once.
    pub retry_permanent: bool,
    pub circuit: &'a Circuit,
    pub metrics: &'a DestinationMetrics,
    /// Asked before each retry: false abandons the batch (a Kafka partition it came from was
    /// revoked; its new owner delivers it). `None`: always wanted.
    pub still_wanted: Option<&'a (dyn Fn() -> bool + Send + Sync)>,
}

impl Resolver<'_> {
    /// Sends `req` until it resolves. `oldest_ms` is when its oldest event was accepted.
    pub async fn resolve(
        &self,
        req: &PreparedRequest,
        oldest_ms: i64,
        state: &mut watch::Receiver<RunState>,
    ) -> Resolution {
        let name = self.sender.destination.as_str();
        let users = req.users;
        let first_attempt_ms = now_ms();
        let mut attempt = 0u32;
        loop {
            let gate = tokio::select! {
                g = self.circuit.turn() => g,
                _ = wait_for(state, RunState::Stop) => return Resolution::Abandoned,
            };
            let probe = gate.is_some();
            attempt += 1;
            let (class, status, detail, retry_after) = match self.sender.send(req).await {
                Outcome::Delivered { .. } => {
                    self.circuit.success(name, gate);
                    return Resolution::Delivered;
                }
                Outcome::Failed {
                    class,
                    status,
                    detail,
                    retry_after,
                } => (class, status, detail, retry_after),
            };
            self.metrics.requests_failed.fetch_add(1, Relaxed);
            self.circuit.failure(name, gate, retry_after);
            let permanent = class == Class::Permanent && !self.retry_permanent;
            let exhausted = self.retry.max_attempts.is_some_and(|max| attempt >= max);
            let age = Duration::from_millis((now_ms() - oldest_ms).max(0) as u64);
            let too_old = age >= self.retry.max_age;
            if permanent || exhausted || too_old {
                let reason = if permanent {
                    detail
                } else if exhausted {
                    format!("gave up after {attempt} attempts (retry.max_attempts): {detail}")
                } else {
                    format!(
                        "older than retry.max_age ({} s): {detail}",
                        self.retry.max_age.as_secs()
                    )
                };
                tracing::warn!(
                    destination = name,
                    request_id = %req.request_id,
                    users,
                    status,
                    attempts = attempt,
                    %reason,
                    "dead-lettering the batch"
                );
                return Resolution::Dead(DeadLetterInfo {
                    reason,
                    status,
                    attempts: attempt,
                    first_attempt_ms,
                    last_attempt_ms: now_ms(),
                    request_id: req.request_id.clone(),
                });
            }
            if self.still_wanted.is_some_and(|wanted| !wanted()) {
                tracing::info!(
                    destination = name,
                    request_id = %req.request_id,
                    users,
                    "abandoning the batch: its source partition was revoked, the new owner delivers it"
                );
                return Resolution::Abandoned;
            }
            self.metrics.retries.fetch_add(1, Relaxed);
            // A failed probe goes straight back to the gate, which spaces the next one; any
            // other attempt waits its own backoff.
            let delay = (!probe).then(|| {
                retry_delay(
                    attempt,
                    self.retry.initial,
                    self.retry.max_delay,
                    retry_after,
                    fastrand::f64(),
                )
            });
            tracing::warn!(
                destination = name,
                request_id = %req.request_id,
                users,
                status,
                ?class,
                attempt,
                probe,
                retry_in_ms = delay.map(|d| d.as_millis() as u64),
                %detail,
                "publish failed; will retry"
            );
            let Some(delay) = delay else {
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_for(state, RunState::Stop) => return Resolution::Abandoned,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_attempts: None,
            max_age: Duration::from_secs(60),
            circuit_threshold: 2,
        }
    }

    #[tokio::test]
    async fn a_probe_failing_after_another_success_closed_the_circuit_is_fine() {
        let c = Circuit::new(&policy());
        c.failure("d", None, None);
        c.failure("d", None, None);
        let gate = c.turn().await;
        assert!(gate.is_some(), "open: attempts take the gate");
        // Meanwhile another request succeeds and closes the circuit...
        c.success("d", None);
        // ...and then the probe fails: no underflow, the next probe is spaced.
        c.failure("d", gate, None);
        let next = c.gate.lock().await.expect("a next-probe time is set");
        assert!(next > Instant::now());
        assert!(
            c.turn().await.is_none(),
            "one failure since the reset: closed"
        );
    }

    // Paused time: the gaps are exact, whatever else the machine is doing.
    #[tokio::test(start_paused = true)]
    async fn open_circuit_probes_follow_retry_after_but_never_faster_than_the_floor() {
        let mut p = policy();
        p.initial = Duration::from_secs(20);
        p.max_delay = Duration::from_secs(60);
        let c = Circuit::new(&p);
        c.failure("d", None, None);
        c.failure("d", None, None);
        // The partner says 1 s: the next probe waits exactly that, not the 10-20 s backoff.
        let gate = c.turn().await;
        let t = Instant::now();
        c.failure("d", gate, Some(Duration::from_secs(1)));
        let gate = c.turn().await;
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        // Retry-After: 0 is held to the floor.
        let t = Instant::now();
        c.failure("d", gate, Some(Duration::ZERO));
        let gate = c.turn().await;
        assert_eq!(t.elapsed(), MIN_PROBE_GAP);
        // Without Retry-After, the grown backoff (equal jitter: at least half of it).
        let t = Instant::now();
        c.failure("d", gate, None);
        let gate = c.turn().await;
        assert!(t.elapsed() >= Duration::from_secs(20), "{:?}", t.elapsed());
        // A success closes it: the next attempt does not wait.
        c.success("d", gate);
        assert!(c.turn().await.is_none());
    }
}

//! Fault injection for the mock partner: latency, injected error statuses (with optional
//! `Retry-After`), connections closed without an answer, and a slow or unavailable token
//! endpoint. Set at start (`[faults]` in the mock's config, `--fault KEY=VALUE`) and changed at
//! run time with `POST /_mock/faults` (the JSON form of [`Faults`]; `GET` shows the current
//! ones). The decision of what to do with one request is pure ([`Faults::decide`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The faults in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every publish answer, in milliseconds.
    pub latency_ms: u64,
    /// Random extra publish latency, uniform in [0, latency_jitter_ms].
    pub latency_jitter_ms: u64,
    /// Fraction (0.0 to 1.0) of publish requests answered with `error_status`.
    pub error_rate: f64,
    /// The next this-many publish requests are answered with `error_status`.
    pub fail_next: u64,
    /// Status of injected errors (500, 502, 503, 429, 400, ...).
    pub error_status: u16,
    /// `Retry-After` seconds on injected errors.
    pub retry_after_secs: Option<u64>,
    /// Fraction (0.0 to 1.0) of publish requests whose connection is closed without an answer.
    pub reset_rate: f64,
    /// Fraction (0.0 to 1.0) of publish requests answered with half a body, then a closed
    /// connection.
    pub truncate_rate: f64,
    /// Send publish answers 8 bytes at a time, one piece every this many milliseconds (0: off).
    pub dribble_ms: u64,
    /// The token endpoint answers 503 `temporarily_unavailable`.
    pub token_down: bool,
    /// Added before every token answer, in milliseconds.
    pub token_latency_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            error_rate: 0.0,
            fail_next: 0,
            error_status: 503,
            retry_after_secs: None,
            reset_rate: 0.0,
            truncate_rate: 0.0,
            dribble_ms: 0,
            token_down: false,
            token_latency_ms: 0,
        }
    }
}

/// What to do with one publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Handle it normally (after `delay`).
    Serve { delay: Duration },
    /// Answer `status` (after `delay`).
    Fail {
        delay: Duration,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without answering (after `delay`).
    Close { delay: Duration },
    /// Answer normally but close the connection half way through the body.
    Truncate { delay: Duration },
}

impl Faults {
    /// Checks the values are meaningful.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
            ("truncate_rate", self.truncate_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0.0 and 1.0, got {v}"));
            }
        }
        if !(100..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status {} is not an HTTP status",
                self.error_status
            ));
        }
        Ok(())
    }

    /// Decides the fate of one publish request; `fail_next` is consumed by the caller when the
    /// answer is an injected failure because of it. `r1`, `r2`, `r3` are random in [0, 1).
    pub fn decide(&self, r1: f64, r2: f64, r3: f64) -> Action {
        let jitter = (self.latency_jitter_ms as f64 * r3) as u64;
        let delay = Duration::from_millis(self.latency_ms + jitter);
        if r1 < self.reset_rate {
            return Action::Close { delay };
        }
        if r1 < self.reset_rate + self.truncate_rate {
            return Action::Truncate { delay };
        }
        if self.fail_next > 0 || r2 < self.error_rate {
            return Action::Fail {
                delay,
                status: self.error_status,
                retry_after: self.retry_after_secs,
            };
        }
        Action::Serve { delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_settings() {
        let f = Faults::default();
        assert_eq!(
            f.decide(0.0, 0.0, 0.0),
            Action::Serve {
                delay: Duration::ZERO
            }
        );
        let f = Faults {
            error_rate: 0.5,
            error_status: 502,
            latency_ms: 10,
            latency_jitter_ms: 10,
            ..Faults::default()
        };
        assert!(
            matches!(f.decide(0.9, 0.4, 0.5), Action::Fail { status: 502, delay, .. } if delay == Duration::from_millis(15))
        );
        assert!(matches!(f.decide(0.9, 0.6, 0.0), Action::Serve { .. }));
        let f = Faults {
            fail_next: 1,
            error_status: 429,
            retry_after_secs: Some(2),
            ..Faults::default()
        };
        assert_eq!(
            f.decide(0.9, 0.9, 0.0),
            Action::Fail {
                delay: Duration::ZERO,
                status: 429,
                retry_after: Some(2)
            }
        );
        let f = Faults {
            reset_rate: 1.0,
            ..Faults::default()
        };
        assert!(matches!(f.decide(0.5, 0.0, 0.0), Action::Close { .. }));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(Faults {
            error_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .unwrap_err()
        .contains("error_rate"));
        assert!(Faults {
            error_status: 42,
            ..Faults::default()
        }
        .validate()
        .unwrap_err()
        .contains("error_status"));
    }
}

/// One phase of a scenario: faults in force for a number of publish requests or seconds
/// (neither: until the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// The phase ends after this many publish requests...
    pub requests: Option<u64>,
    /// ...or after this many seconds, whichever comes first.
    pub seconds: Option<f64>,
    /// Faults of the phase (none: a healthy partner).
    #[serde(default)]
    pub faults: Faults,
}

/// Where a scenario is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Current phase; `== phases.len()` when every phase is over.
    pub index: usize,
    /// Seconds since the current phase started.
    pub elapsed_s: f64,
    /// Publish requests seen in the current phase.
    pub requests: u64,
}

/// Moves past every phase that is over (pure). Called before counting a request.
pub fn advance(phases: &[Phase], mut p: Progress) -> Progress {
    while let Some(phase) = phases.get(p.index) {
        let by_requests = phase.requests.is_some_and(|n| p.requests >= n);
        let by_time = phase.seconds.is_some_and(|s| p.elapsed_s >= s);
        if !(by_requests || by_time) {
            break;
        }
        // The next phase starts when this one ended, in time and in requests.
        let used = phase
            .seconds
            .filter(|_| by_time && !by_requests)
            .unwrap_or(p.elapsed_s);
        p = Progress {
            index: p.index + 1,
            elapsed_s: (p.elapsed_s - used).max(0.0),
            requests: 0,
        };
    }
    p
}

#[cfg(test)]
mod scenario_tests {
    use super::*;

    fn phase(requests: Option<u64>, seconds: Option<f64>) -> Phase {
        Phase {
            requests,
            seconds,
            faults: Faults::default(),
        }
    }

    #[test]
    fn phases_end_by_requests_or_time() {
        let phases = [
            phase(Some(100), None),
            phase(None, Some(30.0)),
            phase(None, None),
        ];
        let at = |index, elapsed_s, requests| Progress {
            index,
            elapsed_s,
            requests,
        };
        assert_eq!(advance(&phases, at(0, 500.0, 99)).index, 0);
        assert_eq!(advance(&phases, at(0, 0.0, 100)), at(1, 0.0, 0));
        assert_eq!(advance(&phases, at(1, 29.9, 1000)).index, 1);
        assert_eq!(advance(&phases, at(1, 31.0, 5)), at(2, 1.0, 0));
        assert_eq!(
            advance(&phases, at(2, 1e9, u64::MAX)).index,
            2,
            "the last phase has no end"
        );
        let timed = [phase(None, Some(1.0)), phase(None, Some(1.0))];
        assert_eq!(advance(&timed, at(0, 2.5, 0)).index, 2, "all over");
    }
}

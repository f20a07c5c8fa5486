//! Response classification and retry timing, free of I/O: what a partner's answer means for a
//! batch, how long to wait before the next attempt, and how to read `Retry-After`.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// What to do with a batch after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The partner took it.
    Delivered,
    /// 401: the token was rejected; refresh it and replay once.
    Unauthorized,
    /// 408, 429, 5xx, or no response at all: worth trying again later.
    Retryable,
    /// Any other answer: sending the same bytes again will not help.
    Permanent,
}

/// What counts as delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuccessPolicy {
    /// Statuses that count as delivered; empty = any 2xx.
    pub statuses: Vec<u16>,
}

impl SuccessPolicy {
    pub fn is_success(&self, status: StatusCode) -> bool {
        if self.statuses.is_empty() {
            status.is_success()
        } else {
            self.statuses.contains(&status.as_u16())
        }
    }
}

/// Classifies a partner status.
pub fn classify(status: StatusCode, success: &SuccessPolicy) -> Class {
    if success.is_success(status) {
        return Class::Delivered;
    }
    match status.as_u16() {
        401 => Class::Unauthorized,
        408 | 429 | 500..=599 => Class::Retryable,
        _ => Class::Permanent,
    }
}

/// Longest `Retry-After` we honour; a partner asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`.
pub fn parse_retry_after(headers: &HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        // IMF-fixdate, RFC 850 or asctime: RFC 9110 §5.6.7 wants recipients to take all three.
        let at = jiff::Timestamp::try_from(httpdate::parse_http_date(v).ok()?).ok()?;
        let ms = at.as_millisecond() - now.as_millisecond();
        Duration::from_millis(ms.max(0) as u64)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Backoff before attempt `attempt + 1` after `attempt` failures: exponential from `initial`,
/// capped at `max`, with full jitter (`unit` is random in [0, 1)); never shorter than the
/// partner's `Retry-After`.
pub fn retry_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let jittered = exp.min(max).mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let any = SuccessPolicy::default();
        let c = |s: u16| classify(StatusCode::from_u16(s).unwrap(), &any);
        assert_eq!(c(200), Class::Delivered);
        assert_eq!(c(204), Class::Delivered);
        assert_eq!(c(401), Class::Unauthorized);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(s), Class::Retryable, "{s}");
        }
        for s in [301, 400, 403, 404, 413, 422] {
            assert_eq!(c(s), Class::Permanent, "{s}");
        }
        let only_200 = SuccessPolicy {
            statuses: vec![200],
        };
        assert_eq!(
            classify(StatusCode::NO_CONTENT, &only_200),
            Class::Permanent
        );
        assert_eq!(classify(StatusCode::OK, &only_200), Class::Delivered);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:28:00Z".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:27:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            parse_retry_after(&h, now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        // The two obsolete forms recipients must accept too (RFC 9110 §5.6.7).
        h.insert(
            "retry-after",
            "Wednesday, 21-Oct-15 07:28:10 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert("retry-after", "Wed Oct 21 07:28:20 2015".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(20)));
        h.insert("retry-after", "999999".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn retry_delay_is_jittered_capped_and_honours_retry_after() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(retry_delay(1, i, m, None, 1.0), Duration::from_millis(100));
        assert_eq!(retry_delay(3, i, m, None, 1.0), Duration::from_millis(400));
        assert_eq!(retry_delay(30, i, m, None, 1.0), m);
        assert_eq!(retry_delay(30, i, m, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(3, i, m, None, 0.5), Duration::from_millis(200));
        for attempt in 1..40 {
            for unit in [0.0, 0.3, 0.999] {
                let d = retry_delay(attempt, i, m, Some(Duration::from_secs(5)), unit);
                assert_eq!(d, Duration::from_secs(5), "Retry-After is a floor");
                assert!(retry_delay(attempt, i, m, None, unit) <= m);
            }
        }
    }
}

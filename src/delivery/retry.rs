//! Response classification, free of I/O: what a partner's answer means for the batch.

use http::StatusCode;

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

/// Classifies a partner status. Success is any 2xx.
pub fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 => Class::Delivered,
        401 => Class::Unauthorized,
        408 | 429 | 500..=599 => Class::Retryable,
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let c = |s: u16| classify(StatusCode::from_u16(s).unwrap());
        assert_eq!(c(200), Class::Delivered);
        assert_eq!(c(204), Class::Delivered);
        assert_eq!(c(401), Class::Unauthorized);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(s), Class::Retryable, "{s}");
        }
        for s in [301, 400, 403, 404, 413, 422] {
            assert_eq!(c(s), Class::Permanent, "{s}");
        }
    }
}

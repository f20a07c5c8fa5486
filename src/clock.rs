//! The wall clock, in the one unit the spool, dead letters, checkpoints and metrics store:
//! milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

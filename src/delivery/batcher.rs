//! Batching decisions, free of I/O: a batch is sent when it reaches `max_users`, when the next
//! user would push its payload past `max_bytes`, or when it has waited `linger` (the lane owns
//! the clock and asks [`Batcher::deadline`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::payload::{PayloadHeader, UserRecord};

/// Accumulates user records into batches that respect the payload limits.
#[derive(Debug)]
pub struct Batcher {
    max_users: usize,
    max_bytes: usize,
    header: PayloadHeader,
    users: Vec<UserRecord>,
    /// Sum of the users' record sizes.
    users_bytes: usize,
    /// When the first user of the current batch arrived.
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(max_users: usize, max_bytes: usize, header: PayloadHeader) -> Self {
        Self {
            max_users: max_users.max(1),
            max_bytes,
            header,
            users: Vec::new(),
            users_bytes: 0,
            opened_at: None,
        }
    }

    /// The largest user record that fits in a payload on its own.
    pub fn max_record_bytes(&self) -> usize {
        self.max_bytes
            .saturating_sub(self.header.payload_size(1, 0))
    }

    /// Adds a user, calling `emit` with every batch that is complete as a result (the previous
    /// batch when this user does not fit in it, and/or the batch this user completes).
    pub fn push(&mut self, user: UserRecord, now: Instant, mut emit: impl FnMut(Vec<UserRecord>)) {
        let len = user.json.len();
        if !self.users.is_empty()
            && self
                .header
                .payload_size(self.users.len() + 1, self.users_bytes + len)
                > self.max_bytes
        {
            if let Some(batch) = self.take() {
                emit(batch);
            }
        }
        if self.users.is_empty() {
            self.opened_at = Some(now);
            self.users.reserve(self.max_users.min(1024));
        }
        self.users.push(user);
        self.users_bytes += len;
        if self.users.len() >= self.max_users {
            if let Some(batch) = self.take() {
                emit(batch);
            }
        }
    }

    /// Takes the current (partial) batch, if any.
    pub fn take(&mut self) -> Option<Vec<UserRecord>> {
        if self.users.is_empty() {
            return None;
        }
        self.users_bytes = 0;
        self.opened_at = None;
        Some(std::mem::take(&mut self.users))
    }

    /// When the current batch must be sent even if not full.
    pub fn deadline(&self, linger: Duration) -> Option<Instant> {
        self.opened_at.map(|t| t + linger)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn header() -> PayloadHeader {
        PayloadHeader {
            user_dpid: "1".into(),
            client_id: "2".into(),
            destination_id: "3".into(),
        }
    }

    fn user(n: usize) -> UserRecord {
        UserRecord::new(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn flushes_at_max_users() {
        let mut b = Batcher::new(3, 1 << 20, header());
        let mut out = Vec::new();
        let now = Instant::now();
        for _ in 0..7 {
            b.push(user(10), now, |batch| out.push(batch.len()));
        }
        assert_eq!(out, [3, 3]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.take().map(|v| v.len()), Some(1));
        assert!(b.take().is_none());
    }

    #[test]
    fn never_exceeds_max_bytes_and_loses_nothing() {
        let max_bytes = 1200;
        let mut b = Batcher::new(100, max_bytes, header());
        let mut batches = Vec::new();
        let now = Instant::now();
        let sizes = [100, 300, 250, 600, 50, 700, 10, 10, 400, 999 - 170];
        for &s in &sizes {
            b.push(user(s), now, |batch| batches.push(batch));
        }
        batches.extend(b.take());
        let total: usize = batches.iter().map(|v| v.len()).sum();
        assert_eq!(total, sizes.len());
        for batch in &batches {
            let bytes: usize = batch.iter().map(|u| u.json.len()).sum();
            assert!(
                header().payload_size(batch.len(), bytes) <= max_bytes,
                "{bytes}"
            );
        }
        let mut payload = Vec::new();
        for batch in &batches {
            payload.clear();
            let records: Vec<_> = batch
                .iter()
                .map(|u| {
                    UserRecord::new(Bytes::from(format!("\"{}\"", "y".repeat(u.json.len() - 2))))
                })
                .collect();
            header().write_payload(jiff::Timestamp::now(), &records, &mut payload);
            assert!(payload.len() <= max_bytes);
        }
    }

    #[test]
    fn deadline_starts_with_the_first_user() {
        let mut b = Batcher::new(10, 1 << 20, header());
        let linger = Duration::from_millis(200);
        assert!(b.deadline(linger).is_none());
        let t0 = Instant::now();
        b.push(user(5), t0, |_| {});
        b.push(user(5), t0 + Duration::from_millis(50), |_| {});
        assert_eq!(b.deadline(linger), Some(t0 + linger));
        b.take();
        assert!(b.deadline(linger).is_none());
    }
}

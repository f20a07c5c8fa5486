//! Properties, checked on generated inputs (proptest): a payload built from any valid users
//! parses back to exactly those users (plain and gzip'd); the batcher never exceeds
//! `max_users` or `max_bytes` and never loses, duplicates or reorders a user; the retry delay
//! always stays within its bounds and never undercuts the partner's `Retry-After`; whatever is
//! appended to the spool, acknowledged, dead-lettered and reopened, a reader from the start
//! returns exactly the events not yet done, and the counts and dead letters agree.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};
use irisd::delivery::batcher::Batcher;
use irisd::delivery::request::RequestBuilder;
use irisd::delivery::retry::{parse_retry_after, retry_delay, MAX_RETRY_AFTER};
use irisd::payload::{
    iris_date, parse_payload, render_segment, render_user_entry, PayloadHeader, UserRecord,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct GenUser {
    aam: String,
    dp: String,
    segments: Vec<(String, bool, i64)>,
}

fn user() -> impl Strategy<Value = GenUser> {
    (
        "[1-9][0-9]{0,37}",
        prop::collection::vec(any::<char>(), 0..30).prop_map(|c| c.into_iter().collect::<String>()),
        prop::collection::vec(("[0-9]{1,20}", any::<bool>(), 0i64..253_402_300_799), 1..5),
    )
        .prop_map(|(aam, dp, segments)| GenUser { aam, dp, segments })
}

fn header() -> PayloadHeader {
    PayloadHeader {
        user_dpid: "20915".into(),
        client_id: "74323".into(),
        destination_id: "423".into(),
    }
}

fn record(u: &GenUser) -> UserRecord {
    let mut segs = Vec::new();
    for (i, (id, on, secs)) in u.segments.iter().enumerate() {
        if i > 0 {
            segs.push(b',');
        }
        let t = jiff::Timestamp::from_second(*secs).unwrap().to_string();
        render_segment(
            id,
            if *on { "1" } else { "0" },
            Some(&t),
            jiff::Timestamp::UNIX_EPOCH,
            Some(i),
            &mut segs,
        )
        .unwrap();
    }
    render_user_entry(&u.aam, &u.dp, &segs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn payload_build_then_parse_gives_back_the_users(
        users in prop::collection::vec(user(), 1..25),
        gzip in any::<bool>(),
        now in 0i64..4_000_000_000,
    ) {
        let now = jiff::Timestamp::from_second(now).unwrap();
        let records: Vec<UserRecord> = users.iter().map(record).collect();
        let b = RequestBuilder::new(
            "https://p.example/s".parse().unwrap(),
            Method::POST,
            HeaderValue::from_static("Adobe Audience Manager Iris"),
            gzip.then(flate2::Compression::fast),
            header(),
        );
        let req = b.build(&records, now, "rid".into());
        let plain = if gzip {
            irisd::transport::gunzip_bounded(&req.body, 1 << 24).unwrap()
        } else {
            req.body.to_vec()
        };
        prop_assert_eq!(plain.len(), req.raw_len);
        let p = parse_payload(&plain, 1000).unwrap();
        prop_assert_eq!(&p.process_time, &iris_date(now));
        prop_assert_eq!(&p.user_dpid, "20915");
        prop_assert_eq!(p.user_count, users.len().to_string());
        prop_assert_eq!(p.users.len(), users.len());
        for (got, want) in p.users.iter().zip(&users) {
            prop_assert_eq!(&got.aam_uuid, &want.aam);
            prop_assert_eq!(&got.data_partner_uuid, &want.dp);
            prop_assert_eq!(got.segments.len(), want.segments.len());
            for (gs, (id, on, secs)) in got.segments.iter().zip(&want.segments) {
                prop_assert_eq!(&gs.segment_id, id);
                prop_assert_eq!(gs.status.as_str(), if *on { "1" } else { "0" });
                prop_assert_eq!(&gs.date_time, &iris_date(jiff::Timestamp::from_second(*secs).unwrap()));
            }
        }
    }

    #[test]
    fn the_batcher_respects_its_bounds_and_keeps_every_user_once_in_order(
        sizes in prop::collection::vec(1usize..3000, 0..300),
        max_users in 1usize..60,
        max_bytes in 1024usize..20_000,
    ) {
        let h = header();
        let mut batcher = Batcher::new(max_users, max_bytes, h.clone());
        let max_record = batcher.max_record_bytes();
        let now = tokio::time::Instant::now();
        let mut batches: Vec<Vec<UserRecord>> = Vec::new();
        let mut pushed = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            // Records larger than one payload are refused at the intake; never pushed.
            let size = (*size).min(max_record);
            let mut r = UserRecord::new(Bytes::from(vec![b'x'; size]));
            r.id = i as u64;
            pushed.push(i as u64);
            batcher.push(r, now, |b| batches.push(b));
        }
        batches.extend(batcher.take());
        let mut seen = Vec::new();
        for b in &batches {
            prop_assert!(!b.is_empty());
            prop_assert!(b.len() <= max_users, "{} users > {max_users}", b.len());
            let bytes: usize = b.iter().map(|u| u.json.len()).sum();
            prop_assert!(h.payload_size(b.len(), bytes) <= max_bytes);
            seen.extend(b.iter().map(|u| u.id));
        }
        prop_assert_eq!(seen, pushed);
    }

    #[test]
    fn retry_delays_stay_in_bounds_and_honour_retry_after(
        attempt in 1u32..200,
        initial_ms in 1u64..10_000,
        max_ms in 1u64..600_000,
        retry_after_s in prop::option::of(0u64..3600),
        unit in 0.0f64..1.0,
    ) {
        let initial = Duration::from_millis(initial_ms);
        let max = Duration::from_millis(max_ms);
        let ra = retry_after_s.map(Duration::from_secs);
        let d = retry_delay(attempt, initial, max, ra, unit);
        match ra {
            Some(ra) => {
                prop_assert!(d >= ra);
                prop_assert!(d <= max.max(ra));
            }
            None => prop_assert!(d <= max),
        }
        // The exponential never exceeds its own step before the cap.
        let step = initial.saturating_mul(1u32 << (attempt - 1).min(20));
        prop_assert!(d <= step.min(max).max(ra.unwrap_or_default()));
    }

    #[test]
    fn retry_after_is_capped_whatever_the_partner_says(secs in any::<u64>()) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, secs.to_string().parse().unwrap());
        let d = parse_retry_after(&h, jiff::Timestamp::UNIX_EPOCH).unwrap();
        prop_assert!(d <= MAX_RETRY_AFTER);
        prop_assert_eq!(d, Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
}

// ---------------------------------------------------------------------------------------------
// The spool: whatever is appended, acknowledged, dead-lettered and reopened, a reader from the
// start returns exactly the events not yet done, in order, with their bodies.
// ---------------------------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::sync::Arc;

use irisd::spool::{DeadLetterInfo, DeadLetterStore, EventBlock, Limits, Spool};

#[derive(Debug, Clone)]
enum SpoolOp {
    Append {
        dest: usize,
        n: usize,
    },
    /// Every `stride`-th outstanding event from `start` (a share of the queue), `len` of them.
    Ack {
        dest: usize,
        start: usize,
        stride: usize,
        len: usize,
    },
    Dead {
        dest: usize,
        start: usize,
        stride: usize,
        len: usize,
    },
    ReadAll {
        limit: usize,
    },
    Reopen,
}

fn spool_op() -> impl Strategy<Value = SpoolOp> {
    prop_oneof![
        3 => (0..2usize, 1..40usize).prop_map(|(dest, n)| SpoolOp::Append { dest, n }),
        4 => (0..2usize, 0..100usize, 1..4usize, 1..30usize)
            .prop_map(|(dest, start, stride, len)| SpoolOp::Ack { dest, start, stride, len }),
        1 => (0..2usize, 0..100usize, 1..4usize, 1..5usize)
            .prop_map(|(dest, start, stride, len)| SpoolOp::Dead { dest, start, stride, len }),
        2 => (1..50usize).prop_map(|limit| SpoolOp::ReadAll { limit }),
        1 => Just(SpoolOp::Reopen),
    ]
}

const SPOOL_DESTS: [&str; 2] = ["a", "b"];

fn spool_limits() -> Limits {
    Limits {
        fsync: false,
        max_bytes: 1 << 30,
        max_bytes_per_destination: 1 << 30,
    }
}

/// Reads a destination from the start the way a lane does (inside the last block first).
fn read_everything(spool: &Spool, dest: &str, limit: usize) -> Vec<(u64, Bytes)> {
    let reader = spool.reader(dest).unwrap();
    let (mut cursor, mut out) = (0, Vec::new());
    loop {
        let rows = match reader.read_cached(cursor, limit) {
            Some(rows) => rows,
            None => reader.read_after(cursor, limit).unwrap(),
        };
        assert!(rows.len() <= limit);
        let Some(last) = rows.last() else {
            return out;
        };
        cursor = last.id;
        out.extend(rows.into_iter().map(|r| (r.id, r.json)));
    }
}

fn pick(queue: &BTreeMap<u64, Bytes>, start: usize, stride: usize, len: usize) -> Vec<u64> {
    let ids: Vec<u64> = queue.keys().copied().collect();
    let from = start * ids.len() / 100;
    ids.into_iter()
        .skip(from)
        .step_by(stride)
        .take(len)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_spool_returns_exactly_what_is_not_done(ops in prop::collection::vec(spool_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut spool = Spool::open(&path, spool_limits()).unwrap();
            let mut queues: [BTreeMap<u64, Bytes>; 2] = Default::default();
            let mut dead: Vec<u64> = Vec::new();
            let mut serial = 0u64;
            for op in ops {
                match op {
                    SpoolOp::Append { dest, n } => {
                        let bodies: Vec<Bytes> = (0..n)
                            .map(|_| {
                                serial += 1;
                                Bytes::from(format!("{{\"event\":{serial}}}"))
                            })
                            .collect();
                        let bytes = bodies.iter().map(|b| b.len() as u64).sum();
                        let r = spool.reserve(SPOOL_DESTS[dest], bytes).unwrap();
                        let name: Arc<str> = SPOOL_DESTS[dest].into();
                        let ids = spool
                            .append(vec![(name, EventBlock::from_bodies(&bodies))], 1, vec![r])
                            .await
                            .unwrap()
                            .remove(0);
                        prop_assert_eq!(ids.len(), n);
                        queues[dest].extend(ids.into_iter().zip(bodies));
                    }
                    SpoolOp::Ack { dest, start, stride, len } => {
                        let ids = pick(&queues[dest], start, stride, len);
                        let bytes = ids.iter().map(|i| queues[dest][i].len() as u64).sum();
                        for i in &ids {
                            queues[dest].remove(i);
                        }
                        spool.ack(SPOOL_DESTS[dest].into(), ids, bytes);
                    }
                    SpoolOp::Dead { dest, start, stride, len } => {
                        let ids = pick(&queues[dest], start, stride, len);
                        if ids.is_empty() {
                            continue;
                        }
                        let bytes = ids.iter().map(|i| queues[dest][i].len() as u64).sum();
                        for i in &ids {
                            queues[dest].remove(i);
                        }
                        dead.extend(&ids);
                        let info = DeadLetterInfo {
                            reason: "r".into(),
                            status: Some(400),
                            attempts: 1,
                            first_attempt_ms: 0,
                            last_attempt_ms: 0,
                            request_id: "x".into(),
                        };
                        spool.dead_letter(SPOOL_DESTS[dest].into(), ids, bytes, info).await.unwrap();
                    }
                    SpoolOp::ReadAll { limit } => {
                        spool.sync().await;
                        for (dest, queue) in queues.iter().enumerate() {
                            let got = read_everything(&spool, SPOOL_DESTS[dest], limit);
                            let want: Vec<(u64, Bytes)> =
                                queue.iter().map(|(i, b)| (*i, b.clone())).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                    SpoolOp::Reopen => {
                        spool.sync().await;
                        drop(spool);
                        spool = Spool::open(&path, spool_limits()).unwrap();
                        for (dest, queue) in queues.iter().enumerate() {
                            let name = SPOOL_DESTS[dest];
                            prop_assert_eq!(spool.events(name), queue.len() as u64);
                            let bytes: u64 = queue.values().map(|b| b.len() as u64).sum();
                            prop_assert_eq!(spool.bytes(name).0, bytes);
                        }
                    }
                }
            }
            spool.sync().await;
            let dlq = DeadLetterStore::open(&path).unwrap();
            let mut listed: Vec<u64> = dlq.list(None, 100_000).unwrap().iter().map(|d| d.id).collect();
            listed.sort_unstable();
            dead.sort_unstable();
            prop_assert_eq!(listed, dead);
            let pending: u64 = dlq.pending().unwrap().iter().map(|(_, n)| n).sum();
            prop_assert_eq!(pending, (queues[0].len() + queues[1].len()) as u64);
            for (dest, queue) in queues.iter().enumerate() {
                let got = read_everything(&spool, SPOOL_DESTS[dest], 7);
                prop_assert_eq!(got.len(), queue.len());
            }
            Ok(())
        })?;
    }
}

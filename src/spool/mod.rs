//! The durable spool: every accepted event lives here, on disk, until its partner acknowledged
//! it (2xx) or it was durably dead-lettered.
//!
//! The store is SQLite in WAL mode (chosen by measurement, see BENCHMARKS.md; it also lets
//! `irisd dlq` work on the spool while the daemon runs). One writer thread owns the write
//! connection and group-commits: it takes every pending command (appends, acks, dead-letter
//! moves) off its queue, applies them in one transaction, commits — with an fsync whenever the
//! transaction holds appends or dead letters — and only then answers the callers. So the intake
//! answers 202 after the fsync that covers its events, and many concurrent intake requests
//! share one fsync. Acks alone are committed without fsync: losing one in a crash means a
//! duplicate delivery, never a loss. Event ids come from a counter stored in the database and
//! advanced inside each write transaction, so ids stay unique even when another process
//! (`irisd dlq replay`) writes too.
//!
//! Events are stored in **blocks**: one row per intake request and destination, holding its
//! events (consecutive ids) length-prefixed. Readers hand out slices of a block without
//! copying. An acknowledgement marks its events in the block's bit set (`block_done`, written
//! in the same transaction); the block's rows are deleted once every event in it is delivered
//! or dead-lettered. So the per-event cost is a bit, not a B-tree insert and delete, and a
//! restart redelivers exactly what was not acknowledged (schema 2; schema-1 spools, a row per
//! event, are migrated at open).
//!
//! The spool is bounded: bytes per destination and in total are accounted in memory (recomputed
//! from the blocks at open); an append that would pass a bound is refused and the intake answers
//! 503 with `Retry-After`.

mod block;
mod dead_letters;
mod reader;
mod schema;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub use block::EventBlock;
pub use dead_letters::{DeadLetter, DeadLetterInfo, DeadLetterStore};
pub use reader::SpoolReader;
use schema::pending_by_destination;
pub(crate) use schema::store_err;
pub use schema::{open_connection, SpoolError};
use writer::Command;

/// How full the spool may be and still report ready.
pub const READY_BELOW: f64 = 0.95;

/// Once an append was refused for lack of room, how far the spool must drain to be ready again.
pub const READY_AGAIN_BELOW: f64 = 0.90;

/// Bounds of the spool.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_bytes_per_destination: u64,
    /// fsync every commit that answers a caller (appends, dead letters). Off: commits survive
    /// a crash of the process but not of the machine.
    pub fsync: bool,
}

/// The spool. Cheap to share (`Arc`).
pub struct Spool {
    path: PathBuf,
    tx: std::sync::mpsc::SyncSender<Command>,
    limits: Limits,
    usage: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    /// Events spooled per destination (for the spool depth metric).
    events: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    total: Arc<AtomicU64>,
    health: Arc<writer::WriterHealth>,
    /// An append was refused for the total bound, and the spool has not drained below
    /// [`READY_AGAIN_BELOW`] since.
    full: std::sync::atomic::AtomicBool,
    acks: Arc<writer::AckQueue>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).finish()
    }
}

impl Spool {
    /// Opens (or creates) the spool at `path` and starts its writer thread.
    pub fn open(path: &Path, limits: Limits) -> Result<Arc<Spool>, SpoolError> {
        schema::create_directory(path)?;
        let conn = open_connection(path)?;
        schema::check_structure(&conn, path)?;
        let mut usage = HashMap::new();
        let mut events = HashMap::new();
        let mut total = 0u64;
        for (dest, bytes, count) in pending_by_destination(&conn).map_err(|e| store_err(path, e))? {
            total += bytes;
            let dest = Arc::<str>::from(dest);
            usage.insert(dest.clone(), Arc::new(AtomicU64::new(bytes)));
            events.insert(dest, Arc::new(AtomicU64::new(count)));
        }
        let health = Arc::new(writer::WriterHealth::default());
        let acks = Arc::new(writer::AckQueue::default());
        let tx = writer::start(conn, limits.fsync, path, health.clone(), acks.clone())?;
        Ok(Arc::new(Spool {
            path: path.to_owned(),
            tx,
            limits,
            usage: Mutex::new(usage),
            events: Mutex::new(events),
            total: Arc::new(AtomicU64::new(total)),
            health,
            full: std::sync::atomic::AtomicBool::new(false),
            acks,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the spool cannot take events now, if it cannot: its writer stopped or its last
    /// write failed, or it is full: an append was refused for `spool.max_bytes` and it has not
    /// drained below [`READY_AGAIN_BELOW`] since, or it is [`READY_BELOW`] full already (an
    /// instance about to answer 503 should leave its load balancer's rotation first).
    pub fn not_ready(&self) -> Option<String> {
        if let Some(problem) = self.health.problem() {
            return Some(problem);
        }
        let used = self.total.load(Relaxed);
        let limit = self.limits.max_bytes;
        let full = self.full.load(Relaxed) || used as f64 >= limit as f64 * READY_BELOW;
        full.then(|| {
            format!(
                "the spool is {:.0} % full ({used} of {limit} bytes, spool.max_bytes)",
                used as f64 * 100.0 / limit as f64
            )
        })
    }

    fn usage_of(&self, destination: &str) -> Arc<AtomicU64> {
        let mut u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = u.get(destination) {
            return a.clone();
        }
        let a = Arc::new(AtomicU64::new(0));
        u.insert(destination.into(), a.clone());
        a
    }

    fn events_of(&self, destination: &str) -> Arc<AtomicU64> {
        let mut e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        e.entry(destination.into()).or_default().clone()
    }

    /// Events waiting in the spool for `destination`.
    pub fn events(&self, destination: &str) -> u64 {
        self.events_of(destination).load(Relaxed)
    }

    fn count_events(&self, destination: &str, delta: i64) {
        let _ = self
            .events_of(destination)
            .fetch_update(Relaxed, Relaxed, |v| {
                Some(if delta >= 0 {
                    v + delta as u64
                } else {
                    v.saturating_sub(delta.unsigned_abs())
                })
            });
    }

    /// Bytes spooled for `destination` and in total.
    pub fn bytes(&self, destination: &str) -> (u64, u64) {
        (
            self.usage_of(destination).load(Relaxed),
            self.total.load(Relaxed),
        )
    }

    /// Destinations with events in the spool.
    pub fn destinations_with_events(&self) -> Vec<(String, u64)> {
        let u = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        u.iter()
            .filter(|(_, b)| b.load(Relaxed) > 0)
            .map(|(d, b)| (d.to_string(), b.load(Relaxed)))
            .collect()
    }

    /// Reserves room for `bytes` more in `destination`, or says which bound is hit.
    pub fn reserve(&self, destination: &str, bytes: u64) -> Result<Reservation, SpoolError> {
        let dest = self.usage_of(destination);
        let full = |used, limit, which| SpoolError::Full {
            destination: destination.to_string(),
            used,
            limit,
            which,
        };
        let prev = dest.fetch_add(bytes, Relaxed);
        if prev + bytes > self.limits.max_bytes_per_destination {
            dest.fetch_sub(bytes, Relaxed);
            return Err(full(
                prev,
                self.limits.max_bytes_per_destination,
                "spool.max_bytes_per_destination",
            ));
        }
        let prev_total = self.total.fetch_add(bytes, Relaxed);
        if prev_total + bytes > self.limits.max_bytes {
            self.total.fetch_sub(bytes, Relaxed);
            dest.fetch_sub(bytes, Relaxed);
            self.full.store(true, Relaxed);
            return Err(full(prev_total, self.limits.max_bytes, "spool.max_bytes"));
        }
        Ok(Reservation {
            dest,
            total: self.total.clone(),
            bytes,
        })
    }

    /// Whether `bytes` more could fit now, checked before the request bringing them is parsed,
    /// so that a full spool refuses without spending the CPU parsing costs. `destinations`:
    /// the ones the request may be for (one, for `/v1/destinations/NAME/events`); it is refused
    /// when the total would pass its bound, or when every one of them would pass its own. The
    /// reservation after parsing, with the real sizes, stays the authority.
    pub fn precheck<'a>(
        &self,
        destinations: impl IntoIterator<Item = &'a str>,
        bytes: u64,
    ) -> Result<(), SpoolError> {
        let total = self.total.load(Relaxed);
        let mut first = None;
        if total.saturating_add(bytes) > self.limits.max_bytes {
            self.full.store(true, Relaxed);
            return Err(SpoolError::Full {
                destination: destinations.into_iter().next().unwrap_or("").to_string(),
                used: total,
                limit: self.limits.max_bytes,
                which: "spool.max_bytes",
            });
        }
        for d in destinations {
            let used = self.usage_of(d).load(Relaxed);
            if used.saturating_add(bytes) <= self.limits.max_bytes_per_destination {
                return Ok(());
            }
            first.get_or_insert((d, used));
        }
        match first {
            Some((d, used)) => Err(SpoolError::Full {
                destination: d.to_string(),
                used,
                limit: self.limits.max_bytes_per_destination,
                which: "spool.max_bytes_per_destination",
            }),
            None => Ok(()),
        }
    }

    /// Durably appends events of one or more destinations, all or nothing; returns their ids
    /// (per destination, in order) once the fsync covering them is done. The reservations
    /// must cover the bodies' bytes; they become the events' accounting.
    pub async fn append(
        &self,
        items: Vec<(Arc<str>, EventBlock)>,
        accepted_at_ms: i64,
        reservations: Vec<Reservation>,
    ) -> Result<Vec<Vec<u64>>, SpoolError> {
        let counts: Vec<(Arc<str>, usize)> =
            items.iter().map(|(d, b)| (d.clone(), b.len())).collect();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            items,
            accepted_at_ms,
            reply,
        })?;
        let ids = rx
            .await
            .map_err(|_| SpoolError::Closed(self.path.display().to_string()))??;
        reservations.into_iter().for_each(Reservation::keep);
        for (dest, n) in &counts {
            self.count_events(dest, *n as i64);
        }
        Ok(ids)
    }

    fn send(&self, cmd: Command) -> Result<(), SpoolError> {
        self.tx
            .send(cmd)
            .map_err(|_| SpoolError::Closed(self.path.display().to_string()))
    }

    /// Forgets delivered events (`bytes` is the size of their bodies). Not fsync'd on its own:
    /// a lost ack means a duplicate, never a loss.
    pub fn ack(&self, destination: Arc<str>, ids: Vec<u64>, bytes: u64) {
        self.release(&destination, bytes);
        self.count_events(&destination, -(ids.len() as i64));
        if self.acks.push(destination, ids) {
            let _ = self.send(Command::AcksPending);
        }
    }

    fn release(&self, destination: &str, bytes: u64) {
        let sub = |a: &AtomicU64| {
            let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
        };
        sub(&self.usage_of(destination));
        sub(&self.total);
        if self.full.load(Relaxed)
            && (self.total.load(Relaxed) as f64) < self.limits.max_bytes as f64 * READY_AGAIN_BELOW
        {
            self.full.store(false, Relaxed);
        }
    }

    /// Durably moves events to the dead-letter table.
    pub async fn dead_letter(
        &self,
        destination: Arc<str>,
        ids: Vec<u64>,
        bytes: u64,
        info: DeadLetterInfo,
    ) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DeadLetter {
            destination: destination.clone(),
            ids,
            info,
            reply,
        })?;
        rx.await
            .map_err(|_| SpoolError::Closed(self.path.display().to_string()))??;
        self.release(&destination, bytes);
        Ok(())
    }

    /// Waits until everything sent before is committed.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// A reader for one destination (its own connection; WAL readers never block the writer).
    pub fn reader(&self, destination: &str) -> Result<SpoolReader, SpoolError> {
        SpoolReader::open(&self.path, destination)
    }
}

/// Room taken in the spool's accounting; given back on drop unless the append succeeded.
pub struct Reservation {
    dest: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl Reservation {
    fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.dest.fetch_sub(self.bytes, Relaxed);
            self.total.fetch_sub(self.bytes, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rusqlite::Connection;

    use crate::payload::UserRecord;

    fn limits() -> Limits {
        Limits {
            fsync: true,
            max_bytes: 10_000,
            max_bytes_per_destination: 6_000,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn append_read_ack_survives_reopen_and_ids_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        rt().block_on(async {
            let spool = Spool::open(&path, limits()).unwrap();
            let dest: Arc<str> = "a".into();
            let r = spool.reserve("a", 6).unwrap();
            let ids = spool
                .append(
                    vec![(
                        dest.clone(),
                        EventBlock::from_bodies(&[
                            Bytes::from_static(b"one"),
                            Bytes::from_static(b"two"),
                        ]),
                    )],
                    5,
                    vec![r],
                )
                .await
                .unwrap();
            assert_eq!(ids, [[1, 2]]);
            assert_eq!(spool.bytes("a"), (6, 6));
            assert_eq!(spool.events("a"), 2);
            let reader = spool.reader("a").unwrap();
            let got = reader.read_after(0, 10).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(&got[1].json[..], b"two");
            assert_eq!(got[1].accepted_at_ms, 5);
            assert_eq!(reader.read_after(1, 10).unwrap().len(), 1);
            spool.ack(dest.clone(), vec![1], 3);
            spool.sync().await;
            assert_eq!(reader.read_after(0, 10).unwrap().len(), 1);
        });
        rt().block_on(async {
            let spool = Spool::open(&path, limits()).unwrap();
            assert_eq!(spool.bytes("a"), (3, 3), "usage recomputed at open");
            assert_eq!(spool.events("a"), 1);
            let r = spool.reserve("a", 1).unwrap();
            let ids = spool
                .append(
                    vec![(
                        "a".into(),
                        EventBlock::from_bodies(&[Bytes::from_static(b"x")]),
                    )],
                    6,
                    vec![r],
                )
                .await
                .unwrap();
            assert_eq!(ids, [[3]], "ids never reused");
        });
    }

    #[test]
    fn reservations_enforce_both_bounds_and_are_returned_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s"), limits()).unwrap();
        let a = spool.reserve("a", 5_000).unwrap();
        assert!(matches!(
            spool.reserve("a", 1_001),
            Err(SpoolError::Full {
                which: "spool.max_bytes_per_destination",
                ..
            })
        ));
        let _b = spool.reserve("b", 4_000).unwrap();
        assert!(matches!(
            spool.reserve("c", 1_001),
            Err(SpoolError::Full {
                which: "spool.max_bytes",
                ..
            })
        ));
        drop(a);
        assert_eq!(spool.bytes("a").0, 0);
        assert!(spool.reserve("c", 1_001).is_ok());
    }

    #[test]
    fn dead_letters_move_durably_and_replay_with_new_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        rt().block_on(async {
            let spool = Spool::open(&path, limits()).unwrap();
            let r = spool.reserve("a", 2).unwrap();
            let ids = spool
                .append(
                    vec![(
                        "a".into(),
                        EventBlock::from_bodies(&[
                            Bytes::from_static(b"1"),
                            Bytes::from_static(b"2"),
                        ]),
                    )],
                    1,
                    vec![r],
                )
                .await
                .unwrap()
                .remove(0);
            let info = DeadLetterInfo {
                reason: "partner answered 400: bad".into(),
                status: Some(400),
                attempts: 1,
                first_attempt_ms: 10,
                last_attempt_ms: 11,
                request_id: "rid".into(),
            };
            spool.dead_letter("a".into(), ids, 2, info).await.unwrap();
            assert_eq!(spool.bytes("a").0, 0);
            assert!(spool
                .reader("a")
                .unwrap()
                .read_after(0, 10)
                .unwrap()
                .is_empty());

            let mut dlq = DeadLetterStore::open(&path).unwrap();
            let list = dlq.list(Some("a"), 10).unwrap();
            assert_eq!(list.len(), 2);
            assert_eq!(list[0].status, Some(400));
            assert_eq!(list[0].reason, "partner answered 400: bad");
            assert_eq!(dlq.show(2).unwrap().unwrap().body, Bytes::from_static(b"2"));
            assert_eq!(dlq.purge(Some("other"), None).unwrap(), 0);
            assert_eq!(dlq.replay(Some("a"), None).unwrap(), 2);
            assert!(dlq.list(None, 10).unwrap().is_empty());
            let back = spool.reader("a").unwrap().read_after(2, 10).unwrap();
            assert_eq!(back.iter().map(|s| s.id).collect::<Vec<_>>(), [3, 4]);
            assert_eq!(dlq.pending().unwrap(), [("a".to_string(), 2)]);

            let info = DeadLetterInfo {
                reason: "r".into(),
                status: None,
                attempts: 3,
                first_attempt_ms: 0,
                last_attempt_ms: 0,
                request_id: "x".into(),
            };
            spool
                .dead_letter("a".into(), vec![3], 1, info)
                .await
                .unwrap();
            assert_eq!(dlq.purge(None, Some(3)).unwrap(), 1);
            assert!(dlq.list(None, 10).unwrap().is_empty());
        });
    }

    fn bodies(range: std::ops::Range<u32>) -> Vec<Bytes> {
        range.map(|i| Bytes::from(format!("event-{i}"))).collect()
    }

    async fn append(spool: &Spool, dest: &str, events: Vec<Bytes>) -> Vec<u64> {
        let bytes = events.iter().map(|b| b.len() as u64).sum();
        let r = spool.reserve(dest, bytes).unwrap();
        spool
            .append(
                vec![(dest.into(), EventBlock::from_bodies(&events))],
                7,
                vec![r],
            )
            .await
            .unwrap()
            .remove(0)
    }

    fn rows(path: &Path, sql: &str) -> i64 {
        open_connection(path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    fn ids_of(records: &[UserRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    fn big_limits() -> Limits {
        Limits {
            fsync: true,
            max_bytes: 1 << 30,
            max_bytes_per_destination: 1 << 30,
        }
    }

    #[test]
    fn an_append_is_one_row_and_reads_resume_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            let ids = append(&spool, "a", bodies(0..150)).await;
            assert_eq!(ids, (1..=150).collect::<Vec<_>>());
            assert_eq!(append(&spool, "b", bodies(0..3)).await, [151, 152, 153]);
            assert_eq!(append(&spool, "a", bodies(150..160)).await.len(), 10);
            assert_eq!(rows(&path, "SELECT count(*) FROM blocks"), 3);

            let reader = spool.reader("a").unwrap();
            let first = reader.read_after(0, 100).unwrap();
            assert_eq!(ids_of(&first), (1..=100).collect::<Vec<_>>());
            assert_eq!(&first[99].json[..], b"event-99");
            // Continues inside the block, then into the next one of this destination.
            let second = reader.read_after(100, 100).unwrap();
            assert_eq!(
                ids_of(&second),
                (101..=150).chain(154..=163).collect::<Vec<_>>()
            );
            assert_eq!(&second[50].json[..], b"event-150");
            assert!(reader.read_after(163, 100).unwrap().is_empty());
            // A fresh reader (a restarted lane) resumes in the middle of a block too.
            let fresh = spool.reader("a").unwrap();
            assert_eq!(
                ids_of(&fresh.read_after(120, 5).unwrap()),
                [121, 122, 123, 124, 125]
            );
        });
    }

    #[test]
    fn partly_acked_blocks_survive_a_restart_without_redelivery_and_go_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            append(&spool, "a", bodies(0..100)).await; // ids 1..=100
            append(&spool, "a", bodies(0..100)).await; // ids 101..=200
                                                       // Out of order, across the two blocks, and one ack twice.
            spool.ack("a".into(), (91..=110).collect(), 20 * 8);
            spool.ack("a".into(), (1..=10).collect(), 10 * 7);
            spool.sync().await;
            assert_eq!(spool.events("a"), 170);
            spool.ack("a".into(), (5..=6).collect(), 0);
            spool.sync().await;
            assert_eq!(rows(&path, "SELECT count(*) FROM blocks"), 2);
            assert_eq!(
                rows(&path, "SELECT sum(done) FROM block_done"),
                30,
                "an event acked twice is done once"
            );
        });
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            assert_eq!(
                spool.events("a"),
                170,
                "recounted at open, done events excluded"
            );
            let pending: u64 = bodies(10..90)
                .iter()
                .chain(&bodies(10..100))
                .map(|b| b.len() as u64)
                .sum();
            assert_eq!(spool.bytes("a").0, pending);
            let got = spool.reader("a").unwrap().read_after(0, 1000).unwrap();
            assert_eq!(
                ids_of(&got),
                (11..=90).chain(111..=200).collect::<Vec<_>>(),
                "acked events are not delivered again"
            );
            spool.ack("a".into(), (11..=90).collect(), 0);
            spool.sync().await;
            assert_eq!(
                rows(&path, "SELECT count(*) FROM blocks"),
                1,
                "first block complete"
            );
            assert_eq!(rows(&path, "SELECT count(*) FROM block_done"), 1);
            spool.ack("a".into(), (111..=200).collect(), 0);
            spool.sync().await;
            assert_eq!(rows(&path, "SELECT count(*) FROM blocks"), 0);
            assert_eq!(rows(&path, "SELECT count(*) FROM block_done"), 0);
        });
    }

    #[test]
    fn a_dead_letter_from_the_middle_of_a_block_keeps_the_rest_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            append(&spool, "a", bodies(0..10)).await;
            let info = DeadLetterInfo {
                reason: "partner answered 400".into(),
                status: Some(400),
                attempts: 1,
                first_attempt_ms: 1,
                last_attempt_ms: 2,
                request_id: "r".into(),
            };
            spool
                .dead_letter("a".into(), vec![4, 5], 16, info)
                .await
                .unwrap();
            let dlq = DeadLetterStore::open(&path).unwrap();
            let dead = dlq.list(None, 10).unwrap();
            assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), [4, 5]);
            assert_eq!(dead[0].body, Bytes::from_static(b"event-3"));
            assert_eq!(dead[0].accepted_at_ms, 7);
            assert_eq!(dlq.pending().unwrap(), [("a".to_string(), 8)]);
        });
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            let got = spool.reader("a").unwrap().read_after(0, 100).unwrap();
            assert_eq!(ids_of(&got), [1, 2, 3, 6, 7, 8, 9, 10]);
        });
    }

    #[test]
    fn a_version_1_spool_is_migrated_with_its_events_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO meta VALUES ('schema', 1), ('next_id', 43);
                 CREATE TABLE events (dest TEXT NOT NULL, id INTEGER NOT NULL, accepted_at INTEGER NOT NULL,
                     body BLOB NOT NULL, PRIMARY KEY (dest, id)) WITHOUT ROWID;
                 INSERT INTO events VALUES ('a', 40, 5, x'6f6e65'), ('a', 42, 6, x'74776f'), ('b', 41, 5, x'78');",
            )
            .unwrap();
        }
        rt().block_on(async {
            let spool = Spool::open(&path, big_limits()).unwrap();
            assert_eq!(spool.events("a"), 2);
            assert_eq!(spool.bytes("a").0, 6);
            let got = spool.reader("a").unwrap().read_after(0, 10).unwrap();
            assert_eq!(ids_of(&got), [40, 42]);
            assert_eq!((&got[1].json[..], got[1].accepted_at_ms), (&b"two"[..], 6));
            assert_eq!(append(&spool, "b", bodies(0..1)).await, [43]);
        });
        assert_eq!(
            rows(&path, "SELECT value FROM meta WHERE key = 'schema'"),
            schema::SCHEMA
        );
        assert_eq!(
            rows(
                &path,
                "SELECT count(*) FROM sqlite_master WHERE name = 'events'"
            ),
            0
        );
    }

    #[test]
    fn a_file_that_is_not_a_spool_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let e = Spool::open(&path, limits()).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a database"), "{e}");
    }
}

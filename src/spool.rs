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
//! The spool is bounded: bytes per destination and in total are accounted in memory (recomputed
//! from the table at open); an append that would pass a bound is refused and the intake answers
//! 503 with `Retry-After`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::payload::UserRecord;

/// A spool problem; messages name the spool file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {message}")]
    Store { path: String, message: String },
    /// A bound would be passed; nothing was written.
    #[error("spool full for destination {destination:?}: {used} of {limit} bytes ({which})")]
    Full {
        destination: String,
        used: u64,
        limit: u64,
        which: &'static str,
    },
    #[error("spool {0}: the writer stopped")]
    Closed(String),
}

/// Why and how a set of events was given up.
#[derive(Debug, Clone)]
pub struct DeadLetterInfo {
    pub reason: String,
    pub status: Option<u16>,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub last_attempt_ms: i64,
    pub request_id: String,
}

/// One dead letter, for `irisd dlq`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub destination: String,
    pub id: u64,
    pub accepted_at_ms: i64,
    pub reason: String,
    pub status: Option<u16>,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub last_attempt_ms: i64,
    pub request_id: String,
    #[serde(skip)]
    pub body: Bytes,
}

/// Bounds of the spool.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_bytes_per_destination: u64,
    /// fsync every commit that answers a caller (appends, dead letters). Off: commits survive
    /// a crash of the process but not of the machine.
    pub fsync: bool,
}

enum Command {
    /// Events of several destinations, written together or not at all.
    Append {
        items: Vec<(Arc<str>, Vec<Bytes>)>,
        accepted_at_ms: i64,
        reply: oneshot::Sender<Result<Vec<Vec<u64>>, SpoolError>>,
    },
    Ack {
        destination: Arc<str>,
        ids: Vec<u64>,
    },
    DeadLetter {
        destination: Arc<str>,
        ids: Vec<u64>,
        info: DeadLetterInfo,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Answers once everything queued before it is committed.
    Sync(oneshot::Sender<()>),
}

/// Commands applied in one transaction at most.
const GROUP_COMMIT_MAX: usize = 512;

/// The spool. Cheap to share (`Arc`).
pub struct Spool {
    path: PathBuf,
    tx: std::sync::mpsc::SyncSender<Command>,
    limits: Limits,
    usage: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    /// Events spooled per destination (for the spool depth metric).
    events: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    total: Arc<AtomicU64>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).finish()
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Opens a connection with the spool's settings and checks the file is a spool.
pub fn open_connection(path: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_err(path, e))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1), ('next_id', 1);
             CREATE TABLE IF NOT EXISTS events (
                 dest TEXT NOT NULL, id INTEGER NOT NULL, accepted_at INTEGER NOT NULL, body BLOB NOT NULL,
                 PRIMARY KEY (dest, id)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS dead_letters (
                 dest TEXT NOT NULL, id INTEGER NOT NULL, accepted_at INTEGER NOT NULL, body BLOB NOT NULL,
                 reason TEXT NOT NULL, status INTEGER, attempts INTEGER NOT NULL,
                 first_attempt_at INTEGER NOT NULL, last_attempt_at INTEGER NOT NULL, request_id TEXT NOT NULL,
                 PRIMARY KEY (dest, id)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS batch_files (
                 path TEXT PRIMARY KEY, dest TEXT NOT NULL, size INTEGER NOT NULL, mtime_ms INTEGER NOT NULL,
                 fingerprint BLOB NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
                 users INTEGER NOT NULL, segments INTEGER NOT NULL, requests INTEGER NOT NULL,
                 rejects INTEGER NOT NULL, rejects_len INTEGER NOT NULL, dead_lettered INTEGER NOT NULL,
                 status TEXT NOT NULL, error TEXT, started_at INTEGER NOT NULL, finished_at INTEGER) WITHOUT ROWID;",
        )?;
        let schema: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })?;
        if schema != 1 {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "unsupported spool schema version {schema}"
            )));
        }
        Ok(())
    };
    setup().map_err(|e| store_err(path, e))?;
    Ok(conn)
}

impl Spool {
    /// Opens (or creates) the spool at `path` and starts its writer thread.
    pub fn open(path: &Path, limits: Limits) -> Result<Arc<Spool>, SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| store_err(path, format!("cannot create its directory: {e}")))?;
        }
        let conn = open_connection(path)?;
        // Quick structural check: a damaged file is reported now, with its path, not later.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| store_err(path, e))?;
        if check != "ok" {
            return Err(store_err(path, format!("integrity check failed: {check}")));
        }
        let mut usage = HashMap::new();
        let mut events = HashMap::new();
        let mut total = 0u64;
        {
            let mut st = conn
                .prepare("SELECT dest, sum(length(body)), count(*) FROM events GROUP BY dest")
                .map_err(|e| store_err(path, e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| store_err(path, e))?;
            for row in rows {
                let (dest, bytes, count) = row.map_err(|e| store_err(path, e))?;
                total += bytes as u64;
                let dest = Arc::<str>::from(dest);
                usage.insert(dest.clone(), Arc::new(AtomicU64::new(bytes as u64)));
                events.insert(dest, Arc::new(AtomicU64::new(count as u64)));
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        // The writer exits when the last `Spool` (and with it the sender) is dropped.
        std::thread::Builder::new()
            .name("irisd-spool-writer".into())
            .spawn(move || writer_loop(conn, rx, limits.fsync))
            .map_err(|e| store_err(path, e))?;
        Ok(Arc::new(Spool {
            path: path.to_owned(),
            tx,
            limits,
            usage: Mutex::new(usage),
            events: Mutex::new(events),
            total: Arc::new(AtomicU64::new(total)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
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
            return Err(full(prev_total, self.limits.max_bytes, "spool.max_bytes"));
        }
        Ok(Reservation {
            dest,
            total: self.total.clone(),
            bytes,
        })
    }

    /// Durably appends events of one or more destinations, all or nothing; returns their ids
    /// (per destination, in order) once the fsync covering them is done. The reservations
    /// must cover the bodies' bytes; they become the events' accounting.
    pub async fn append(
        &self,
        items: Vec<(Arc<str>, Vec<Bytes>)>,
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
        let _ = self.send(Command::Ack { destination, ids });
    }

    fn release(&self, destination: &str, bytes: u64) {
        let sub = |a: &AtomicU64| {
            let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes)));
        };
        sub(&self.usage_of(destination));
        sub(&self.total);
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
        Ok(SpoolReader {
            conn: Mutex::new(open_connection(&self.path)?),
            path: self.path.clone(),
            destination: destination.to_string(),
        })
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

/// Reads one destination's events in id order.
pub struct SpoolReader {
    conn: Mutex<Connection>,
    path: PathBuf,
    destination: String,
}

impl SpoolReader {
    /// Up to `limit` events with id greater than `after`, oldest first (blocking).
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<UserRecord>, SpoolError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = conn
            .prepare_cached("SELECT id, accepted_at, body FROM events WHERE dest = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
            .map_err(|e| store_err(&self.path, e))?;
        let rows = st
            .query_map(params![self.destination, after as i64, limit as i64], |r| {
                Ok(UserRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    accepted_at_ms: r.get(1)?,
                    json: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                })
            })
            .map_err(|e| store_err(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| store_err(&self.path, e))
    }
}

fn writer_loop(mut conn: Connection, rx: std::sync::mpsc::Receiver<Command>, fsync: bool) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let durable = fsync
            && batch
                .iter()
                .any(|c| matches!(c, Command::Append { .. } | Command::DeadLetter { .. }));
        match apply(&mut conn, &batch, durable) {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for cmd in batch.drain(..) {
                    match cmd {
                        Command::Append { reply, .. } => {
                            let _ = reply.send(Ok(ids.next().unwrap_or_default()));
                        }
                        Command::DeadLetter { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                        Command::Sync(reply) => {
                            let _ = reply.send(());
                        }
                        Command::Ack { .. } => {}
                    }
                }
            }
            Err(e) => {
                // The transaction rolled back: nothing of this group was written. Callers are
                // told; lost acks only mean duplicates later.
                tracing::error!(error = %e, "spool write failed");
                for cmd in batch.drain(..) {
                    match cmd {
                        Command::Append { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Command::DeadLetter { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Command::Sync(reply) => {
                            let _ = reply.send(());
                        }
                        Command::Ack { .. } => {}
                    }
                }
            }
        }
    }
}

/// Runs of consecutive ids, as (first, last), in the order given.
fn runs(ids: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *ids.get(i)?;
        let mut last = first;
        i += 1;
        while ids.get(i) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        Some((first, last))
    })
}

/// Applies a group of commands in one transaction; returns the ids given to each append, in
/// order. On error the transaction is rolled back.
fn apply(
    conn: &mut Connection,
    batch: &[Command],
    durable: bool,
) -> Result<Vec<Vec<Vec<u64>>>, SpoolError> {
    let path = conn.path().map(PathBuf::from).unwrap_or_default();
    let err = |e: rusqlite::Error| store_err(&path, e);
    // Acks alone need no fsync; anything we answer callers about does.
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })
        .map_err(err)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let wanted: usize = batch
        .iter()
        .map(|c| match c {
            Command::Append { items, .. } => items.iter().map(|(_, b)| b.len()).sum(),
            _ => 0,
        })
        .sum();
    let mut next_id = take_ids(&tx, wanted).map_err(err)?;
    let mut appended = Vec::new();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (dest, id, accepted_at, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(err)?;
        let mut delete = tx
            .prepare_cached("DELETE FROM events WHERE dest = ?1 AND id BETWEEN ?2 AND ?3")
            .map_err(err)?;
        let mut move_dead = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                   (dest, id, accepted_at, body, reason, status, attempts, first_attempt_at, last_attempt_at, request_id)
                 SELECT dest, id, accepted_at, body, ?3, ?4, ?5, ?6, ?7, ?8 FROM events WHERE dest = ?1 AND id = ?2",
            )
            .map_err(err)?;
        for cmd in batch {
            match cmd {
                Command::Append {
                    items,
                    accepted_at_ms,
                    ..
                } => {
                    let mut per_destination = Vec::with_capacity(items.len());
                    for (destination, bodies) in items {
                        let mut ids = Vec::with_capacity(bodies.len());
                        for body in bodies {
                            insert
                                .execute(params![
                                    &**destination,
                                    next_id,
                                    accepted_at_ms,
                                    body.as_ref()
                                ])
                                .map_err(err)?;
                            ids.push(next_id as u64);
                            next_id += 1;
                        }
                        per_destination.push(ids);
                    }
                    appended.push(per_destination);
                }
                Command::Ack { destination, ids } => {
                    // A batch's ids are mostly one run of consecutive ids: one range delete
                    // (one B-tree descent) per run instead of one per event.
                    for (first, last) in runs(ids) {
                        delete
                            .execute(params![&**destination, first as i64, last as i64])
                            .map_err(err)?;
                    }
                }
                Command::DeadLetter {
                    destination,
                    ids,
                    info,
                    ..
                } => {
                    for &id in ids {
                        move_dead
                            .execute(params![
                                &**destination,
                                id as i64,
                                info.reason,
                                info.status,
                                info.attempts,
                                info.first_attempt_ms,
                                info.last_attempt_ms,
                                info.request_id
                            ])
                            .map_err(err)?;
                        delete
                            .execute(params![&**destination, id as i64, id as i64])
                            .map_err(err)?;
                    }
                }
                Command::Sync(_) => {}
            }
        }
    }
    tx.commit().map_err(err)?;
    Ok(appended)
}

// ---------------------------------------------------------------------------------------------
// Dead-letter administration (`irisd dlq`), usable while the daemon runs.
// ---------------------------------------------------------------------------------------------

/// Dead-letter operations on a spool file, for the CLI.
pub struct DeadLetterStore {
    conn: Connection,
    path: PathBuf,
}

impl DeadLetterStore {
    pub fn open(path: &Path) -> Result<Self, SpoolError> {
        if !path.exists() {
            return Err(store_err(
                path,
                "no spool file here (has the daemon run with this config?)",
            ));
        }
        Self::open_or_create(path)
    }

    /// Opens the spool file, creating it if needed (batch runs may come before the daemon).
    pub fn open_or_create(path: &Path) -> Result<Self, SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| store_err(path, format!("cannot create its directory: {e}")))?;
        }
        Ok(Self {
            conn: open_connection(path)?,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> SpoolError {
        store_err(&self.path, e)
    }

    /// The connection, for other tables in the same file (batch checkpoints).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dead letters, oldest first, optionally of one destination.
    pub fn list(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, SpoolError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT dest, id, accepted_at, reason, status, attempts, first_attempt_at, last_attempt_at, request_id, body
                 FROM dead_letters WHERE (?1 IS NULL OR dest = ?1) ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![destination, limit as i64], row_to_dead_letter)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One dead letter by id.
    pub fn show(&self, id: u64) -> Result<Option<DeadLetter>, SpoolError> {
        self.conn
            .query_row(
                "SELECT dest, id, accepted_at, reason, status, attempts, first_attempt_at, last_attempt_at, request_id, body
                 FROM dead_letters WHERE id = ?1",
                [id as i64],
                row_to_dead_letter,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Moves dead letters back into the spool with new ids (so a running daemon picks them up
    /// after what it already read). Returns how many.
    pub fn replay(
        &mut self,
        destination: Option<&str>,
        id: Option<u64>,
    ) -> Result<usize, SpoolError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| store_err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let rows: Vec<(String, i64, i64, Vec<u8>)> = {
            let mut st = tx
                .prepare(
                    "SELECT dest, id, accepted_at, body FROM dead_letters
                     WHERE (?1 IS NULL OR dest = ?1) AND (?2 IS NULL OR id = ?2) ORDER BY id",
                )
                .map_err(err)?;
            let rows = st
                .query_map(params![destination, id.map(|i| i as i64)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        let first = take_ids(&tx, rows.len()).map_err(err)?;
        // A replayed event starts a new life: its age counts from the replay.
        for (next_id, (dest, old_id, _accepted_at, body)) in (first..).zip(&rows) {
            tx.execute(
                "INSERT INTO events (dest, id, accepted_at, body) VALUES (?1, ?2, ?3, ?4)",
                params![dest, next_id, now_ms(), body],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM dead_letters WHERE dest = ?1 AND id = ?2",
                params![dest, old_id],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(rows.len())
    }

    /// Stores events that never were in the spool (a batch chunk given up) as dead letters,
    /// durably. Returns their new ids.
    pub fn add(
        &mut self,
        destination: &str,
        bodies: &[Bytes],
        accepted_at_ms: i64,
        info: &DeadLetterInfo,
    ) -> Result<Vec<u64>, SpoolError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| store_err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let first = take_ids(&tx, bodies.len()).map_err(err)?;
        let mut ids = Vec::with_capacity(bodies.len());
        for (next_id, body) in (first..).zip(bodies) {
            tx.execute(
                "INSERT INTO dead_letters
                   (dest, id, accepted_at, body, reason, status, attempts, first_attempt_at, last_attempt_at, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    destination,
                    next_id,
                    accepted_at_ms,
                    body.as_ref(),
                    info.reason,
                    info.status,
                    info.attempts,
                    info.first_attempt_ms,
                    info.last_attempt_ms,
                    info.request_id
                ],
            )
            .map_err(err)?;
            ids.push(next_id as u64);
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    /// Deletes dead letters for good. Returns how many.
    pub fn purge(
        &mut self,
        destination: Option<&str>,
        id: Option<u64>,
    ) -> Result<usize, SpoolError> {
        self.conn
            .execute(
                "DELETE FROM dead_letters WHERE (?1 IS NULL OR dest = ?1) AND (?2 IS NULL OR id = ?2)",
                params![destination, id.map(|i| i as i64)],
            )
            .map_err(|e| self.err(e))
    }

    /// Events still waiting for delivery, per destination.
    pub fn pending(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        let mut st = self
            .conn
            .prepare("SELECT dest, count(*) FROM events GROUP BY dest ORDER BY dest")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn row_to_dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        destination: r.get(0)?,
        id: r.get::<_, i64>(1)? as u64,
        accepted_at_ms: r.get(2)?,
        reason: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        first_attempt_ms: r.get(6)?,
        last_attempt_ms: r.get(7)?,
        request_id: r.get(8)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(9)?),
    })
}

/// Takes `n` event ids from the counter in the database (inside the caller's transaction, so
/// ids stay unique across processes); returns the first.
fn take_ids(tx: &rusqlite::Transaction<'_>, n: usize) -> rusqlite::Result<i64> {
    let first: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
        r.get(0)
    })?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
        [first + n as i64],
    )?;
    Ok(first)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_exactly_the_ids() {
        let ids = [3, 4, 5, 9, 11, 12, 7];
        assert_eq!(
            runs(&ids).collect::<Vec<_>>(),
            [(3, 5), (9, 9), (11, 12), (7, 7)]
        );
        assert_eq!(runs(&[]).count(), 0);
    }

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
                        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")],
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
                    vec![("a".into(), vec![Bytes::from_static(b"x")])],
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
                        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")],
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

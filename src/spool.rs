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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::clock::now_ms;
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
        items: Vec<(Arc<str>, EventBlock)>,
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

/// The writer connection's page cache, in KiB (SQLite's `cache_size` takes KiB as negative).
const WRITER_CACHE_KIB: i64 = -16 * 1024;

/// How long the writer waits for more acks when it has nothing but acks to commit.
const ACK_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

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
             INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 2), ('next_id', 1);
             CREATE TABLE IF NOT EXISTS blocks (
                 first_id INTEGER PRIMARY KEY, dest TEXT NOT NULL, count INTEGER NOT NULL,
                 accepted_at INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS blocks_by_dest ON blocks (dest, first_id);
             CREATE TABLE IF NOT EXISTS block_done (
                 first_id INTEGER PRIMARY KEY, done INTEGER NOT NULL, bits BLOB NOT NULL);
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
        match schema {
            SCHEMA => Ok(()),
            1 => migrate_from_v1(&conn),
            _ => Err(rusqlite::Error::InvalidParameterName(format!(
                "unsupported spool schema version {schema} (this irisd reads versions 1 and {SCHEMA})"
            ))),
        }
    };
    setup().map_err(|e| store_err(path, e))?;
    Ok(conn)
}

/// The spool's schema version: 2 stores events in blocks (one row per intake request and
/// destination); version 1 stored a row per event.
const SCHEMA: i64 = 2;

/// Rewrites a version-1 spool (a row per event) as blocks of one event, in one transaction
/// (another process may be doing the same: the schema is checked again inside it).
fn migrate_from_v1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let run = || -> rusqlite::Result<()> {
        let schema: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })?;
        if schema != 1 {
            return Ok(());
        }
        let has_events: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if has_events {
            let mut select = conn.prepare("SELECT dest, id, accepted_at, body FROM events")?;
            let mut insert = conn.prepare(
                "INSERT INTO blocks (first_id, dest, count, accepted_at, body) VALUES (?1, ?2, 1, ?3, ?4)",
            )?;
            let mut rows = select.query([])?;
            while let Some(r) = rows.next()? {
                let mut block = EventBlock::new();
                block.push(r.get_ref(3)?.as_blob()?);
                insert.execute(params![
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(2)?,
                    block.body
                ])?;
            }
            conn.execute_batch("DROP TABLE events")?;
        }
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'schema'", [SCHEMA])?;
        Ok(())
    };
    match run() {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Per destination: the bytes and the number of events not yet done (delivered or
/// dead-lettered). Blocks partly done are read to subtract what is done.
fn pending_by_destination(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, u64)>> {
    let mut totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut st = conn.prepare(
        "SELECT dest, sum(length(body) - 4 * count), sum(count) FROM blocks GROUP BY dest",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        totals.insert(
            r.get(0)?,
            (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
        );
    }
    let mut st = conn.prepare(
        "SELECT b.dest, b.count, b.body, d.bits FROM blocks b JOIN block_done d ON d.first_id = b.first_id",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (dest, count): (String, u32) = (r.get(0)?, r.get(1)?);
        let body = Bytes::from(r.get::<_, Vec<u8>>(2)?);
        let (Some(events), Some(done)) = (
            decode_block(&body, count as usize),
            DoneBits::from_stored(count, &r.get::<_, Vec<u8>>(3)?),
        ) else {
            continue;
        };
        if let Some((bytes, n)) = totals.get_mut(&dest) {
            for (i, e) in events.iter().enumerate() {
                if done.is_done(i as u32) {
                    *bytes = bytes.saturating_sub(e.len() as u64);
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
    Ok(totals.into_iter().map(|(d, (b, n))| (d, b, n)).collect())
}

/// Events of one destination as the spool stores them in one row: each event's length (u32,
/// little endian) followed by its bytes. The intake renders events straight into it, so an
/// event costs no allocation of its own between the request and the disk.
#[derive(Debug, Default, Clone)]
pub struct EventBlock {
    body: Vec<u8>,
    count: usize,
}

impl EventBlock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A block of these events.
    pub fn from_bodies(bodies: &[Bytes]) -> Self {
        let mut block = Self {
            body: Vec::with_capacity(bodies.iter().map(|b| 4 + b.len()).sum()),
            count: 0,
        };
        for b in bodies {
            block.push(b);
        }
        block
    }

    pub fn push(&mut self, event: &[u8]) {
        self.body
            .extend_from_slice(&(event.len() as u32).to_le_bytes());
        self.body.extend_from_slice(event);
        self.count += 1;
    }

    /// Appends the event `render` writes; returns it (as written in the block). If `render`
    /// fails, the block is left as it was.
    pub fn push_with<E>(
        &mut self,
        render: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<&[u8], E> {
        let at = self.body.len();
        self.body.extend_from_slice(&[0; 4]);
        if let Err(e) = render(&mut self.body) {
            self.body.truncate(at);
            return Err(e);
        }
        let len = (self.body.len() - at - 4) as u32;
        self.body[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(&self.body[at + 4..])
    }

    /// Events in the block.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the events themselves (what the spool's bounds count).
    pub fn event_bytes(&self) -> u64 {
        (self.body.len() - 4 * self.count) as u64
    }
}

/// A block's events (slices of `body`, no copies); `None` unless it holds exactly `count`.
fn decode_block(body: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    let mut events = Vec::with_capacity(count);
    let mut at = 0usize;
    while at < body.len() {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&e| e <= body.len())?;
        events.push(body.slice(start..end));
        at = end;
    }
    (events.len() == count).then_some(events)
}

/// Which events of a block are done (delivered or dead-lettered): a bit per event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DoneBits {
    words: Vec<u64>,
    done: u32,
    count: u32,
}

impl DoneBits {
    fn new(count: u32) -> Self {
        Self {
            words: vec![0; (count as usize).div_ceil(64)],
            done: 0,
            count,
        }
    }

    /// Read back from `block_done`; `None` if the stored bits do not fit the block.
    fn from_stored(count: u32, bits: &[u8]) -> Option<Self> {
        let mut d = Self::new(count);
        if bits.len() != d.words.len() * 8 {
            return None;
        }
        for (w, chunk) in d.words.iter_mut().zip(bits.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        d.done = d.words.iter().map(|w| w.count_ones()).sum();
        (d.done <= count).then_some(d)
    }

    fn stored(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn is_done(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks event `i`; marking one twice counts once.
    fn mark(&mut self, i: u32) {
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        if self.words[w] & b == 0 {
            self.words[w] |= b;
            self.done += 1;
        }
    }

    fn complete(&self) -> bool {
        self.done == self.count
    }
}

impl Spool {
    /// Opens (or creates) the spool at `path` and starts its writer thread.
    pub fn open(path: &Path, limits: Limits) -> Result<Arc<Spool>, SpoolError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| store_err(path, format!("cannot create its directory: {e}")))?;
        }
        let conn = open_connection(path)?;
        // The writer deletes blocks soon after writing them: a page cache that holds the
        // blocks in flight spares re-reading their overflow pages from the WAL to free them.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(|e| store_err(path, e))?;
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
        for (dest, bytes, count) in pending_by_destination(&conn).map_err(|e| store_err(path, e))? {
            total += bytes;
            let dest = Arc::<str>::from(dest);
            usage.insert(dest.clone(), Arc::new(AtomicU64::new(bytes)));
            events.insert(dest, Arc::new(AtomicU64::new(count)));
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
            current: Mutex::new(None),
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
    /// The block the last read stopped inside, decoded (its events are slices of one buffer).
    current: Mutex<Option<Block>>,
}

/// A block read back: events `first_id ..` in order, with what was already done at read time.
struct Block {
    first_id: u64,
    accepted_at_ms: i64,
    events: Vec<Bytes>,
    done: Option<DoneBits>,
}

impl Block {
    fn covers(&self, id: u64) -> bool {
        id >= self.first_id && id < self.first_id + self.events.len() as u64
    }

    /// Appends its events with id greater than `after` (and not done) to `out`, up to `limit`
    /// in all; returns the last id it looked at.
    fn take(&self, after: u64, limit: usize, out: &mut Vec<UserRecord>) -> u64 {
        let mut last = after;
        let skip = after.saturating_sub(self.first_id - 1) as usize;
        for (i, json) in self.events.iter().enumerate().skip(skip) {
            if out.len() >= limit {
                break;
            }
            let id = self.first_id + i as u64;
            last = id;
            if self.done.as_ref().is_some_and(|d| d.is_done(i as u32)) {
                continue;
            }
            out.push(UserRecord {
                id,
                accepted_at_ms: self.accepted_at_ms,
                json: json.clone(),
            });
        }
        last
    }
}

const BLOCK_COLUMNS: &str = "SELECT b.first_id, b.accepted_at, b.count, b.body, d.bits
     FROM blocks b LEFT JOIN block_done d ON d.first_id = b.first_id";

fn row_to_block(r: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    let first_id = r.get::<_, i64>(0)? as u64;
    let count: u32 = r.get(2)?;
    let body = Bytes::from(r.get::<_, Vec<u8>>(3)?);
    let events = decode_block(&body, count as usize).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(
            3,
            format!("block {first_id}"),
            rusqlite::types::Type::Blob,
        )
    })?;
    let done = r
        .get::<_, Option<Vec<u8>>>(4)?
        .and_then(|bits| DoneBits::from_stored(count, &bits));
    Ok(Block {
        first_id,
        accepted_at_ms: r.get(1)?,
        events,
        done,
    })
}

/// Takes events after `after` from `current` (the block a read stopped inside) if it holds
/// `after + 1`, and forgets the block once it is read to its end. Returns the last id looked
/// at, or `None` when the block does not hold `after + 1`.
fn take_current(
    current: &mut Option<Block>,
    after: u64,
    limit: usize,
    out: &mut Vec<UserRecord>,
) -> Option<u64> {
    let block = current.as_ref().filter(|b| b.covers(after + 1))?;
    let last = block.take(after, limit, out);
    if !block.covers(last + 1) {
        *current = None;
    }
    Some(last)
}

impl SpoolReader {
    /// Events after `after` from the block the last read stopped inside, without touching
    /// the file (so without a blocking call); `None` when that block does not hold them.
    pub fn read_cached(&self, after: u64, limit: usize) -> Option<Vec<UserRecord>> {
        let mut current = self.current.try_lock().ok()?;
        let mut out = Vec::with_capacity(limit.min(4096));
        take_current(&mut current, after, limit, &mut out)?;
        (!out.is_empty()).then_some(out)
    }

    /// Up to `limit` events with id greater than `after`, oldest first (blocking).
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<UserRecord>, SpoolError> {
        let err = |e| store_err(&self.path, e);
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut cursor = after;
        // The block holding `after + 1`: usually the one the last read stopped in.
        if !current.as_ref().is_some_and(|b| b.covers(cursor + 1)) {
            *current = None;
            if cursor > 0 {
                let mut st = conn
                    .prepare_cached(&format!(
                        "{BLOCK_COLUMNS} WHERE b.dest = ?1 AND b.first_id <= ?2 ORDER BY b.first_id DESC LIMIT 1"
                    ))
                    .map_err(err)?;
                *current = st
                    .query_row(params![self.destination, (cursor + 1) as i64], row_to_block)
                    .optional()
                    .map_err(err)?
                    .filter(|b| b.covers(cursor + 1));
            }
        }
        if let Some(last) = take_current(&mut current, cursor, limit, &mut out) {
            cursor = last;
        }
        if out.len() < limit && current.is_none() {
            let mut st = conn
                .prepare_cached(&format!(
                    "{BLOCK_COLUMNS} WHERE b.dest = ?1 AND b.first_id > ?2 ORDER BY b.first_id LIMIT ?3"
                ))
                .map_err(err)?;
            // Rows are stepped lazily: reading stops once `limit` events are taken.
            let mut rows = st
                .query(params![self.destination, cursor as i64, limit as i64])
                .map_err(err)?;
            while out.len() < limit {
                let Some(row) = rows.next().map_err(err)? else {
                    break;
                };
                let block = row_to_block(row).map_err(err)?;
                cursor = block.take(cursor, limit, &mut out);
                if block.covers(cursor + 1) {
                    *current = Some(block);
                }
            }
        }
        Ok(out)
    }
}

fn writer_loop(mut conn: Connection, rx: std::sync::mpsc::Receiver<Command>, fsync: bool) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut progress = Progress::default();
    let mut synchronous = None;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Nobody waits for acks: gather them a little longer, so a busy lane's acks share
        // one transaction. Anything else (an append, a dead letter, a sync) ends the wait.
        if batch.iter().all(|c| matches!(c, Command::Ack { .. })) {
            let until = std::time::Instant::now() + ACK_LINGER;
            while batch.len() < GROUP_COMMIT_MAX {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(c) => {
                        let ack = matches!(c, Command::Ack { .. });
                        batch.push(c);
                        if !ack {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        let durable = fsync
            && batch
                .iter()
                .any(|c| matches!(c, Command::Append { .. } | Command::DeadLetter { .. }));
        match apply(&mut conn, &mut progress, &mut synchronous, &batch, durable) {
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

/// What the writer knows of blocks partly done: their bits, loaded from the file on first
/// touch and kept until the block is complete (then its rows are deleted). Only the writer
/// thread touches it; `irisd dlq replay` in another process only adds new blocks.
#[derive(Default)]
struct Progress {
    blocks: std::collections::BTreeMap<u64, DoneBits>,
}

impl Progress {
    /// The first block of `destination` holding an id in `from..=to`, loaded if needed.
    fn find(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        destination: &str,
        from: u64,
        to: u64,
    ) -> rusqlite::Result<Option<u64>> {
        if let Some((&first, bits)) = self.blocks.range(..=from).next_back() {
            if from < first + bits.count as u64 {
                return Ok(Some(first));
            }
        }
        let mut holding = tx.prepare_cached(
            "SELECT b.first_id, b.count, d.bits FROM blocks b LEFT JOIN block_done d ON d.first_id = b.first_id
             WHERE b.dest = ?1 AND b.first_id <= ?2 ORDER BY b.first_id DESC LIMIT 1",
        )?;
        let mut next = tx.prepare_cached(
            "SELECT b.first_id, b.count, d.bits FROM blocks b LEFT JOIN block_done d ON d.first_id = b.first_id
             WHERE b.dest = ?1 AND b.first_id > ?2 ORDER BY b.first_id LIMIT 1",
        )?;
        let row = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, u32>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        };
        let found = match holding
            .query_row(params![destination, from as i64], row)
            .optional()?
            .filter(|(first, count, _)| from < first + *count as u64)
        {
            Some(b) => Some(b),
            None => next
                .query_row(params![destination, from as i64], row)
                .optional()?
                .filter(|(first, _, _)| *first <= to),
        };
        Ok(found.map(|(first, count, bits)| {
            let bits = bits
                .and_then(|b| DoneBits::from_stored(count, &b))
                .unwrap_or_else(|| DoneBits::new(count));
            self.blocks.entry(first).or_insert(bits);
            first
        }))
    }

    /// Marks the ids `from..=to` of `destination` done; a block done entirely is deleted,
    /// one done in part is noted in `touched` (its bits are written before the commit). Ids in
    /// no block (done before) are skipped.
    fn mark(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        destination: &str,
        from: u64,
        to: u64,
        touched: &mut Vec<u64>,
    ) -> rusqlite::Result<()> {
        let mut id = from;
        while id <= to {
            let Some(first) = self.find(tx, destination, id, to)? else {
                break;
            };
            let bits = self
                .blocks
                .get_mut(&first)
                .expect("found blocks are loaded");
            let start = id.max(first);
            let end = to.min(first + bits.count as u64 - 1);
            for i in start..=end {
                bits.mark((i - first) as u32);
            }
            if bits.complete() {
                self.blocks.remove(&first);
                tx.prepare_cached("DELETE FROM blocks WHERE first_id = ?1")?
                    .execute([first as i64])?;
                tx.prepare_cached("DELETE FROM block_done WHERE first_id = ?1")?
                    .execute([first as i64])?;
            } else {
                touched.push(first);
            }
            id = end + 1;
        }
        Ok(())
    }

    /// Writes the bits of blocks done in part (so a restart does not deliver them again).
    fn save(&self, tx: &rusqlite::Transaction<'_>, touched: &mut Vec<u64>) -> rusqlite::Result<()> {
        touched.sort_unstable();
        touched.dedup();
        let mut st = tx.prepare_cached(
            "INSERT OR REPLACE INTO block_done (first_id, done, bits) VALUES (?1, ?2, ?3)",
        )?;
        for first in touched.drain(..) {
            if let Some(bits) = self.blocks.get(&first) {
                st.execute(params![first as i64, bits.done, bits.stored()])?;
            }
        }
        Ok(())
    }
}

/// Applies a group of commands in one transaction; returns the ids given to each append, in
/// order. On error the transaction is rolled back (acks already marked in `progress` are then
/// only in memory: a crash before they are written again means duplicates, never a loss).
fn apply(
    conn: &mut Connection,
    progress: &mut Progress,
    synchronous: &mut Option<bool>,
    batch: &[Command],
    durable: bool,
) -> Result<Vec<Vec<Vec<u64>>>, SpoolError> {
    let path = conn.path().map(PathBuf::from).unwrap_or_default();
    let err = |e: rusqlite::Error| store_err(&path, e);
    // Acks alone need no fsync; anything we answer callers about does.
    if *synchronous != Some(durable) {
        *synchronous = None;
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })
            .map_err(err)?;
        *synchronous = Some(durable);
    }
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
    let mut next_id = if wanted > 0 {
        take_ids(&tx, wanted).map_err(err)?
    } else {
        0
    };
    let mut appended = Vec::new();
    let mut touched = Vec::new();
    {
        // One row per destination of an intake request: a block of consecutive ids.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO blocks (first_id, dest, count, accepted_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err)?;
        let mut add_dead = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                   (dest, id, accepted_at, body, reason, status, attempts, first_attempt_at, last_attempt_at, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(err)?;
        let mut read_block = tx
            .prepare_cached("SELECT accepted_at, count, body FROM blocks WHERE first_id = ?1")
            .map_err(err)?;
        for cmd in batch {
            match cmd {
                Command::Append {
                    items,
                    accepted_at_ms,
                    ..
                } => {
                    let mut per_destination = Vec::with_capacity(items.len());
                    for (destination, block) in items {
                        if block.is_empty() {
                            per_destination.push(Vec::new());
                            continue;
                        }
                        insert
                            .execute(params![
                                next_id,
                                &**destination,
                                block.len() as i64,
                                accepted_at_ms,
                                &block.body
                            ])
                            .map_err(err)?;
                        let first = next_id as u64;
                        per_destination.push((first..first + block.len() as u64).collect());
                        next_id += block.len() as i64;
                    }
                    appended.push(per_destination);
                }
                Command::Ack { destination, ids } => {
                    // A batch's ids are mostly one run of consecutive ids inside one block.
                    for (first, last) in runs(ids) {
                        progress
                            .mark(&tx, destination, first, last, &mut touched)
                            .map_err(err)?;
                    }
                }
                Command::DeadLetter {
                    destination,
                    ids,
                    info,
                    ..
                } => {
                    // Copy each event out of its block into `dead_letters`, then mark it done.
                    let mut block: Option<(u64, i64, Vec<Bytes>)> = None;
                    for &id in ids {
                        let Some(first) = progress.find(&tx, destination, id, id).map_err(err)?
                        else {
                            continue;
                        };
                        if block.as_ref().is_none_or(|(f, _, _)| *f != first) {
                            let (accepted, count, body): (i64, u32, Vec<u8>) = read_block
                                .query_row([first as i64], |r| {
                                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                                })
                                .map_err(err)?;
                            let events = decode_block(&Bytes::from(body), count as usize)
                                .ok_or_else(|| {
                                    store_err(&path, format!("block {first} is malformed"))
                                })?;
                            block = Some((first, accepted, events));
                        }
                        if progress.blocks[&first].is_done((id - first) as u32) {
                            continue;
                        }
                        let (_, accepted, events) = block.as_ref().expect("just read");
                        add_dead
                            .execute(params![
                                &**destination,
                                id as i64,
                                accepted,
                                events[(id - first) as usize].as_ref(),
                                info.reason,
                                info.status,
                                info.attempts,
                                info.first_attempt_ms,
                                info.last_attempt_ms,
                                info.request_id
                            ])
                            .map_err(err)?;
                    }
                    for (first, last) in runs(ids) {
                        progress
                            .mark(&tx, destination, first, last, &mut touched)
                            .map_err(err)?;
                    }
                }
                Command::Sync(_) => {}
            }
        }
    }
    progress.save(&tx, &mut touched).map_err(err)?;
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
        let rows: Vec<(String, i64, Vec<u8>)> = {
            let mut st = tx
                .prepare(
                    "SELECT dest, id, body FROM dead_letters
                     WHERE (?1 IS NULL OR dest = ?1) AND (?2 IS NULL OR id = ?2) ORDER BY dest, id",
                )
                .map_err(err)?;
            let rows = st
                .query_map(params![destination, id.map(|i| i as i64)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        let mut next_id = take_ids(&tx, rows.len()).map_err(err)?;
        // One block per destination; a replayed event starts a new life: its age counts from
        // the replay.
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let mut block = EventBlock::new();
            for (_, _, body) in group {
                block.push(body);
            }
            tx.execute(
                "INSERT INTO blocks (first_id, dest, count, accepted_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![next_id, group[0].0, group.len() as i64, now_ms(), block.body],
            )
            .map_err(err)?;
            next_id += group.len() as i64;
            for (dest, old_id, _) in group {
                tx.execute(
                    "DELETE FROM dead_letters WHERE dest = ?1 AND id = ?2",
                    params![dest, old_id],
                )
                .map_err(err)?;
            }
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
        Ok(pending_by_destination(&self.conn)
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|(dest, _, n)| (dest, n))
            .collect())
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
            SCHEMA
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
    fn block_bodies_round_trip_and_malformed_ones_are_refused() {
        let events = vec![
            Bytes::new(),
            Bytes::from_static(b"x"),
            bodies(0..1).remove(0),
        ];
        let body = Bytes::from(EventBlock::from_bodies(&events).body);
        assert_eq!(decode_block(&body, 3).unwrap(), events);
        assert!(decode_block(&body, 2).is_none(), "count must match");
        assert!(
            decode_block(&body.slice(..body.len() - 1), 3).is_none(),
            "truncated"
        );
        assert!(decode_block(&Bytes::from_static(&[9, 0, 0, 0, 1]), 1).is_none());
        // Rendered in place: a failed render leaves the block as it was.
        let mut block = EventBlock::new();
        assert_eq!(
            block
                .push_with(|b| {
                    b.extend_from_slice(b"ab");
                    Ok::<_, ()>(())
                })
                .unwrap(),
            b"ab"
        );
        assert!(block
            .push_with(|b| {
                b.extend_from_slice(b"half");
                Err("bad")
            })
            .is_err());
        block.push(b"cde");
        assert_eq!((block.len(), block.event_bytes()), (2, 5));
        assert_eq!(
            decode_block(&Bytes::from(block.body), 2).unwrap(),
            [Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]
        );
        let mut bits = DoneBits::new(70);
        bits.mark(69);
        bits.mark(69);
        bits.mark(0);
        assert_eq!(bits.done, 2);
        assert_eq!(
            DoneBits::from_stored(70, &bits.stored()),
            Some(bits.clone())
        );
        assert!(DoneBits::from_stored(200, &bits.stored()).is_none());
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

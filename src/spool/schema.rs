//! The spool file's layout and what every connection to it shares: [`SpoolError`], connection
//! set-up (WAL, busy timeout), the tables, the schema version check and the migration from
//! version 1, the per-destination totals recomputed at open, and the event-id counter that
//! keeps ids unique across processes.

use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags};

use super::block::{decode_block, DoneBits, EventBlock};

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

pub(crate) fn store_err(path: &Path, e: impl std::fmt::Display) -> SpoolError {
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
                 PRIMARY KEY (dest, id)) WITHOUT ROWID;",
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
pub(super) const SCHEMA: i64 = 2;

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
            let mut rows = select.query([])?;
            while let Some(r) = rows.next()? {
                let mut block = EventBlock::new();
                block.push(r.get_ref(3)?.as_blob()?);
                insert_block(
                    conn,
                    r.get::<_, i64>(1)?,
                    &r.get::<_, String>(0)?,
                    &block,
                    r.get::<_, i64>(2)?,
                )?;
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
pub(super) fn pending_by_destination(
    conn: &Connection,
) -> rusqlite::Result<Vec<(String, u64, u64)>> {
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

/// Takes `n` event ids from the counter in the database (inside the caller's transaction, so
/// ids stay unique across processes); returns the first.
pub(super) fn take_ids(tx: &rusqlite::Transaction<'_>, n: usize) -> rusqlite::Result<i64> {
    let first: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
        r.get(0)
    })?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
        [first + n as i64],
    )?;
    Ok(first)
}

/// Writes one block row: `block`'s events as ids `first_id..`, for `destination`.
pub(super) fn insert_block(
    conn: &Connection,
    first_id: i64,
    destination: &str,
    block: &EventBlock,
    accepted_at_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO blocks (first_id, dest, count, accepted_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        first_id,
        destination,
        block.len() as i64,
        accepted_at_ms,
        &block.body
    ])?;
    Ok(())
}

/// Quick structural check: a damaged file is reported at open, with its path, not later.
pub(super) fn check_structure(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| store_err(path, e))?;
    if check != "ok" {
        return Err(store_err(path, format!("integrity check failed: {check}")));
    }
    Ok(())
}

/// Creates the spool file's directory if it does not exist yet, durably (each new directory's
/// parent fsync'd): otherwise a power cut soon after the first start could take the whole
/// spool, acknowledged events included.
pub(super) fn create_directory(path: &Path) -> Result<(), SpoolError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => crate::fsync::create_dir_all(dir)
            .map_err(|e| store_err(path, format!("cannot create its directory: {e}"))),
        None => Ok(()),
    }
}

//! The dead-letter table: events given up on (a permanent answer, attempts or age used up),
//! with why, and the operations of `irisd dlq` (list, show, replay into the spool, purge), which
//! work on the spool file while the daemon runs.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::block::EventBlock;
use super::schema::{
    create_directory, insert_block, open_connection, pending_by_destination, store_err, take_ids,
    SpoolError,
};
use crate::clock::now_ms;

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
        create_directory(path)?;
        Ok(Self {
            conn: open_connection(path)?,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> SpoolError {
        store_err(&self.path, e)
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

    /// How many dead letters there are, optionally of one destination.
    pub fn count(&self, destination: Option<&str>) -> Result<u64, SpoolError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM dead_letters WHERE (?1 IS NULL OR dest = ?1)",
                params![destination],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
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
            insert_block(&tx, next_id, &group[0].0, &block, now_ms()).map_err(err)?;
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
            insert_dead_letter(&tx, destination, next_id as u64, accepted_at_ms, body, info)
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

/// Stores one event as a dead letter (the writer's moves out of the spool and `add` alike).
pub(super) fn insert_dead_letter(
    conn: &Connection,
    destination: &str,
    id: u64,
    accepted_at_ms: i64,
    body: &[u8],
    info: &DeadLetterInfo,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO dead_letters
           (dest, id, accepted_at, body, reason, status, attempts, first_attempt_at, last_attempt_at, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        destination,
        id as i64,
        accepted_at_ms,
        body,
        info.reason,
        info.status,
        info.attempts,
        info.first_attempt_ms,
        info.last_attempt_ms,
        info.request_id
    ])?;
    Ok(())
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

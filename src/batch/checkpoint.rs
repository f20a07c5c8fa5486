//! Durable per-file progress of batch runs, in the spool file (`batch_files` table): which file
//! (path, size, modification time and a SHA-256 of its first 64 KiB, so a file that changes
//! after it was picked up is recognised), how far its acknowledged chunks reach (byte offset
//! and line), its counters, and whether it is running, done or failed. Every write is its own
//! fsync'd transaction: a crash resumes after the last acknowledged chunk.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::reader::Position;
use crate::spool::{open_connection, store_err, DeadLetterStore, SpoolError};

/// What is known about one batch file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileState {
    pub path: String,
    pub destination: String,
    pub size: u64,
    pub mtime_ms: i64,
    #[serde(skip)]
    pub fingerprint: Vec<u8>,
    #[serde(skip)]
    pub pos: Position,
    pub users: u64,
    pub segments: u64,
    pub requests: u64,
    pub rejects: u64,
    #[serde(skip)]
    pub rejects_len: u64,
    pub dead_lettered: u64,
    /// `running`, `done` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// Identity of a file on disk: size, modification time, fingerprint of its first 64 KiB.
pub fn identify(path: &Path) -> std::io::Result<(u64, i64, Vec<u8>)> {
    let meta = std::fs::metadata(path)?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut head)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &head);
    Ok((meta.len(), mtime_ms, digest.as_ref().to_vec()))
}

/// Batch progress (its own table and connection) and batch dead letters, in the spool file.
pub struct BatchStore {
    conn: Connection,
    path: PathBuf,
    dead: DeadLetterStore,
}

impl BatchStore {
    pub fn open(spool_path: &Path) -> Result<Self, SpoolError> {
        // Creates the spool file (and its directory) when a batch run comes before the daemon.
        let dead = DeadLetterStore::open_or_create(spool_path)?;
        let conn = open_connection(spool_path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS batch_files (
                 path TEXT PRIMARY KEY, dest TEXT NOT NULL, size INTEGER NOT NULL, mtime_ms INTEGER NOT NULL,
                 fingerprint BLOB NOT NULL, offset INTEGER NOT NULL, line INTEGER NOT NULL,
                 users INTEGER NOT NULL, segments INTEGER NOT NULL, requests INTEGER NOT NULL,
                 rejects INTEGER NOT NULL, rejects_len INTEGER NOT NULL, dead_lettered INTEGER NOT NULL,
                 status TEXT NOT NULL, error TEXT, started_at INTEGER NOT NULL, finished_at INTEGER) WITHOUT ROWID;",
        )
        .map_err(|e| store_err(spool_path, e))?;
        Ok(Self {
            conn,
            path: spool_path.to_owned(),
            dead,
        })
    }

    fn err(&self, e: rusqlite::Error) -> SpoolError {
        store_err(&self.path, e)
    }

    /// The state of `path`, if it was ever picked up.
    pub fn get(&self, path: &str) -> Result<Option<FileState>, SpoolError> {
        self.conn
            .query_row(
                "SELECT path, dest, size, mtime_ms, fingerprint, offset, line, users, segments, requests, rejects,
                        rejects_len, dead_lettered, status, error, started_at, finished_at
                 FROM batch_files WHERE path = ?1",
                [path],
                |r| {
                    Ok(FileState {
                        path: r.get(0)?,
                        destination: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        mtime_ms: r.get(3)?,
                        fingerprint: r.get(4)?,
                        pos: Position {
                            offset: r.get::<_, i64>(5)? as u64,
                            line: r.get::<_, i64>(6)? as u64,
                        },
                        users: r.get::<_, i64>(7)? as u64,
                        segments: r.get::<_, i64>(8)? as u64,
                        requests: r.get::<_, i64>(9)? as u64,
                        rejects: r.get::<_, i64>(10)? as u64,
                        rejects_len: r.get::<_, i64>(11)? as u64,
                        dead_lettered: r.get::<_, i64>(12)? as u64,
                        status: r.get(13)?,
                        error: r.get(14)?,
                        started_at_ms: r.get(15)?,
                        finished_at_ms: r.get(16)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Files of `destination` a previous run left unfinished.
    pub fn unfinished(&self, destination: &str) -> Result<Vec<String>, SpoolError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT path FROM batch_files WHERE dest = ?1 AND status = 'running' ORDER BY path",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([destination], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Writes `st` durably (one fsync'd transaction).
    pub fn save(&self, st: &FileState) -> Result<(), SpoolError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO batch_files
                   (path, dest, size, mtime_ms, fingerprint, offset, line, users, segments, requests, rejects,
                    rejects_len, dead_lettered, status, error, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    st.path,
                    st.destination,
                    st.size as i64,
                    st.mtime_ms,
                    st.fingerprint,
                    st.pos.offset as i64,
                    st.pos.line as i64,
                    st.users as i64,
                    st.segments as i64,
                    st.requests as i64,
                    st.rejects as i64,
                    st.rejects_len as i64,
                    st.dead_lettered as i64,
                    st.status,
                    st.error,
                    st.started_at_ms,
                    st.finished_at_ms
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Dead letters for a chunk that was given up.
    pub fn dead_letters(&mut self) -> &mut DeadLetterStore {
        &mut self.dead
    }
}

//! One destination's events, read back from the spool in id order by cursor. A reader has its
//! own connection (WAL readers never block the writer) and keeps the block the last read
//! stopped inside, so the next read usually needs no query at all.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::block::{decode_block, DoneBits};
use super::schema::{open_connection, store_err, SpoolError};
use crate::payload::UserRecord;

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
    /// A reader of `destination`'s events in the spool at `path`.
    pub(super) fn open(path: &Path, destination: &str) -> Result<SpoolReader, SpoolError> {
        Ok(SpoolReader {
            conn: Mutex::new(open_connection(path)?),
            path: path.to_owned(),
            destination: destination.to_string(),
            current: Mutex::new(None),
        })
    }

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

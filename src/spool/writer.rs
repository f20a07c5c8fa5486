//! The spool's one writer thread: it owns the write connection, takes every pending command
//! (appends, acks, dead-letter moves, syncs) off its queue, applies them in one transaction and
//! commits (group commit) — with an fsync whenever the group holds something a caller waits
//! for (appends, dead letters) — and only then answers. Acks alone are committed without
//! fsync: losing one in a crash means a duplicate delivery, never a loss.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::block::{decode_block, DoneBits, EventBlock};
use super::dead_letters::{insert_dead_letter, DeadLetterInfo};
use super::schema::{insert_block, store_err, take_ids, SpoolError};

pub(super) enum Command {
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
    /// Acks are waiting in the [`AckQueue`] (sent only when it turns non-empty).
    AcksPending,
    DeadLetter {
        destination: Arc<str>,
        ids: Vec<u64>,
        info: DeadLetterInfo,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Answers once everything queued before it is committed.
    Sync(oneshot::Sender<()>),
}

/// Acks on their way to the writer. They are not sent one by one: each would wake the writer
/// thread (a futex wake and a context switch per delivered batch). A lane pushes here, and only
/// the ack that finds the queue empty wakes the writer, which then gathers acks for
/// [`ACK_LINGER`] and takes them all into one transaction.
#[derive(Debug, Default)]
pub(super) struct AckQueue(std::sync::Mutex<Vec<(Arc<str>, Vec<u64>)>>);

impl AckQueue {
    /// Queues an ack; true when the writer must be woken (the queue was empty).
    pub(super) fn push(&self, destination: Arc<str>, ids: Vec<u64>) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.push((destination, ids));
        q.len() == 1
    }

    fn take(&self) -> Vec<(Arc<str>, Vec<u64>)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Commands applied in one transaction at most.
const GROUP_COMMIT_MAX: usize = 512;

/// The writer connection's page cache, in KiB (SQLite's `cache_size` takes KiB as negative).
const WRITER_CACHE_KIB: i64 = -16 * 1024;

/// How long the writer waits for more acks when it has nothing but acks to commit.
const ACK_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Whether the writer can write: it is running, and its last transaction committed. Read by
/// `/readyz`.
#[derive(Debug, Default)]
pub(super) struct WriterHealth {
    stopped: std::sync::atomic::AtomicBool,
    /// The error of the last transaction, when it failed.
    last_error: std::sync::Mutex<Option<String>>,
}

impl WriterHealth {
    /// Why the writer cannot take writes now, if it cannot.
    pub(super) fn problem(&self) -> Option<String> {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("the spool writer stopped".into());
        }
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|e| format!("the last spool write failed: {e}"))
    }

    fn result(&self, error: Option<String>) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some() || error.is_some() {
            *last = error;
        }
    }
}

/// Marks the writer stopped however its thread ends (a panic included).
struct Stopped(Arc<WriterHealth>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0
            .stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts the writer thread on `conn`; it exits when the returned sender (held by the last
/// `Spool`) is dropped.
pub(super) fn start(
    conn: Connection,
    fsync: bool,
    path: &std::path::Path,
    health: Arc<WriterHealth>,
    acks: Arc<AckQueue>,
) -> Result<std::sync::mpsc::SyncSender<Command>, SpoolError> {
    // The writer deletes blocks soon after writing them: a page cache that holds the blocks in
    // flight spares re-reading their overflow pages from the WAL to free them.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(|e| store_err(path, e))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(4096);
    std::thread::Builder::new()
        .name("irisd-spool-writer".into())
        .spawn(move || {
            let _stopped = Stopped(health.clone());
            writer_loop(conn, rx, fsync, &health, &acks)
        })
        .map_err(|e| store_err(path, e))?;
    Ok(tx)
}

fn writer_loop(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<Command>,
    fsync: bool,
    health: &WriterHealth,
    acks: &AckQueue,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut progress = PartlyDone::default();
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
        // one transaction (they queue without waking this thread). Anything else (an append,
        // a dead letter, a sync) ends the wait.
        if batch.iter().all(|c| matches!(c, Command::AcksPending)) {
            match rx.recv_timeout(ACK_LINGER) {
                Ok(c) => batch.push(c),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        batch.retain(|c| !matches!(c, Command::AcksPending));
        batch.extend(
            acks.take()
                .into_iter()
                .map(|(destination, ids)| Command::Ack { destination, ids }),
        );
        if batch.is_empty() {
            continue;
        }
        let durable = fsync
            && batch
                .iter()
                .any(|c| matches!(c, Command::Append { .. } | Command::DeadLetter { .. }));
        let result = apply(&mut conn, &mut progress, &mut synchronous, &batch, durable);
        health.result(result.as_ref().err().map(ToString::to_string));
        match result {
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
                        Command::Ack { .. } | Command::AcksPending => {}
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
                        Command::Ack { .. } | Command::AcksPending => {}
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
struct PartlyDone {
    blocks: std::collections::BTreeMap<u64, DoneBits>,
}

impl PartlyDone {
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
    progress: &mut PartlyDone,
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
    for cmd in batch {
        match cmd {
            Command::Append {
                items,
                accepted_at_ms,
                ..
            } => appended
                .push(append_blocks(&tx, items, *accepted_at_ms, &mut next_id).map_err(err)?),
            Command::AcksPending => {}
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
                copy_to_dead_letters(&tx, progress, destination, ids, info, &path)?;
                for (first, last) in runs(ids) {
                    progress
                        .mark(&tx, destination, first, last, &mut touched)
                        .map_err(err)?;
                }
            }
            Command::Sync(_) => {}
        }
    }
    progress.save(&tx, &mut touched).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(appended)
}

/// Writes one block row per destination of an intake request (consecutive ids from
/// `next_id`); returns the ids given to each destination's events, in order.
fn append_blocks(
    tx: &rusqlite::Transaction<'_>,
    items: &[(Arc<str>, EventBlock)],
    accepted_at_ms: i64,
    next_id: &mut i64,
) -> rusqlite::Result<Vec<Vec<u64>>> {
    let mut per_destination = Vec::with_capacity(items.len());
    for (destination, block) in items {
        if block.is_empty() {
            per_destination.push(Vec::new());
            continue;
        }
        insert_block(tx, *next_id, destination, block, accepted_at_ms)?;
        let first = *next_id as u64;
        per_destination.push((first..first + block.len() as u64).collect());
        *next_id += block.len() as i64;
    }
    Ok(per_destination)
}

/// Copies each of `ids` not done yet out of its block into the dead letters (the caller then
/// marks them done, in the same transaction).
fn copy_to_dead_letters(
    tx: &rusqlite::Transaction<'_>,
    progress: &mut PartlyDone,
    destination: &str,
    ids: &[u64],
    info: &DeadLetterInfo,
    path: &std::path::Path,
) -> Result<(), SpoolError> {
    let err = |e: rusqlite::Error| store_err(path, e);
    let mut read_block = tx
        .prepare_cached("SELECT accepted_at, count, body FROM blocks WHERE first_id = ?1")
        .map_err(err)?;
    let mut block: Option<(u64, i64, Vec<Bytes>)> = None;
    for &id in ids {
        let Some(first) = progress.find(tx, destination, id, id).map_err(err)? else {
            continue;
        };
        if block.as_ref().is_none_or(|(f, _, _)| *f != first) {
            let (accepted, count, body): (i64, u32, Vec<u8>) = read_block
                .query_row([first as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(err)?;
            let events = decode_block(&Bytes::from(body), count as usize)
                .ok_or_else(|| store_err(path, format!("block {first} is malformed")))?;
            block = Some((first, accepted, events));
        }
        if progress.blocks[&first].is_done((id - first) as u32) {
            continue;
        }
        let (_, accepted, events) = block.as_ref().expect("just read");
        insert_dead_letter(
            tx,
            destination,
            id,
            *accepted,
            &events[(id - first) as usize],
            info,
        )
        .map_err(err)?;
    }
    Ok(())
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
}

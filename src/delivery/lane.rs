//! A destination lane: reads its destination's events from the spool in id order, batches them,
//! and delivers each batch in its own task, with retries, within a bounded in-flight window.
//!
//! The lane keeps a cursor (the last id it read) and reads at most one window of events ahead;
//! when every in-flight slot is taken it stops reading, so memory stays bounded whatever the
//! spool holds. The intake wakes the lane after each append; an idle lane also polls once a
//! second, so events another process put in the spool (`irisd dlq replay`) are picked up.
//!
//! A batch task resolves its events exactly once: acked after the partner's success, or moved
//! to the dead letters (durably) when the answer is permanent, the attempts are used up or the
//! events are older than `max_age`. Anything else is retried with exponential backoff and full
//! jitter, never sooner than the partner's `Retry-After`. After `circuit_threshold` consecutive
//! failures the lane's circuit opens: one attempt at a time (a probe) passes its gate, spaced by
//! a growing backoff, until one succeeds; so a dead partner costs one request per backoff, not
//! one per in-flight batch. Lanes share nothing: one destination's outage never stalls another.
//!
//! Shutdown has two steps: `Draining` (stop when caught up, keep delivering until then) and
//! `Stop` (abandon backoffs; unacked events simply stay in the spool for the next start).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::batcher::Batcher;
use super::resolve::{Circuit, Resolution, Resolver};
use super::sender::Sender;
use crate::clock::now_ms;
use crate::config::RetryPolicy;
use crate::metrics::DestinationMetrics;
use crate::payload::UserRecord;
use crate::shutdown::{wait_for, RunState};
use crate::spool::{DeadLetterInfo, Spool, SpoolError, SpoolReader};

/// How long an idle lane waits before looking at the spool again on its own.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Lane settings.
#[derive(Debug, Clone)]
pub struct LaneOptions {
    pub max_users: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// IRIS profile: every failure is retried (once), none is final before that.
    pub retry_permanent: bool,
}

/// The producer side of a lane.
#[derive(Clone)]
pub struct LaneHandle {
    pub name: Arc<str>,
    /// Wakes the lane after new events were spooled.
    pub notify: Arc<Notify>,
    pub metrics: Arc<DestinationMetrics>,
    /// Largest user record a payload can carry.
    pub max_record_bytes: usize,
}

struct Lane<A> {
    name: Arc<str>,
    sender: Arc<Sender>,
    metrics: Arc<DestinationMetrics>,
    opts: LaneOptions,
    circuit: Circuit,
    acks: A,
}

/// Where a lane's events come from: the spool (by cursor) or a stream (a channel fed by Kafka).
pub trait Source: Send + 'static {
    /// Up to `limit` events after those read before, without waiting for new ones; empty when
    /// caught up.
    fn read(
        &mut self,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<UserRecord>, String>> + Send;

    /// Waits until there may be more to read. Returns events that arrived meanwhile (possibly
    /// none), or `None` when the source is gone for good.
    fn wait(&mut self) -> impl std::future::Future<Output = Option<Vec<UserRecord>>> + Send;
}

/// How a lane's resolved events settle: the one acknowledgement mechanism, with two sinks (the
/// spool marks events done or moves them to the dead letters; a Kafka stream settles offsets
/// and stores dead letters' bodies, which live nowhere else).
pub trait Acknowledge: Send + Sync + 'static {
    /// Whether dead letters need the events' bodies handed over.
    const KEEPS_BODIES: bool;

    /// The partner accepted these events (`bytes`: the size of their bodies).
    fn delivered(&self, ids: Vec<u64>, bytes: u64);

    /// Given up: store them as dead letters, durably, before they count as settled.
    fn dead_letter(
        &self,
        ids: Vec<u64>,
        bytes: u64,
        bodies: Vec<bytes::Bytes>,
        info: DeadLetterInfo,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// Whether these events still belong to this lane (a revoked Kafka partition's events
    /// belong to its new owner); asked before each retry.
    fn current(&self, _ids: &[u64]) -> bool {
        true
    }
}

/// A spool lane's source: its destination's events by id, woken by the intake.
struct SpoolSource {
    reader: Arc<SpoolReader>,
    cursor: u64,
    notify: Arc<Notify>,
}

impl Source for SpoolSource {
    async fn read(&mut self, limit: usize) -> Result<Vec<UserRecord>, String> {
        let rows = match self.reader.read_cached(self.cursor, limit) {
            // Inside the block read last: no blocking call needed.
            Some(rows) => rows,
            None => {
                let (r, after) = (self.reader.clone(), self.cursor);
                tokio::task::spawn_blocking(move || r.read_after(after, limit))
                    .await
                    .map_err(|e| format!("spool reader task failed: {e}"))?
                    .map_err(|e| e.to_string())?
            }
        };
        if let Some(last) = rows.last() {
            self.cursor = last.id;
        }
        Ok(rows)
    }

    async fn wait(&mut self) -> Option<Vec<UserRecord>> {
        self.notify.notified().await;
        Some(Vec::new())
    }
}

/// A spool lane's acknowledgements: done-bits, or a durable move to the dead letters.
struct SpoolAcks {
    spool: Arc<Spool>,
    name: Arc<str>,
}

impl Acknowledge for SpoolAcks {
    const KEEPS_BODIES: bool = false;

    fn delivered(&self, ids: Vec<u64>, bytes: u64) {
        self.spool.ack(self.name.clone(), ids, bytes);
    }

    async fn dead_letter(
        &self,
        ids: Vec<u64>,
        bytes: u64,
        _bodies: Vec<bytes::Bytes>,
        info: DeadLetterInfo,
    ) -> Result<(), String> {
        self.spool
            .dead_letter(self.name.clone(), ids, bytes, info)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A stream lane's source: records handed over on a bounded channel.
struct StreamSource(tokio::sync::mpsc::Receiver<UserRecord>);

impl Source for StreamSource {
    async fn read(&mut self, limit: usize) -> Result<Vec<UserRecord>, String> {
        let mut rows = Vec::new();
        while rows.len() < limit {
            match self.0.try_recv() {
                Ok(r) => rows.push(r),
                Err(_) => break,
            }
        }
        Ok(rows)
    }

    async fn wait(&mut self) -> Option<Vec<UserRecord>> {
        self.0.recv().await.map(|r| vec![r])
    }
}

/// Starts a lane for `sender`'s destination.
pub fn spawn(
    sender: Arc<Sender>,
    opts: LaneOptions,
    metrics: Arc<DestinationMetrics>,
    spool: Arc<Spool>,
    state: watch::Receiver<RunState>,
) -> Result<(LaneHandle, tokio::task::JoinHandle<()>), SpoolError> {
    let name: Arc<str> = sender.destination.as_str().into();
    let reader = spool.reader(&name)?;
    let batcher = Batcher::new(
        opts.max_users,
        opts.max_bytes,
        sender.builder().payload_header().clone(),
    );
    let notify = Arc::new(Notify::new());
    let handle = LaneHandle {
        name: name.clone(),
        notify: notify.clone(),
        metrics: metrics.clone(),
        max_record_bytes: batcher.max_record_bytes(),
    };
    let lane = Arc::new(Lane {
        circuit: Circuit::new(&opts.retry),
        acks: SpoolAcks {
            spool,
            name: name.clone(),
        },
        name,
        sender,
        metrics,
        opts,
    });
    let source = SpoolSource {
        reader: Arc::new(reader),
        cursor: 0,
        notify,
    };
    let task = tokio::spawn(run(lane, source, batcher, state));
    Ok((handle, task))
}

/// Starts a stream lane (Kafka) for `sender`'s destination: events come from the returned
/// channel (bounded: `max_users × max_in_flight`), are batched, delivered and dead-lettered
/// exactly like spooled ones, and settle through `acks` instead of the spool. Returns the
/// channel and the largest record a payload can carry.
pub fn spawn_stream(
    sender: Arc<Sender>,
    opts: LaneOptions,
    metrics: Arc<DestinationMetrics>,
    state: watch::Receiver<RunState>,
    acks: impl Acknowledge,
) -> (
    tokio::sync::mpsc::Sender<UserRecord>,
    usize,
    tokio::task::JoinHandle<()>,
) {
    let batcher = Batcher::new(
        opts.max_users,
        opts.max_bytes,
        sender.builder().payload_header().clone(),
    );
    let max_record = batcher.max_record_bytes();
    let (tx, rx) = tokio::sync::mpsc::channel((opts.max_users * opts.max_in_flight).max(16));
    let lane = Arc::new(Lane {
        circuit: Circuit::new(&opts.retry),
        name: sender.destination.as_str().into(),
        sender,
        metrics,
        opts,
        acks,
    });
    let task = tokio::spawn(run(lane, StreamSource(rx), batcher, state));
    (tx, max_record, task)
}

async fn run<A: Acknowledge>(
    lane: Arc<Lane<A>>,
    mut source: impl Source,
    mut batcher: Batcher,
    mut state: watch::Receiver<RunState>,
) {
    let window = Arc::new(Semaphore::new(lane.opts.max_in_flight));
    let read_limit = lane.opts.max_users * lane.opts.max_in_flight;
    let mut in_flight = JoinSet::new();
    let mut ready: Vec<Vec<UserRecord>> = Vec::new();
    'outer: loop {
        while in_flight.try_join_next().is_some() {}
        if *state.borrow() == RunState::Stop {
            break;
        }
        let rows = match source.read(read_limit).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(destination = %lane.name, error = %e, "reading the lane's events failed; retrying in 1 s");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if !rows.is_empty() {
            lane.metrics
                .in_flight_users
                .fetch_add(rows.len() as u64, Relaxed);
            let now = Instant::now();
            for row in rows {
                batcher.push(row, now, |b| ready.push(b));
            }
        } else {
            // Caught up with the source.
            let draining = *state.borrow() != RunState::Running;
            if draining {
                ready.extend(batcher.take());
                if ready.is_empty() {
                    break;
                }
            } else {
                let deadline = batcher.deadline(lane.opts.linger);
                tokio::select! {
                    more = source.wait() => match more {
                        Some(rows) => {
                            lane.metrics.in_flight_users.fetch_add(rows.len() as u64, Relaxed);
                            let now = Instant::now();
                            for row in rows {
                                batcher.push(row, now, |b| ready.push(b));
                            }
                        }
                        // The source is gone: deliver what is batched, then stop.
                        None => {
                            ready.extend(batcher.take());
                            if ready.is_empty() { break; }
                        }
                    },
                    _ = sleep_until(deadline), if deadline.is_some() => ready.extend(batcher.take()),
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = state.changed() => {}
                }
            }
        }
        for batch in ready.drain(..) {
            // Waiting for a slot here is the backpressure: the source is not read meanwhile.
            let permit = tokio::select! {
                p = window.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = wait_for(&mut state, RunState::Stop) => break 'outer,
            };
            let lane = lane.clone();
            let state = state.clone();
            in_flight.spawn(async move {
                deliver(&lane, batch, state).await;
                drop(permit);
            });
        }
    }
    while in_flight.join_next().await.is_some() {}
    tracing::debug!(destination = %lane.name, "lane stopped");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Delivers one batch until it is acknowledged, dead-lettered, or the daemon stops.
async fn deliver<A: Acknowledge>(
    lane: &Lane<A>,
    batch: Vec<UserRecord>,
    mut state: watch::Receiver<RunState>,
) {
    let ids: Vec<u64> = batch.iter().map(|u| u.id).collect();
    let accepted: Vec<i64> = batch.iter().map(|u| u.accepted_at_ms).collect();
    // A stream lane dead-letters bodies that are not in the spool: keep them (cheap clones).
    let bodies: Vec<bytes::Bytes> = if A::KEEPS_BODIES {
        batch.iter().map(|u| u.json.clone()).collect()
    } else {
        Vec::new()
    };
    let bytes: u64 = batch.iter().map(|u| u.json.len() as u64).sum();
    let oldest_ms = batch
        .iter()
        .map(|u| u.accepted_at_ms)
        .min()
        .unwrap_or_else(now_ms);
    // Stable across retries of this batch: its first and last event ids.
    let request_id = format!("{:016x}{:016x}", ids[0], ids[ids.len() - 1]);
    let req = lane
        .sender
        .builder()
        .build(&batch, jiff::Timestamp::now(), request_id);
    drop(batch);
    let users = ids.len() as u64;
    let m = &lane.metrics;
    m.bytes_raw.fetch_add(req.raw_len as u64, Relaxed);
    let wanted = || lane.acks.current(&ids);
    let ctx = Resolver {
        sender: &lane.sender,
        retry: &lane.opts.retry,
        retry_permanent: lane.opts.retry_permanent,
        circuit: &lane.circuit,
        metrics: m,
        still_wanted: Some(&wanted),
    };
    match ctx.resolve(&req, oldest_ms, &mut state).await {
        Resolution::Delivered => {
            lane.acks.delivered(ids, bytes);
            m.bytes_sent.fetch_add(req.body.len() as u64, Relaxed);
            m.requests_ok.fetch_add(1, Relaxed);
            m.delivered_users.fetch_add(users, Relaxed);
            m.record_lag(accepted.into_iter(), now_ms());
        }
        Resolution::Dead(info) => match lane.acks.dead_letter(ids, bytes, bodies, info).await {
            Ok(()) => {
                m.dead_lettered_users.fetch_add(users, Relaxed);
                m.failed_users.fetch_add(users, Relaxed);
            }
            // Spool lanes: the events stay in the spool; stream lanes: the offsets are not
            // committed. Either way they are delivered again after a restart.
            Err(e) => tracing::error!(
                destination = %lane.name,
                error = %e,
                "cannot write the dead letters; the events are retried after a restart"
            ),
        },
        // Not acknowledged: the events stay in the spool for the next start.
        Resolution::Abandoned => {}
    }
    m.in_flight_users.fetch_sub(users, Relaxed);
}

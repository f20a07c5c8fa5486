//! Kafka source: N irisd instances consume qualification records (the intake's NDJSON event
//! shape, one event per record) as one consumer group, Kafka being the durable log. Records go
//! to per-destination *stream lanes*, the same lanes, batcher, resolver and dead letters as
//! spooled events (see `delivery::lane`); only the acknowledgement differs: instead of
//! deleting a spool row, settling a record marks its offset done in the [`Tracker`], and an
//! offset is committed only when every record at or below it was delivered (2xx) or durably
//! dead-lettered: the per-partition low watermark, so out-of-order completions never commit
//! past an undelivered record.
//!
//! Backpressure: each destination's stream lane takes records through a bounded channel. When
//! it is full, the record's partition is paused (librdkafka pause), the record held, and other
//! partitions keep flowing; when room returns the record is handed over, the partition seeks
//! to the next offset and resumes. Poison records (not JSON, unknown destination, invalid
//! field, too large) are dead-lettered with topic/partition/offset and the reason, and their
//! offset settles at once: one bad record never blocks a partition. On revocation (rebalance)
//! the done offsets of the revoked partitions are committed synchronously and their
//! outstanding records stop counting: whatever was not delivered is re-consumed by the new
//! owner (at least once).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::config::KafkaSourceConfig;
use crate::delivery::lane::Acknowledge;
use crate::payload::{render_user, IntakeEvent, UserRecord};
use crate::shutdown::RunState;
use crate::spool::{DeadLetterInfo, DeadLetterStore};

type PartKey = (usize, Arc<str>, i32);

#[derive(Default)]
struct PartitionState {
    /// Offsets taken and whether each is settled.
    pending: BTreeMap<i64, bool>,
    /// Highest offset taken + 1.
    next: i64,
    /// Last offset committed (the next one to consume).
    committed: i64,
    epoch: u64,
}

/// Offsets in flight per (source, topic, partition), and the ticket of each record.
#[derive(Default)]
pub struct Tracker {
    parts: HashMap<PartKey, PartitionState>,
    tickets: HashMap<u64, (PartKey, u64, i64)>,
    next_ticket: u64,
    next_epoch: u64,
}

impl Tracker {
    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, key: PartKey) {
        self.next_epoch += 1;
        self.parts.insert(
            key,
            PartitionState {
                epoch: self.next_epoch,
                committed: -1,
                next: -1,
                ..Default::default()
            },
        );
    }

    /// Stops tracking a revoked partition; its outstanding tickets no longer count.
    pub fn revoke(&mut self, key: &PartKey) {
        self.parts.remove(key);
    }

    pub fn is_assigned(&self, key: &PartKey) -> bool {
        self.parts.contains_key(key)
    }

    /// A record taken from a partition: its ticket (the lane's event id).
    pub fn take(&mut self, key: PartKey, offset: i64) -> Option<u64> {
        let p = self.parts.get_mut(&key)?;
        p.pending.insert(offset, false);
        p.next = p.next.max(offset + 1);
        self.next_ticket += 1;
        let epoch = p.epoch;
        self.tickets.insert(self.next_ticket, (key, epoch, offset));
        Some(self.next_ticket)
    }

    /// The ticket's record still belongs to a partition assigned to us (same assignment).
    pub fn is_current(&self, ticket: u64) -> bool {
        self.tickets
            .get(&ticket)
            .is_some_and(|(key, epoch, _)| self.parts.get(key).is_some_and(|p| p.epoch == *epoch))
    }

    pub fn settle(&mut self, tickets: &[u64]) {
        for t in tickets {
            let Some((key, epoch, offset)) = self.tickets.remove(t) else {
                continue;
            };
            if let Some(p) = self.parts.get_mut(&key) {
                if p.epoch == epoch {
                    if let Some(done) = p.pending.get_mut(&offset) {
                        *done = true;
                    }
                }
            }
        }
    }

    /// The low watermark of each partition of `source` that moved: the offset to commit (the
    /// first not yet settled, or the next to consume when all are). Settled offsets below it
    /// are forgotten.
    pub fn commit_points(&mut self, source: usize) -> Vec<(Arc<str>, i32, i64)> {
        let mut out = Vec::new();
        for (key, p) in self.parts.iter_mut().filter(|(k, _)| k.0 == source) {
            while let Some((&o, &true)) = p.pending.iter().next() {
                p.pending.remove(&o);
            }
            let low = p.pending.keys().next().copied().unwrap_or(p.next);
            if low > p.committed && low >= 0 {
                p.committed = low;
                out.push((key.1.clone(), key.2, low));
            }
        }
        out
    }

    /// Records taken and not settled, of all partitions.
    pub fn outstanding(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.pending.values().filter(|d| !**d).count())
            .sum()
    }
}

/// Shared between the consumers, their contexts and the stream lanes.
#[derive(Default)]
pub struct KafkaShared {
    pub tracker: Mutex<Tracker>,
    pub metrics: KafkaMetrics,
}

impl KafkaShared {
    /// The records with these tickets were delivered or durably dead-lettered.
    pub fn settled(&self, ids: &[u64]) {
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settle(ids);
    }

    /// Whether any of these records still counts (its partition was not revoked since).
    pub fn current(&self, ids: &[u64]) -> bool {
        let t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().any(|id| t.is_current(*id))
    }
}

/// A stream lane's acknowledgements: offsets settle (and commit at the low watermark); dead
/// letters are stored from the bodies, which live nowhere else, before they settle.
pub struct KafkaAcks {
    pub shared: Arc<KafkaShared>,
    /// The one dead-letter store of the Kafka runtime (shared with poison records).
    pub dead: Arc<Mutex<DeadLetterStore>>,
    pub destination: Arc<str>,
}

impl Acknowledge for KafkaAcks {
    const KEEPS_BODIES: bool = true;

    fn delivered(&self, ids: Vec<u64>, _bytes: u64) {
        self.shared.settled(&ids);
    }

    async fn dead_letter(
        &self,
        ids: Vec<u64>,
        _bytes: u64,
        bodies: Vec<Bytes>,
        info: DeadLetterInfo,
    ) -> Result<(), String> {
        let (dead, name) = (self.dead.clone(), self.destination.clone());
        tokio::task::spawn_blocking(move || {
            dead.lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&name, &bodies, now_ms(), &info)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.shared.settled(&ids);
        Ok(())
    }

    fn current(&self, ids: &[u64]) -> bool {
        self.shared.current(ids)
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct KafkaMetrics {
    pub records: AtomicU64,
    pub poison: AtomicU64,
    pub commits: AtomicU64,
    pub rebalances: AtomicU64,
    pub pauses: AtomicU64,
    /// Consumer lag per (topic, partition), from librdkafka's statistics.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
}

/// The consumer's context: rebalance bookkeeping and statistics.
pub struct Context {
    source: usize,
    shared: Arc<KafkaShared>,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        let mut lag = self
            .shared
            .metrics
            .lag
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        lag.clear();
        for (topic, t) in stats.topics {
            for (id, p) in t.partitions {
                if id >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), id), p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.shared.metrics.rebalances.fetch_add(1, Relaxed);
            // Commit what is done for the partitions leaving us; the rest is re-consumed by
            // their next owner.
            let mut tracker = self
                .shared
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let points = tracker.commit_points(self.source);
            let revoked: Vec<(Arc<str>, i32)> = list
                .elements()
                .iter()
                .map(|e| (Arc::<str>::from(e.topic()), e.partition()))
                .collect();
            let mut tpl = TopicPartitionList::new();
            for (topic, part, offset) in points {
                if revoked.iter().any(|(t, p)| *t == topic && *p == part) {
                    let _ = tpl.add_partition_offset(&topic, part, Offset::Offset(offset));
                }
            }
            for (topic, part) in &revoked {
                tracker.revoke(&(self.source, topic.clone(), *part));
            }
            drop(tracker);
            if tpl.count() > 0 {
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => {
                        self.shared.metrics.commits.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "commit on revocation failed; the next owner re-consumes from the last commit")
                    }
                }
            }
            tracing::info!(partitions = revoked.len(), "kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut tracker = self
                .shared
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for e in list.elements() {
                tracker.assign((self.source, e.topic().into(), e.partition()));
            }
            tracing::info!(partitions = list.count(), "kafka partitions assigned");
        }
    }
}

/// A destination's stream lane input, and the largest record it can carry.
#[derive(Clone)]
pub struct LaneInput {
    pub tx: mpsc::Sender<UserRecord>,
    pub max_record_bytes: usize,
}

/// Why a record is poison.
fn parse_record(
    payload: &[u8],
    fixed: Option<&str>,
    lanes: &HashMap<String, LaneInput>,
    now: jiff::Timestamp,
) -> Result<(String, UserRecord), (Option<String>, String)> {
    let ev: IntakeEvent<'_> =
        serde_json::from_slice(payload).map_err(|e| (None, format!("not an event: {e}")))?;
    let dest = match fixed {
        Some(d) => d.to_string(),
        None if ev.destination.is_empty() => {
            return Err((None, "missing field `destination`".into()))
        }
        None => ev.destination.to_string(),
    };
    let Some(lane) = lanes.get(&dest) else {
        return Err((Some(dest.clone()), format!("unknown destination {dest:?}")));
    };
    let record = render_user(&ev, now).map_err(|e| (Some(dest.clone()), e.to_string()))?;
    if record.json.len() > lane.max_record_bytes {
        return Err((
            Some(dest),
            format!(
                "the user's record is {} bytes, more than one request may carry",
                record.json.len()
            ),
        ));
    }
    Ok((dest, record))
}

/// A record waiting for room in its lane, its partition paused: (lane, record, offset).
type Held = (mpsc::Sender<UserRecord>, UserRecord, i64);

/// Creates and subscribes the consumer of one `[[source.kafka]]`: settings librdkafka refuses
/// (or this build does not support, like SSL without the `kafka-tls` feature) fail here, at
/// start, with the source named.
pub fn connect(
    source: usize,
    cfg: &KafkaSourceConfig,
    shared: Arc<KafkaShared>,
) -> Result<StreamConsumer<Context>, String> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    for (k, v) in &cfg.librdkafka {
        cc.set(k, secrecy::ExposeSecret::expose_secret(v));
    }
    let consumer: StreamConsumer<Context> = cc
        .create_with_context(Context { source, shared })
        .map_err(|e| format!("source.kafka[{source}] (group {}): {e}", cfg.group_id))?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| {
        format!(
            "source.kafka[{source}] (group {}): subscribing to {topics:?}: {e}",
            cfg.group_id
        )
    })?;
    Ok(consumer)
}

/// Runs one `[[source.kafka]]` until `state` says stop; commits what is settled at the end.
pub async fn run(
    source: usize,
    cfg: KafkaSourceConfig,
    consumer: StreamConsumer<Context>,
    lanes: HashMap<String, LaneInput>,
    shared: Arc<KafkaShared>,
    dead: Arc<Mutex<DeadLetterStore>>,
    mut state: watch::Receiver<RunState>,
) -> Result<(), String> {
    tracing::info!(group = %cfg.group_id, topics = ?cfg.topics, "kafka source started");

    let mut held: HashMap<(Arc<str>, i32), Held> = HashMap::new();
    let mut commit_tick = tokio::time::interval(cfg.commit_interval);
    let mut retry_tick = tokio::time::interval(Duration::from_millis(20));
    let commit = |mode: CommitMode| {
        let points = shared
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commit_points(source);
        if points.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, part, offset) in &points {
            let _ = tpl.add_partition_offset(topic, *part, Offset::Offset(*offset));
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                shared.metrics.commits.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "kafka commit failed; retried at the next one"),
        }
    };
    loop {
        tokio::select! {
            _ = state.changed() => {
                if *state.borrow() != RunState::Running {
                    break;
                }
            }
            _ = commit_tick.tick() => commit(CommitMode::Async),
            _ = retry_tick.tick(), if !held.is_empty() => {
                let keys: Vec<_> = held.keys().cloned().collect();
                for key in keys {
                    let assigned = shared.tracker.lock().unwrap_or_else(|e| e.into_inner())
                        .is_assigned(&(source, key.0.clone(), key.1));
                    let (tx, record, offset) = held.remove(&key).expect("listed");
                    if !assigned {
                        continue; // revoked meanwhile: the new owner consumes it
                    }
                    match tx.try_send(record) {
                        Ok(()) => {
                            let mut tpl = TopicPartitionList::new();
                            let _ = tpl.add_partition(&key.0, key.1);
                            // Messages fetched while paused were dropped: read on from here.
                            if let Err(e) = consumer.seek(&key.0, key.1, Offset::Offset(offset + 1), Duration::from_secs(5)) {
                                tracing::warn!(error = %e, "kafka seek after pause failed");
                            }
                            let _ = consumer.resume(&tpl);
                        }
                        Err(mpsc::error::TrySendError::Full(record)) => {
                            held.insert(key, (tx, record, offset));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // Brokers down and the like: librdkafka retries; do not spin on it.
                        tracing::warn!(error = %e, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let topic: Arc<str> = msg.topic().into();
                let (part, offset) = (msg.partition(), msg.offset());
                if held.contains_key(&(topic.clone(), part)) {
                    continue; // paused: re-read after the seek on resume
                }
                let key = (source, topic.clone(), part);
                let Some(ticket) = shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).take(key, offset) else {
                    continue; // not (or no longer) ours
                };
                shared.metrics.records.fetch_add(1, Relaxed);
                let payload = msg.payload().unwrap_or(&[]);
                match parse_record(payload, cfg.destination.as_deref(), &lanes, jiff::Timestamp::now()) {
                    Ok((dest, mut record)) => {
                        record.id = ticket;
                        record.accepted_at_ms = now_ms();
                        let tx = lanes[&dest].tx.clone();
                        match tx.try_send(record) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(record)) => {
                                let mut tpl = TopicPartitionList::new();
                                let _ = tpl.add_partition(&topic, part);
                                let _ = consumer.pause(&tpl);
                                shared.metrics.pauses.fetch_add(1, Relaxed);
                                tracing::debug!(topic = %topic, partition = part, destination = %dest, "destination busy: partition paused");
                                held.insert((topic, part), (tx, record, offset));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    Err((dest, why)) => {
                        shared.metrics.poison.fetch_add(1, Relaxed);
                        let reason = format!("poison record {topic}/{part}@{offset}: {why}");
                        tracing::warn!(reason = %reason, "kafka record dead-lettered");
                        let body = Bytes::copy_from_slice(&payload[..payload.len().min(1 << 20)]);
                        let dest = dest.unwrap_or_else(|| format!("kafka:{topic}"));
                        let info = DeadLetterInfo {
                            reason,
                            status: None,
                            attempts: 0,
                            first_attempt_ms: now_ms(),
                            last_attempt_ms: now_ms(),
                            request_id: String::new(),
                        };
                        let dead = dead.clone();
                        let stored = tokio::task::spawn_blocking(move || {
                            dead.lock().unwrap_or_else(|e| e.into_inner()).add(&dest, &[body], now_ms(), &info)
                        }).await;
                        match stored {
                            Ok(Ok(_)) => shared.settled(&[ticket]),
                            // Not settled: never committed past; re-consumed after a restart.
                            Ok(Err(e)) => tracing::error!(error = %e, "cannot store a poison record as a dead letter"),
                            Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
                        }
                    }
                }
            }
        }
    }
    // Wait for the lanes to settle what they still can, then commit it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline
        && shared
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outstanding()
            > 0
        && *state.borrow() != RunState::Stop
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if state.has_changed().unwrap_or(false) {
            let _ = state.borrow_and_update();
        }
    }
    commit(CommitMode::Sync);
    tracing::info!(group = %cfg.group_id, "kafka source stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartKey {
        (0, "t".into(), p)
    }

    #[test]
    fn commits_only_up_to_the_first_unsettled_offset() {
        let mut t = Tracker::default();
        t.assign(key(0));
        let a = t.take(key(0), 10).unwrap();
        let b = t.take(key(0), 11).unwrap();
        let c = t.take(key(0), 12).unwrap();
        // Out of order: 11 and 12 done, 10 not: nothing past 10 may be committed.
        t.settle(&[b, c]);
        assert_eq!(t.commit_points(0), vec![("t".into(), 0, 10)]);
        t.settle(&[a]);
        assert_eq!(t.commit_points(0), vec![("t".into(), 0, 13)]);
        // Nothing new: nothing to commit.
        assert!(t.commit_points(0).is_empty());
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_revoked_partition_forgets_its_tickets_and_a_new_assignment_starts_clean() {
        let mut t = Tracker::default();
        t.assign(key(1));
        let old = t.take(key(1), 5).unwrap();
        t.revoke(&key(1));
        assert!(t.take(key(1), 6).is_none(), "not ours any more");
        assert!(
            !t.is_current(old),
            "a revoked partition's batch is abandoned"
        );
        t.assign(key(1));
        let new = t.take(key(1), 5).unwrap();
        assert!(t.is_current(new));
        // The old ticket (other epoch) settles nothing of the new assignment.
        t.settle(&[old]);
        assert_eq!(t.commit_points(0), vec![("t".into(), 1, 5)]);
        t.settle(&[new]);
        assert_eq!(t.commit_points(0), vec![("t".into(), 1, 6)]);
    }

    #[test]
    fn sources_commit_their_own_partitions() {
        let mut t = Tracker::default();
        t.assign((1, "t".into(), 0));
        let x = t.take((1, "t".into(), 0), 0).unwrap();
        t.settle(&[x]);
        assert!(t.commit_points(0).is_empty());
        assert_eq!(t.commit_points(1), vec![("t".into(), 0, 1)]);
    }
}

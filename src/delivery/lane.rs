//! A destination lane: the bounded queue producers fill, the batcher, and the bounded set of
//! in-flight publish requests of one destination. Lanes share nothing, so a slow or failing
//! partner holds up only its own lane; when its in-flight window is full the lane stops
//! reading its queue, the queue fills, and the intake answers 503 (backpressure, not memory).
//!
//! The lane ends when every queue sender is gone (the intake shut down): it sends the last
//! partial batch and waits for its in-flight requests.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::batcher::Batcher;
use super::request::new_request_id;
use super::sender::{Outcome, Sender};
use crate::metrics::DestinationMetrics;
use crate::payload::UserRecord;

/// Lane settings.
#[derive(Debug, Clone)]
pub struct LaneOptions {
    pub max_users: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub queue_capacity: usize,
}

/// The producer side of a lane.
#[derive(Clone)]
pub struct LaneHandle {
    pub name: Arc<str>,
    pub tx: mpsc::Sender<UserRecord>,
    pub metrics: Arc<DestinationMetrics>,
    /// Largest user record a payload can carry.
    pub max_record_bytes: usize,
}

/// Starts a lane; it runs until every clone of the returned handle is dropped.
pub fn spawn(
    sender: Arc<Sender>,
    opts: LaneOptions,
    metrics: Arc<DestinationMetrics>,
) -> (LaneHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let batcher = Batcher::new(
        opts.max_users,
        opts.max_bytes,
        sender.builder().payload_header().clone(),
    );
    let handle = LaneHandle {
        name: sender.destination.as_str().into(),
        tx,
        metrics: metrics.clone(),
        max_record_bytes: batcher.max_record_bytes(),
    };
    let task = tokio::spawn(run(sender, opts, metrics, rx, batcher));
    (handle, task)
}

async fn run(
    sender: Arc<Sender>,
    opts: LaneOptions,
    metrics: Arc<DestinationMetrics>,
    mut rx: mpsc::Receiver<UserRecord>,
    mut batcher: Batcher,
) {
    let window = Arc::new(Semaphore::new(opts.max_in_flight));
    let mut in_flight = JoinSet::new();
    let mut ready: Vec<Vec<UserRecord>> = Vec::new();
    loop {
        let deadline = batcher.deadline(opts.linger);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(user) => {
                    metrics.in_flight_users.fetch_add(1, Relaxed);
                    batcher.push(user, Instant::now(), |b| ready.push(b));
                }
                None => break,
            },
            _ = sleep_until(deadline), if deadline.is_some() => ready.extend(batcher.take()),
        }
        for batch in ready.drain(..) {
            // Waiting for a slot here is the backpressure: the queue is not read meanwhile.
            let permit = window
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let sender = sender.clone();
            let metrics = metrics.clone();
            in_flight.spawn(async move {
                publish(&sender, &metrics, batch).await;
                drop(permit);
            });
        }
        while in_flight.try_join_next().is_some() {}
    }
    if let Some(batch) = batcher.take() {
        publish(&sender, &metrics, batch).await;
    }
    while in_flight.join_next().await.is_some() {}
    tracing::debug!(destination = %sender.destination, "lane stopped");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Builds and sends one batch and accounts for it.
async fn publish(sender: &Sender, metrics: &DestinationMetrics, batch: Vec<UserRecord>) {
    let req = sender
        .builder()
        .build(&batch, jiff::Timestamp::now(), new_request_id());
    drop(batch);
    let users = req.users as u64;
    metrics.bytes_raw.fetch_add(req.raw_len as u64, Relaxed);
    let outcome = sender.send(&req).await;
    metrics.in_flight_users.fetch_sub(users, Relaxed);
    match outcome {
        Outcome::Delivered { .. } => {
            metrics.bytes_sent.fetch_add(req.body.len() as u64, Relaxed);
            metrics.requests_ok.fetch_add(1, Relaxed);
            metrics.delivered_users.fetch_add(users, Relaxed);
        }
        Outcome::Failed {
            class,
            status,
            detail,
        } => {
            metrics.requests_failed.fetch_add(1, Relaxed);
            metrics.failed_users.fetch_add(users, Relaxed);
            tracing::warn!(
                destination = %sender.destination,
                request_id = %req.request_id,
                users,
                ?class,
                status,
                %detail,
                "publish failed; the batch is not delivered"
            );
        }
    }
}

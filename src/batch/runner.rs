//! Running a batch: files in, payloads out, one chunk at a time.
//!
//! A file is read as a stream ([`super::reader`]); `chunk_users` users form a chunk; the chunk
//! is split into requests by the batch limits (`max_users`, `max_bytes`), which go out within
//! the batch's in-flight window, each after the rate limiters (requests/s, users/s) and after
//! yielding to the destination's real-time traffic when it is busy. Every request is resolved by
//! the same [`Resolver`] as real-time traffic (token cache, retries, `Retry-After`, circuit,
//! dead letters). When every request of a chunk is resolved, the file's position after the
//! chunk is checkpointed durably; a crash or a stop resends at most the chunk in progress.
//! Bad lines go to `<file>.rejects` (NDJSON: line, reason, text) and are counted.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::checkpoint::{identify, BatchStore, FileState};
use super::reader::{detect, BatchReader, Item, Position, ReadError};
use crate::clock::now_ms;
use crate::config::{BatchConfig, RetryPolicy};
use crate::delivery::batcher::Batcher;
use crate::delivery::resolve::{Circuit, Resolution, Resolver};
use crate::delivery::sender::Sender;
use crate::metrics::DestinationMetrics;
use crate::payload::UserRecord;
use crate::shutdown::RunState;
use crate::spool::SpoolError;

/// The longest a batch request waits for the destination's real-time traffic to be idle.
pub const YIELD_MAX: Duration = Duration::from_millis(250);

/// Everything a batch run of one destination needs.
pub struct BatchContext {
    pub destination: String,
    pub sender: Arc<Sender>,
    pub cfg: BatchConfig,
    pub retry: RetryPolicy,
    pub retry_permanent: bool,
    pub circuit: Arc<Circuit>,
    /// Batch traffic's own counters.
    pub metrics: Arc<DestinationMetrics>,
    /// The destination's real-time counters, when running inside the daemon: batch yields
    /// while real-time traffic is in flight.
    pub realtime: Option<Arc<DestinationMetrics>>,
    pub spool_path: PathBuf,
    requests_limiter: Option<DefaultDirectRateLimiter>,
    users_limiter: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl BatchContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        destination: String,
        sender: Arc<Sender>,
        cfg: BatchConfig,
        retry: RetryPolicy,
        retry_permanent: bool,
        circuit: Arc<Circuit>,
        realtime: Option<Arc<DestinationMetrics>>,
        spool_path: PathBuf,
    ) -> Self {
        let requests_limiter = cfg
            .requests_per_second
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        let users_limiter = cfg
            .users_per_second
            .map(|n| (RateLimiter::direct(Quota::per_second(n)), n));
        Self {
            destination,
            sender,
            cfg,
            retry,
            retry_permanent,
            circuit,
            metrics: Arc::new(DestinationMetrics::default()),
            realtime,
            spool_path,
            requests_limiter,
            users_limiter,
        }
    }
}

/// How one file ended in a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    pub path: String,
    /// `done`, `skipped` (delivered before), `interrupted` (stopped; resumes next run) or `failed`.
    pub status: String,
    pub users: u64,
    pub segments: u64,
    pub requests: u64,
    pub rejects: u64,
    pub dead_lettered: u64,
    /// Resumed from a checkpoint at this line.
    pub resumed_at_line: Option<u64>,
    pub error: Option<String>,
}

/// The JSON run report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub destination: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub files: Vec<FileReport>,
    pub users: u64,
    pub segments: u64,
    pub requests: u64,
    pub retries: u64,
    pub rejects: u64,
    pub dead_lettered: u64,
    pub users_per_sec: f64,
    pub bytes_read: u64,
    /// Payload bytes of delivered requests, before and after gzip.
    pub bytes_raw: u64,
    pub bytes_sent: u64,
}

impl RunReport {
    /// True when no file failed and none was interrupted.
    pub fn complete(&self) -> bool {
        self.files
            .iter()
            .all(|f| f.status == "done" || f.status == "skipped")
    }

    /// How the run ended, worst first.
    pub fn outcome(&self) -> RunOutcome {
        if !self.complete() {
            RunOutcome::Incomplete
        } else if self.dead_lettered > 0 {
            RunOutcome::DeadLettered
        } else if self.rejects > 0 {
            RunOutcome::Rejected
        } else {
            RunOutcome::Delivered
        }
    }
}

/// How a batch run ended; `irisd batch run` exits with [`RunOutcome::exit_code`] so a
/// scheduled job notices more than "it ran".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every file delivered, nothing rejected or dead-lettered: exit 0.
    Delivered,
    /// A file failed, or the run was stopped (it resumes next time): exit 1.
    Incomplete,
    /// Complete, but users were dead-lettered (see `irisd dlq list`): exit 3.
    DeadLettered,
    /// Complete and nothing dead-lettered, but lines were rejected (see `<file>.rejects`): exit 4.
    Rejected,
}

impl RunOutcome {
    /// 2 is taken: a configuration or start-up error, as for every irisd command.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Delivered => 0,
            RunOutcome::Incomplete => 1,
            RunOutcome::DeadLettered => 3,
            RunOutcome::Rejected => 4,
        }
    }
}

/// Live progress shared with a display.
#[derive(Default)]
pub struct Progress {
    pub bytes_read: AtomicU64,
    pub bytes_total: AtomicU64,
    pub users: AtomicU64,
    pub current_file: std::sync::Mutex<String>,
}

/// Files matching the destination's `input` glob, oldest name first.
pub fn discover(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| format!("batch.input {pattern:?}: {e}"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Delivers `files` in order; a failing file does not stop the others.
pub async fn run_files(
    ctx: Arc<BatchContext>,
    files: &[PathBuf],
    progress: Arc<Progress>,
    mut state: watch::Receiver<RunState>,
) -> Result<RunReport, SpoolError> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let mut store = BatchStore::open(&ctx.spool_path)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    progress.bytes_total.store(total, Relaxed);
    let mut reports = Vec::with_capacity(files.len());
    for file in files {
        if *state.borrow() == RunState::Stop {
            break;
        }
        *progress
            .current_file
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = file.display().to_string();
        let report = match run_file(&ctx, &mut store, file, &progress, &mut state).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(destination = %ctx.destination, file = %file.display(), error = %e, "batch file failed");
                FileReport {
                    path: file.display().to_string(),
                    status: "failed".into(),
                    users: 0,
                    segments: 0,
                    requests: 0,
                    rejects: 0,
                    dead_lettered: 0,
                    resumed_at_line: None,
                    error: Some(e),
                }
            }
        };
        reports.push(report);
    }
    let duration = started.elapsed().as_secs_f64();
    let sum = |f: fn(&FileReport) -> u64| reports.iter().map(f).sum::<u64>();
    let users = sum(|r| r.users);
    Ok(RunReport {
        destination: ctx.destination.clone(),
        started_at: started_at.to_string(),
        finished_at: jiff::Timestamp::now().to_string(),
        duration_s: duration,
        users,
        segments: sum(|r| r.segments),
        requests: sum(|r| r.requests),
        retries: ctx.metrics.retries.load(Relaxed),
        rejects: sum(|r| r.rejects),
        dead_lettered: sum(|r| r.dead_lettered),
        users_per_sec: users as f64 / duration.max(1e-9),
        bytes_read: progress.bytes_read.load(Relaxed),
        bytes_raw: ctx.metrics.bytes_raw.load(Relaxed),
        bytes_sent: ctx.metrics.bytes_sent.load(Relaxed),
        files: reports,
    })
}

/// Counts the compressed bytes read, for progress.
struct Counting<R> {
    inner: R,
    counter: Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.bytes_read.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// `<file>.rejects`, appended to, truncated back to the checkpoint on resume.
struct Rejects {
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
}

impl Rejects {
    fn open(input: &Path, resume_len: Option<u64>) -> Result<Self, String> {
        let mut name = input.file_name().unwrap_or_default().to_os_string();
        name.push(".rejects");
        let path = input.with_file_name(name);
        let len = match resume_len {
            Some(len) if path.exists() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                f.set_len(len)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                len
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                0
            }
        };
        Ok(Self {
            path,
            file: None,
            len,
        })
    }

    fn write(&mut self, line: u64, reason: &str, text: &str) -> Result<(), String> {
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| format!("{}: {e}", self.path.display()))?,
            );
        }
        let mut entry =
            serde_json::to_vec(&serde_json::json!({"line": line, "reason": reason, "text": text}))
                .expect("serializing a JSON value");
        entry.push(b'\n');
        let f = self.file.as_mut().expect("opened above");
        f.write_all(&entry)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.len += entry.len() as u64;
        Ok(())
    }

    /// Makes the rejects durable before the checkpoint that counts them.
    fn sync(&mut self) -> Result<(), String> {
        match &self.file {
            Some(f) => f
                .sync_data()
                .map_err(|e| format!("{}: {e}", self.path.display())),
            None => Ok(()),
        }
    }
}

async fn run_file(
    ctx: &Arc<BatchContext>,
    store: &mut BatchStore,
    file: &Path,
    progress: &Arc<Progress>,
    state: &mut watch::Receiver<RunState>,
) -> Result<FileReport, String> {
    let key = std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_owned())
        .display()
        .to_string();
    let (format, gzip) = detect(file)?;
    let (size, mtime_ms, fingerprint) =
        identify(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let previous = store.get(&key).map_err(|e| e.to_string())?;
    let same =
        |p: &FileState| p.size == size && p.mtime_ms == mtime_ms && p.fingerprint == fingerprint;
    let mut st = match previous {
        Some(p) if p.status == "done" && same(&p) => {
            progress.bytes_read.fetch_add(size, Relaxed);
            return Ok(FileReport {
                path: key,
                status: "skipped".into(),
                users: 0,
                segments: 0,
                requests: 0,
                rejects: 0,
                dead_lettered: 0,
                resumed_at_line: None,
                error: Some("delivered before".into()),
            });
        }
        Some(p) if p.status == "running" && !same(&p) => {
            return Err(format!(
                "{key} changed after it was picked up (was {} bytes, now {size}); it is not resent. \
                 Restore it, or give the new data a new file name",
                p.size
            ));
        }
        Some(p) if p.status == "running" => p,
        _ => FileState {
            path: key.clone(),
            destination: ctx.destination.clone(),
            size,
            mtime_ms,
            fingerprint,
            pos: Position::default(),
            users: 0,
            segments: 0,
            requests: 0,
            rejects: 0,
            rejects_len: 0,
            dead_lettered: 0,
            status: "running".into(),
            error: None,
            started_at_ms: now_ms(),
            finished_at_ms: None,
        },
    };
    let resumed_at_line = (st.pos.offset > 0).then_some(st.pos.line);
    let before = (
        st.users,
        st.segments,
        st.requests,
        st.rejects,
        st.dead_lettered,
    );
    store.save(&st).map_err(|e| e.to_string())?;
    let mut rejects = Rejects::open(file, resumed_at_line.map(|_| st.rejects_len))?;
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let counting = Counting {
        inner: f,
        counter: progress.clone(),
    };
    let mut reader = BatchReader::new(counting, format, gzip, &ctx.destination);
    if let Some(line) = resumed_at_line {
        tracing::info!(destination = %ctx.destination, file = %key, line, "resuming after the last acknowledged chunk");
        reader.skip_to(st.pos).map_err(|e| format!("{key}: {e}"))?;
    }
    let path_tag = path_tag_of(&key);
    let interrupted = loop {
        if *state.borrow() == RunState::Stop {
            break true;
        }
        // The chunk is named by the line it starts after: the same after a restart.
        let chunk_start = st.pos.line;
        // Read one chunk.
        let mut users: Vec<UserRecord> = Vec::with_capacity(ctx.cfg.chunk_users.min(100_000));
        let mut segments = 0u64;
        let mut end = st.pos;
        let mut eof = false;
        while users.len() < ctx.cfg.chunk_users {
            match reader.next_item() {
                Ok(Some(Item::User {
                    record,
                    segments: n,
                    end: e,
                })) => {
                    users.push(record);
                    segments += n as u64;
                    end = e;
                }
                Ok(Some(Item::Reject { line, reason, text })) => {
                    rejects.write(line, &reason, &text)?;
                    st.rejects += 1;
                }
                Ok(None) => {
                    eof = true;
                    end = reader.position();
                    break;
                }
                Err(e @ ReadError::NotDeclaredFormat { .. }) => {
                    st.status = "failed".into();
                    st.error = Some(e.to_string());
                    let _ = store.save(&st);
                    return Err(format!("{key}: {e}"));
                }
                Err(e) => return Err(format!("{key}: {e}")),
            }
        }
        let n_users = users.len() as u64;
        let outcome = send_chunk(ctx, users, chunk_start, path_tag, store, state).await?;
        if outcome.interrupted {
            break true;
        }
        st.users += n_users;
        st.segments += segments;
        st.requests += outcome.requests;
        st.dead_lettered += outcome.dead_lettered;
        st.pos = end;
        rejects.sync()?;
        st.rejects_len = rejects.len;
        if eof {
            st.status = "done".into();
            st.finished_at_ms = Some(now_ms());
        }
        store.save(&st).map_err(|e| e.to_string())?;
        progress.users.fetch_add(n_users, Relaxed);
        if eof {
            break false;
        }
    };
    if !interrupted && ctx.cfg.move_done {
        let done_dir = file.parent().unwrap_or(Path::new(".")).join("done");
        let moved = std::fs::create_dir_all(&done_dir).and_then(|_| {
            std::fs::rename(file, done_dir.join(file.file_name().unwrap_or_default()))
        });
        if let Err(e) = moved {
            tracing::warn!(file = %key, error = %e, "delivered, but could not move the file to done/");
        }
    }
    tracing::info!(
        destination = %ctx.destination,
        file = %key,
        users = st.users - before.0,
        rejects = st.rejects - before.3,
        status = if interrupted { "interrupted" } else { "done" },
        "batch file finished"
    );
    Ok(FileReport {
        path: key,
        status: if interrupted { "interrupted" } else { "done" }.into(),
        users: st.users - before.0,
        segments: st.segments - before.1,
        requests: st.requests - before.2,
        rejects: st.rejects - before.3,
        dead_lettered: st.dead_lettered - before.4,
        resumed_at_line,
        error: None,
    })
}

/// A per-file tag for request ids (stable for a path).
fn path_tag_of(key: &str) -> u32 {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    u32::from_be_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]])
}

struct ChunkOutcome {
    requests: u64,
    dead_lettered: u64,
    interrupted: bool,
}

/// Sends one chunk's requests and waits until each is resolved.
async fn send_chunk(
    ctx: &Arc<BatchContext>,
    users: Vec<UserRecord>,
    chunk_start: u64,
    path_tag: u32,
    store: &mut BatchStore,
    state: &watch::Receiver<RunState>,
) -> Result<ChunkOutcome, String> {
    let mut batcher = Batcher::new(
        ctx.cfg.max_users,
        ctx.cfg.max_bytes,
        ctx.sender.builder().payload_header().clone(),
    );
    let mut requests = Vec::new();
    let now = Instant::now();
    for u in users {
        batcher.push(u, now, |b| requests.push(b));
    }
    requests.extend(batcher.take());
    let window = Arc::new(Semaphore::new(ctx.cfg.max_in_flight));
    let mut tasks = JoinSet::new();
    let n_requests = requests.len() as u64;
    for (i, batch) in requests.into_iter().enumerate() {
        let permit = window.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        let mut state = state.clone();
        // Stable for the same chunk of the same file, also after a restart.
        let request_id = format!("{path_tag:08x}{chunk_start:016x}{i:08x}");
        tasks.spawn(async move {
            if *state.borrow() == RunState::Stop {
                return (Resolution::Abandoned, batch);
            }
            let n = NonZeroU32::new(batch.len() as u32).unwrap_or(NonZeroU32::MIN);
            if let Some(l) = &ctx.requests_limiter {
                l.until_ready().await;
            }
            if let Some((l, cap)) = &ctx.users_limiter {
                let _ = l.until_n_ready(n.min(*cap)).await;
            }
            if let Some(rt) = &ctx.realtime {
                // Batch yields to real-time: a request does not start while real-time work is
                // in flight, for up to YIELD_MAX (so a steady real-time stream slows batches
                // down but never stops them).
                let until = Instant::now() + YIELD_MAX;
                while rt.in_flight_users.load(Relaxed) > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let req = ctx
                .sender
                .builder()
                .build(&batch, jiff::Timestamp::now(), request_id);
            ctx.metrics.bytes_raw.fetch_add(req.raw_len as u64, Relaxed);
            let resolver = Resolver {
                sender: &ctx.sender,
                retry: &ctx.retry,
                retry_permanent: ctx.retry_permanent,
                circuit: &ctx.circuit,
                metrics: &ctx.metrics,
                still_wanted: None,
            };
            let resolution = resolver.resolve(&req, now_ms(), &mut state).await;
            if matches!(resolution, Resolution::Delivered) {
                ctx.metrics.requests_ok.fetch_add(1, Relaxed);
                ctx.metrics
                    .delivered_users
                    .fetch_add(batch.len() as u64, Relaxed);
                ctx.metrics
                    .bytes_sent
                    .fetch_add(req.body.len() as u64, Relaxed);
            }
            drop(permit);
            (resolution, batch)
        });
    }
    let mut dead_lettered = 0;
    let mut interrupted = false;
    while let Some(joined) = tasks.join_next().await {
        let (resolution, batch) = joined.map_err(|e| format!("batch request task: {e}"))?;
        match resolution {
            Resolution::Delivered => {}
            Resolution::Abandoned => interrupted = true,
            Resolution::Dead(info) => {
                let bodies: Vec<Bytes> = batch.into_iter().map(|u| u.json).collect();
                store
                    .dead_letters()
                    .add(&ctx.destination, &bodies, now_ms(), &info)
                    .map_err(|e| e.to_string())?;
                dead_lettered += bodies.len() as u64;
                ctx.metrics
                    .dead_lettered_users
                    .fetch_add(bodies.len() as u64, Relaxed);
            }
        }
    }
    Ok(ChunkOutcome {
        requests: n_requests,
        dead_lettered,
        interrupted,
    })
}

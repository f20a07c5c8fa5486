//! Batch delivery of onboarded data: files of qualifications (CSV or NDJSON, optionally gzip),
//! read as streams, grouped per user, published in chunks with the destination's token, retry
//! and dead-letter machinery, checkpointed so a restart resumes after the last acknowledged
//! chunk. [`reader`] parses files (pure over a byte stream).

pub mod checkpoint;
pub mod reader;
pub mod runner;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, Profile};
use crate::delivery::resolve::Circuit;
use crate::shutdown::RunState;
use runner::{BatchContext, Progress, RunReport};

/// Why a batch run could not start.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("no destination {0:?} in the configuration")]
    UnknownDestination(String),
    #[error("destination {0:?}: no files given and no batch.input configured")]
    NoFiles(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Build(#[from] crate::delivery::build::BuildError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// `irisd batch run`: delivers `files` (or the destination's `batch.input` matches) now, with a
/// progress display on stderr, until done or `state` says stop.
pub async fn run_now(
    config: &Config,
    destination: &str,
    files: Vec<PathBuf>,
    state: watch::Receiver<RunState>,
) -> Result<RunReport, BatchError> {
    let d = config
        .destinations
        .iter()
        .find(|d| d.name == destination)
        .ok_or_else(|| BatchError::UnknownDestination(destination.to_string()))?;
    let cfg = d.batch.clone().unwrap_or_default();
    let files = if files.is_empty() {
        let pattern = cfg
            .input
            .as_ref()
            .ok_or_else(|| BatchError::NoFiles(d.name.clone()))?;
        runner::discover(pattern).map_err(BatchError::Input)?
    } else {
        files
    };
    let metrics = Arc::new(crate::metrics::DestinationMetrics::default());
    let (sender, _tokens) = crate::delivery::build::build_sender(d, metrics)?;
    let ctx = Arc::new(BatchContext::new(
        d.name.clone(),
        sender,
        cfg,
        d.retry.clone(),
        d.profile == Profile::Iris,
        Arc::new(Circuit::new(&d.retry)),
        None,
        config.spool.path.clone(),
    ));
    let progress = Arc::new(Progress::default());
    let display = tokio::spawn(show_progress(progress.clone(), ctx.metrics.clone()));
    let report = runner::run_files(ctx, &files, progress, state).await;
    display.abort();
    let _ = display.await;
    Ok(report?)
}

/// The daemon's scheduler for one destination: resumes files a previous run left unfinished,
/// then at every scheduled time delivers the files matching `batch.input` that are not done
/// yet, and writes a JSON report per run into `reports_dir`. Ends when the daemon stops.
pub async fn schedule_loop(
    ctx: Arc<BatchContext>,
    schedule: crate::schedule::Schedule,
    pattern: String,
    reports_dir: PathBuf,
    mut state: watch::Receiver<RunState>,
) {
    let unfinished = checkpoint::BatchStore::open(&ctx.spool_path)
        .and_then(|s| s.unfinished(&ctx.destination))
        .unwrap_or_else(|e| {
            tracing::error!(destination = %ctx.destination, error = %e, "cannot read batch checkpoints");
            Vec::new()
        });
    let mut resume: Vec<PathBuf> = unfinished
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    loop {
        let files = if !resume.is_empty() {
            std::mem::take(&mut resume)
        } else {
            let now = jiff::Timestamp::now();
            let Some(next) = schedule.next_after(now) else {
                tracing::warn!(destination = %ctx.destination, "the batch schedule has no next run");
                return;
            };
            let wait =
                Duration::from_millis((next.as_millisecond() - now.as_millisecond()).max(0) as u64);
            tracing::info!(destination = %ctx.destination, next = %next, "next batch run");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = state.wait_for(|s| *s != RunState::Running) => return,
            }
            match runner::discover(&pattern) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(destination = %ctx.destination, error = %e, "batch input");
                    continue;
                }
            }
        };
        if files.is_empty() {
            continue;
        }
        let progress = Arc::new(Progress::default());
        let display = tokio::spawn(show_progress(progress.clone(), ctx.metrics.clone()));
        let report = runner::run_files(ctx.clone(), &files, progress, state.clone()).await;
        display.abort();
        match report {
            Ok(report) => {
                let path = reports_dir.join(format!(
                    "{}-{}.json",
                    ctx.destination,
                    jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
                ));
                let written = std::fs::create_dir_all(&reports_dir).and_then(|_| {
                    std::fs::write(
                        &path,
                        serde_json::to_vec_pretty(&report).unwrap_or_default(),
                    )
                });
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the batch report");
                }
                tracing::info!(
                    destination = %ctx.destination,
                    users = report.users,
                    rejects = report.rejects,
                    dead_lettered = report.dead_lettered,
                    complete = report.complete(),
                    report = %path.display(),
                    "batch run finished"
                );
            }
            Err(e) => {
                tracing::error!(destination = %ctx.destination, error = %e, "batch run failed")
            }
        }
        if *state.borrow() != RunState::Running {
            return;
        }
    }
}

/// A progress bar on a terminal; a log line every 5 s otherwise.
async fn show_progress(progress: Arc<Progress>, metrics: Arc<crate::metrics::DestinationMetrics>) {
    let tty = std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    if tty {
        let bar = indicatif::ProgressBar::new(progress.bytes_total.load(Relaxed).max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_length(progress.bytes_total.load(Relaxed).max(1));
            bar.set_position(progress.bytes_read.load(Relaxed));
            let users = metrics.delivered_users.load(Relaxed);
            let rate = users as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{users} users delivered, {rate:.0} users/s"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let users = metrics.delivered_users.load(Relaxed);
            tracing::info!(
                file = %progress.current_file.lock().unwrap_or_else(|e| e.into_inner()),
                bytes_read = progress.bytes_read.load(Relaxed),
                bytes_total = progress.bytes_total.load(Relaxed),
                users_delivered = users,
                users_per_s = (users as f64 / started.elapsed().as_secs_f64()) as u64,
                "batch progress"
            );
        }
    }
}

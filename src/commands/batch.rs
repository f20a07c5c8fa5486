//! `irisd batch run`: delivers batch files now, until done or Ctrl-C, and writes the JSON run
//! report.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CommandError;
use crate::batch::runner::RunOutcome;
use crate::config::Config;
use crate::shutdown::RunState;

/// Delivers `files` (or the destination's `batch.input` matches) to `destination`.
pub async fn run(
    config: &std::path::Path,
    destination: &str,
    report_path: Option<PathBuf>,
    files: Vec<PathBuf>,
) -> Result<ExitCode, CommandError> {
    let config = Config::load(config)?;
    let (state_tx, state) = tokio::sync::watch::channel(RunState::Running);
    let mut signals = super::run::Signals::install()?;
    tokio::spawn(async move {
        signals.stop().await;
        tracing::warn!(
            "stopping: the file in progress resumes after its last acknowledged chunk next time"
        );
        let _ = state_tx.send(RunState::Stop);
    });
    let report = crate::batch::run_now(&config, destination, files, state).await?;
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| CommandError::Failed(e.to_string()))?;
    let path = report_path.unwrap_or_else(|| {
        PathBuf::from(format!(
            "irisd-batch-{destination}-{}.json",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        ))
    });
    std::fs::write(&path, &json).map_err(CommandError::io(format!(
        "writing the report to {}",
        path.display()
    )))?;
    println!("{json}");
    let outcome = report.outcome();
    eprintln!(
        "batch {}: {} users in {} requests, {} rejects, {} dead-lettered, {:.1} s ({:.0} users/s); report {}",
        match outcome {
            RunOutcome::Delivered => "complete",
            RunOutcome::Incomplete => "INCOMPLETE",
            RunOutcome::DeadLettered => "complete, with DEAD LETTERS",
            RunOutcome::Rejected => "complete, with REJECTED lines",
        },
        report.users,
        report.requests,
        report.rejects,
        report.dead_lettered,
        report.duration_s,
        report.users_per_sec,
        path.display()
    );
    Ok(ExitCode::from(outcome.exit_code()))
}

//! `irisd dlq`: list, show, replay and purge dead letters, on the spool file the configuration
//! names, while the daemon runs or not.

use std::path::Path;
use std::process::ExitCode;

use super::{CommandError, Format};
use crate::config::Config;
use crate::spool::DeadLetterStore;

fn open(config: &Path) -> Result<DeadLetterStore, CommandError> {
    let spool = Config::load_spool(config)?;
    Ok(DeadLetterStore::open(&spool.path)?)
}

fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Dead letters, oldest first, at most `limit`.
pub fn list(
    config: &Path,
    destination: Option<&str>,
    limit: usize,
    format: Format,
) -> Result<ExitCode, CommandError> {
    let store = open(config)?;
    let list = store.list(destination, limit)?;
    let total = store.count(destination)?;
    let summary = if (list.len() as u64) < total {
        format!(
            "showing {} of {total} dead letter(s), oldest first (--limit to see more)",
            list.len()
        )
    } else {
        format!("{total} dead letter(s)")
    };
    match format {
        Format::Json => {
            for d in &list {
                println!(
                    "{}",
                    serde_json::to_string(d).map_err(|e| CommandError::Failed(e.to_string()))?
                );
            }
            // stdout stays one object per line; the count is for the person running it.
            eprintln!("{summary}");
        }
        Format::Text => {
            println!(
                "{:>10}  {:<16} {:>6} {:>8}  {:<24}  reason",
                "id", "destination", "status", "attempts", "last attempt"
            );
            for d in &list {
                println!(
                    "{:>10}  {:<16} {:>6} {:>8}  {:<24}  {}",
                    d.id,
                    d.destination,
                    d.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.attempts,
                    when(d.last_attempt_ms),
                    d.reason
                );
            }
            println!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One dead letter, with the user record it holds.
pub fn show(config: &Path, id: u64) -> Result<ExitCode, CommandError> {
    let store = open(config)?;
    let Some(d) = store.show(id)? else {
        return Err(CommandError::Usage(format!("no dead letter with id {id}")));
    };
    println!(
        "id:             {}\ndestination:    {}\naccepted:       {}\nstatus:         {}\nattempts:       {}\nfirst attempt:  {}\nlast attempt:   {}\nrequest id:     {}\nreason:         {}\nuser record:    {}",
        d.id,
        d.destination,
        when(d.accepted_at_ms),
        d.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        d.attempts,
        when(d.first_attempt_ms),
        when(d.last_attempt_ms),
        d.request_id,
        d.reason,
        String::from_utf8_lossy(&d.body)
    );
    Ok(ExitCode::SUCCESS)
}

/// Puts dead letters back into the spool.
pub fn replay(
    config: &Path,
    destination: Option<&str>,
    id: Option<u64>,
) -> Result<ExitCode, CommandError> {
    let n = open(config)?.replay(destination, id)?;
    println!("{n} dead letter(s) put back into the spool");
    Ok(ExitCode::SUCCESS)
}

/// Deletes dead letters for good.
pub fn purge(
    config: &Path,
    destination: Option<&str>,
    id: Option<u64>,
) -> Result<ExitCode, CommandError> {
    let n = open(config)?.purge(destination, id)?;
    println!("{n} dead letter(s) deleted");
    Ok(ExitCode::SUCCESS)
}

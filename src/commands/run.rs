//! `irisd run`: the daemon as a process. Starts it from the configuration, tells systemd
//! (`Type=notify`) when it is ready and when it stops, reloads on SIGHUP, and on SIGTERM or
//! SIGINT shuts down within the grace period.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::CommandError;
use crate::config::Config;
use crate::daemon::Daemon;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, grace: Duration) -> Result<ExitCode, CommandError> {
    let config = Config::load(config_path)?;
    let mut daemon = Daemon::start(&config).await?;
    sd_notify("READY=1");
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(CommandError::io("installing the SIGHUP handler"))?;
    loop {
        #[cfg(unix)]
        let reload = hangup.recv();
        #[cfg(not(unix))]
        let reload = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = reload => match Config::load(config_path) {
                Ok(new) => match daemon.reload(&new).await {
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "configuration reload refused"),
                },
                Err(e) => tracing::error!(
                    error = %e,
                    "configuration reload refused; the running configuration stays in force"
                ),
            },
            r = shutdown_signal() => {
                r?;
                break;
            }
        }
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: intake closed, sending what is queued"
    );
    sd_notify("STOPPING=1");
    if !daemon.shutdown(grace).await {
        tracing::warn!("grace period over; undelivered events stay in the spool and go out after the next start");
    }
    // Nothing accepted is lost either way: it is delivered, dead-lettered, or spooled.
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (`Type=notify`) about readiness and stopping, when started by it.
fn sd_notify(state: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(abstract_name) => UnixAddr::from_abstract_name(abstract_name.as_bytes()),
            None => UnixAddr::from_pathname(&path),
        };
        let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}

/// Resolves at SIGTERM or SIGINT.
pub async fn shutdown_signal() -> Result<(), CommandError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(CommandError::io("installing the SIGTERM handler"))?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(CommandError::io("waiting for SIGINT"))?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .map_err(CommandError::io("waiting for Ctrl-C"))?;
    Ok(())
}

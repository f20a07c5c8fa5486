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
    // First of all: a signal that comes while the daemon starts or reloads must wait for it,
    // not kill it with the default action.
    let mut signals = Signals::install()?;
    let config = Config::load(config_path)?;
    let mut daemon = Daemon::start(&config).await?;
    sd_notify("READY=1");
    while let Signal::Reload = signals.next().await {
        // A SIGTERM that comes meanwhile is kept by its listener and ends the loop next.
        match Config::load(config_path) {
            Ok(new) => {
                if let Err(e) = daemon.reload(&new).await {
                    tracing::error!(error = %e, "configuration reload refused");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "configuration reload refused; the running configuration stays in force"
            ),
        }
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: the intake answers 503, sending what is queued"
    );
    sd_notify("STOPPING=1");
    if !daemon.shutdown(grace).await {
        tracing::warn!("grace period over; undelivered events stay in the spool and go out after the next start");
    }
    // Nothing accepted is lost either way: it is delivered, dead-lettered, or spooled.
    Ok(ExitCode::SUCCESS)
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// The listeners of SIGTERM, SIGINT and SIGHUP, created once and kept for the daemon's whole
/// life. tokio drops a signal that has no listener, and before the first listener exists the
/// default action kills the process; so they are installed before anything else and never
/// dropped, not rebuilt around each wait.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Self, CommandError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())
                    .map_err(CommandError::io("installing the SIGTERM handler"))?,
                int: signal(SignalKind::interrupt())
                    .map_err(CommandError::io("installing the SIGINT handler"))?,
                hup: signal(SignalKind::hangup())
                    .map_err(CommandError::io("installing the SIGHUP handler"))?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal (waits for one).
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Signal::Stop,
                _ = self.int.recv() => Signal::Stop,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }

    /// Waits for SIGTERM or SIGINT (SIGHUP is taken and ignored).
    pub async fn stop(&mut self) {
        while self.next().await != Signal::Stop {}
    }
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

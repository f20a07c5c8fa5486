//! The daemon's run state as every long-running task sees it (lanes, batch runs, Kafka
//! sources): running, draining (finish what is queued, then stop) or stopping now. Carried on a
//! `tokio::sync::watch` channel so a task can wait for a state without polling.

use tokio::sync::watch;

/// The daemon's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Deliver what is spooled, then stop.
    Draining,
    /// Stop now; what is not acknowledged stays with its source.
    Stop,
}

/// Resolves when the run state is `target` (or the daemon is gone).
pub async fn wait_for(state: &mut watch::Receiver<RunState>, target: RunState) {
    let _ = state.wait_for(|s| *s == target).await;
}
